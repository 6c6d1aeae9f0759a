//! What passes between the state and its workers and clients: messages
//! held until their commit is written and delivered in stream order,
//! results sent and matched by the model, replies and reads told once
//! committed, commits into the simulated store, and crashes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use drover_common::ids::JobId;
use drover_common::pb::JobState;

use super::model::{Final, MSession, Match, Model};
use super::sut::{Msg, Outcome, Reply, Sut};
use super::world::{Ctx, World, say};
use super::{Set, Violation, bad};

/// What clients were told. A crash forgets nothing here.
#[derive(Debug, Default)]
pub(super) struct Told {
    pub(super) batches: BTreeMap<usize, Vec<JobId>>,
    pub(super) jobs: BTreeSet<usize>,
    pub(super) results: BTreeMap<usize, Final>,
    pub(super) cancels: BTreeSet<usize>,
    /// Retried jobs, with their `attempt_errors` length at the retry.
    pub(super) retries: BTreeMap<usize, usize>,
}

/// A reply that waits for its commit.
#[derive(Debug)]
pub(super) enum Tell {
    Submit(usize, Vec<JobId>),
    Cancel(Vec<usize>),
    Retry(Vec<(usize, usize)>),
    Read(usize, Final),
}

/// An assignment a worker received.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) job: JobId,
    pub(super) attempt: u32,
    pub(super) nonce: u64,
    /// What it reported, once it did.
    pub(super) out: Option<Outcome>,
}

/// A result as a worker sends it.
#[derive(Debug, Clone)]
pub(super) struct Res {
    pub(super) job: JobId,
    pub(super) attempt: u32,
    pub(super) out: Outcome,
}

/// A worker process: it outlives its sessions and the master.
#[derive(Debug, Default)]
pub(super) struct Worker {
    pub(super) session: Option<u64>,
    /// Assignments received and not yet reported, cancelled or returned.
    pub(super) running: Vec<Run>,
    /// Every assignment it received.
    pub(super) past: Vec<Run>,
    /// Results sent and not acknowledged, by sequence number.
    pub(super) unacked: Vec<(u64, Vec<Res>)>,
    pub(super) next_seq: u64,
    pub(super) draining: bool,
}

/// A message on its way to a worker.
#[derive(Debug)]
enum Mail {
    Assign(JobId, u32, u64),
    Ack(u64),
    Cancel(Vec<JobId>),
}

/// A session's outbound stream: messages wait for their commit.
#[derive(Debug)]
pub(super) struct Mailbox {
    sid: u64,
    pub(super) worker: usize,
    queue: VecDeque<(Option<u64>, Mail)>,
}

