//! `workers_1000_jobs_per_s`: one master with a thousand connected workers
//! (issue 13).
//!
//! A thousand worker daemons, each with its child processes, do not fit on
//! the reference machine, so the workers are simulated in this process: a
//! [`Fleet`] of N sessions, each its own `Workers.Connect` stream on its
//! own channel (its own HTTP/2 connection, as a real worker has), on a
//! multi-thread tokio runtime of its own so that the sessions do not share
//! the bench client's current thread. Each simulated worker does what
//! drover-worker's engine does with one child process (worker/src/engine.rs),
//! except that it runs the jobs in-process:
//!
//! - it sends the worker's Hello (protocol, a unique name, its host, one CPU
//!   slot, the default 1,024 IO slots, the built-in kinds) and waits for the
//!   Welcome;
//! - it grants credit as the engine does: room for its one process plus an
//!   adaptive prefetch (about 20 ms of queued work per process, from a
//!   running mean of each kind's run time, capped by the worker's default
//!   `--prefetch`), less what it holds and what it granted and was not yet
//!   assigned; it grants again after every batch of events;
//! - it runs its queued jobs (highest priority first, then arrival) in
//!   frames of about 1 ms of work and at most 512 jobs, one frame at a
//!   time, as the engine hands them to its one child, with the child's own
//!   code (`drover_worker::child::run_job` and its result limit), so every
//!   answer is real and the workload checks each one as `tiny` does;
//! - it sends each frame's results in one numbered `Results` message
//!   (bounded in bytes as the worker's outbox bounds them) and counts the
//!   master's `ResultsAck`s; it sends a heartbeat every `heartbeat_ms` of
//!   the Welcome.
//!
//! What it leaves out: reconnecting (a session that ends fails the
//! workload, naming the worker, instead of resending its unacknowledged
//! results on a new one), draining, sleep and Python jobs, cancels of
//! running jobs (none are sent here), and child processes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_common::JobClass;
use drover_common::net::{self, ClientOptions};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::workers_client::WorkersClient;
use drover_common::pb::{
    self, JobKind, StatsRequest, child_result, job_result, master_message, worker_message,
};
use drover_common::{Limits, PROTOCOL_VERSION, VERSION};
use futures::{FutureExt, StreamExt};
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Simulated workers by default (`--sim-workers`): the thousand.
pub(crate) const DEFAULT_SIM_WORKERS: u32 = 1_000;

/// The other side of the ratio: as many simulated workers as the bench's
/// own cluster has worker daemons by default.
pub(crate) const FEW_SIM_WORKERS: usize = 2;

/// Sessions being opened at once: enough to connect a thousand in a few
/// seconds, few enough not to overflow the master's listen backlog.
const CONNECTING_AT_ONCE: usize = 64;

/// How long connecting the fleet, and seeing it all in Stats, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a session may wait for the master's Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the fleet may take to close once stopped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker's results outbox bounds a message to this many bytes of
/// results (worker/src/results.rs).
const MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// A worker's default `--io-slots`.
const IO_SLOTS: u32 = 1024;

/// A running fleet of simulated workers. Dropping it stops every session
/// and its runtime; [`Fleet::close`] does so cleanly and checks the fleet.
pub(crate) struct Fleet {
    runtime: Option<tokio::runtime::Runtime>,
    stop: CancellationToken,
    names: Vec<String>,
    /// Each session's worker name and task, in the order they connected.
    sessions: Vec<(String, JoinHandle<Result<u64>>)>,
    shared: Arc<Shared>,
}

/// What the sessions report while they run.
#[derive(Default)]
struct Shared {
    /// Why sessions ended early, each naming its worker.
    failures: Mutex<Vec<String>>,
    /// Jobs run, over the whole fleet.
    jobs_run: AtomicU64,
    /// `Results` messages sent and not yet acknowledged.
    unacked: AtomicU64,
}

