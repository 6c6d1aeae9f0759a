//! A randomized model test of the state machine as the service drives it,
//! with the stores it runs on: the memory store (a small `--keep-finished`
//! bound, and in some histories a byte budget, so finished batches are
//! evicted) and the redb store in a temporary directory (commits as the
//! committer makes them, some still being written while other requests
//! run, retention and byte-budget purges, and restarts that rebuild the
//! state from the store as `Master::open` does).
//!
//! Each history runs a few thousand steps from a seed: submits (keys from a
//! small pool, request ids sent again, priorities, `max_attempts`), workers
//! connecting and granting credit, results (success, retriable and fatal
//! failure), late and stale results, lost sessions, draining workers
//! returning jobs, cancels, retries of dead letters, evictions, purges,
//! commits and restarts. A reference model applies the same events under
//! the rules of the module docs ("Attempts"), and after every step:
//!
//! - every job the model holds is in the state with the model's state,
//!   attempts, counted attempts, allowance, holder and output; or, closed,
//!   in the store with the same (sampled each step, all after restarts and
//!   purges); or it left (evicted or purged) finished, its whole batch with
//!   it, and asking for it says evicted, purged or expired, never "not
//!   known"; no job is in the state that the model does not know;
//! - `Stats` counts are the model's; `counted <= allowance`, and attempts
//!   are only the counted ones, the uncounted ones and the one running;
//! - a result is taken only per (job, attempt) as the rules say, the others
//!   counted dropped (`late_results_dropped` is the model's);
//! - no job is held by two sessions, each session holds exactly the jobs
//!   running on it, is never sent more jobs than the credit it granted, its
//!   credit left is the model's, and no ready job waits while a session has
//!   credit for its class;
//! - a submit with a request id already acknowledged gets the same batch
//!   back, a key of a job still known the same job, while they are kept;
//! - across restarts: the state is what the last written commit held
//!   (nothing acknowledged lost, jobs running then queued again with their
//!   attempt kept and not counted), and a success once committed never
//!   changes.
//!
//! It complements `crate::model_test`, which checks each job's history
//! exactly (attempt errors, backoff, leases, crashes at any point) over a
//! simulated store with no closing: this one runs the stores themselves,
//! with finished batches leaving memory, evictions, purges and the
//! accounting of what left. It leaves out Python jobs, concurrency limits
//! (see `limits_tests.rs`), retry backoff (retries are queued at once),
//! lease expiry, and (with restarts this frequent) it seldom reaches the
//! assignment log's compaction.
//!
//! Workers see a message only once its commit is written. Dispatch order
//! among sessions follows a `HashMap`, so a history is not always replayed
//! exactly from its seed; a failure prints the last steps.

use super::*;
use crate::store::{RedbStore, Store};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.below(from.len() as u64) as usize])
    }
}

const RETENTION_MS: u64 = 60_000;
const DEFAULT_ATTEMPTS: u32 = 3;
const KEYS: u64 = 24;

type Rx = mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>;

/// How a job left.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gone {
    /// Evicted from the memory store: still counted in `Stats`.
    Evicted,
    /// Purged (retention or byte budget): no longer counted.
    Purged,
}

#[derive(Clone, Debug)]
struct MJob {
    id: JobId,
    batch: BatchId,
    io: bool,
    state: JobState,
    attempts: u32,
    counted: u32,
    allowance: u32,
    max_attempts: u32,
    /// Attempts ended without counting (returns, restarts).
    uncounted: u32,
    session: Option<SessionId>,
    output: Option<u64>,
    gone: Option<Gone>,
}

