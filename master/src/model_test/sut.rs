//! The adapter: every call into the state machine and every read of its
//! insides. The rest of the test sees ids, states and numbers, so a change
//! of the state's API is ported here alone.
//!
//! It calls `State::{new, set_clock, recover_item, set_created_at,
//! finish_recovery, take_changes, ticket, submit, dispatch, add_session,
//! touch, add_credit, record_results, set_draining, return_jobs,
//! end_session, expired_sessions, cancel, retry_jobs, failed_ids,
//! promote_due, purge_expired, job, count}`, takes the messages of each
//! `Outgoing` as the service would deliver them, and reads
//! `State::{jobs, batches, sessions, counters}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_common::Limits;
use drover_common::ids::{BatchId, JobId, SessionId};
use drover_common::pb::{self, JobKind, JobState};
use prost::Message;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::state::{Job, Outbox, Outgoing, RecoveryReport, RetryPolicy, Settings, State};
use crate::store::{Changes, Loaded, decode_batch};

/// The settings that vary per case.
pub(super) struct Config {
    pub(super) retry_base_ms: u64,
    pub(super) retry_max_ms: u64,
    pub(super) retention_ms: u64,
}

/// A job to submit.
pub(super) struct SpecIn {
    pub(super) io: bool,
    pub(super) max_attempts: u32,
    pub(super) key: Option<String>,
    pub(super) priority: i32,
}

/// What a worker reports.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Success; the number is the output, unique per assignment.
    Output(u64),
    Failure {
        retryable: bool,
    },
    /// A result with no outcome.
    Empty,
}

/// A message for a worker.
pub(super) enum Msg {
    Assign(Vec<(JobId, u32)>),
    Ack(u64),
    Cancel(Vec<JobId>),
    Other,
}

/// What a change produced: the commit it waits for, and the messages for
/// each session, in order.
pub(super) struct Reply {
    pub(super) ticket: Option<u64>,
    pub(super) mail: Vec<(u64, Msg)>,
}

/// A job as the checks see it.
#[derive(Debug, Clone)]
pub(super) struct JobView {
    pub(super) id: JobId,
    pub(super) batch: BatchId,
    pub(super) state: JobState,
    /// Attempts started.
    pub(super) attempts: u32,
    /// Attempts that count toward the allowance.
    pub(super) counted: u32,
    /// Counted attempts at which the job is FAILED.
    pub(super) allowance: u32,
    pub(super) max_attempts: u32,
    pub(super) session: Option<u64>,
    pub(super) output: Option<u64>,
    pub(super) error: Option<String>,
    pub(super) attempt_errors: Vec<String>,
    /// Each `attempt_errors` entry's attempt (0 if unreadable) and whether
    /// it counted (no "(not counted)").
    pub(super) errors: Vec<(u32, bool)>,
    /// In the IO class (else CPU).
    pub(super) io: bool,
    /// Nonzero while it waits out a retry backoff.
    pub(super) not_before_ms: u64,
}

/// A batch as the checks see it.
pub(super) struct BatchView {
    pub(super) id: BatchId,
    pub(super) jobs: Vec<JobId>,
    /// Indexes of its finished jobs, in the order they finished.
    pub(super) finished: Vec<u32>,
}

/// A session as the checks see it.
pub(super) struct SessionView {
    pub(super) id: u64,
    pub(super) held: Vec<JobId>,
    /// Credit per class: CPU, IO.
    pub(super) credit: [u64; 2],
    pub(super) draining: bool,
}

/// The store, as `RedbStore` keeps it: tables keyed the same way, so
/// recovery reads them in the same order.
#[derive(Default)]
pub(super) struct Store {
    batches: BTreeMap<u128, Vec<u8>>,
    jobs: BTreeMap<u128, Vec<u8>>,
    log: BTreeMap<u64, Vec<(JobId, u32)>>,
    /// Transactions written.
    pub(super) commits: u64,
}

impl Store {
    /// What `RedbStore::write` does, in its order.
    fn write(&mut self, c: Changes) {
        for id in c.deleted_batches {
            self.batches.remove(&id.uuid().as_u128());
        }
        for id in c.deleted_jobs {
            self.jobs.remove(&id.uuid().as_u128());
        }
        for w in c.jobs {
            let recorded = <pb::JobRecord as prost::Message>::decode(w.record.as_slice())
                .expect("a job record decodes")
                .state;
            assert_eq!(
                recorded, w.state as i32,
                "job {} written as {:?}, its record says otherwise",
                w.id, w.state
            );
            self.jobs.insert(w.id.uuid().as_u128(), w.record);
        }
        for (id, bytes) in c.batches {
            self.batches.insert(id.uuid().as_u128(), bytes);
        }
        if c.truncate_log {
            self.log.retain(|k, _| *k >= c.number);
        }
        if !c.assignments.is_empty() {
            self.log.insert(c.number, c.assignments);
        }
        self.commits += 1;
    }
}

