//! The engine against a fake pool on tokio's paused clock: the test plays
//! the master (through session events and the outbox) and the children
//! (through [`FakeProcesses`]), and time moves only when every task waits.

use std::sync::{Arc, Mutex};

use drover_common::metrics::MetricsListen;
use drover_common::net::ClientOptions;
use drover_common::pb::JobKind;
use prost::Message;
use tokio::task::JoinHandle;

use super::*;
use crate::pool::Launched;

/// How long a test waits, in paused (virtual) time, for something that
/// should happen: far past every deadline the engine keeps.
const PATIENCE: Duration = Duration::from_secs(600);

/// A launcher whose children are channels: the test reads the frames the
/// engine writes to them and answers through the pool's event channel.
#[derive(Debug, Clone, Default)]
struct FakeProcesses(Arc<Mutex<Fakes>>);

#[derive(Debug, Default)]
struct Fakes {
    /// Every child started, in order; the last one of a slot is its live one.
    started: Vec<FakeChild>,
    /// The pids killed, in order.
    killed: Vec<u32>,
    /// Where the pool listens for its children's events.
    events: Option<mpsc::UnboundedSender<PoolEvent>>,
    /// How many of the next starts fail, as when the system is out of
    /// processes or memory.
    failing_starts: usize,
    /// Starts tried, failed ones included, and when.
    tries: Vec<Instant>,
}

#[derive(Debug)]
struct FakeChild {
    slot: usize,
    pid: u32,
    generation: u64,
    frames: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Launcher for FakeProcesses {
    fn spawn(
        &mut self,
        slot: usize,
        generation: u64,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) -> std::io::Result<Launched> {
        let mut fakes = self.0.lock().unwrap();
        fakes.tries.push(Instant::now());
        if fakes.failing_starts > 0 {
            fakes.failing_starts -= 1;
            return Err(std::io::Error::other("fake: out of processes"));
        }
        let pid = 1000 + fakes.started.len() as u32;
        let (stdin, frames) = mpsc::unbounded_channel();
        fakes.started.push(FakeChild {
            slot,
            pid,
            generation,
            frames,
        });
        fakes.events = Some(events);
        Ok(Launched { pid, stdin })
    }

    fn kill(&mut self, pid: u32) {
        self.0.lock().unwrap().killed.push(pid);
    }
}

impl FakeProcesses {
    fn with_live<T>(&self, slot: usize, f: impl FnOnce(&mut FakeChild) -> T) -> T {
        let mut fakes = self.0.lock().unwrap();
        let child = fakes
            .started
            .iter_mut()
            .rev()
            .find(|c| c.slot == slot)
            .expect("every slot has a child");
        f(child)
    }

    /// The live child of `slot`: its pid and generation.
    fn live(&self, slot: usize) -> (u32, u64) {
        self.with_live(slot, |c| (c.pid, c.generation))
    }

    fn killed(&self) -> Vec<u32> {
        self.0.lock().unwrap().killed.clone()
    }

    /// Makes the next `n` starts fail.
    fn fail_starts(&self, n: usize) {
        self.0.lock().unwrap().failing_starts = n;
    }

    /// When each start was tried, failed ones included.
    fn tries(&self) -> Vec<Instant> {
        self.0.lock().unwrap().tries.clone()
    }

    /// Waits for the next request the engine writes to the live child of
    /// `slot`, and returns its jobs.
    async fn next_request(&self, slot: usize) -> Vec<pb::ChildJob> {
        let frame = poll("a request to a child", || {
            self.with_live(slot, |c| c.frames.try_recv().ok())
        })
        .await;
        let mut input = frame.as_slice();
        let mut body = Vec::new();
        assert!(crate::child::read_frame(&mut input, &mut body).unwrap());
        pb::ChildRequest::decode(body.as_slice()).unwrap().jobs
    }

    fn event(&self, event: PoolEvent) {
        let events = self.0.lock().unwrap().events.clone();
        events.expect("the pool started").send(event).unwrap();
    }

