//! The transitions of a job's life: submit, results and failures, retries
//! and their backoff, returns on drain, cancels. The attempt rules are in
//! the module docs of [`super`].

use super::*;
use closing::store_error;

/// The longest idempotency key, in bytes: every key is kept in memory and
/// in the store for as long as its job.
pub(super) const MAX_KEY_BYTES: usize = 1024;

/// How a result or failure a worker sent relates to the job it names.
enum Match {
    /// For the attempt the sending session holds: it ends that attempt.
    Held,
    /// For the job's last attempt, which the master already ended (the
    /// worker's session was lost, or the master restarted) and has not
    /// handed out again: a success is still taken.
    Orphaned,
    /// Anything else: an old attempt, a finished job, a duplicate.
    Stale,
}

impl State {
    /// Puts a job in its queue, or in the delay queue until `not_before`.
    pub(super) fn enqueue(&mut self, id: JobId, not_before_ms: u64) {
        self.enqueue_hinted(id, None, not_before_ms);
    }

    /// [`State::enqueue`] of a job found first at the slot `hint`.
    pub(super) fn enqueue_hinted(&mut self, id: JobId, hint: Option<&u32>, not_before_ms: u64) {
        // The clock is read only for a job that may have to wait (recovery
        // queues millions that do not).
        let wait = not_before_ms > 0 && not_before_ms > self.now_ms();
        let Some(job) = self.jobs.get_mut_hinted(&id, hint) else {
            return;
        };
        if wait {
            job.not_before_ms = not_before_ms;
            self.delayed.insert((not_before_ms, job.seq), id);
        } else {
            job.not_before_ms = 0;
            let key = (Reverse(job.priority), job.seq);
            self.queue_ready_hinted(id, hint, key);
        }
    }

