//! Recovery: the queue rebuilt from what the store committed.

use prost::Message;

use super::*;

impl State {
    /// Rebuilds the queue from what the store held, all at once (tests; the
    /// master streams items through [`State::recover_item`]).
    pub fn recover(&mut self, recovered: Recovered) -> anyhow::Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        self.created_at_ms = recovered.created_at_ms;
        for (id, ids, created, request_id) in recovered.batches {
            self.recover_item(Loaded::Batch(id, ids, created, request_id), &mut report)?;
        }
        for record in recovered.jobs {
            self.recover_item(Loaded::Job(Box::new(record)), &mut report)?;
        }
        for list in recovered.assignments {
            self.recover_item(Loaded::Assigned(list), &mut report)?;
        }
        self.finish_recovery(&mut report);
        Ok(report)
    }

    /// Continues the job sequence saved in the store (jobs of closed
    /// batches are not read back, so theirs is not seen).
    pub fn set_next_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// Sets when the store was created, as recovery begins.
    pub fn set_created_at(&mut self, created_at_ms: u64) {
        self.created_at_ms = created_at_ms;
    }

    /// Loads one item read from the store, in the store's order: batches
    /// (with their jobs' first records), then job records (which replace
    /// those), then the assignment log. Nothing is queued until
    /// [`State::finish_recovery`], when every job's last state is known.
    pub fn recover_item(
        &mut self,
        item: Loaded,
        report: &mut RecoveryReport,
    ) -> anyhow::Result<()> {
        match item {
            Loaded::Batch(batch_id, ids, created, request_id) => {
                let request_id = (!request_id.is_empty()).then(|| request_id.into_boxed_str());
                if let Some(r) = &request_id {
                    self.requests.insert(r.clone(), batch_id);
                }
                // Each job's slot as it goes in: the hints of every later
                // walk of the batch, without looking an id up. The rest
                // (jobs it lists but did not create) are filled in by
                // `finish_recovery`.
                let mut slots = vec![u32::MAX; ids.len()];
                for bytes in created.iter() {
                    // A queued job's record read straight into the job;
                    // any other through prost.
                    let (job, running) = match encode::decode_bare(bytes) {
                        Some(read) => read,
                        None => {
                            let record = pb::JobRecord::decode(bytes).map_err(|e| {
                                anyhow::anyhow!("a job record in batch {batch_id} is corrupt: {e}")
                            })?;
                            let running = record.running;
                            (
                                Job::from_record(record).map_err(anyhow::Error::msg)?,
                                running,
                            )
                        }
                    };
                    let (id, index) = (job.id, job.index as usize);
                    let slot = self.load_job(job, running);
                    if ids.get(index) == Some(&id) {
                        slots[index] = slot;
                    }
                }
                let (tx, _) = watch::channel(0);
                self.batches.insert(
                    batch_id,
                    Batch {
                        jobs: ids,
                        slots,
                        finished: Vec::new(),
                        notify: tx,
                        rewinds: 0,
                        request_id,
                    },
                );
                report.batches += 1;
            }
            Loaded::Job(record) => self.load_record(*record)?,
            Loaded::Assigned(list) => {
                for (id, attempt) in list {
                    // Handed out for an attempt its record has not reached:
                    // it was running. Attempts never go down, so a logged
                    // attempt at or below the record's is history.
                    if let Some(job) = self.jobs.get_mut(&id)
                        && !job.is_finished()
                        && job.attempts < attempt
                    {
                        job.attempts = attempt;
                        job.state = JobState::Running;
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts a recovered record in the table, replacing an older one; a job
    /// that was running is marked RUNNING until recovery finishes.
    pub(super) fn load_record(&mut self, record: pb::JobRecord) -> anyhow::Result<()> {
        let was_running = record.running;
        let job = Job::from_record(record).map_err(anyhow::Error::msg)?;
        self.load_job(job, was_running);
        Ok(())
    }

    /// Puts a recovered job in the table (see [`State::load_record`]);
    /// returns its slot.
    fn load_job(&mut self, mut job: Job, was_running: bool) -> u32 {
        self.next_seq = self.next_seq.max(job.seq + 1);
        if let Some(key) = &job.x().idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
        if was_running {
            job.state = JobState::Running;
        }
        self.jobs.insert(job.id, job)
    }

    /// Ends recovery: queued jobs go back to their queues in order; jobs
    /// that were running are queued again at once, their attempt ended but
    /// not counted (the job did nothing wrong; a worker that reconnects and
    /// delivers its result before the job is handed out again still has it
    /// recorded); batches learn which of their jobs are finished.
    pub fn finish_recovery(&mut self, report: &mut RecoveryReport) {
        // In slot order, each job read in its slot: no id is hashed for
        // the millions of jobs a restart may bring back, and the ready
        // queues are built at once from what they gather.
        self.queues.gather();
        for slot in 0..self.jobs.slot_count() {
            let Some(job) = self.jobs.at(slot) else {
                continue;
            };
            let (id, state, not_before) = (job.id, job.state, job.not_before_ms);
            match state {
                JobState::Running => {
                    self.counts[JobState::Running as usize] += 1;
                    report.requeued += 1;
                    self.end_uncounted(id, "the master restarted while the job ran");
                }
                JobState::Queued => {
                    self.counts[JobState::Queued as usize] += 1;
                    report.queued += 1;
                    self.enqueue_hinted(id, Some(&slot), not_before);
                }
                other => {
                    self.counts[other as usize] += 1;
                    report.finished += 1;
                }
            }
        }
        self.queues.build_gathered();
        let batch_ids: Vec<BatchId> = self.batches.keys().copied().collect();
        for b in batch_ids {
            // The slot hints loading could not fill: jobs the batch lists
            // but did not create, and a reopened batch's own jobs.
            if let Some(batch) = self.batches.get_mut(&b) {
                for (slot, id) in batch.slots.iter_mut().zip(&batch.jobs) {
                    if *slot == u32::MAX {
                        *slot = self.jobs.slot_of(id).unwrap_or(u32::MAX);
                    }
                }
            }
            let batch = &self.batches[&b];
            // A job not in memory left with its closed batch: finished.
            let mut finished: Vec<(u64, u32)> = self
                .jobs
                .of_batch(batch)
                .enumerate()
                .filter_map(|(i, j)| match j {
                    Some(j) => j.is_finished().then_some((j.x().finished_at_ms, i as u32)),
                    None => Some((0, i as u32)),
                })
                .collect();
            finished.sort_unstable();
            // Jobs this batch lists but did not create, finished or not
            // (a retry may queue them again).
            for (i, j) in self.jobs.of_batch(batch).enumerate() {
                if j.is_none_or(|j| j.batch != b || j.index != i as u32) {
                    self.adopted
                        .entry(batch.jobs[i])
                        .or_default()
                        .push((b, i as u32));
                }
            }
            if let Some(batch) = self.batches.get_mut(&b) {
                batch.finished = finished.into_iter().map(|(_, i)| i).collect();
            }
            // Finished but not written closed (a crash came between).
            self.note_closing(b);
        }
        if !self.closing.is_empty() && self.durable {
            self.kick();
        }
        self.notify_pending.clear();
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryReport {
    /// Jobs queued again in their order.
    pub queued: u64,
    /// Jobs that were running, queued again (the attempt not counted).
    pub requeued: u64,
    /// Finished jobs, with their results.
    pub finished: u64,
    /// Batches.
    pub batches: u64,
}