impl MJob {
    fn finished(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Ends the running attempt, counted.
    fn fail_attempt(&mut self, retryable: bool) {
        self.session = None;
        self.counted += 1;
        self.state = if retryable && self.counted < self.allowance {
            JobState::Queued
        } else {
            JobState::Failed
        };
    }
}

/// The reference model: what the state should hold.
#[derive(Clone, Default)]
struct Model {
    jobs: Vec<MJob>,
    at: HashMap<JobId, usize>,
    keys: HashMap<String, JobId>,
    /// Request id, its batch and ids, and the specs to send again.
    requests: Vec<(String, BatchId, Vec<JobId>, Vec<pb::JobSpec>)>,
}

impl Model {
    fn job(&mut self, id: &JobId) -> Option<&mut MJob> {
        self.at.get(id).map(|&i| &mut self.jobs[i])
    }
}

enum Delivery {
    Assign(Vec<(JobId, u32)>),
    Cancel(Vec<JobId>),
}

struct Worker {
    sid: SessionId,
    rx: Rx,
    /// Messages sent, waiting for their commit.
    pending: VecDeque<(Option<u64>, Delivery)>,
    /// Assignments the worker has seen and not reported.
    held: Vec<(JobId, u32)>,
    /// Credit left per class (CPU, IO), as the model counts it.
    credit: [u64; 2],
    draining: bool,
}

enum Outcome {
    Ok(u64),
    Fail(bool),
}

struct Harness {
    seed: u64,
    rng: Rng,
    /// The durable store, where the history has one, and where it lives.
    redb: Option<(Backing, Arc<dyn Store>)>,
    keep_finished: u64,
    budget: Option<u64>,
    st: State,
    offset: Arc<AtomicU64>,
    model: Model,
    /// The model as of the last commit written (redb).
    durable: Model,
    inflight: Option<(u64, Changes, Model)>,
    committed: u64,
    workers: Vec<Worker>,
    worker_names: u64,
    /// Attempts of ended sessions and of sent results, for late results.
    old: Vec<(JobId, u32)>,
    nonce: u64,
    dropped: u64,
    /// Successes once committed (redb).
    final_results: HashMap<JobId, u64>,
    requests_made: u64,
    step: usize,
    op: &'static str,
    recent: VecDeque<String>,
    /// Read every job out of memory from the store at the next check.
    full: bool,
}

macro_rules! bad {
    ($h:expr, $($arg:tt)*) => {{
        let msg = format!($($arg)*);
        panic!(
            "seed {} ({}) step {} `{}`: {msg}\nlast steps:\n  {}",
            $h.seed,
            $h.redb.as_ref().map_or("memory", |r| r.0.name()),
            $h.step,
            $h.op,
            $h.recent.iter().cloned().collect::<Vec<_>>().join("\n  ")
        )
    }};
}

fn output_nonce(j: &Job) -> Option<u64> {
    match j.x().output.as_ref()?.value {
        Some(pb::job_output::Value::SleptMs(n)) => Some(n),
        _ => None,
    }
}

fn make_state(
    store: Option<&Arc<dyn Store>>,
    keep_finished: u64,
    budget: Option<u64>,
    offset: &Arc<AtomicU64>,
) -> State {
    let mut st = State::new(Settings {
        limits: Limits::default(),
        default_max_attempts: DEFAULT_ATTEMPTS,
        retry: RetryPolicy {
            base_ms: 0,
            max_ms: 0,
        },
        retention_ms: RETENTION_MS,
        durable: store.is_some(),
    });
    // Real time moved on by the test: ids (made on the real clock) are
    // never newer than the state's now.
    let o = offset.clone();
    st.set_clock(Box::new(move || crate::store::now_ms() + o.load(SeqCst)));
    // As `Master::open` does.
    match store {
        Some(store) => st.set_archive(store.clone()),
        None => st.set_keep_finished(keep_finished),
    }
    if let Some(bytes) = budget {
        let purged = store.map_or(0, |s| s.budget_purged_upto_ms().unwrap());
        st.set_retention_bytes(bytes, purged);
    }
    if let Some(store) = store {
        let mut report = RecoveryReport::default();
        let created = store
            .load(&mut |item| st.recover_item(item, &mut report))
            .expect("the store loads");
        st.set_created_at(created);
        st.set_next_seq(store.next_seq().unwrap());
        st.committed(0, store.closed_counts().unwrap());
        st.finish_recovery(&mut report);
    }
    st
}

/// The partition width of a history's PostgreSQL database: a few ms of
/// batch creation, so that a history of a few seconds crosses hundreds of
/// ranges and its purges drop some of them whole.
const PG_PARTITION_MS: u64 = 5;

/// Where a history's durable store lives.
enum Backing {
    /// A redb file in a temporary directory.
    Redb(tempfile::TempDir),
    /// A database of its own on a PostgreSQL server the test started.
    Pg(String),
}

impl Backing {
    fn name(&self) -> &'static str {
        match self {
            Backing::Redb(_) => "redb",
            Backing::Pg(_) => "postgres",
        }
    }

    /// Opens the store, as a restarted master does (on PostgreSQL at epoch
    /// 0, the lease row's before any election, which fencing accepts).
    fn open(&self) -> Arc<dyn Store> {
        match self {
            Backing::Redb(dir) => Arc::new(RedbStore::open(dir.path()).expect("the store opens")),
            Backing::Pg(url) => Arc::new(
                crate::pg::PgStore::open_with(url, 0, std::time::Duration::ZERO, PG_PARTITION_MS)
                    .expect("the store opens"),
            ),
        }
    }
}

/// Which store a history runs on.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Memory,
    Redb,
    /// A database on this server.
    Pg(&'a drover_tests::pg::Postgres),
}

impl Harness {
    fn new(seed: u64, kind: Kind<'_>) -> Harness {
        let mut rng = Rng::new(seed);
        let offset = Arc::new(AtomicU64::new(0));
        let keep_finished = 4 + rng.below(12);
        let budget = rng.pct(40).then(|| 1_000 + rng.below(3_000));
        let backing = match kind {
            Kind::Memory => None,
            Kind::Redb => {
                let shm = std::path::Path::new("/dev/shm");
                Some(Backing::Redb(if shm.is_dir() {
                    tempfile::tempdir_in(shm).unwrap()
                } else {
                    tempfile::tempdir().unwrap()
                }))
            }
            Kind::Pg(server) => {
                let db = format!("history_{seed}");
                server.psql(&format!("CREATE DATABASE {db}"));
                Some(Backing::Pg(server.url_of(&db)))
            }
        };
        let redb = backing.map(|b| {
            let store = b.open();
            (b, store)
        });
        let st = make_state(redb.as_ref().map(|r| &r.1), keep_finished, budget, &offset);
        Harness {
            seed,
            rng,
            redb,
            keep_finished,
            budget,
            st,
            offset,
            model: Model::default(),
            durable: Model::default(),
            inflight: None,
            committed: 0,
            workers: Vec::new(),
            worker_names: 0,
            old: Vec::new(),
            nonce: 0,
            dropped: 0,
            final_results: HashMap::new(),
            requests_made: 0,
            step: 0,
            op: "start",
            recent: VecDeque::new(),
            full: false,
        }
    }