/// How the jobs were shared among the fleet, for the notes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) jobs_run: u64,
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl Fleet {
    /// Connects `n` simulated workers to the master at `url`, each on its
    /// own connection, and returns once every one has its Welcome. The
    /// sessions run on a runtime of their own with `threads` threads.
    pub(crate) async fn connect(url: &str, n: usize, threads: usize) -> Result<Fleet> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sim-worker")
            .enable_all()
            .build()
            .context("cannot start the simulated workers' runtime")?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        let host = drover_worker::host_name();
        let names: Vec<String> = (1..=n).map(|i| format!("sim-w{i}")).collect();
        let mut fleet = Fleet {
            runtime: None,
            stop: stop.clone(),
            names: names.clone(),
            sessions: Vec::with_capacity(n),
            shared: shared.clone(),
        };
        let url = url.to_string();
        // Connected on the fleet's runtime, so each channel's connection
        // task runs there too.
        let connecting = runtime.spawn(async move {
            futures::stream::iter(names)
                .map(|name| {
                    let (url, host, stop, shared) =
                        (url.clone(), host.clone(), stop.clone(), shared.clone());
                    async move {
                        let session =
                            open_session(&url, &name, &host).await.with_context(|| {
                                format!("simulated worker {name} could not connect to {url}")
                            })?;
                        Ok::<_, anyhow::Error>((name, tokio::spawn(session.run(stop, shared))))
                    }
                })
                .buffer_unordered(CONNECTING_AT_ONCE)
                .collect::<Vec<_>>()
                .await
        });
        fleet.runtime = Some(runtime);
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                anyhow!("{n} simulated workers did not all connect within {CONNECT_TIMEOUT:?}")
            })?
            .map_err(|e| anyhow!("the task connecting the simulated workers failed: {e}"))?;
        let mut first_error = None;
        let mut failed = 0;
        for o in opened {
            match o {
                Ok(session) => fleet.sessions.push(session),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            // Running out of descriptors shows as a connect error here.
            return Err(e.context(format!(
                "{failed} of {n} simulated workers could not connect (open files limit: {})",
                fd_limit_text()
            )));
        }
        Ok(fleet)
    }

    /// Fails, naming the workers, if any session has ended.
    pub(crate) fn check(&self) -> Result<()> {
        let failures = self
            .shared
            .failures
            .lock()
            .map_err(|_| anyhow!("a simulated worker panicked"))?;
        if failures.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = failures.iter().take(5).map(String::as_str).collect();
        bail!(
            "{} of {} simulated workers lost their session: {}{}",
            failures.len(),
            self.names.len(),
            shown.join("; "),
            if failures.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        )
    }

    /// Polls Stats until it lists every worker of the fleet.
    pub(crate) async fn wait_listed(&self, client: &mut QueueClient<Channel>) -> Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let want: HashSet<&str> = self.names.iter().map(String::as_str).collect();
        loop {
            self.check()?;
            let stats = client
                .stats(StatsRequest {})
                .await
                .context("stats")?
                .into_inner();
            let listed = stats
                .workers
                .iter()
                .filter(|w| want.contains(w.name.as_str()))
                .count();
            if listed == want.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Stats listed {listed} of the {} simulated workers after {CONNECT_TIMEOUT:?}",
                    want.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every session after the master has acknowledged every result
    /// (polled until `CLOSE_TIMEOUT`), and checks that no session ended
    /// early and that the fleet ran `jobs` jobs in all: each once, as the
    /// master never had to give one out again.
    pub(crate) async fn close(mut self, jobs: u64) -> Result<Spread> {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.shared.unacked.load(Ordering::Relaxed) > 0 {
            self.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} Results messages of the simulated workers were not acknowledged \
                     within {CLOSE_TIMEOUT:?}",
                    self.shared.unacked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.check()?;
        self.stop.cancel();
        let mut per_worker = Vec::with_capacity(self.sessions.len());
        for (name, handle) in std::mem::take(&mut self.sessions) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, handle).await {
                Ok(Ok(Ok(run))) => per_worker.push(run),
                Ok(Ok(Err(e))) => return Err(e.context(format!("simulated worker {name}"))),
                Ok(Err(e)) => bail!("simulated worker {name}'s task failed: {e}"),
                Err(_) => bail!("simulated worker {name} did not stop within {CLOSE_TIMEOUT:?}"),
            }
        }
        let run: u64 = per_worker.iter().sum();
        if run != jobs {
            bail!("the simulated workers ran {run} jobs, {jobs} were submitted");
        }
        Ok(Spread {
            jobs_run: run,
            min: per_worker.iter().copied().min().unwrap_or(0),
            max: per_worker.iter().copied().max().unwrap_or(0),
        })
    }
}

