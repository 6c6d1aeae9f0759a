//! The journal of changes the committer takes: jobs and batches marked
//! dirty under the lock, the assignment log, and the commit ticket a
//! change must wait for before anyone is told of it.

use super::encode::encode_batch_of;
use super::*;

impl State {
    /// Takes every change since the last commit, encoded, with the number
    /// of the commit that will hold it; `None` when nothing changed.
    pub fn take_changes(&mut self) -> Option<(u64, Changes)> {
        // Tickets were handed out for the pending commit only if kicked: it
        // must then be numbered and published, even if it writes nothing.
        if !self.kicked {
            return None;
        }
        self.kicked = false;
        let number = self.pending_commit;
        // Now and then every running job is written whole, so the
        // assignment log before this commit can go.
        let truncate_log = number.is_multiple_of(LOG_COMPACT_EVERY);
        if truncate_log {
            let running: Vec<JobId> = self
                .sessions
                .values()
                .flat_map(|s| s.held.iter().copied())
                .collect();
            for id in running {
                self.mark(id);
            }
            self.kicked = false;
        }
        // Batches this commit purges: a retry may not bring them back
        // while it is written (see `reopen`).
        self.purging = self.deleted_batches.iter().copied().collect();
        let mut changes = Changes {
            deleted_jobs: std::mem::take(&mut self.deleted_jobs),
            deleted_batches: std::mem::take(&mut self.deleted_batches),
            assignments: std::mem::take(&mut self.assign_log),
            reopened: std::mem::take(&mut self.reopened),
            unfailed: std::mem::take(&mut self.unfailed),
            budget_purged_upto_ms: std::mem::take(&mut self.pending_budget_upto_ms),
            number,
            truncate_log,
            ..Changes::default()
        };
        let mut scratch = Vec::new();
        for id in std::mem::take(&mut self.dirty_batches) {
            let Some(b) = self.batches.get(&id) else {
                continue;
            };
            // The jobs this batch created travel inside its record, as
            // they are now; their later changes go to their own records.
            // A finished job also gets its own record (it stays dirty): a
            // closed batch's record lists its jobs but holds none.
            for (i, job_id) in b.jobs.iter().enumerate() {
                if let Some(job) = self.jobs.get_mut_hinted(job_id, b.slot(i))
                    && job.batch == id
                {
                    if !job.is_finished() {
                        job.dirty = false;
                    }
                    if let Some(key) = &job.x().idempotency_key {
                        changes.keys.push((key.to_string(), job.id));
                    }
                }
            }
            let request_id = b.request_id.as_deref().unwrap_or_default();
            if !request_id.is_empty() {
                changes.requests.push((request_id.to_string(), id));
            }
            let created = self
                .jobs
                .of_batch(b)
                .flatten()
                .filter(|job| job.batch == id);
            let record = encode_batch_of(&b.jobs, created, request_id, &mut scratch);
            changes.batches.push((id, record));
        }
        for (id, slot) in std::mem::take(&mut self.dirty_jobs) {
            if let Some(job) = self.jobs.get_mut_hinted(&id, Some(&slot))
                && job.dirty
            {
                job.dirty = false;
                let mut record = Vec::with_capacity(job.arg.len() + 96);
                job.encode_record(&mut record);
                // A record is bounded far below 4 GiB (the message limit);
                // 0 says "unknown" should it not be.
                job.record_len = u32::try_from(record.len()).unwrap_or(0);
                changes.jobs.push(JobWrite {
                    id,
                    state: job.state,
                    record,
                });
            }
        }
        self.take_closing(number, &mut changes);
        // A batch reopened (a retry) and closed again (a cancel) within
        // this commit is closed: the store must not count it open.
        if !changes.closed.is_empty() {
            let closed: HashSet<BatchId> = changes.closed.iter().map(|(b, _)| *b).collect();
            changes.reopened.retain(|b| !closed.contains(b));
        }
        // Once written, the store no longer counts these closed.
        for b in changes.reopened.iter().chain(&changes.deleted_batches) {
            self.unclosed_in.push((number, *b));
        }
        changes.next_seq = self.next_seq;
        self.pending_commit += 1;
        Some((number, changes))
    }

    /// Notes that the pending commit has something to write, and wakes the
    /// committer the first time.
    pub(super) fn kick(&mut self) {
        if !self.kicked {
            self.kicked = true;
            if let Some(k) = &self.kick {
                let _ = k.send(());
            }
        }
    }

    /// Marks a job changed: its record is written in the pending commit.
    pub(super) fn mark(&mut self, id: JobId) {
        if !self.durable {
            return;
        }
        match self.jobs.slot_of(&id) {
            Some(slot) => self.mark_slotted(id, slot),
            None => self.kick(),
        }
    }

    /// [`State::mark`] of the job at table slot `slot`, which must be the
    /// job's (as [`JobTable::hinted_slot`] gives it): it is listed with the
    /// job for the commit (where a wrong one would only cost a lookup).
    pub(super) fn mark_slotted(&mut self, id: JobId, slot: u32) {
        if !self.durable {
            return;
        }
        if let Some(job) = self.jobs.get_mut_hinted(&id, Some(&slot))
            && !job.dirty
        {
            job.dirty = true;
            self.dirty_jobs.push((id, slot));
        }
        self.kick();
    }

    /// Wraps what a change produced with the commit it waits for.
    pub(super) fn outgoing(&mut self, messages: Vec<(Outbox, pb::MasterMessage)>) -> Outgoing {
        let notify = self
            .notify_pending
            .drain(..)
            .filter_map(|b| self.batches.get(&b).map(|b| b.notify.clone()))
            .collect();
        Outgoing {
            ticket: self.ticket(),
            messages,
            notify,
        }
    }

    /// The commit that holds every change visible now: the pending one if
    /// anything changed since the last was taken, else the last taken
    /// (which may still be being written). A reply or a message built from
    /// what the state shows waits for it, so nobody is told of a change a
    /// crash could undo, including a change another request made.
    /// `None` with no store.
    pub fn ticket(&self) -> Option<u64> {
        if !self.durable {
            return None;
        }
        Some(if self.kicked {
            self.pending_commit
        } else {
            self.pending_commit - 1
        })
    }
}