    fn store(&self) -> Option<&Arc<dyn Store>> {
        self.redb.as_ref().map(|r| &r.1)
    }

    fn note(&mut self, what: String) {
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("{:>5} {what}", self.step));
    }

    /// Whether the state still has a job (in memory or in the store).
    fn reachable(&self, id: &JobId) -> bool {
        self.st.job(id).is_some() || self.store().is_some_and(|s| s.has_job(id).unwrap())
    }

    /// Whether the state still has a batch.
    fn batch_reachable(&self, id: &BatchId) -> bool {
        self.st.batches.contains_key(id)
            || self
                .store()
                .is_some_and(|s| s.read_batch(id).unwrap().is_some())
    }

    /// Delivers what a change produced, as the service does, and applies
    /// the assignments it made to the model.
    fn send(&mut self, out: Outgoing) {
        for (outbox, msg) in out.messages {
            let _ = outbox.send((out.ticket, msg));
        }
        self.pump();
    }

    fn pump(&mut self) {
        for wi in 0..self.workers.len() {
            while let Ok((ticket, m)) = self.workers[wi].rx.try_recv() {
                match m.msg {
                    Some(pb::master_message::Msg::Assign(a)) => {
                        let mut list = Vec::new();
                        for asg in a.jobs {
                            let id = JobId::parse("job_id", &asg.job_id).unwrap();
                            self.assigned(wi, id, asg.attempt);
                            list.push((id, asg.attempt));
                        }
                        self.workers[wi]
                            .pending
                            .push_back((ticket, Delivery::Assign(list)));
                    }
                    Some(pb::master_message::Msg::Cancel(c)) => {
                        let ids = c
                            .job_ids
                            .iter()
                            .map(|s| JobId::parse("job_id", s).unwrap())
                            .collect();
                        self.workers[wi]
                            .pending
                            .push_back((ticket, Delivery::Cancel(ids)));
                    }
                    _ => {}
                }
            }
        }
        self.deliver();
    }

    /// Hands workers the messages whose commit is written.
    fn deliver(&mut self) {
        let committed = self.committed;
        for w in &mut self.workers {
            while let Some((ticket, _)) = w.pending.front() {
                if ticket.is_some_and(|t| t > committed) {
                    break;
                }
                match w.pending.pop_front().unwrap().1 {
                    Delivery::Assign(list) => w.held.extend(list),
                    Delivery::Cancel(ids) => w.held.retain(|(id, _)| !ids.contains(id)),
                }
            }
        }
    }

    fn assigned(&mut self, wi: usize, id: JobId, attempt: u32) {
        let (sid, draining) = (self.workers[wi].sid, self.workers[wi].draining);
        let Some(&i) = self.model.at.get(&id) else {
            bad!(self, "assigned job {id}, which the model does not know");
        };
        let j = &self.model.jobs[i];
        if j.gone.is_some() || j.state != JobState::Queued {
            bad!(
                self,
                "assigned job {id} attempt {attempt}, which is {:?} (gone {:?})",
                j.state,
                j.gone
            );
        }
        if attempt != j.attempts + 1 {
            bad!(
                self,
                "assigned job {id} as attempt {attempt} after {} attempts",
                j.attempts
            );
        }
        let class = j.io as usize;
        if draining || self.workers[wi].credit[class] == 0 {
            bad!(
                self,
                "session {} sent job {id} with no credit left for it (draining {draining})",
                sid.get()
            );
        }
        self.workers[wi].credit[class] -= 1;
        let j = &mut self.model.jobs[i];
        j.state = JobState::Running;
        j.session = Some(sid);
        j.attempts = attempt;
    }

    /// The model's rule for a result from `sid` for (`id`, `attempt`).
    fn model_result(&mut self, sid: SessionId, id: JobId, attempt: u32, outcome: &Outcome) {
        let Some(j) = self.model.job(&id) else {
            self.dropped += 1;
            return;
        };
        let current = j.gone.is_none() && attempt > 0 && attempt == j.attempts;
        let held = current && j.state == JobState::Running && j.session == Some(sid);
        let orphaned = current && j.state == JobState::Queued;
        match *outcome {
            Outcome::Ok(n) if held || orphaned => {
                j.state = JobState::Succeeded;
                j.session = None;
                j.output = Some(n);
            }
            Outcome::Fail(retryable) if held => j.fail_attempt(retryable),
            _ => self.dropped += 1,
        }
    }

    fn result(&mut self, wi: usize, id: JobId, attempt: u32, outcome: Outcome) {
        let sid = self.workers[wi].sid;
        let r = pb::JobResult {
            job_id: id.to_string(),
            attempt,
            outcome: Some(match outcome {
                Outcome::Ok(n) => pb::job_result::Outcome::Output(pb::JobOutput {
                    value: Some(pb::job_output::Value::SleptMs(n)),
                }),
                Outcome::Fail(retryable) => pb::job_result::Outcome::Failure(pb::JobFailure {
                    reason: "boom".into(),
                    retryable,
                }),
            }),
            run_us: 1,
            // The slot is only a hint: none, or any (right now and then,
            // in a table this small), must not change what is recorded.
            slot: self.rng.pct(50).then(|| self.rng.below(64) as u32),
        };
        let what = match outcome {
            Outcome::Ok(n) => format!("ok({n})"),
            Outcome::Fail(r) => format!("fail(retryable {r})"),
        };
        self.note(format!(
            "result s{} {id} attempt {attempt} {what}",
            sid.get()
        ));
        self.model_result(sid, id, attempt, &outcome);
        let out = self.st.record_results(sid, 0, vec![r]);
        self.send(out);
        self.old.push((id, attempt));
    }

    fn outcome(&mut self) -> Outcome {
        match self.rng.below(10) {
            0..=5 => {
                self.nonce += 1;
                Outcome::Ok(self.nonce)
            }
            6..=8 => Outcome::Fail(true),
            _ => Outcome::Fail(false),
        }
    }

    fn connect(&mut self) {
        self.worker_names += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let sid = self
            .st
            .add_session(&hello(&format!("w{}", self.worker_names)), tx);
        self.note(format!("connect s{}", sid.get()));
        self.workers.push(Worker {
            sid,
            rx,
            pending: VecDeque::new(),
            held: Vec::new(),
            credit: [0; 2],
            draining: false,
        });
    }

    /// A worker's session ends: what it held or was sent may come back as
    /// late results.
    fn forget_worker(&mut self, wi: usize) -> Worker {
        let w = self.workers.remove(wi);
        self.old.extend(w.held.iter().copied());
        for (_, d) in &w.pending {
            if let Delivery::Assign(list) = d {
                self.old.extend(list.iter().copied());
            }
        }
        w
    }

    fn submit(&mut self) {
        // A request sent again (the client retrying), or a new one.
        let again = if self.rng.pct(12) {
            let n = self.model.requests.len() as u64;
            (n > 0).then(|| self.model.requests[self.rng.below(n) as usize].clone())
        } else {
            None
        };
        if let Some((rid, batch, ids, specs)) = &again
            && self.batch_reachable(batch)
        {
            self.note(format!("submit again {rid}"));
            match self.st.submit_request(rid, specs.clone()) {
                Ok((b, got)) if b == *batch && got == *ids => {}
                other => bad!(
                    self,
                    "request {rid} sent again got {other:?}, not its batch {batch} {ids:?}"
                ),
            }
            let out = self.st.dispatch();
            self.send(out);
            return;
        }
        let (rid, specs) = match again {
            Some((rid, _, _, specs)) => (rid, specs),
            None => {
                let rid = if self.rng.pct(25) {
                    self.requests_made += 1;
                    format!("r{}", self.requests_made)
                } else {
                    String::new()
                };
                let n = 1 + self.rng.below(4);
                let specs = (0..n)
                    .map(|_| {
                        let io = self.rng.pct(50);
                        let (kind, arg) = if io {
                            (JobKind::Sleep, "1")
                        } else {
                            (JobKind::Fib, "5")
                        };
                        let mut s = spec(kind, arg, self.rng.below(3) as i32);
                        s.max_attempts = self.rng.below(4) as u32;
                        if self.rng.pct(30) {
                            s.idempotency_key = format!("k{}", self.rng.below(KEYS));
                        }
                        s
                    })
                    .collect();
                (rid, specs)
            }
        };
        let specs: Vec<pb::JobSpec> = specs;
        let (batch, ids) = match self.st.submit_request(&rid, specs.clone()) {
            Ok(r) => r,
            Err(e) => bad!(self, "submit refused: {e}"),
        };
        self.note(format!(
            "submit {rid:?} -> {batch} {} jobs, keys {:?}",
            ids.len(),
            specs
                .iter()
                .map(|s| s.idempotency_key.as_str())
                .collect::<Vec<_>>()
        ));
        if ids.len() != specs.len() {
            bad!(
                self,
                "{} specs submitted, {} ids back",
                specs.len(),
                ids.len()
            );
        }
        let mut own = HashMap::new();
        for (i, (s, &id)) in specs.iter().zip(&ids).enumerate() {
            let key = s.idempotency_key.as_str();
            let expected = if key.is_empty() {
                None
            } else if let Some(&j) = own.get(key) {
                Some(j)
            } else {
                self.model
                    .keys
                    .get(key)
                    .copied()
                    .filter(|j| self.reachable(j))
            };
            match expected {
                Some(j) if j != id => bad!(
                    self,
                    "jobs[{i}] with key {key} got {id}, not the job {j} the key names"
                ),
                Some(_) => continue,
                None if self.model.at.contains_key(&id) => bad!(
                    self,
                    "jobs[{i}] (key {key:?}) got the known job {id}, not a new one"
                ),
                None => {}
            }
            let max_attempts = if s.max_attempts == 0 {
                DEFAULT_ATTEMPTS
            } else {
                s.max_attempts
            };
            self.model.at.insert(id, self.model.jobs.len());
            self.model.jobs.push(MJob {
                id,
                batch,
                io: s.kind == JobKind::Sleep as i32,
                state: JobState::Queued,
                attempts: 0,
                counted: 0,
                allowance: max_attempts,
                max_attempts,
                uncounted: 0,
                session: None,
                output: None,
                gone: None,
            });
            if !key.is_empty() {
                own.insert(key, id);
                self.model.keys.insert(key.to_string(), id);
            }
        }
        if !rid.is_empty() {
            self.model.requests.retain(|r| r.0 != rid);
            self.model.requests.push((rid, batch, ids, specs));
        }
        let out = self.st.dispatch();
        self.send(out);
    }

    fn credit(&mut self) {
        let Some(wi) = self.rng.pick(&(0..self.workers.len()).collect::<Vec<_>>()) else {
            return;
        };
        let (cpu, io) = (self.rng.below(3) as u32, self.rng.below(3) as u32);
        let w = &mut self.workers[wi];
        w.credit[0] += u64::from(cpu);
        w.credit[1] += u64::from(io);
        let sid = w.sid;
        self.note(format!("credit s{} cpu {cpu} io {io}", sid.get()));
        let out = self.st.add_credit(sid, cpu, io);
        self.send(out);
    }

    fn report(&mut self) {
        let busy: Vec<usize> = (0..self.workers.len())
            .filter(|&i| !self.workers[i].held.is_empty())
            .collect();
        let Some(wi) = self.rng.pick(&busy) else {
            return;
        };
        let k = self.rng.below(self.workers[wi].held.len() as u64) as usize;
        let (id, attempt) = self.workers[wi].held.swap_remove(k);
        let outcome = self.outcome();
        self.result(wi, id, attempt, outcome);
    }

    /// A result sent again, late or for another attempt, from any session.
    fn stale(&mut self) {
        let Some(wi) = self.rng.pick(&(0..self.workers.len()).collect::<Vec<_>>()) else {
            return;
        };
        let target = if self.rng.pct(60) {
            self.rng.pick(&self.old)
        } else {
            let n = self.model.jobs.len() as u64;
            (n > 0).then(|| {
                let j = &self.model.jobs[self.rng.below(n) as usize];
                (j.id, j.attempts.saturating_sub(self.rng.below(2) as u32))
            })
        };
        let Some((id, attempt)) = target else {
            return;
        };
        let outcome = self.outcome();
        self.result(wi, id, attempt, outcome);
    }

    fn lose(&mut self) {
        let Some(wi) = self.rng.pick(&(0..self.workers.len()).collect::<Vec<_>>()) else {
            return;
        };
        let w = self.forget_worker(wi);
        self.note(format!("lose s{}", w.sid.get()));
        for j in &mut self.model.jobs {
            if j.state == JobState::Running && j.session == Some(w.sid) {
                j.fail_attempt(true);
            }
        }
        let (ended, out) = self.st.end_session(w.sid, "stream closed");
        if !ended {
            bad!(self, "session {} was not there to end", w.sid.get());
        }
        self.send(out);
    }

    fn drain(&mut self) {
        let Some(wi) = self.rng.pick(&(0..self.workers.len()).collect::<Vec<_>>()) else {
            return;
        };
        let sid = self.workers[wi].sid;
        self.st.set_draining(sid);
        let w = &mut self.workers[wi];
        w.draining = true;
        w.credit = [0; 2];
        let ids: Vec<JobId> = w.held.drain(..).map(|(id, _)| id).collect();
        self.note(format!("drain s{} returning {}", sid.get(), ids.len()));
        for id in &ids {
            if let Some(j) = self.model.job(id)
                && j.state == JobState::Running
                && j.session == Some(sid)
            {
                j.state = JobState::Queued;
                j.session = None;
                j.uncounted += 1;
            }
        }
        let out = self.st.return_jobs(sid, &ids);
        self.send(out);
    }

    fn cancel(&mut self) {
        let n = self.model.jobs.len() as u64;
        if n == 0 {
            return;
        }
        let i = self.rng.below(n) as usize;
        let (id, state, gone) = {
            let j = &self.model.jobs[i];
            (j.id, j.state, j.gone)
        };
        self.note(format!("cancel {id} ({state:?}, gone {gone:?})"));
        match (self.st.cancel(&[id]), gone) {
            (Err(e), Some(_)) => self.told_gone("job", &id.to_string(), &e.to_string()),
            (Err(e), None) => bad!(self, "cancel of {id} ({state:?}) refused: {e}"),
            (Ok(_), Some(g)) => bad!(self, "cancel of {id}, {g:?}, found it"),
            (Ok((resp, out)), None) => {
                let open = matches!(state, JobState::Queued | JobState::Running);
                if (resp.cancelled, resp.already_finished) != (open as u32, !open as u32) {
                    bad!(self, "cancel of {id} ({state:?}) said {resp:?}");
                }
                let j = &mut self.model.jobs[i];
                if open {
                    j.state = JobState::Cancelled;
                    j.session = None;
                }
                self.send(out);
            }
        }
    }

    fn retry(&mut self) {
        let failed: Vec<usize> = (0..self.model.jobs.len())
            .filter(|&i| {
                let j = &self.model.jobs[i];
                j.state == JobState::Failed && j.gone.is_none()
            })
            .collect();
        let mut picked = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            if let Some(i) = self.rng.pick(&failed)
                && !picked.contains(&i)
            {
                picked.push(i);
            }
        }
        if self.rng.pct(20) && !self.model.jobs.is_empty() {
            let i = self.rng.below(self.model.jobs.len() as u64) as usize;
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        let ids: Vec<JobId> = picked.iter().map(|&i| self.model.jobs[i].id).collect();
        let mut expected = 0;
        for &i in &picked {
            let j = &mut self.model.jobs[i];
            if j.state == JobState::Failed && j.gone.is_none() {
                j.state = JobState::Queued;
                j.allowance = j.counted + j.max_attempts;
                expected += 1;
            }
        }
        self.note(format!("retry {ids:?}"));
        let (n, out) = self.st.retry_jobs(&ids);
        if n != expected {
            bad!(self, "retry of {ids:?} retried {n}, not {expected}");
        }
        self.send(out);
    }

    /// An error for something gone must say why, never "not known".
    fn told_gone(&self, what: &str, id: &str, msg: &str) {
        let why = ["was evicted", "has expired", "was purged"];
        if msg.contains("not known") || !why.iter().any(|w| msg.contains(w)) {
            bad!(self, "asking for the {what} {id}, which left, said: {msg}");
        }
    }

    // ---- commits and restarts (redb) ----

    fn take(&mut self) {
        self.finish_inflight();
        if let Some((n, c)) = self.st.take_changes() {
            self.inflight = Some((n, c, self.model.clone()));
        }
    }

    fn finish_inflight(&mut self) {
        let Some((n, c, snapshot)) = self.inflight.take() else {
            return;
        };
        let store = self.store().unwrap().clone();
        store.write(c).expect("the commit is written");
        self.st.committed(n, store.closed_counts().unwrap());
        self.committed = n;
        for j in &snapshot.jobs {
            if let (JobState::Succeeded, Some(out)) = (j.state, j.output) {
                match self.final_results.insert(j.id, out) {
                    Some(was) if was != out => bad!(
                        self,
                        "job {} committed succeeded with {out}, after {was}",
                        j.id
                    ),
                    _ => {}
                }
            }
        }
        self.durable = snapshot;
        self.deliver();
    }

    fn commit(&mut self) {
        self.take();
        self.finish_inflight();
    }

    fn restart(&mut self) {
        let written = self.inflight.is_some() && self.rng.pct(50);
        if written {
            self.finish_inflight();
        }
        self.inflight = None;
        self.note(format!(
            "restart (the commit being written {})",
            if written { "lands" } else { "is lost" }
        ));
        for wi in (0..self.workers.len()).rev() {
            self.forget_worker(wi);
        }
        let (backing, store) = self.redb.take().unwrap();
        let placeholder = make_state(None, 1, None, &self.offset);
        drop(std::mem::replace(&mut self.st, placeholder));
        drop(store);
        let store = backing.open();
        self.st = make_state(Some(&store), self.keep_finished, self.budget, &self.offset);
        self.redb = Some((backing, store));
        self.committed = 0;
        self.dropped = 0;
        let mut model = self.durable.clone();
        for j in &mut model.jobs {
            if j.state == JobState::Running {
                j.state = JobState::Queued;
                j.session = None;
                j.uncounted += 1;
            }
        }
        self.model = model;
        self.full = true;
    }

    /// The timers' purges: closed batches past retention or over the byte
    /// budget from the store, finished batches in memory past retention.
    fn purge(&mut self) {
        let jump = if self.rng.pct(50) {
            RETENTION_MS + 1
        } else {
            RETENTION_MS / 2
        };
        self.note(format!("purge after {jump} ms"));
        self.offset.fetch_add(jump, SeqCst);
        if let Some(store) = self.store().cloned() {
            // Purged records must be the committed ones: the store is
            // asked only once what finished is written, as the timers do
            // (a purge waits for the commit before it).
            self.commit();
            let cutoff = self.st.now_ms() - RETENTION_MS;
            let expired = store.closed_before(cutoff, 10_000).unwrap();
            self.st.purge_closed(&expired, false);
            if let Some(budget) = self.budget {
                let held = store.closed_bytes().unwrap();
                if held > budget {
                    let over = store.oldest_closed(held - budget, 10_000).unwrap();
                    self.st.purge_closed(&over, true);
                }
            }
            self.st.purge_expired();
            self.commit();
        } else {
            self.st.purge_expired();
        }
        self.full = true;
    }

    fn evict(&mut self) {
        let n = self.st.evict_over_bound();
        self.note(format!("evict ({n} jobs)"));
    }

    // ---- the invariants ----

    fn compare(&self, m: &MJob, j: &Job) {
        let got = (
            j.state,
            j.attempts,
            j.counted,
            j.allowance,
            output_nonce(j),
            j.session,
        );
        let want = (
            m.state,
            m.attempts,
            m.counted,
            m.allowance,
            m.output,
            m.session,
        );
        if got != want {
            bad!(
                self,
                "job {} is (state, attempts, counted, allowance, output, session) {got:?}, the model says {want:?}; errors {:?}",
                m.id,
                j.x().attempt_errors
            );
        }
    }

    fn compare_stored(&self, m: &MJob, r: &pb::JobRecord) {
        let out = match r.output.as_ref().and_then(|o| o.value.as_ref()) {
            Some(pb::job_output::Value::SleptMs(n)) => Some(*n),
            _ => None,
        };
        let got = (
            r.state,
            r.attempts,
            r.counted.unwrap_or(r.attempts),
            r.allowance.unwrap_or(r.max_attempts),
            out,
        );
        let want = (m.state as i32, m.attempts, m.counted, m.allowance, m.output);
        if got != want {
            bad!(
                self,
                "stored job {} is (state, attempts, counted, allowance, output) {got:?}, the model says {want:?}",
                m.id
            );
        }
    }

    fn check(&mut self) {
        let n = self.model.jobs.len() as u64;
        let sampled: Vec<usize> = (0..3).map(|_| self.rng.below(n) as usize).collect();
        let st = &self.st;
        // Sessions: each holds exactly the jobs running on it, none held
        // twice, its credit as granted less what it was sent.
        if st.sessions.len() != self.workers.len() {
            bad!(
                self,
                "{} sessions, {} workers connected",
                st.sessions.len(),
                self.workers.len()
            );
        }
        let mut holder: HashMap<JobId, SessionId> = HashMap::new();
        let mut open_credit = [false; 2];
        for w in &self.workers {
            let Some(s) = st.sessions.get(&w.sid) else {
                bad!(self, "session {} is gone", w.sid.get());
            };
            let credit = [
                s.credit[drover_common::JobClass::Cpu.index()],
                s.credit[drover_common::JobClass::Io.index()],
            ];
            if credit != w.credit || s.draining != w.draining {
                bad!(
                    self,
                    "session {} has credit {credit:?} (draining {}), the model {:?} ({})",
                    w.sid.get(),
                    s.draining,
                    w.credit,
                    w.draining
                );
            }
            for (open, credit) in open_credit.iter_mut().zip(w.credit) {
                *open |= !w.draining && credit > 0;
            }
            for id in &s.held {
                if let Some(other) = holder.insert(*id, w.sid) {
                    bad!(
                        self,
                        "job {id} held by sessions {} and {}",
                        other.get(),
                        w.sid.get()
                    );
                }
            }
        }
        // Jobs.
        let mut in_memory = 0;
        let mut running = 0;
        let mut ready = [0u64; 2];
        let mut vanished = Vec::new();
        for (i, m) in self.model.jobs.iter().enumerate() {
            if m.gone.is_some() {
                continue;
            }
            if m.counted > m.allowance || m.attempts > m.counted + m.uncounted + 1 {
                bad!(self, "model job {} broke its own bounds: {m:?}", m.id);
            }
            if m.state == JobState::Queued {
                ready[m.io as usize] += 1;
            }
            match st.job(&m.id) {
                Some(j) => {
                    in_memory += 1;
                    self.compare(m, j);
                    let held_by = holder.get(&m.id).copied();
                    if m.state == JobState::Running {
                        running += 1;
                        if held_by != m.session {
                            bad!(
                                self,
                                "running job {} on session {:?} is held by {held_by:?}",
                                m.id,
                                m.session
                            );
                        }
                    }
                }
                None if !m.finished() => {
                    bad!(self, "{:?} job {} is not in memory", m.state, m.id)
                }
                None => match self.store() {
                    Some(store) if self.full || sampled.contains(&i) => {
                        match store.read_job(&m.id).unwrap() {
                            Some(r) => self.compare_stored(m, &r),
                            None => vanished.push(i),
                        }
                    }
                    Some(_) => {}
                    None => vanished.push(i),
                },
            }
        }
        if holder.len() != running {
            bad!(
                self,
                "{} jobs held by sessions, {running} running",
                holder.len()
            );
        }
        if st.jobs.len() != in_memory {
            let unknown: Vec<JobId> = st
                .jobs
                .values()
                .map(|j| j.id)
                .filter(|id| !self.model.at.contains_key(id))
                .take(5)
                .collect();
            bad!(
                self,
                "{} jobs in memory, the model has {in_memory} there; unknown: {unknown:?}",
                st.jobs.len()
            );
        }
        for c in 0..2 {
            if open_credit[c] && ready[c] > 0 {
                bad!(
                    self,
                    "{} queued jobs of class {c} wait while a session has credit for them",
                    ready[c]
                );
            }
        }
        for (id, out) in &self.final_results {
            if let Some(&i) = self.model.at.get(id) {
                let m = &self.model.jobs[i];
                if m.gone.is_none() && (m.state != JobState::Succeeded || m.output != Some(*out)) {
                    bad!(
                        self,
                        "job {id} committed succeeded with {out}, now {:?} {:?}",
                        m.state,
                        m.output
                    );
                }
            } else {
                bad!(self, "job {id} committed succeeded, now unknown");
            }
        }
        self.left(vanished);
        self.full = false;
        self.check_stats();
    }

    /// `Stats` counts every job the model holds but the purged ones.
    fn check_stats(&self) {
        let mut counts = [0u64; 6];
        for m in &self.model.jobs {
            if m.gone != Some(Gone::Purged) {
                counts[m.state as usize] += 1;
            }
        }
        let st = &self.st;
        let s = st.stats();
        let got = [s.queued, s.running, s.succeeded, s.failed, s.cancelled];
        let want = [
            counts[JobState::Queued as usize],
            counts[JobState::Running as usize],
            counts[JobState::Succeeded as usize],
            counts[JobState::Failed as usize],
            counts[JobState::Cancelled as usize],
        ];
        if got != want {
            let mut mem = [0u64; 6];
            let mut out = [0u64; 6];
            for m in &self.model.jobs {
                if m.gone.is_none() {
                    if st.job(&m.id).is_some() {
                        mem[m.state as usize] += 1;
                    } else {
                        out[m.state as usize] += 1;
                    }
                }
            }
            if let Some(store) = self.store() {
                let (closed, _) = store.closed_batches_newest(0, 1000).unwrap();
                for (b, info) in closed {
                    let stored = store.read_batch(&b).unwrap().unwrap();
                    let own: Vec<String> = self
                        .model
                        .jobs
                        .iter()
                        .filter(|m| m.batch == b)
                        .map(|m| {
                            format!(
                                "{} {:?} gone {:?} mem {}",
                                m.id,
                                m.state,
                                m.gone,
                                st.job(&m.id).is_some()
                            )
                        })
                        .collect();
                    let listed: Vec<String> = stored
                        .jobs
                        .iter()
                        .map(|id| {
                            self.model
                                .at
                                .get(id)
                                .map(|&i| format!("{:?}", self.model.jobs[i]))
                                .unwrap_or_default()
                        })
                        .collect();
                    eprintln!(
                        "closed {b} {info:?} in memory {} lists {listed:#?} own {own:#?}",
                        st.batches.contains_key(&b)
                    );
                }
            }
            let sm: Vec<u64> = [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
                .iter()
                .map(|s| st.count_in_memory(*s))
                .collect();
            bad!(
                self,
                "Stats says (queued, running, succeeded, failed, cancelled) {got:?}, the model {want:?}; model in memory {mem:?} out {out:?}; state in memory {sm:?}, store closed {:?}",
                self.store().map(|s| s.closed_counts().unwrap())
            );
        }
        if s.late_results_dropped != self.dropped {
            bad!(
                self,
                "{} late results dropped, the model {}",
                s.late_results_dropped,
                self.dropped
            );
        }
    }

    /// Jobs that left: only finished ones, by eviction or a purge, whole
    /// batches at a time, and asking for them says so.
    fn left(&mut self, vanished: Vec<usize>) {
        if vanished.is_empty() {
            return;
        }
        let how = match self.op {
            "evict" => Gone::Evicted,
            "purge" => Gone::Purged,
            _ => bad!(
                self,
                "jobs {:?} left, not by an eviction or a purge",
                vanished
                    .iter()
                    .map(|&i| self.model.jobs[i].id)
                    .collect::<Vec<_>>()
            ),
        };
        let mut batches = HashSet::new();
        for &i in &vanished {
            let m = &self.model.jobs[i];
            match self.st.resolve(&[m.id.to_string()], "") {
                Ok(ids) => bad!(self, "job {} left, yet resolves to {ids:?}", m.id),
                Err(e) => self.told_gone("job", &m.id.to_string(), &e.to_string()),
            }
            if batches.insert(m.batch) {
                match self.st.resolve(&[], &m.batch.to_string()) {
                    Ok(ids) => bad!(
                        self,
                        "job {} left, yet its batch {} resolves to {ids:?}",
                        m.id,
                        m.batch
                    ),
                    Err(e) => self.told_gone("batch", &m.batch.to_string(), &e.to_string()),
                }
            }
        }
        for &i in &vanished {
            self.model.jobs[i].gone = Some(how);
            let id = self.model.jobs[i].id;
            // A purge checked here was committed with the step.
            if let Some(j) = self.durable.job(&id) {
                j.gone = Some(how);
            }
        }
        for m in &self.model.jobs {
            if batches.contains(&m.batch) && m.gone.is_none() {
                bad!(
                    self,
                    "job {} is kept while its batch {} left",
                    m.id,
                    m.batch
                );
            }
        }
    }

    fn run(&mut self, steps: usize) {
        let redb = self.redb.is_some();
        for _ in 0..2 {
            self.connect();
        }
        for step in 0..steps {
            self.step = step;
            let roll = self.rng.below(100);
            self.op = match roll {
                0..=13 => "submit",
                14..=16 => "connect",
                17..=31 => "credit",
                32..=53 => "report",
                54..=58 => "stale",
                59..=61 => "lose",
                62..=63 => "drain",
                64..=69 => "cancel",
                70..=74 => "retry",
                75..=76 => "purge",
                _ if !redb => "evict",
                77..=93 => "commit",
                94..=97 => "take",
                _ => "restart",
            };
            match self.op {
                "submit" => self.submit(),
                "connect" if self.workers.len() < 5 => self.connect(),
                "connect" => self.lose(),
                "credit" => self.credit(),
                "report" => self.report(),
                "stale" => self.stale(),
                "lose" => self.lose(),
                "drain" => self.drain(),
                "cancel" => self.cancel(),
                "retry" => self.retry(),
                "purge" => self.purge(),
                "evict" => self.evict(),
                "commit" => self.commit(),
                "take" => self.take(),
                "restart" => self.restart(),
                _ => unreachable!(),
            }
            if self.workers.is_empty() {
                self.connect();
            }
            if self.old.len() > 64 {
                self.old.drain(..32);
            }
            self.check();
        }
        // At the end: everything out of memory is read back.
        self.op = "end";
        if redb {
            self.commit();
        }
        self.full = true;
        self.check();
    }
}

fn run_seeds(seeds: std::ops::Range<u64>, steps: usize, kind: Kind<'_>) {
    let started = std::time::Instant::now();
    let mut jobs = 0;
    let mut name = "memory";
    for seed in seeds.clone() {
        let mut h = Harness::new(seed, kind);
        name = h.redb.as_ref().map_or("memory", |r| r.0.name());
        h.run(steps);
        jobs += h.model.jobs.len();
    }
    eprintln!(
        "{} seeds {seeds:?} x {steps} steps ({jobs} jobs) on the {name} store in {:.2} s",
        seeds.end - seeds.start,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn random_histories_on_the_memory_store_match_the_model() {
    run_seeds(1..11, 2_000, Kind::Memory);
}

#[test]
fn random_histories_on_redb_with_restarts_match_the_model() {
    run_seeds(1..7, 2_000, Kind::Redb);
}

/// The same histories on the PostgreSQL store (a server started for the
/// test, a database per history): its commits, reads and recovery must
/// keep every promise redb's do.
#[test]
fn random_histories_on_postgres_with_restarts_match_the_model() {
    let server = drover_tests::pg::Postgres::start();
    run_seeds(1..4, 2_000, Kind::Pg(&server));
}