impl Drop for Fleet {
    /// Stops every session: their tasks and connections go with the
    /// runtime (shut down in the background: this may run inside the
    /// bench's own runtime, where a blocking shutdown is not allowed).
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A simulated worker's session, open and welcomed.
struct Session {
    name: String,
    outbox: mpsc::UnboundedSender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::MasterMessage>,
    heartbeat: Duration,
    /// Jobs assigned and not yet run, highest priority first, then
    /// arrival, as the engine queues them.
    queue: BTreeMap<(Reverse<i32>, u64), pb::Assignment>,
    next_key: u64,
    /// Credit granted on this session and not yet used, per class.
    outstanding: [u64; JobClass::COUNT],
    /// The running mean of each kind's run time, in microseconds.
    mean_us: HashMap<i32, f64>,
    /// Results run and not yet sent.
    unsent: Vec<pb::JobResult>,
    /// The number of the last `Results` message sent, and of the last one
    /// acknowledged.
    seq: u64,
    acked: u64,
    jobs_run: u64,
}

/// Opens one session as drover-worker's session.rs does: its own channel,
/// the Hello first, then the Welcome.
async fn open_session(url: &str, name: &str, host: &str) -> Result<Session> {
    let channel = net::connect_with(url, &ClientOptions::default())
        .await
        .map_err(|e| anyhow!(e))?;
    let mut client = WorkersClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let (outbox, rx) = mpsc::unbounded_channel();
    let hello = pb::Hello {
        protocol: PROTOCOL_VERSION,
        name: name.to_string(),
        host: host.to_string(),
        cpu_slots: 1,
        io_slots: IO_SLOTS,
        version: VERSION.to_string(),
        pid: std::process::id(),
        kinds: vec![
            JobKind::Fib as i32,
            JobKind::Prime as i32,
            JobKind::Sleep as i32,
        ],
        python_modules: Vec::new(),
        python_slots: 0,
    };
    outbox
        .send(pb::WorkerMessage {
            msg: Some(worker_message::Msg::Hello(hello)),
        })
        .map_err(|_| anyhow!("the session's outbox closed"))?;
    let mut inbound = client
        .connect(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("Workers.Connect refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
        .await
        .map_err(|_| anyhow!("no Welcome within {WELCOME_TIMEOUT:?}"))?
        .map_err(|s| anyhow!("the stream failed before the Welcome: {}", s.message()))?;
    let welcome = match first {
        Some(pb::MasterMessage {
            msg: Some(master_message::Msg::Welcome(w)),
        }) => w,
        other => bail!("the master's first message was not a Welcome: {other:?}"),
    };
    let mut session = Session {
        name: name.to_string(),
        outbox,
        inbound,
        heartbeat: Duration::from_millis(welcome.heartbeat_ms.max(10)),
        queue: BTreeMap::new(),
        next_key: 0,
        outstanding: [0; JobClass::COUNT],
        mean_us: HashMap::new(),
        unsent: Vec::new(),
        seq: 0,
        acked: 0,
        jobs_run: 0,
    };
    // The engine reports its pool on a new session, then grants credit.
    session.send(worker_message::Msg::Pool(pb::PoolState {
        child_pids: Vec::new(),
        children_restarted: 0,
    }))?;
    session.grant_credit()?;
    Ok(session)
}

impl Session {
    /// Runs the session until `stop`; returns the jobs it ran. An end of
    /// the stream before `stop` is recorded in `shared` and returned.
    async fn run(mut self, stop: CancellationToken, shared: Arc<Shared>) -> Result<u64> {
        let outcome = self.serve(&stop, &shared).await;
        if let Err(e) = &outcome
            && let Ok(mut f) = shared.failures.lock()
        {
            f.push(format!("{}: {e:#}", self.name));
        }
        // Forget the unacknowledged count of a session that ended early,
        // so the fleet does not wait for it; its failure is recorded.
        if outcome.is_err() {
            shared
                .unacked
                .fetch_sub(self.seq - self.acked, Ordering::Relaxed);
        }
        outcome.map(|()| self.jobs_run)
    }

    async fn serve(&mut self, stop: &CancellationToken, shared: &Shared) -> Result<()> {
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut heartbeat = tokio::time::interval_at(start, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let busy = !self.queue.is_empty();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = self.inbound.message() => {
                    self.on_message(m, shared)?;
                    // Every message already here before the next frame, so
                    // a burst becomes one frame, one Results, one grant.
                    while let Some(m) = self.inbound.message().now_or_never() {
                        self.on_message(m, shared)?;
                    }
                }
                _ = heartbeat.tick() => {
                    self.send(worker_message::Msg::Heartbeat(pb::Heartbeat {}))?;
                }
                () = std::future::ready(()), if busy => {
                    self.run_frame(shared);
                }
            }
            self.flush_results(shared)?;
            self.grant_credit()?;
            if busy {
                // A frame is up to a millisecond of work on a thread
                // shared with the other sessions.
                tokio::task::yield_now().await;
            }
        }
    }

    fn send(&mut self, msg: worker_message::Msg) -> Result<()> {
        self.outbox
            .send(pb::WorkerMessage { msg: Some(msg) })
            .map_err(|_| anyhow!("the stream to the master closed"))
    }

    fn on_message(
        &mut self,
        m: Result<Option<pb::MasterMessage>, tonic::Status>,
        shared: &Shared,
    ) -> Result<()> {
        let msg = match m {
            Ok(Some(pb::MasterMessage { msg: Some(m) })) => m,
            Ok(Some(_)) => return Ok(()),
            Ok(None) => bail!("the master closed the stream"),
            Err(s) => bail!("stream error: {:?}: {}", s.code(), s.message()),
        };
        match msg {
            master_message::Msg::Assign(a) => {
                for job in a.jobs {
                    let c = JobClass::of_wire(job.kind).index();
                    self.outstanding[c] = self.outstanding[c].saturating_sub(1);
                    let key = self.next_key;
                    self.next_key += 1;
                    self.queue.insert((Reverse(job.priority), key), job);
                }
            }
            master_message::Msg::Ack(a) => {
                if a.seq > self.acked {
                    shared
                        .unacked
                        .fetch_sub(a.seq.min(self.seq) - self.acked, Ordering::Relaxed);
                    self.acked = a.seq.min(self.seq);
                }
            }
            // Only jobs not started are here to cancel: they are dropped.
            master_message::Msg::Cancel(c) => {
                let ids: HashSet<&str> = c.job_ids.iter().map(String::as_str).collect();
                self.queue.retain(|_, j| !ids.contains(j.job_id.as_str()));
            }
            master_message::Msg::Drain(_) => {
                bail!("the master asked it to drain, which a simulated worker does not do")
            }
            master_message::Msg::Welcome(_) => {}
        }
        Ok(())
    }

    /// Runs one child frame: the first queued jobs, about a millisecond of
    /// work by the running mean of the first one's kind (one at a time
    /// while the kind is new), as the engine sizes them
    /// ([`drover_worker::frame_jobs`]).
    fn run_frame(&mut self, shared: &Shared) {
        let limits = Limits::unchecked();
        let Some((_, first)) = self.queue.first_key_value() else {
            return;
        };
        let by_time = drover_worker::frame_jobs(self.mean_us.get(&first.kind).copied());
        let size = self.queue.len().min(by_time);
        for _ in 0..size {
            let Some((_, job)) = self.queue.pop_first() else {
                break;
            };
            let started = Instant::now();
            let outcome = drover_worker::child::limit_result(
                drover_worker::child::run_job(job.kind, &job.arg, &limits),
                drover_worker::DEFAULT_MAX_RESULT_BYTES,
            );
            let run_us = started.elapsed().as_micros() as u64;
            let mean = self.mean_us.entry(job.kind).or_insert(run_us as f64);
            *mean = 0.8 * *mean + 0.2 * run_us as f64;
            let outcome = match outcome {
                child_result::Outcome::Output(o) => job_result::Outcome::Output(o),
                child_result::Outcome::Failure(f) => job_result::Outcome::Failure(f),
            };
            self.unsent.push(pb::JobResult {
                job_id: job.job_id,
                attempt: job.attempt,
                outcome: Some(outcome),
                run_us,
                slot: job.slot,
            });
            self.jobs_run += 1;
        }
        shared.jobs_run.fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Sends every result ready, in numbered messages bounded in bytes.
    fn flush_results(&mut self, shared: &Shared) -> Result<()> {
        let mut ready = std::mem::take(&mut self.unsent).into_iter().peekable();
        while ready.peek().is_some() {
            let mut results = Vec::new();
            let mut bytes = 0;
            while let Some(next) = ready.peek() {
                let size = drover_worker::child::repeated_len(next);
                if !results.is_empty() && bytes + size > MESSAGE_BYTES {
                    break;
                }
                bytes += size;
                results.extend(ready.next());
            }
            self.seq += 1;
            shared.unacked.fetch_add(1, Ordering::Relaxed);
            let seq = self.seq;
            self.send(worker_message::Msg::Results(pb::Results { results, seq }))?;
        }
        Ok(())
    }

    /// Room for the one process plus the adaptive prefetch for CPU jobs,
    /// and the IO slots, as the engine's `capacity`.
    fn capacity(&self) -> [u64; JobClass::COUNT] {
        let mut cap = [0; JobClass::COUNT];
        cap[JobClass::Io.index()] = u64::from(IO_SLOTS);
        let procs = 1u64;
        let means = self
            .mean_us
            .iter()
            .filter(|(k, _)| JobClass::of_wire(**k) == JobClass::Cpu)
            .map(|(_, v)| *v);
        let prefetch =
            drover_worker::adaptive_prefetch(procs, means, drover_worker::DEFAULT_PREFETCH);
        cap[JobClass::Cpu.index()] = procs + prefetch;
        cap
    }

    /// Grants what is left of the capacity after what is held and what was
    /// granted and not yet used, as the engine's `grant_credit`.
    fn grant_credit(&mut self) -> Result<()> {
        let cap = self.capacity();
        let mut held = [0u64; JobClass::COUNT];
        held[JobClass::Cpu.index()] = self.queue.len() as u64;
        let mut grant = [0u64; JobClass::COUNT];
        for c in JobClass::ALL.map(JobClass::index) {
            grant[c] = cap[c].saturating_sub(held[c] + self.outstanding[c]);
            self.outstanding[c] += grant[c];
        }
        if grant.iter().all(|&g| g == 0) {
            return Ok(());
        }
        self.send(worker_message::Msg::Credit(pb::Credit {
            cpu: grant[JobClass::Cpu.index()] as u32,
            io: grant[JobClass::Io.index()] as u32,
            python: grant[JobClass::Python.index()] as u32,
        }))
    }
}

/// Makes sure this process, and the master it starts (which inherits the
/// limit), may open a socket per simulated worker and some to spare:
/// raises the soft limit on open files up to the hard one if need be.
pub(crate) fn ensure_fds(workers: usize) -> Result<()> {
    let need = workers as u64 + 512;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        bail!(
            "{workers} simulated workers need about {need} open files in the bench and in the \
             master, but the limit is {} (hard {}): raise it (ulimit -n) or lower --sim-workers",
            lim.rlim_cur,
            lim.rlim_max
        );
    }
    lim.rlim_cur = need;
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "cannot raise the open files limit to {need}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// This process's open files limit, for an error message.
fn fd_limit_text() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        format!("{} soft, {} hard", lim.rlim_cur, lim.rlim_max)
    } else {
        "unknown".into()
    }
}

/// Seconds per clock tick of /proc/PID/stat's CPU times.
pub(crate) fn seconds_per_tick() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if ticks > 0 { ticks as f64 } else { 100.0 }
}
