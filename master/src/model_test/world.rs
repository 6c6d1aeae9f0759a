//! The simulation: the state under test, its store, the model, and the
//! clients' and workers' side; each operation applied to the state and,
//! by the same rules, to the model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drover_common::ids::{BatchId, JobId};
use drover_common::pb::JobState;

use super::model::{Final, MJob, Model};
use super::ops::{Case, OVERLONG_KEY, Op, Out, Spec, WORKERS, key_name};
use super::sut::{self, Outcome, Sut};
use super::wire::{Mailbox, Res, Run, Tell, Told, Worker};
use super::{Map, Switches, Violation, bad};

/// The longest retry backoff; the clock only ever jumps further, so the
/// backoff's jitter never decides whether a retry is due.
pub(super) const RETRY_MAX_MS: u64 = 8_000;
/// How long finished jobs are kept.
pub(super) const RETENTION_MS: u64 = 60_000;
/// How long a session may go unheard before its lease expires.
const LEASE_MS: u64 = 10_000;
/// The assignment log's compaction period, in commits, which `burn`
/// reaches.
const BURN_COMMITS: u64 = 256;

/// Notes what a step did, for the printed history; formats nothing unless
/// the history is being printed, since most runs are never shown.
macro_rules! say {
    ($world:expr, $($arg:tt)*) => {
        if $world.verbose {
            let s = format!($($arg)*);
            $world.say(&s);
        }
    };
}
pub(super) use say;

/// Facts about the step just run, for the checks.
#[derive(Debug, Default)]
pub(super) struct Ctx {
    /// The retention cutoff, when the step purged.
    pub(super) purge: Option<u64>,
    /// The step rebuilt the state from the store.
    pub(super) recovered: bool,
    /// The step ran `promote_due`.
    pub(super) promoted: bool,
}

/// The simulation: the state under test, its store, the model, and the
/// clients' and workers' side.
pub(super) struct World<'a> {
    pub(super) sw: &'a Switches,
    pub(super) cfg: sut::Config,
    pub(super) clock: Arc<AtomicU64>,
    pub(super) sut: Sut,
    pub(super) store: sut::Store,
    /// The last commit written by this master (numbers restart with it).
    pub(super) committed: u64,
    pub(super) model: Model,
    /// The model as of the last commit: what the store should hold.
    pub(super) durable: Model,
    pub(super) told: Told,
    pub(super) workers: Vec<Worker>,
    pub(super) mailboxes: Vec<Mailbox>,
    /// Replies waiting for their commit.
    pub(super) pending: Vec<(u64, Tell)>,
    /// Jobs and batches by their number in the history.
    pub(super) names: Map<JobId, usize>,
    pub(super) bnames: Map<BatchId, usize>,
    pub(super) next_nonce: u64,
    /// Nonce to (job, attempt) of each assignment.
    pub(super) nonces: Map<u64, (JobId, u32)>,
    /// Whether to note what each step does (only for printed histories).
    pub(super) verbose: bool,
    /// What the current step did, for the printed history.
    note: String,
}