    /// Answers job `slot_id` from the child `(slot, generation)`.
    fn answer_from(
        &self,
        slot: usize,
        generation: u64,
        slot_id: u64,
        outcome: child_result::Outcome,
    ) {
        self.event(PoolEvent::Output {
            slot,
            generation,
            response: pb::ChildResponse {
                results: vec![pb::ChildResult {
                    slot_id,
                    outcome: Some(outcome),
                    run_us: 100,
                }],
            },
        });
    }

    /// Answers job `slot_id` from the live child of `slot` with F(n).
    fn answer(&self, slot: usize, slot_id: u64, value: &str) {
        let (_, generation) = self.live(slot);
        self.answer_from(slot, generation, slot_id, fib_output(value));
    }

    /// Whether the live child of `slot` has been sent nothing it has not
    /// been asked about.
    fn has_no_request(&self, slot: usize) -> bool {
        self.with_live(slot, |c| c.frames.try_recv().is_err())
    }

    /// Ends the live child of `slot` as if the OS killed it.
    fn die(&self, slot: usize, status: &str) {
        let (_, generation) = self.live(slot);
        self.event(PoolEvent::Exited {
            slot,
            generation,
            status: status.into(),
        });
    }
}

/// Polls `f` until it gives a value, letting the engine run in between.
async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Asserts that `took` is `expected`, give or take the few milliseconds of
/// (paused) time that [`poll`] and the timer wheel's rounding add.
#[track_caller]
fn assert_near(took: Duration, expected: Duration) {
    assert!(
        took >= expected && took <= expected + Duration::from_millis(5),
        "took {took:?}, expected {expected:?}"
    );
}

fn fib_output(value: &str) -> child_result::Outcome {
    child_result::Outcome::Output(pb::JobOutput {
        value: Some(pb::job_output::Value::Fib(value.into())),
    })
}

fn config(processes: usize, prefetch: u64, grace: Duration) -> Config {
    Config {
        masters: vec!["http://127.0.0.1:1".into()],
        processes,
        io_slots: 5,
        name: "w1".into(),
        host: "test".into(),
        prefetch,
        max_jobs_per_child: 0,
        max_result_bytes: crate::DEFAULT_MAX_RESULT_BYTES,
        grace,
        python: None,
        client: ClientOptions::default(),
        metrics: MetricsListen::Off,
        coord: None,
    }
}

fn job(id: &str, kind: JobKind, arg: &str, timeout_ms: u64) -> pb::Assignment {
    pb::Assignment {
        job_id: id.into(),
        kind: kind as i32,
        arg: arg.into(),
        timeout_ms,
        attempt: 1,
        priority: 0,
        slot: Some(master_slot(id)),
    }
}

/// The slot the fake master gives job `id`: any number the worker must
/// send back unchanged.
fn master_slot(id: &str) -> u32 {
    id.bytes().map(u32::from).sum::<u32>() * 7919
}

fn fib(id: &str, n: &str) -> pb::Assignment {
    job(id, JobKind::Fib, n, 0)
}

fn credit(cpu: u32, io: u32) -> worker_message::Msg {
    worker_message::Msg::Credit(pb::Credit { cpu, io, python: 0 })
}

fn returned(ids: &[&str]) -> worker_message::Msg {
    worker_message::Msg::Returned(pb::Returned {
        job_ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

fn failure(result: &pb::JobResult) -> &pb::JobFailure {
    match &result.outcome {
        Some(job_result::Outcome::Failure(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The engine, a session to it, and its fake children.
struct Worker {
    procs: FakeProcesses,
    session: mpsc::UnboundedSender<SessionEvent>,
    /// What the worker sends on the current session.
    from_worker: mpsc::UnboundedReceiver<pb::WorkerMessage>,
    /// The last pool state the worker reported.
    pool: Option<pb::PoolState>,
    /// Every pool state the worker reported, oldest first.
    pools: Vec<pb::PoolState>,
    shutdown: CancellationToken,
    closing: CancellationToken,
    engine: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Starts the engine and opens a session with it.
    fn start(cfg: Config) -> Worker {
        let procs = FakeProcesses::default();
        let (session, session_rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let closing = CancellationToken::new();
        let engine = tokio::spawn(Engine::run(
            cfg,
            Box::new(procs.clone()),
            session_rx,
            closing.clone(),
            shutdown.clone(),
        ));
        let (_, from_worker) = mpsc::unbounded_channel();
        let mut worker = Worker {
            procs,
            session,
            from_worker,
            pool: None,
            pools: Vec::new(),
            shutdown,
            closing,
            engine,
        };
        worker.connect();
        worker
    }

    fn connect(&mut self) {
        let (outbox, from_worker) = mpsc::unbounded_channel();
        self.from_worker = from_worker;
        self.session
            .send(SessionEvent::Connected {
                outbox,
                worker_id: "w1-session".into(),
                // Out of the way of every test's timeline.
                heartbeat: Duration::from_secs(3600),
            })
            .unwrap();
    }

    fn disconnect(&mut self) {
        self.session
            .send(SessionEvent::Disconnected {
                reason: "test".into(),
            })
            .unwrap();
    }

    fn tell(&self, msg: master_message::Msg) {
        self.session.send(SessionEvent::Message(msg)).unwrap();
    }

    fn assign(&self, jobs: &[pb::Assignment]) {
        self.tell(master_message::Msg::Assign(pb::Assign {
            jobs: jobs.to_vec(),
        }));
    }

    fn ack(&self, seq: u64) {
        self.tell(master_message::Msg::Ack(pb::ResultsAck { seq }));
    }

    /// The next message of the session, heartbeats skipped and pool states
    /// noted; `None` once the worker has dropped its sender.
    async fn try_next(&mut self) -> Option<worker_message::Msg> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.from_worker.recv())
                .await
                .expect("the worker sent nothing")?;
            match message.msg.expect("a message has a body") {
                worker_message::Msg::Heartbeat(_) => {}
                worker_message::Msg::Pool(p) => {
                    self.pools.push(p.clone());
                    self.pool = Some(p);
                }
                msg => return Some(msg),
            }
        }
    }

    async fn next(&mut self) -> worker_message::Msg {
        self.try_next().await.expect("the session is open")
    }

    async fn next_results(&mut self) -> pb::Results {
        match self.next().await {
            worker_message::Msg::Results(r) => r,
            other => panic!("expected results, got {other:?}"),
        }
    }

    /// Every message sent within `span` of (paused) time.
    async fn quiet_for(&mut self, span: Duration) -> Vec<worker_message::Msg> {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(span, async {
            while let Some(msg) = self.try_next().await {
                seen.push(msg);
            }
        })
        .await;
        seen
    }

    /// Waits for the worker to close its half of the stream, then ends the
    /// session as the master does, and waits for the engine to stop.
    async fn closed_by_worker(mut self) -> FakeProcesses {
        poll("close of the stream", || {
            self.closing.is_cancelled().then_some(())
        })
        .await;
        assert_eq!(self.try_next().await, None, "the outbox is dropped");
        self.disconnect();
        tokio::time::timeout(PATIENCE, self.engine)
            .await
            .expect("the engine stops once the session ends")
            .unwrap()
            .unwrap();
        self.procs
    }
}

#[tokio::test(start_paused = true)]
async fn credit_is_processes_plus_prefetch_and_comes_back_as_jobs_finish() {
    let mut w = Worker::start(config(2, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(3, 5), "2 processes + 1 prefetch");
    assert_eq!(w.pool.as_ref().unwrap().child_pids, [1000, 1001]);
    w.assign(&[fib("a", "10"), fib("b", "11"), fib("c", "12")]);
    // A kind of unknown cost goes one job at a time to each idle child.
    let a = w.procs.next_request(0).await;
    let b = w.procs.next_request(1).await;
    assert_eq!((a.len(), a[0].arg.as_str()), (1, "10"));
    assert_eq!((b.len(), b[0].arg.as_str()), (1, "11"));
    // Full up: nothing more is asked for until a job finishes.
    assert_eq!(w.quiet_for(Duration::from_secs(5)).await, []);
    w.procs.answer(0, a[0].slot_id, "55");
    let results = w.next_results().await;
    assert_eq!(results.seq, 1);
    assert_eq!(results.results.len(), 1);
    assert_eq!(results.results[0].job_id, "a");
    assert_eq!(results.results[0].slot, Some(master_slot("a")));
    assert_eq!(
        results.results[0].outcome,
        Some(job_result::Outcome::Output(pb::JobOutput {
            value: Some(pb::job_output::Value::Fib("55".into()))
        }))
    );
    assert_eq!(w.next().await, credit(1, 0), "the finished job's room");
    // The queued job goes to the child that is free.
    let c = w.procs.next_request(0).await;
    assert_eq!(c[0].arg, "12");
}

#[tokio::test(start_paused = true)]
async fn sleep_jobs_take_io_credit_and_end_at_their_timeout() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    let started = Instant::now();
    w.assign(&[
        job("short", JobKind::Sleep, "100", 0),
        job("long", JobKind::Sleep, "10000", 300),
    ]);
    let results = w.next_results().await;
    assert_near(started.elapsed(), Duration::from_millis(100));
    assert_eq!(results.results[0].job_id, "short");
    assert_eq!(
        results.results[0].outcome,
        Some(job_result::Outcome::Output(pb::JobOutput {
            value: Some(pb::job_output::Value::SleptMs(100)),
        }))
    );
    assert_eq!(w.next().await, credit(0, 1));
    let results = w.next_results().await;
    assert_near(started.elapsed(), Duration::from_millis(300));
    assert_eq!(results.results[0].job_id, "long");
    let f = failure(&results.results[0]);
    assert_eq!(f.reason, "timed out after 300 ms");
    assert!(f.retryable);
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_is_killed_and_reported_as_a_retriable_failure() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    let (pid, _) = w.procs.live(0);
    let started = Instant::now();
    w.assign(&[job("slow", JobKind::Fib, "10000000", 50)]);
    w.procs.next_request(0).await;
    // The child never answers.
    let results = w.next_results().await;
    // Its timeout, the slack for a child's late progress report, and the
    // polling for the request above.
    assert_near(started.elapsed(), Duration::from_millis(52));
    assert_eq!(results.results[0].job_id, "slow");
    assert_eq!(results.results[0].attempt, 1);
    let f = failure(&results.results[0]);
    assert_eq!(f.reason, "timed out after 50 ms (its process was killed)");
    assert!(f.retryable, "a timeout may pass on another try");
    assert_eq!(w.procs.killed(), [pid]);
    assert_eq!(w.next().await, credit(1, 0));
    // Replaced at once, and the master told.
    let pool = w.pool.clone().unwrap();
    assert_eq!(pool.children_restarted, 1);
    assert_eq!(pool.child_pids, [w.procs.live(0).0]);
    assert_ne!(pool.child_pids, [pid]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_job_is_never_reported_and_a_running_one_is_killed() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    w.assign(&[fib("running", "10000000"), fib("queued", "20")]);
    let running = w.procs.next_request(0).await;
    let (pid, generation) = w.procs.live(0);
    w.tell(master_message::Msg::Cancel(pb::CancelJobs {
        job_ids: vec!["running".into(), "queued".into()],
    }));
    // The running job's process is killed and replaced; the room comes back.
    assert_eq!(w.next().await, credit(2, 0));
    assert_eq!(w.procs.killed(), [pid]);
    assert_ne!(w.procs.live(0).0, pid);
    // A last answer from the killed process is ignored.
    w.procs
        .answer_from(0, generation, running[0].slot_id, fib_output("1"));
    w.assign(&[fib("next", "10")]);
    let next = w.procs.next_request(0).await;
    assert_eq!(next[0].arg, "10", "the queued job was dropped, not run");
    w.procs.answer(0, next[0].slot_id, "55");
    let results = w.next_results().await;
    let ids: Vec<&str> = results.results.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(ids, ["next"]);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_dies_fails_its_job_retriably_and_is_replaced() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    let (pid, _) = w.procs.live(0);
    w.assign(&[fib("a", "30")]);
    w.procs.next_request(0).await;
    w.procs.die(0, "killed by signal 9");
    let results = w.next_results().await;
    let f = failure(&results.results[0]);
    assert_eq!(
        f.reason,
        format!("child process {pid} killed by signal 9 while running the job")
    );
    assert!(f.retryable);
    assert_eq!(w.next().await, credit(1, 0));
    assert_eq!(w.pool.clone().unwrap().children_restarted, 1);
}

#[tokio::test(start_paused = true)]
async fn results_are_sent_again_on_each_new_session_until_acknowledged() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    w.assign(&[fib("a", "10"), fib("b", "11")]);
    let a = w.procs.next_request(0).await;
    w.procs.answer(0, a[0].slot_id, "55");
    let first = w.next_results().await;
    assert_eq!(first.seq, 1);
    // The stream breaks before the master acknowledges: the next session
    // starts with the same message, number and all.
    w.disconnect();
    w.connect();
    assert_eq!(w.next_results().await, first);
    assert_eq!(w.next().await, credit(1, 5));
    w.ack(1);
    // A result made with no session waits for the next one; the
    // acknowledged message is not sent again.
    w.disconnect();
    let b = w.procs.next_request(0).await;
    w.procs.answer(0, b[0].slot_id, "89");
    w.connect();
    let second = w.next_results().await;
    assert_eq!(second.seq, 2);
    assert_eq!(second.results[0].job_id, "b");
    assert_eq!(w.next().await, credit(2, 5));
}

#[tokio::test(start_paused = true)]
async fn a_drain_returns_jobs_not_started_finishes_running_ones_then_closes() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    w.assign(&[fib("running", "30"), fib("waiting", "31")]);
    let running = w.procs.next_request(0).await;
    w.shutdown.cancel();
    assert_eq!(
        w.next().await,
        worker_message::Msg::Draining(pb::Heartbeat {})
    );
    assert_eq!(w.next().await, returned(&["waiting"]));
    // An assignment that crossed the drain on the wire goes straight back.
    w.assign(&[fib("late", "32")]);
    assert_eq!(w.next().await, returned(&["late"]));
    // No credit while the running job takes its time.
    assert_eq!(w.quiet_for(Duration::from_secs(20)).await, []);
    w.procs.answer(0, running[0].slot_id, "832040");
    let results = w.next_results().await;
    assert_eq!(results.results[0].job_id, "running");
    assert!(matches!(
        results.results[0].outcome,
        Some(job_result::Outcome::Output(_))
    ));
    // The stream stays open until the master has the result.
    assert!(!w.closing.is_cancelled());
    w.ack(results.seq);
    let procs = w.closed_by_worker().await;
    assert_eq!(procs.killed(), [1000], "no child outlives the worker");
}

#[tokio::test(start_paused = true)]
async fn jobs_still_running_after_the_grace_period_fail_retriably() {
    let mut w = Worker::start(config(1, 1, Duration::from_secs(1)));
    assert_eq!(w.next().await, credit(2, 5));
    w.assign(&[fib("endless", "10000000")]);
    w.procs.next_request(0).await;
    let started = Instant::now();
    w.shutdown.cancel();
    assert_eq!(
        w.next().await,
        worker_message::Msg::Draining(pb::Heartbeat {})
    );
    let results = w.next_results().await;
    assert_near(started.elapsed(), Duration::from_secs(1));
    let f = failure(&results.results[0]);
    assert_eq!(f.reason, "worker w1 stopped before the job finished");
    assert!(f.retryable, "it runs again on another worker");
    // The master never acknowledges: the worker gives up waiting and
    // closes anyway.
    w.closed_by_worker().await;
    assert_near(
        started.elapsed(),
        Duration::from_secs(1) + crate::drain::ACK_WAIT,
    );
}

#[tokio::test(start_paused = true)]
async fn results_that_pile_up_go_in_messages_bounded_in_bytes() {
    let mut w = Worker::start(config(3, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(4, 5));
    w.assign(&[
        fib("a", "7000000"),
        fib("b", "7000001"),
        fib("c", "7000002"),
    ]);
    let mut asked = Vec::new();
    for slot in 0..3 {
        asked.push(w.procs.next_request(slot).await[0].slot_id);
    }
    // Three results of 1.5 MB each finish while the stream is down.
    w.disconnect();
    let big = "7".repeat(1_500_000);
    for (slot, slot_id) in asked.into_iter().enumerate() {
        w.procs.answer(slot, slot_id, &big);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.connect();
    let first = w.next_results().await;
    let second = w.next_results().await;
    let shape = |m: &pb::Results| {
        let ids: Vec<String> = m.results.iter().map(|r| r.job_id.clone()).collect();
        (m.seq, ids)
    };
    assert_eq!(shape(&first), (1, vec!["a".into(), "b".into()]));
    assert_eq!(shape(&second), (2, vec!["c".into()]));
    for m in [&first, &second] {
        assert!(m.encoded_len() <= crate::results::MESSAGE_BYTES);
    }
    assert_eq!(w.next().await, credit(4, 5), "a new session, all room free");
    // Not acknowledged: a new session sends both again, as they were.
    w.disconnect();
    w.connect();
    assert_eq!(w.next_results().await, first);
    assert_eq!(w.next_results().await, second);
}

#[tokio::test(start_paused = true)]
async fn a_result_over_the_limit_fails_for_good_and_its_child_lives_on() {
    let mut cfg = config(1, 1, Duration::from_secs(30));
    cfg.max_result_bytes = 1000;
    let mut w = Worker::start(cfg);
    assert_eq!(w.next().await, credit(2, 5));
    let (pid, _) = w.procs.live(0);
    w.assign(&[fib("big", "9567"), fib("next", "10")]);
    let big = w.procs.next_request(0).await;
    // F(9567) has 2000 digits: 2003 bytes encoded.
    w.procs.answer(0, big[0].slot_id, &"1".repeat(2000));
    let results = w.next_results().await;
    assert_eq!(results.results[0].job_id, "big");
    let f = failure(&results.results[0]);
    assert_eq!(
        f.reason,
        "result is 2003 bytes, over the worker's limit of 1000 (--max-result-bytes)"
    );
    assert!(!f.retryable, "every attempt would make the same result");
    assert_eq!(w.next().await, credit(1, 0));
    // The child did nothing wrong: it runs the next job.
    let next = w.procs.next_request(0).await;
    assert_eq!(next[0].arg, "10");
    assert_eq!(w.procs.live(0).0, pid);
    assert_eq!(w.procs.killed(), Vec::<u32>::new());
    w.procs.answer(0, next[0].slot_id, "55");
    let results = w.next_results().await;
    assert_eq!(results.results[0].job_id, "next");
    assert_eq!(w.pool.clone().unwrap().children_restarted, 0);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_cannot_start_is_tried_again_and_credit_counts_live_processes() {
    let mut w = Worker::start(config(2, 1, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(3, 5));
    w.assign(&[fib("a", "30"), fib("b", "31")]);
    w.procs.next_request(0).await;
    w.procs.next_request(1).await;
    // The child of slot 0 dies, and the next two starts fail.
    w.procs.fail_starts(2);
    let died = Instant::now();
    w.procs.die(0, "killed by signal 9");
    let results = w.next_results().await;
    assert_eq!(results.results[0].job_id, "a");
    // One job waits; no child is free to take it.
    w.assign(&[fib("c", "32")]);
    // Credit counts one process now, not two: b and c fill it (1 process
    // + 1 prefetch), so nothing is granted until the slot has a process
    // again, tried 100 ms after the failure, then 200 ms after that.
    assert_eq!(w.next().await, credit(1, 0));
    assert_near(died.elapsed(), Duration::from_millis(300));
    let tries: Vec<Duration> = w.procs.tries()[2..].iter().map(|t| *t - died).collect();
    assert_eq!(
        tries,
        [
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_millis(300)
        ]
    );
    let c = w.procs.next_request(0).await;
    assert_eq!(c[0].arg, "32", "the new child takes the waiting job");
    // The master saw the pool shrink, then grow back.
    let pids: Vec<Vec<u32>> = w.pools.iter().map(|p| p.child_pids.clone()).collect();
    assert_eq!(pids, [vec![1000, 1001], vec![1001], vec![1002, 1001]]);
}

#[tokio::test(start_paused = true)]
async fn in_a_drain_jobs_behind_a_killed_one_go_back_to_the_master_at_once() {
    let mut w = Worker::start(config(1, 4, Duration::from_secs(30)));
    assert_eq!(w.next().await, credit(2, 5));
    // Once the kind's cost is known, jobs go to a child several at a time.
    w.assign(&[fib("warm", "10")]);
    let warm = w.procs.next_request(0).await;
    w.procs.answer(0, warm[0].slot_id, "55");
    let results = w.next_results().await;
    w.ack(results.seq);
    assert_eq!(w.next().await, credit(4, 0));
    w.assign(&[
        fib("running", "30"),
        fib("behind1", "31"),
        fib("behind2", "32"),
    ]);
    let frame = w.procs.next_request(0).await;
    assert_eq!(frame.len(), 3, "one frame");
    let drained = Instant::now();
    w.shutdown.cancel();
    assert_eq!(
        w.next().await,
        worker_message::Msg::Draining(pb::Heartbeat {})
    );
    // The running job is cancelled: its child is killed, and the two
    // behind it, never started, go back to the master now, not when the
    // grace period ends.
    w.tell(master_message::Msg::Cancel(pb::CancelJobs {
        job_ids: vec!["running".into()],
    }));
    assert_eq!(w.next().await, returned(&["behind1", "behind2"]));
    assert_near(drained.elapsed(), Duration::ZERO);
    assert!(w.procs.has_no_request(0), "the new child is given nothing");
    // Nothing is held and every result is acknowledged: the worker closes.
    let procs = w.closed_by_worker().await;
    assert_near(drained.elapsed(), Duration::ZERO);
    assert_eq!(procs.killed(), [1000, 1001]);
}

#[tokio::test(start_paused = true)]
async fn python_jobs_go_to_the_python_slots_and_a_module_outside_the_list_is_refused() {
    let mut cfg = config(1, 1, Duration::from_secs(30));
    cfg.python = Some(crate::PythonConfig {
        interpreter: "python3".into(),
        modules: vec!["app".into()],
        processes: 1,
    });
    let mut w = Worker::start(cfg);
    assert_eq!(
        w.next().await,
        worker_message::Msg::Credit(pb::Credit {
            cpu: 2,
            io: 5,
            python: 2
        }),
        "1 process + 1 prefetch for each pool"
    );
    assert_eq!(w.pool.as_ref().unwrap().child_pids, [1000, 1001]);
    w.assign(&[
        job("bad", JobKind::Python, "os:system {\"args\":[\"true\"]}", 0),
        job("ok", JobKind::Python, "app.tasks:f {\"args\":[1]}", 0),
        fib("fib", "10"),
    ]);
    let results = w.next_results().await;
    assert_eq!(results.results[0].job_id, "bad");
    let f = failure(&results.results[0]);
    assert_eq!(
        f.reason,
        "module os is not allowed on this worker (--python-modules app)"
    );
    assert!(!f.retryable);
    // The allowed job goes to the Python process (slot 1), fib to the
    // Rust child (slot 0); the refused one to neither.
    let py = w.procs.next_request(1).await;
    assert_eq!(py.len(), 1);
    assert_eq!(py[0].arg, "app.tasks:f {\"args\":[1]}");
    let cpu = w.procs.next_request(0).await;
    assert_eq!((cpu.len(), cpu[0].arg.as_str()), (1, "10"));
    assert!(w.procs.has_no_request(1));
}