    /// Takes a queued job out of whichever queue holds it.
    pub(super) fn unqueue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.not_before_ms > 0 && self.delayed.remove(&(job.not_before_ms, job.seq)).is_some() {
            return;
        }
        let key = (Reverse(job.priority), job.seq);
        self.queues.remove(job.class(), &job.arg, &key);
    }

    /// Moves retried jobs whose backoff is over into their queues and hands
    /// out what it can.
    pub fn promote_due(&mut self) -> Outgoing {
        let now = self.now_ms();
        let mut moved = false;
        while let Some((&(due, seq), &id)) = self.delayed.first_key_value() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, seq));
            self.enqueue(id, 0);
            moved = true;
        }
        if moved {
            self.dispatch()
        } else {
            self.outgoing(Vec::new())
        }
    }

    /// Queues FAILED jobs again; returns how many. A retry does not rewrite
    /// history: the attempts made stay counted, and the job's allowance is
    /// raised by its `max_attempts`, so it gets as many tries as at first.
    pub fn retry_jobs(&mut self, ids: &[JobId]) -> (u32, Outgoing) {
        let mut n = 0;
        let mut touched = HashSet::new();
        for &id in ids {
            if !self.jobs.contains_key(&id) {
                // A failed job that left memory with its closed batch: the
                // batch comes back, to be written open again.
                let batch = match &self.archive {
                    Some(store) => match store.read_job(&id) {
                        Ok(Some(r)) if r.state == JobState::Failed as i32 => {
                            BatchId::from_slice(&r.batch)
                        }
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(job = %id, error = %format!("{e:#}"), "retry could not read the job from the store");
                            None
                        }
                    },
                    None => None,
                };
                if let Some(batch) = batch
                    && let Err(e) = self.reopen(batch)
                {
                    tracing::warn!(job = %id, error = %e, "retry could not bring the job's batch back");
                }
            }
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state != JobState::Failed {
                continue;
            }
            job.allowance = job.counted.saturating_add(job.max_attempts);
            job.xm().error = None;
            job.xm().finished_at_ms = 0;
            touched.insert(job.batch);
            // Its batch may be closed in the store (or being written so):
            // it counts as open again, so a restart reads it.
            if self.durable && self.archive.is_some() {
                self.reopened.push(job.batch);
            }
            if self.durable {
                self.unfailed.push(id);
            }
            if let Some(adopters) = self.adopted.get(&id) {
                touched.extend(adopters.iter().map(|(b, _)| *b));
                // A batch naming it again may be closed in the store too
                // (in the commit being written): it is open again as well.
                if self.durable && self.archive.is_some() {
                    self.reopened.extend(adopters.iter().map(|(b, _)| *b));
                }
            }
            self.set_state(id, JobState::Queued);
            self.enqueue(id, 0);
            self.mark(id);
            n += 1;
        }
        // Their batches no longer count them as finished.
        for b in touched {
            let Some(batch) = self.batches.get(&b) else {
                continue;
            };
            let keep: Vec<u32> = batch
                .finished
                .iter()
                .copied()
                .filter(|&i| {
                    batch
                        .jobs
                        .get(i as usize)
                        .is_some_and(|id| self.is_finished(id))
                })
                .collect();
            if let Some(batch) = self.batches.get_mut(&b) {
                batch.finished = keep;
                batch.rewinds += 1;
            }
        }
        let mut out = self.dispatch();
        let extra = self.outgoing(Vec::new());
        out.merge(extra);
        (n, out)
    }

    /// Checks and enqueues a batch, returning its id and the job ids.
    ///
    /// Nothing is enqueued unless every job is valid. A spec whose
    /// idempotency key names a job already known gets that job back: the
    /// batch lists it, and hears of its finish like of its own jobs'.
    pub fn submit(&mut self, specs: Vec<pb::JobSpec>) -> Result<(BatchId, Vec<JobId>), Error> {
        self.submit_request("", specs)
    }

    /// Like [`State::submit`], for a submit named by the client's
    /// `request_id`: when the same request id comes again (the client
    /// retries after a broken connection or a master restart), it gets the
    /// batch the first one made, and nothing is queued twice.
    pub fn submit_request(
        &mut self,
        request_id: &str,
        specs: Vec<pb::JobSpec>,
    ) -> Result<(BatchId, Vec<JobId>), Error> {
        self.submit_with_room(request_id, specs, |_| Ok(()))
    }

    /// Like [`State::submit_request`], asking `room` (the queue's
    /// back-pressure) only once the request is known to be new and every
    /// job valid: a repeated request gets its batch back whatever the
    /// queue holds, and a batch over `--max-batch-jobs` or with a bad
    /// argument is told so, not that the queue is full.
    pub fn submit_with_room(
        &mut self,
        request_id: &str,
        specs: Vec<pb::JobSpec>,
        room: impl FnOnce(usize) -> Result<(), Error>,
    ) -> Result<(BatchId, Vec<JobId>), Error> {
        if request_id.len() > MAX_KEY_BYTES / 8 {
            return Err(Error::invalid(format!(
                "request_id: {} bytes is over the limit of {}",
                request_id.len(),
                MAX_KEY_BYTES / 8
            )));
        }
        if let Some(batch) = self.requests.get(request_id)
            && let Some(b) = self.batches.get(batch)
        {
            return Ok((*batch, b.jobs.clone()));
        }
        // A batch that closed and left memory is found in the store.
        if !request_id.is_empty()
            && let Some(store) = &self.archive
            && let Some(batch) = store.batch_by_request(request_id).map_err(store_error)?
            && let Some(b) = store.read_batch(&batch).map_err(store_error)?
        {
            return Ok((batch, b.jobs));
        }
        if specs.is_empty() {
            return Err(Error::invalid(
                "jobs: the batch is empty; submit at least one job",
            ));
        }
        if specs.len() > self.limits.max_batch_jobs {
            return Err(Error::ResourceExhausted(format!(
                "jobs: the batch has {} jobs, over the limit of {} per submit (master flag --max-batch-jobs)",
                specs.len(),
                self.limits.max_batch_jobs
            )));
        }
        for (i, spec) in specs.iter().enumerate() {
            JobArgs::parse(spec.kind, &spec.arg, &self.limits)
                .map_err(|e| Error::invalid(format!("jobs[{i}].arg: {e}")))?;
            if spec.idempotency_key.len() > MAX_KEY_BYTES {
                return Err(Error::invalid(format!(
                    "jobs[{i}].idempotency_key: {} bytes is over the limit of {MAX_KEY_BYTES}",
                    spec.idempotency_key.len()
                )));
            }
            limits::check(i, &spec.limits)?;
            if spec.max_attempts > 100 {
                return Err(Error::invalid(format!(
                    "jobs[{i}].max_attempts: {} is over the limit of 100",
                    spec.max_attempts
                )));
            }
        }
        room(specs.len())?;
        // The jobs' ids are made before the batch's: a batch's id is never
        // older than its own jobs', so what is kept of the batches evicted
        // or purged (the newest one's id time) tells of their jobs too
        // (see `State::not_found`).
        let fresh: Vec<JobId> = specs.iter().map(|_| JobId::new()).collect();
        let batch_id = BatchId::new();
        let mut ids = Vec::with_capacity(specs.len());
        let mut slots = Vec::with_capacity(specs.len());
        let mut finished = Vec::new();
        // Finished jobs that left memory with their batches, asked of the
        // store in one read for all the keys memory does not know.
        let archived = match &self.archive {
            Some(store) => {
                let unknown: Vec<&str> = specs
                    .iter()
                    .map(|s| s.idempotency_key.as_str())
                    .filter(|k| !k.is_empty() && !self.idempotency.contains_key(*k))
                    .collect();
                match unknown.is_empty() {
                    true => HashMap::new(),
                    false => store.jobs_by_keys(&unknown).map_err(store_error)?,
                }
            }
            None => HashMap::new(),
        };
        for (i, spec) in specs.into_iter().enumerate() {
            let index = i as u32;
            let known = match self.idempotency.get(spec.idempotency_key.as_str()) {
                _ if spec.idempotency_key.is_empty() => None,
                Some(&id) => Some(id),
                None => archived.get(spec.idempotency_key.as_str()).copied(),
            };
            if let Some(existing) = known {
                let existing_finished = self.jobs.get(&existing).is_none_or(Job::is_finished);
                ids.push(existing);
                slots.push(self.jobs.slot_of(&existing).unwrap_or(u32::MAX));
                if existing_finished {
                    finished.push(index);
                }
                // Finished or not: a retry may queue it again.
                self.adopted
                    .entry(existing)
                    .or_default()
                    .push((batch_id, index));
                continue;
            }
            let id = fresh[i];
            let idempotency_key =
                (!spec.idempotency_key.is_empty()).then(|| spec.idempotency_key.into_boxed_str());
            let job_limits = limits::from_pb(spec.limits);
            if let Some(key) = &idempotency_key {
                self.idempotency.insert(key.clone(), id);
            }
            let kind = JobKind::try_from(spec.kind).unwrap_or(JobKind::Unspecified);
            let seq = self.next_seq;
            self.next_seq += 1;
            let max_attempts = if spec.max_attempts == 0 {
                self.default_max_attempts
            } else {
                spec.max_attempts
            };
            let job = Job {
                id,
                batch: batch_id,
                index,
                kind,
                arg: spec.arg.into_boxed_str(),
                priority: spec.priority,
                timeout_ms: spec.timeout_ms,
                max_attempts,
                allowance: max_attempts,
                state: JobState::Queued,
                attempts: 0,
                counted: 0,
                seq,
                session: None,
                not_before_ms: 0,
                extra: (idempotency_key.is_some() || !job_limits.is_empty()).then(|| {
                    Box::new(JobExtra {
                        idempotency_key,
                        limits: job_limits,
                        ..JobExtra::default()
                    })
                }),
                dirty: false,
                record_len: 0,
            };
            let key = (Reverse(job.priority), seq);
            self.counts[JobState::Queued as usize] += 1;
            self.counters.jobs.submitted(kind);
            let slot = self.jobs.insert(id, job);
            slots.push(slot);
            self.queue_ready_hinted(id, Some(&slot), key);
            self.mark_slotted(id, slot);
            ids.push(id);
        }
        let (tx, _) = watch::channel(0);
        self.batches.insert(
            batch_id,
            Batch {
                jobs: ids.clone(),
                slots,
                finished,
                notify: tx,
                rewinds: 0,
                request_id: (!request_id.is_empty()).then(|| request_id.into()),
            },
        );
        if !request_id.is_empty() {
            self.requests.insert(request_id.into(), batch_id);
        }
        if self.durable {
            self.dirty_batches.push(batch_id);
            self.kick();
        }
        // Every job it lists may be one named again and finished already.
        self.note_closing(batch_id);
        Ok((batch_id, ids))
    }

    /// How a result for `attempt` of `id` from `session` relates to the job.
    fn match_result(
        &self,
        session: SessionId,
        id: JobId,
        slot: Option<&u32>,
        attempt: u32,
    ) -> Match {
        let Some(job) = self.jobs.get_hinted(&id, slot) else {
            return Match::Stale;
        };
        if attempt == 0 || attempt != job.attempts {
            return Match::Stale;
        }
        match job.state {
            JobState::Running if job.session == Some(session) => Match::Held,
            JobState::Queued => Match::Orphaned,
            _ => Match::Stale,
        }
    }

    /// Records results from a session, each matched to (job, attempt): a
    /// result for the attempt the session holds ends it; a success for the
    /// job's last attempt, ended by the master but not handed out again, is
    /// still taken; anything else (an old attempt, a duplicate, a failure
    /// the master already accounted for) is dropped and counted, and leaves
    /// what the session holds alone.
    ///
    /// The worker gets an acknowledgement of `seq` once the results are
    /// stored; until then it keeps them, to send again on a new session.
    pub fn record_results(
        &mut self,
        session: SessionId,
        seq: u64,
        results: Vec<pb::JobResult>,
    ) -> Outgoing {
        let mut requeued = false;
        for r in results {
            let Ok(id) = JobId::parse("job_id", &r.job_id) else {
                self.counters.late_results_dropped += 1;
                continue;
            };
            // The slot the worker echoes is a hint (checked against the
            // id); found once, it spares the id's lookups below.
            let slot = self.jobs.hinted_slot(&id, r.slot.as_ref());
            let matched = self.match_result(session, id, slot.as_ref(), r.attempt);
            let success = matches!(r.outcome, Some(pb::job_result::Outcome::Output(_)));
            match matched {
                Match::Held => {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.held.remove(&id);
                        s.completed += 1;
                    }
                }
                Match::Orphaned if success => self.unqueue(id),
                Match::Orphaned | Match::Stale => {
                    self.counters.late_results_dropped += 1;
                    tracing::debug!(job = %id, attempt = r.attempt, "late result dropped");
                    continue;
                }
            }
            match r.outcome {
                Some(pb::job_result::Outcome::Output(output)) => {
                    let name = self.sessions.get(&session).map(|s| s.name.clone());
                    let job = self.jobs.get_mut_hinted(&id, slot.as_ref());
                    let job = job.expect("a matched job exists");
                    job.session = None;
                    self.counters.jobs.ran(job.kind, r.run_us);
                    let x = job.xm();
                    x.output = Some(output);
                    x.run_us = r.run_us;
                    if name.is_some() {
                        x.worker = name;
                    }
                    self.finish_hinted(id, slot.as_ref(), JobState::Succeeded, None);
                }
                Some(pb::job_result::Outcome::Failure(f)) => {
                    requeued |= self.fail_attempt(id, f.reason, f.retryable);
                }
                None => {
                    requeued |= self.fail_attempt(id, "worker sent an empty result".into(), true);
                }
            }
        }
        let admitted = self.concurrency.take_admitted();
        let mut out = if requeued || admitted {
            self.dispatch()
        } else {
            self.outgoing(Vec::new())
        };
        if seq > 0
            && let Some(s) = self.sessions.get(&session)
        {
            out.messages.push((
                s.outbox.clone(),
                pb::MasterMessage {
                    msg: Some(pb::master_message::Msg::Ack(pb::ResultsAck { seq })),
                },
            ));
        }
        out
    }

    /// Ends the running attempt of a job as failed, counted: the job is
    /// queued again after its backoff if the failure is retriable and the
    /// counted attempts are below its allowance, else it is FAILED.
    /// Returns whether it was queued again.
    pub(super) fn fail_attempt(&mut self, id: JobId, reason: String, retryable: bool) -> bool {
        self.release_limits(id);
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        job.session = None;
        job.counted += 1;
        let (attempt, counted, kind) = (job.attempts, job.counted, job.kind);
        job.xm()
            .attempt_errors
            .push(format!("attempt {attempt}: {reason}"));
        if retryable && counted < job.allowance {
            job.xm().error = Some(reason);
            let wait = self.retry.backoff_ms(counted);
            let now = self.now_ms();
            self.set_state(id, JobState::Queued);
            self.enqueue(id, if wait > 0 { now + wait } else { 0 });
            self.mark(id);
            self.counters.retried += 1;
            self.counters.jobs.retried(kind);
            true
        } else {
            let msg = if retryable {
                format!("{reason} (after {counted} attempts)")
            } else {
                reason
            };
            self.finish(id, JobState::Failed, Some(msg));
            false
        }
    }

    /// Ends the running attempt of a job without counting it (a return by
    /// a draining worker, a master restart) and queues the job again at
    /// once. The attempt stays in its history.
    pub(super) fn end_uncounted(&mut self, id: JobId, reason: &str) {
        self.release_limits(id);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.session = None;
        let attempt = job.attempts;
        job.xm()
            .attempt_errors
            .push(format!("attempt {attempt}: {reason} (not counted)"));
        self.set_state(id, JobState::Queued);
        self.enqueue(id, 0);
        self.mark(id);
    }

    /// Moves a job to a finished state, and tells its batches.
    pub(super) fn finish(&mut self, id: JobId, to: JobState, error: Option<String>) {
        self.finish_hinted(id, None, to, error);
    }

    /// [`State::finish`] of a job found first at the slot `hint`.
    pub(super) fn finish_hinted(
        &mut self,
        id: JobId,
        hint: Option<&u32>,
        to: JobState,
        error: Option<String>,
    ) {
        self.release_limits(id);
        let now = self.now_ms();
        let Some(slot) = self.jobs.hinted_slot(&id, hint) else {
            return;
        };
        let job = self.jobs.get_mut_hinted(&id, Some(&slot)).expect("found");
        self.counts[job.state as usize] -= 1;
        self.counts[to as usize] += 1;
        job.state = to;
        self.counters.jobs.finished(job.kind, to);
        let x = job.xm();
        if error.is_some() {
            x.error = error;
        } else if to == JobState::Succeeded {
            x.error = None;
        }
        x.finished_at_ms = now;
        let own = (job.batch, job.index);
        // The adopters stay: a retry must find them again.
        let adopters = self.adopted.get(&id).map_or(&[][..], Vec::as_slice);
        for &(batch, index) in std::iter::once(&own).chain(adopters) {
            if let Some(b) = self.batches.get_mut(&batch) {
                b.finished.push(index);
                let closing = b.finished.len() >= b.jobs.len();
                // A repeat only wakes the waiters twice; checking the last
                // one keeps this constant time on the hot path.
                if self.notify_pending.last() != Some(&batch) {
                    self.notify_pending.push(batch);
                }
                if closing {
                    self.closing.push_back(batch);
                }
            }
        }
        self.mark_slotted(id, slot);
        let now = self.started.elapsed().as_secs();
        match self.counters.per_second.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => {
                self.counters.per_second.push_back((now, 1));
                while self.counters.per_second.len() > 12 {
                    self.counters.per_second.pop_front();
                }
            }
        }
    }

    /// Takes back jobs a draining worker did not start: each attempt ends
    /// without counting, and the job is queued again at once.
    pub fn return_jobs(&mut self, session: SessionId, ids: &[JobId]) -> Outgoing {
        let name = self.sessions.get(&session).map(|s| s.name.clone());
        for &id in ids {
            let held = self
                .sessions
                .get_mut(&session)
                .is_some_and(|s| s.held.remove(&id));
            let running_here = self
                .jobs
                .get(&id)
                .is_some_and(|j| j.state == JobState::Running && j.session == Some(session));
            if held && running_here {
                let who = name.as_deref().unwrap_or("?");
                self.end_uncounted(id, &format!("returned unstarted by draining worker {who}"));
            }
        }
        self.dispatch()
    }

    /// Cancels jobs by id; running ones are cancelled on their worker too.
    pub fn cancel(&mut self, ids: &[JobId]) -> Result<(pb::CancelResponse, Outgoing), Error> {
        let mut resp = pb::CancelResponse::default();
        for id in ids {
            if !self.jobs.contains_key(id) {
                // A job not in memory is finished, if the store has it.
                match &self.archive {
                    Some(store) if store.has_job(id).map_err(store_error)? => {}
                    _ => return Err(self.job_not_found(*id)),
                }
            }
        }
        let mut per_session: HashMap<SessionId, Vec<String>> = HashMap::new();
        for &id in ids {
            let Some(job) = self.jobs.get(&id) else {
                resp.already_finished += 1;
                continue;
            };
            match job.state {
                JobState::Queued => {
                    self.unqueue(id);
                }
                JobState::Running => {
                    if let Some(sid) = job.session {
                        per_session.entry(sid).or_default().push(id.to_string());
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.held.remove(&id);
                        }
                    }
                }
                _ => {
                    resp.already_finished += 1;
                    continue;
                }
            }
            if let Some(job) = self.jobs.get_mut(&id) {
                job.session = None;
            }
            self.finish(id, JobState::Cancelled, Some("cancelled".into()));
            resp.cancelled += 1;
        }
        let mut messages = Vec::new();
        for (sid, job_ids) in per_session {
            if let Some(s) = self.sessions.get(&sid) {
                messages.push((
                    s.outbox.clone(),
                    pb::MasterMessage {
                        msg: Some(pb::master_message::Msg::Cancel(pb::CancelJobs { job_ids })),
                    },
                ));
            }
        }
        let mut out = self.outgoing(messages);
        if self.concurrency.take_admitted() {
            out.merge(self.dispatch());
        }
        Ok((resp, out))
    }
}