impl<'a> World<'a> {
    pub(super) fn new(case: &Case, sw: &'a Switches, verbose: bool) -> World<'a> {
        let cfg = sut::Config {
            retry_base_ms: case.retry_base_ms,
            retry_max_ms: RETRY_MAX_MS,
            retention_ms: RETENTION_MS,
        };
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let sut = Sut::new(&cfg, &clock);
        World {
            sw,
            cfg,
            clock,
            sut,
            store: sut::Store::default(),
            committed: 0,
            model: Model::default(),
            durable: Model::default(),
            told: Told::default(),
            workers: (0..WORKERS).map(|_| Worker::default()).collect(),
            mailboxes: Vec::new(),
            pending: Vec::new(),
            names: Map::default(),
            bnames: Map::default(),
            next_nonce: 1,
            nonces: Map::default(),
            verbose,
            note: String::new(),
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// A job's name in the history.
    pub(super) fn j(&self, id: &JobId) -> String {
        match self.names.get(id) {
            Some(n) => format!("j{n}"),
            None => format!("job {id}"),
        }
    }

    pub(super) fn say(&mut self, s: &str) {
        if !self.note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(s);
    }

    pub(super) fn take_note(&mut self) -> String {
        std::mem::take(&mut self.note)
    }

    pub(super) fn ticket_note(t: Option<u64>) -> String {
        t.map_or(String::new(), |t| format!(" (ticket {t})"))
    }

    pub(super) fn mjob_mut(&mut self, id: &JobId) -> Option<&mut MJob> {
        let n = self.names.get(id)?;
        self.model.jobs.get_mut(n)
    }

    /// Runs one step and checks every invariant after it.
    pub(super) fn step(&mut self, op: &Op) -> Result<(), Violation> {
        let mut ctx = Ctx::default();
        self.apply(op, &mut ctx)?;
        self.deliver();
        self.check(&ctx)
    }

    fn apply(&mut self, op: &Op, ctx: &mut Ctx) -> Result<(), Violation> {
        let sw = self.sw;
        let skip = |this: &mut Self, why: &str| {
            say!(this, "skipped: {why}");
            Ok(())
        };
        match op {
            Op::Submit(specs) => {
                if !sw.on("submit") {
                    return skip(self, "submit is off");
                }
                self.submit(specs)
            }
            Op::Connect(w) => {
                if !sw.on("connect") {
                    return skip(self, "connect is off");
                }
                self.connect(*w as usize)
            }
            Op::Credit { w, cpu, io } => {
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                if !sw.on("credit") || self.workers[w].draining {
                    return skip(self, "credit is off, or the worker drains");
                }
                let mut amounts = [u64::from(*cpu), u64::from(*io)];
                if !sw.on("shared-credit") {
                    // One session with credit per class at a time keeps
                    // dispatch independent of HashMap order.
                    for s in self.sut.sessions() {
                        for (c, amount) in amounts.iter_mut().enumerate() {
                            if s.id != sid && !s.draining && s.credit[c] > 0 {
                                *amount = 0;
                            }
                        }
                    }
                }
                if amounts == [0, 0] {
                    return skip(self, "another session holds credit");
                }
                let m = self.model.sessions.entry(sid).or_default();
                m.granted[0] += amounts[0];
                m.granted[1] += amounts[1];
                say!(self, "s{sid} grants cpu {} io {}", amounts[0], amounts[1]);
                let reply = self.sut.credit(sid, amounts[0] as u32, amounts[1] as u32);
                self.absorb(reply)?;
                Ok(())
            }
            Op::Result { w, pick, out, two } => {
                if !sw.on("result") {
                    return skip(self, "result is off");
                }
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                let len = self.workers[w].running.len();
                if len == 0 {
                    return skip(self, "the worker holds nothing");
                }
                let first = *pick as usize % len;
                let take = if *two { 2.min(len) } else { 1 };
                let runs: Vec<Run> = (0..take)
                    .map(|k| self.workers[w].running[(first + k) % len].clone())
                    .collect();
                let results: Vec<Res> = runs
                    .iter()
                    .map(|run| Res {
                        job: run.job,
                        attempt: run.attempt,
                        out: match out {
                            Out::Ok => Outcome::Output(run.nonce),
                            Out::Retryable => Outcome::Failure { retryable: true },
                            Out::Fatal => Outcome::Failure { retryable: false },
                            Out::Empty => Outcome::Empty,
                        },
                    })
                    .collect();
                let worker = &mut self.workers[w];
                worker
                    .running
                    .retain(|r| !runs.iter().any(|x| x.nonce == r.nonce));
                for (run, res) in runs.iter().zip(&results) {
                    if let Some(p) = worker.past.iter_mut().find(|p| p.nonce == run.nonce) {
                        p.out = Some(res.out.clone());
                    }
                }
                worker.next_seq += 1;
                let seq = worker.next_seq;
                worker.unacked.push((seq, results.clone()));
                self.send_results(sid, seq, results)
            }
            Op::Resend(w) => {
                if !sw.on("resend") {
                    return skip(self, "resend is off");
                }
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                if self.workers[w].unacked.is_empty() {
                    return skip(self, "nothing unacknowledged");
                }
                self.resend(w, sid)
            }
            Op::Stale { w, pick } => {
                if !sw.on("stale") {
                    return skip(self, "stale is off");
                }
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                let reported: Vec<Res> = self.workers[w]
                    .past
                    .iter()
                    .filter_map(|r| {
                        Some(Res {
                            job: r.job,
                            attempt: r.attempt,
                            out: r.out.clone()?,
                        })
                    })
                    .collect();
                if reported.is_empty() {
                    return skip(self, "nothing reported before");
                }
                let res = reported[*pick as usize % reported.len()].clone();
                // A stray copy, outside the numbered stream: nothing acks it.
                self.send_results(sid, 0, vec![res])
            }
            Op::Close(w) | Op::Restart(w) => {
                let name = if matches!(op, Op::Close(_)) {
                    "close"
                } else {
                    "restart"
                };
                if !sw.on(name) {
                    return skip(self, &format!("{name} is off"));
                }
                let w = *w as usize;
                if let Some(sid) = self.workers[w].session.take() {
                    self.end_session(sid, "stream closed", true)?;
                } else if name == "close" {
                    return skip(self, "no session");
                }
                if name == "restart" {
                    // A new process: nothing meant for the old one reaches it.
                    self.mailboxes.retain(|m| m.worker != w);
                    self.workers[w] = Worker::default();
                    say!(self, "w{w} restarts empty");
                }
                Ok(())
            }
            Op::Expire(w) => {
                if !sw.on("expire") {
                    return skip(self, "expire is off");
                }
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                // The others heartbeat; this one is not heard from.
                self.clock.fetch_add(LEASE_MS + 1, Ordering::SeqCst);
                let others: Vec<u64> = self.workers.iter().filter_map(|w| w.session).collect();
                for s in others.into_iter().filter(|s| *s != sid) {
                    self.sut.touch(s);
                }
                let expired = self.sut.expired_sessions(LEASE_MS);
                say!(self, "clock +{} ms, s{sid} not heard from", LEASE_MS + 1);
                if expired != [sid] && self.sw.on("lease") {
                    return bad(
                        "lease",
                        format!("only s{sid} went unheard, the expired sessions are {expired:?}"),
                    );
                }
                self.workers[w].session = None;
                // A lease expiry leaves the stream open until its buffered
                // messages are out.
                self.end_session(sid, "lease expired", false)
            }
            Op::Drain(w) => {
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                if !sw.on("drain") || self.workers[w].draining {
                    return skip(self, "drain is off, or draining already");
                }
                self.workers[w].draining = true;
                self.sut.drain(sid);
                say!(self, "s{sid} drains");
                Ok(())
            }
            Op::Return { w, n } => {
                let w = *w as usize;
                let Some(sid) = self.workers[w].session else {
                    return skip(self, "no session");
                };
                if !sw.on("return") || !self.workers[w].draining {
                    return skip(self, "return is off, or the worker is not draining");
                }
                let k = (*n as usize).min(self.workers[w].running.len());
                if k == 0 {
                    return skip(self, "the worker holds nothing");
                }
                let runs: Vec<Run> = self.workers[w].running.drain(..k).collect();
                let ids: Vec<JobId> = runs.iter().map(|r| r.job).collect();
                for id in &ids {
                    // A return names the job, not the attempt: it ends the
                    // attempt this session holds, if any, uncounted.
                    if let Some(m) = self.mjob_mut(id)
                        && m.state == JobState::Running
                        && m.holder == Some(sid)
                    {
                        m.end_uncounted();
                    }
                }
                let list: Vec<String> = runs
                    .iter()
                    .map(|r| format!("{}@{}", self.j(&r.job), r.attempt))
                    .collect();
                say!(self, "s{sid} returns {}", list.join(" "));
                let reply = self.sut.return_jobs(sid, &ids);
                self.absorb(reply)?;
                Ok(())
            }
            Op::Cancel(pick) => {
                if !sw.on("cancel") {
                    return skip(self, "cancel is off");
                }
                let ids: Vec<JobId> = self.model.jobs.values().map(|m| m.id).collect();
                if ids.is_empty() {
                    return skip(self, "no jobs");
                }
                let id = ids[*pick as usize % ids.len()];
                self.cancel(id)
            }
            Op::Retry(pick) => {
                if !sw.on("retry") {
                    return skip(self, "retry is off");
                }
                self.retry(*pick)
            }
            Op::Tick | Op::Advance => {
                let advance = matches!(op, Op::Advance);
                if advance && !sw.on("advance") || !advance && !sw.on("tick") {
                    return skip(self, "this timer is off");
                }
                if advance {
                    self.clock.fetch_add(RETRY_MAX_MS + 1, Ordering::SeqCst);
                    say!(self, "clock +{} ms", RETRY_MAX_MS + 1);
                }
                say!(self, "promote_due");
                let reply = self.sut.promote_due();
                ctx.promoted = true;
                self.absorb(reply)?;
                Ok(())
            }
            Op::Purge { full } => {
                if !sw.on("purge") {
                    return skip(self, "purge is off");
                }
                let by = if *full {
                    RETENTION_MS + 1
                } else {
                    RETENTION_MS / 2
                };
                self.clock.fetch_add(by, Ordering::SeqCst);
                let n = self.sut.purge();
                ctx.purge = Some(self.now().saturating_sub(RETENTION_MS));
                say!(self, "clock +{by} ms, purged {n} jobs");
                Ok(())
            }
            Op::Read(pick) | Op::DirtyRead(pick) => {
                let dirty = matches!(op, Op::DirtyRead(_));
                if dirty && !sw.on("dirty-read") || !dirty && !sw.on("read") {
                    return skip(self, "this read is off");
                }
                self.read(*pick, dirty)
            }
            Op::Commit => {
                self.commit(true);
                Ok(())
            }
            Op::Crash => {
                if !sw.on("crash") {
                    return skip(self, "crash is off");
                }
                self.crash(ctx)
            }
            Op::Burn => {
                if !sw.on("burn") {
                    return skip(self, "burn is off");
                }
                self.burn(ctx)
            }
        }
    }

    fn submit(&mut self, specs: &[Spec]) -> Result<(), Violation> {
        let keys = self.sw.on("keys");
        let input: Vec<sut::SpecIn> = specs
            .iter()
            .map(|s| sut::SpecIn {
                io: s.io,
                max_attempts: u32::from(s.max_attempts),
                key: s.key.filter(|_| keys).map(key_name),
                priority: i32::from(s.priority),
            })
            .collect();
        let overlong = keys && specs.iter().any(|s| s.key == Some(OVERLONG_KEY));
        let (batch, ids, reply) = match self.sut.submit(&input) {
            Ok(_) if overlong => {
                return bad("idempotency", "a submit with an overlong key was taken");
            }
            Err(e) if overlong => {
                say!(self, "refused: {}", e.get(..120).unwrap_or(&e));
                if !e.contains("idempotency_key") {
                    return bad("idempotency", format!("the refusal names no field: {e}"));
                }
                return Ok(());
            }
            Ok(r) => r,
            Err(e) => return bad("table", format!("a valid submit was refused: {e}")),
        };
        if ids.len() != input.len() {
            return bad(
                "batches",
                format!("{} specs gave {} ids", input.len(), ids.len()),
            );
        }
        let mut parts = Vec::new();
        for ((spec, key), id) in input.iter().zip(specs.iter().map(|s| s.key)).zip(&ids) {
            let known = spec.key.as_ref().and_then(|k| self.model.keys.get(k));
            match known.copied() {
                Some(existing) => {
                    if *id != existing {
                        return bad(
                            "idempotency",
                            format!(
                                "key k{} of live job {} gave a new job {id}",
                                key.unwrap_or_default(),
                                self.j(&existing)
                            ),
                        );
                    }
                    parts.push(format!(
                        "{} (key k{}, reused)",
                        self.j(id),
                        key.unwrap_or(0)
                    ));
                }
                None => {
                    if self.names.contains_key(id) {
                        return bad(
                            "idempotency",
                            format!("a new spec was given the known job {}", self.j(id)),
                        );
                    }
                    let n = self.names.len();
                    self.names.insert(*id, n);
                    let m = MJob::new(*id, batch, spec.max_attempts, spec.io, spec.key.clone());
                    self.model.jobs.insert(n, m);
                    if let Some(k) = &spec.key {
                        self.model.keys.insert(k.clone(), *id);
                    }
                    let key = key
                        .filter(|_| spec.key.is_some())
                        .map_or(String::new(), |k| format!(" key k{k}"));
                    parts.push(format!("j{n}{key}"));
                }
            }
        }
        let b = self.bnames.len();
        self.bnames.insert(batch, b);
        self.model.batches.insert(b, (batch, ids.clone()));
        say!(self, "b{b} = [{}]", parts.join(", "));
        let t = self.absorb(reply)?;
        self.tell(t, Tell::Submit(b, ids));
        Ok(())
    }

    pub(super) fn cancel(&mut self, id: JobId) -> Result<(), Violation> {
        let cancelled = self.mjob_mut(&id).is_some_and(|m| m.cancel());
        let (n, reply) = match self.sut.cancel(&[id]) {
            Ok(r) => r,
            Err(e) => return bad("table", format!("cancel of {} refused: {e}", self.j(&id))),
        };
        say!(self, "cancel {} -> {n}", self.j(&id));
        if n != u32::from(cancelled) && self.sw.on("state") {
            return bad(
                "state",
                format!(
                    "cancel of {} cancelled {n}, the model {cancelled}",
                    self.j(&id)
                ),
            );
        }
        let t = self.absorb(reply)?;
        if cancelled {
            let n = self.names[&id];
            self.tell(t, Tell::Cancel(vec![n]));
        }
        Ok(())
    }

    fn retry(&mut self, pick: Option<u8>) -> Result<(), Violation> {
        let failed: Vec<usize> = self
            .model
            .jobs
            .iter()
            .filter(|(_, m)| m.state == JobState::Failed)
            .map(|(n, _)| *n)
            .collect();
        let mut listed = self.sut.failed_ids();
        listed.sort_by_key(|id| self.names.get(id).copied());
        let expected: Vec<JobId> = failed.iter().map(|n| self.model.jobs[n].id).collect();
        if listed != expected && self.sw.on("state") {
            return bad(
                "state",
                format!("failed_ids lists {listed:?}, the model {expected:?}"),
            );
        }
        let picked = match pick {
            None => failed,
            Some(p) if !failed.is_empty() => vec![failed[p as usize % failed.len()]],
            Some(_) => Vec::new(),
        };
        if picked.is_empty() {
            say!(self, "skipped: nothing failed");
            return Ok(());
        }
        let mut told = Vec::new();
        let mut ids = Vec::new();
        for n in picked {
            let m = self.model.jobs.get_mut(&n).expect("picked from the model");
            m.retry();
            ids.push(m.id);
            // The client asked for it: the old result is void.
            self.told.results.remove(&n);
            told.push((n, m.errors.len()));
        }
        let (n, reply) = self.sut.retry(&ids);
        let list: Vec<String> = ids.iter().map(|id| self.j(id)).collect();
        say!(self, "retry {} -> {n}", list.join(" "));
        if n as usize != ids.len() && self.sw.on("state") {
            return bad(
                "state",
                format!("retry of {} FAILED jobs retried {n}", ids.len()),
            );
        }
        let t = self.absorb(reply)?;
        self.tell(t, Tell::Retry(told));
        Ok(())
    }

    /// 256 commits in a row, to reach the assignment log's compaction.
    fn burn(&mut self, ctx: &mut Ctx) -> Result<(), Violation> {
        let before = self.store.commits;
        // Its jobs finish backdated past the retention and are purged at
        // the end, so the rest of the history does not carry (and check)
        // them; nothing else finishes meanwhile.
        let now = self.now();
        self.clock.store(now - RETENTION_MS - 1, Ordering::SeqCst);
        // One submit per commit until the commit number reaches the next
        // multiple of the compaction period; the model is snapshotted once
        // at the end (nothing crashes in between).
        let mut made = Vec::new();
        loop {
            let spec = Spec {
                io: true,
                max_attempts: 1,
                key: None,
                priority: 0,
            };
            self.submit(&[spec])?;
            if let Some(m) = self.model.jobs.values().next_back() {
                made.push(m.id);
            }
            self.deliver();
            self.commit(false);
            if self.committed.is_multiple_of(BURN_COMMITS) {
                break;
            }
        }
        for id in &made {
            self.cancel(*id)?;
        }
        self.deliver();
        let backdated = self.now();
        for id in &made {
            let v = self.sut.job(id);
            if let (Some(v), Some(m)) = (v, self.mjob_mut(id)) {
                m.fin = Final::of(&v);
                m.finished_at = backdated;
            }
        }
        self.commit(false);
        self.durable = self.model.clone();
        self.clock.store(now, Ordering::SeqCst);
        // The purge is committed by a later step, as usual.
        let purged = self.sut.purge();
        ctx.purge = Some(now - RETENTION_MS);
        if self.verbose {
            self.note = format!(
                "submits and cancels, {} commits (now at commit {}), purged {purged} jobs",
                self.store.commits - before,
                self.committed
            );
        }
        Ok(())
    }
}