impl World<'_> {
    /// Records a reply: told at once without a ticket, else at its commit.
    pub(super) fn tell(&mut self, ticket: Option<u64>, t: Tell) {
        match ticket {
            Some(n) if n > self.committed => self.pending.push((n, t)),
            _ => self.told_now(t),
        }
    }

    fn told_now(&mut self, t: Tell) {
        match t {
            Tell::Submit(b, ids) => {
                // A batch purged before its reply went out is not owed
                // (`batch-retention` judges whether it should have been).
                if !self.model.batches.contains_key(&b) {
                    return;
                }
                for id in &ids {
                    // A listed job purged meanwhile (it may belong to an
                    // older batch) is not owed.
                    if let Some(&n) = self.names.get(id)
                        && self.model.jobs.contains_key(&n)
                    {
                        self.told.jobs.insert(n);
                    }
                }
                self.told.batches.insert(b, ids);
            }
            // Jobs purged before the reply went out are not owed either.
            Tell::Cancel(jobs) => {
                let live = jobs.into_iter().filter(|n| self.model.jobs.contains_key(n));
                self.told.cancels.extend(live);
            }
            Tell::Retry(list) => {
                let live = list
                    .into_iter()
                    .filter(|(n, _)| self.model.jobs.contains_key(n));
                self.told.retries.extend(live);
            }
            // A read a retry superseded before it was answered tells the
            // result the retry voided: the client asked for both.
            Tell::Read(n, fin) => {
                if self.model.jobs.get(&n).and_then(|m| m.fin.as_ref()) == Some(&fin) {
                    self.told.results.insert(n, fin);
                }
            }
        }
    }

    /// A client reads a finished job it was given the id of. A committed
    /// read picks among results already durable, a dirty one among those
    /// not yet; either reply waits for the commit `State::ticket` names.
    pub(super) fn read(&mut self, pick: u8, dirty: bool) -> Result<(), Violation> {
        let candidates: Vec<(usize, Final)> = self
            .model
            .jobs
            .iter()
            .filter(|(n, _)| self.told.jobs.contains(n))
            .filter_map(|(n, m)| {
                let fin = m.fin.clone()?;
                let durable = self.durable.jobs.get(n).and_then(|d| d.fin.as_ref());
                ((durable == Some(&fin)) != dirty).then_some((*n, fin))
            })
            .collect();
        if candidates.is_empty() {
            say!(self, "skipped: no such result");
            return Ok(());
        }
        let (n, fin) = candidates[pick as usize % candidates.len()].clone();
        let id = self.model.jobs[&n].id;
        let seen = self.sut.job(&id).as_ref().and_then(Final::of);
        if seen.as_ref() != Some(&fin) && self.sw.on("finality") {
            return bad(
                "finality",
                format!("j{n} reads {seen:?}, the model has {fin:?}"),
            );
        }
        let t = self.sut.ticket();
        say!(
            self,
            "client reads j{n} {:?}{}",
            fin.state,
            Self::ticket_note(t)
        );
        self.tell(t, Tell::Read(n, fin));
        Ok(())
    }

    /// Takes what a change produced: assignments start attempts in the
    /// model now; the messages wait in their sessions' streams for the
    /// commit. Returns the ticket.
    pub(super) fn absorb(&mut self, reply: Reply) -> Result<Option<u64>, Violation> {
        let ticket = reply.ticket;
        for (sid, msg) in reply.mail {
            let mut mail = Vec::new();
            match msg {
                Msg::Assign(list) => {
                    for (id, attempt) in list {
                        let nonce = self.next_nonce;
                        self.next_nonce += 1;
                        self.assigned(sid, id, attempt)?;
                        say!(
                            self,
                            "s{sid} <- {}@{attempt} (n{nonce}){}",
                            self.j(&id),
                            Self::ticket_note(ticket)
                        );
                        self.nonces.insert(nonce, (id, attempt));
                        mail.push(Mail::Assign(id, attempt, nonce));
                    }
                }
                Msg::Ack(seq) => mail.push(Mail::Ack(seq)),
                Msg::Cancel(ids) => mail.push(Mail::Cancel(ids)),
                Msg::Other => {}
            }
            if let Some(mb) = self.mailboxes.iter_mut().find(|m| m.sid == sid) {
                mb.queue.extend(mail.into_iter().map(|m| (ticket, m)));
            }
        }
        Ok(ticket)
    }

    /// An assignment of `id` to `sid` as `attempt`: checked against the
    /// model's queue and attempt count, and against the session's credit.
    fn assigned(&mut self, sid: u64, id: JobId, attempt: u32) -> Result<(), Violation> {
        let name = self.j(&id);
        let sw = self.sw;
        let Some(m) = self.mjob_mut(&id) else {
            return bad("table", format!("{name} assigned but not in the model"));
        };
        if m.state != JobState::Queued && sw.on("state") {
            return bad("state", format!("{name} assigned while {:?}", m.state));
        }
        if attempt != m.attempts + 1 && sw.on("attempts") {
            return bad(
                "attempts",
                format!(
                    "{name} assigned as attempt {attempt} after attempt {}",
                    m.attempts
                ),
            );
        }
        m.assign(sid, attempt);
        let class = usize::from(m.io);
        if let Some(s) = self.model.sessions.get_mut(&sid) {
            s.assigned[class] += 1;
            if s.assigned[class] > s.granted[class] && sw.on("credit") {
                return bad(
                    "credit",
                    format!(
                        "s{sid} was sent {} jobs of class {class} on {} credit",
                        s.assigned[class], s.granted[class]
                    ),
                );
            }
        }
        Ok(())
    }

    /// Hands each worker the messages whose commit is written, in order.
    pub(super) fn deliver(&mut self) {
        let committed = self.committed;
        let mut got = Vec::new();
        for mb in &mut self.mailboxes {
            while let Some((t, _)) = mb.queue.front() {
                if t.is_some_and(|t| t > committed) {
                    break;
                }
                let (_, mail) = mb.queue.pop_front().expect("front exists");
                got.push((mb.worker, mail));
            }
        }
        let live: Set<u64> = self.workers.iter().filter_map(|w| w.session).collect();
        self.mailboxes
            .retain(|m| live.contains(&m.sid) || !m.queue.is_empty());
        for (w, mail) in got {
            let worker = &mut self.workers[w];
            match mail {
                Mail::Assign(job, attempt, nonce) => {
                    let run = Run {
                        job,
                        attempt,
                        nonce,
                        out: None,
                    };
                    worker.running.push(run.clone());
                    worker.past.push(run);
                }
                Mail::Ack(seq) => worker.unacked.retain(|(s, _)| *s > seq),
                Mail::Cancel(ids) => worker.running.retain(|r| !ids.contains(&r.job)),
            }
        }
    }

    /// Sends results on a session. The model matches each to (job,
    /// attempt) first, as the state must; the state must drop exactly the
    /// ones the model drops.
    pub(super) fn send_results(
        &mut self,
        sid: u64,
        seq: u64,
        results: Vec<Res>,
    ) -> Result<(), Violation> {
        let mut parts = Vec::new();
        let mut dropped = 0;
        for r in &results {
            let success = matches!(r.out, Outcome::Output(_));
            let matched = match self.mjob_mut(&r.job) {
                Some(m) => {
                    let matched = m.matches(sid, r.attempt, success);
                    if matched != Match::Dropped {
                        m.take(&r.out);
                    }
                    matched
                }
                None => Match::Dropped,
            };
            dropped += u64::from(matched == Match::Dropped);
            if self.verbose {
                let what = match r.out {
                    Outcome::Output(n) => format!("ok(n{n})"),
                    Outcome::Failure { retryable: true } => "retryable failure".into(),
                    Outcome::Failure { retryable: false } => "fatal failure".into(),
                    Outcome::Empty => "empty".into(),
                };
                parts.push(format!(
                    "{}@{} {what} {matched:?}",
                    self.j(&r.job),
                    r.attempt
                ));
            }
        }
        let list: Vec<_> = results
            .into_iter()
            .map(|r| (r.job, r.attempt, r.out))
            .collect();
        let before = self.sut.dropped();
        let reply = self.sut.results(sid, seq, &list);
        let got = self.sut.dropped() - before;
        say!(self, "s{sid} results seq {seq}: {}", parts.join(", "));
        if got != dropped && self.sw.on("result-attempt") {
            return bad(
                "result-attempt",
                format!("the state dropped {got} of these results, the model {dropped}"),
            );
        }
        self.absorb(reply)?;
        Ok(())
    }

    /// Sends every unacknowledged result again, as it was.
    pub(super) fn resend(&mut self, w: usize, sid: u64) -> Result<(), Violation> {
        for (seq, results) in self.workers[w].unacked.clone() {
            self.send_results(sid, seq, results)?;
        }
        Ok(())
    }

    pub(super) fn connect(&mut self, w: usize) -> Result<(), Violation> {
        if let Some(old) = self.workers[w].session.take() {
            // A worker reconnects when its stream broke.
            self.end_session(old, "stream closed", true)?;
        }
        let sid = self.sut.connect(&format!("w{w}"));
        self.model.sessions.insert(sid, MSession::default());
        self.mailboxes.push(Mailbox {
            sid,
            worker: w,
            queue: VecDeque::new(),
        });
        self.workers[w].session = Some(sid);
        say!(self, "w{w} is s{sid}");
        // As the worker does on every new session: send again what was not
        // acknowledged, then say it drains.
        self.resend(w, sid)?;
        if self.workers[w].draining {
            self.sut.drain(sid);
            say!(self, "s{sid} drains");
        }
        Ok(())
    }

    /// Ends a session; its messages not yet sent are lost with a closed
    /// stream.
    pub(super) fn end_session(
        &mut self,
        sid: u64,
        reason: &str,
        lose_messages: bool,
    ) -> Result<(), Violation> {
        self.model.end_session(sid);
        let reply = self.sut.end_session(sid, reason);
        if lose_messages {
            self.mailboxes.retain(|m| m.sid != sid);
        }
        say!(self, "s{sid} ends: {reason}");
        self.absorb(reply)?;
        Ok(())
    }

    /// The committer: takes the changes, writes them, publishes the number;
    /// then replies and messages waiting for it go out. The model is
    /// snapshotted as what the store now holds, unless the caller does it.
    pub(super) fn commit(&mut self, snapshot: bool) {
        if let Some(n) = self.sut.commit(&mut self.store) {
            self.committed = n;
            say!(self, "commit {n}");
        } else {
            say!(self, "nothing to commit");
        }
        let committed = self.committed;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(t, _)| *t <= committed);
        self.pending = waiting;
        for (_, t) in ready {
            self.told_now(t);
        }
        if snapshot {
            self.durable = self.model.clone();
        }
    }

    /// The master crashes: a new state is rebuilt from the store, and the
    /// model from its snapshot at the last commit, by the same rule.
    pub(super) fn crash(&mut self, ctx: &mut Ctx) -> Result<(), Violation> {
        self.sut = match Sut::recover(&self.cfg, &self.clock, &self.store) {
            Ok(s) => s,
            Err(e) => return bad("recovered-matches", format!("recovery failed: {e:#}")),
        };
        self.committed = 0;
        // Replies not yet committed were never given; messages not yet
        // sent are gone with the streams.
        self.pending.clear();
        self.mailboxes.clear();
        self.model = Model::restarted(&self.durable);
        for w in &mut self.workers {
            w.session = None;
        }
        ctx.recovered = true;
        say!(self, "master crashed and recovered from the store");
        Ok(())
    }
}