/// The state under test, with the outboxes of its sessions.
pub(super) struct Sut {
    st: State,
    outboxes: Vec<(u64, Outbox)>,
}

fn sid(n: u64) -> SessionId {
    SessionId::new(n).expect("session ids are nonzero")
}

/// Reads an `attempt_errors` entry: "attempt N: reason", with
/// " (not counted)" at the end when it did not count.
fn parse_error(e: &str) -> (u32, bool) {
    let attempt = e
        .strip_prefix("attempt ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (attempt, !e.ends_with(" (not counted)"))
}

fn view(j: &Job) -> JobView {
    let x = j.x();
    JobView {
        id: j.id,
        batch: j.batch,
        state: j.state,
        attempts: j.attempts,
        counted: j.counted,
        allowance: j.allowance,
        max_attempts: j.max_attempts,
        session: j.session.map(|s| s.get()),
        output: x.output.as_ref().map(|o| match o.value {
            Some(pb::job_output::Value::SleptMs(n)) => n,
            _ => u64::MAX,
        }),
        error: x.error.clone(),
        attempt_errors: x.attempt_errors.clone(),
        errors: x.attempt_errors.iter().map(|e| parse_error(e)).collect(),
        io: j.kind == JobKind::Sleep,
        not_before_ms: j.not_before_ms,
    }
}

fn outcome(out: &Outcome) -> Option<pb::job_result::Outcome> {
    match *out {
        Outcome::Output(n) => Some(pb::job_result::Outcome::Output(pb::JobOutput {
            value: Some(pb::job_output::Value::SleptMs(n)),
        })),
        Outcome::Failure { retryable } => Some(pb::job_result::Outcome::Failure(pb::JobFailure {
            reason: if retryable {
                "child crashed"
            } else {
                "bad input"
            }
            .into(),
            retryable,
        })),
        Outcome::Empty => None,
    }
}

impl Sut {
    /// A fresh state with a durable store and the fake clock.
    pub(super) fn new(cfg: &Config, clock: &Arc<AtomicU64>) -> Sut {
        let mut st = State::new(Settings {
            limits: Limits::default(),
            default_max_attempts: 3,
            retry: RetryPolicy {
                base_ms: cfg.retry_base_ms,
                max_ms: cfg.retry_max_ms,
            },
            retention_ms: cfg.retention_ms,
            durable: true,
        });
        let c = clock.clone();
        st.set_clock(Box::new(move || c.load(Ordering::SeqCst)));
        Sut {
            st,
            outboxes: Vec::new(),
        }
    }

    /// A state rebuilt from the store as `Master::open` does it.
    pub(super) fn recover(
        cfg: &Config,
        clock: &Arc<AtomicU64>,
        store: &Store,
    ) -> anyhow::Result<Sut> {
        let mut sut = Sut::new(cfg, clock);
        let mut report = RecoveryReport::default();
        for (id, bytes) in &store.batches {
            let (ids, created, request_id) = decode_batch(bytes).map_err(anyhow::Error::msg)?;
            let id = BatchId::from_uuid(Uuid::from_u128(*id));
            sut.st
                .recover_item(Loaded::Batch(id, ids, created, request_id), &mut report)?;
        }
        for bytes in store.jobs.values() {
            let record = pb::JobRecord::decode(bytes.as_slice())?;
            sut.st
                .recover_item(Loaded::Job(Box::new(record)), &mut report)?;
        }
        for list in store.log.values() {
            sut.st
                .recover_item(Loaded::Assigned(list.clone()), &mut report)?;
        }
        sut.st.set_created_at(1);
        sut.st.finish_recovery(&mut report);
        Ok(sut)
    }

    /// The messages of an `Outgoing`, each with the session it is for, as
    /// the service delivers them once the ticket's commit is written.
    fn reply(&self, out: Outgoing) -> Reply {
        let mail = out
            .messages
            .into_iter()
            .map(|(outbox, m)| {
                let (sid, _) = self
                    .outboxes
                    .iter()
                    .find(|(_, o)| o.same_channel(&outbox))
                    .expect("a message for a session the test opened");
                let msg = match m.msg {
                    Some(pb::master_message::Msg::Assign(a)) => Msg::Assign(
                        a.jobs
                            .iter()
                            .map(|j| {
                                let id = JobId::parse("job_id", &j.job_id)
                                    .expect("the state sends job ids");
                                (id, j.attempt)
                            })
                            .collect(),
                    ),
                    Some(pb::master_message::Msg::Ack(a)) => Msg::Ack(a.seq),
                    Some(pb::master_message::Msg::Cancel(c)) => Msg::Cancel(
                        c.job_ids
                            .iter()
                            .map(|id| JobId::parse("job_id", id).expect("the state sends job ids"))
                            .collect(),
                    ),
                    _ => Msg::Other,
                };
                (*sid, msg)
            })
            .collect();
        Reply {
            ticket: out.ticket,
            mail,
        }
    }

    /// The committer's step: returns the commit's number if it took one.
    pub(super) fn commit(&mut self, store: &mut Store) -> Option<u64> {
        let (number, changes) = self.st.take_changes()?;
        // The committer publishes an empty commit without writing it.
        if !changes.is_empty() {
            store.write(changes);
        }
        Some(number)
    }

    /// The commit a read must wait for: it holds everything visible now.
    pub(super) fn ticket(&self) -> Option<u64> {
        self.st.ticket()
    }

    /// Submits and dispatches, as the Submit handler does.
    pub(super) fn submit(
        &mut self,
        specs: &[SpecIn],
    ) -> Result<(BatchId, Vec<JobId>, Reply), String> {
        let specs = specs
            .iter()
            .map(|s| pb::JobSpec {
                kind: if s.io { JobKind::Sleep } else { JobKind::Fib } as i32,
                arg: if s.io { "1" } else { "10" }.into(),
                priority: s.priority,
                max_attempts: s.max_attempts,
                idempotency_key: s.key.clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        let (batch, ids) = self.st.submit(specs).map_err(|e| e.to_string())?;
        let out = self.st.dispatch();
        Ok((batch, ids, self.reply(out)))
    }

    pub(super) fn connect(&mut self, name: &str) -> u64 {
        // Nothing reads the channel: the messages are taken from each
        // `Outgoing`, as the service takes them.
        let (tx, _) = mpsc::unbounded_channel();
        let hello = pb::Hello {
            name: name.into(),
            cpu_slots: 1,
            io_slots: 1,
            ..Default::default()
        };
        let id = self.st.add_session(&hello, tx.clone()).get();
        self.outboxes.push((id, tx));
        id
    }

    /// A heartbeat.
    pub(super) fn touch(&mut self, s: u64) {
        self.st.touch(sid(s));
    }

    pub(super) fn expired_sessions(&self, lease_ms: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .st
            .expired_sessions(Duration::from_millis(lease_ms))
            .iter()
            .map(SessionId::get)
            .collect();
        out.sort_unstable();
        out
    }

    pub(super) fn credit(&mut self, s: u64, cpu: u32, io: u32) -> Reply {
        let out = self.st.add_credit(sid(s), cpu, io);
        self.reply(out)
    }

    pub(super) fn results(&mut self, s: u64, seq: u64, results: &[(JobId, u32, Outcome)]) -> Reply {
        let results = results
            .iter()
            .map(|(id, attempt, out)| pb::JobResult {
                job_id: id.to_string(),
                attempt: *attempt,
                outcome: outcome(out),
                run_us: 1,
                slot: None,
            })
            .collect();
        let out = self.st.record_results(sid(s), seq, results);
        self.reply(out)
    }

    pub(super) fn drain(&mut self, s: u64) {
        self.st.set_draining(sid(s));
    }

    pub(super) fn return_jobs(&mut self, s: u64, ids: &[JobId]) -> Reply {
        let out = self.st.return_jobs(sid(s), ids);
        self.reply(out)
    }

    pub(super) fn end_session(&mut self, s: u64, reason: &str) -> Reply {
        let (_, out) = self.st.end_session(sid(s), reason);
        self.reply(out)
    }

    /// Cancels; returns how many were cancelled.
    pub(super) fn cancel(&mut self, ids: &[JobId]) -> Result<(u32, Reply), String> {
        let (resp, out) = self.st.cancel(ids).map_err(|e| e.to_string())?;
        Ok((resp.cancelled, self.reply(out)))
    }

    pub(super) fn retry(&mut self, ids: &[JobId]) -> (u32, Reply) {
        let (n, out) = self.st.retry_jobs(ids);
        (n, self.reply(out))
    }

    pub(super) fn failed_ids(&self) -> Vec<JobId> {
        self.st.failed_ids()
    }

    pub(super) fn promote_due(&mut self) -> Reply {
        let out = self.st.promote_due();
        self.reply(out)
    }

    pub(super) fn purge(&mut self) -> usize {
        self.st.purge_expired()
    }

    /// Results dropped as late, stale or duplicate, since the state began.
    pub(super) fn dropped(&self) -> u64 {
        self.st.counters.late_results_dropped
    }

    pub(super) fn job(&self, id: &JobId) -> Option<JobView> {
        self.st.job(id).map(view)
    }

    pub(super) fn jobs(&self) -> Vec<JobView> {
        self.st.jobs.values().map(view).collect()
    }

    pub(super) fn batches(&self) -> Vec<BatchView> {
        self.st
            .batches
            .iter()
            .map(|(id, b)| BatchView {
                id: *id,
                jobs: b.jobs.clone(),
                finished: b.finished.clone(),
            })
            .collect()
    }

    pub(super) fn sessions(&self) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = self
            .st
            .sessions
            .iter()
            .map(|(id, s)| SessionView {
                id: id.get(),
                held: s.held.iter().copied().collect(),
                // The model runs no Python jobs: CPU and IO credit only.
                credit: [s.credit[0], s.credit[1]],
                draining: s.draining,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    pub(super) fn count(&self, state: JobState) -> u64 {
        self.st.count(state)
    }
}
