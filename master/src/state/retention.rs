//! Retention: finished jobs purged a batch at a time, and the error that
//! tells an expired id from one never seen.

use super::*;

impl State {
    /// Purges jobs finished longer ago than the retention period, and
    /// batches left empty. Returns how many jobs went.
    pub fn purge_expired(&mut self) -> usize {
        let cutoff = (self.clock)().saturating_sub(self.retention_ms);
        // A whole batch at a time: its record holds its jobs' first state,
        // so a job purged alone would come back at the next recovery.
        let expired: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(id, b)| {
                // Every job it lists, its own and those it named again by
                // key: a batch of only such jobs is not expired while they
                // run. And none of its own jobs may be named by a batch that
                // is kept: that batch would lose it.
                b.jobs.iter().all(|j| match self.jobs.get(j) {
                    Some(job) => {
                        job.is_finished()
                            && job.x().finished_at_ms < cutoff
                            && (job.batch != **id
                                || self
                                    .adopted
                                    .get(j)
                                    .is_none_or(|by| by.iter().all(|(other, _)| other == *id)))
                    }
                    None => true,
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let mut purged = 0;
        for b in expired {
            let (_, gone) = self.take_out(b, false);
            purged += gone.len();
            if self.durable {
                self.deleted_jobs.extend(gone.iter().map(|j| j.id));
                self.deleted_batches.push(b);
                self.kick();
            }
        }
        purged
    }

    /// Purges closed batches the store holds past the retention period,
    /// or the oldest over the byte budget if `over_budget` (`ids`, read
    /// from its index by close time): their records, their jobs' and their
    /// index entries go in the next commit. A batch back in memory (a retry
    /// reopened it) is kept. Returns the ticket of the commit that does it,
    /// if any.
    pub fn purge_closed(&mut self, ids: &[BatchId], over_budget: bool) -> Option<u64> {
        let mut any = false;
        for id in ids {
            if self.batches.contains_key(id) || !self.durable {
                continue;
            }
            self.deleted_batches.push(*id);
            if over_budget && let Some(ms) = id.made_ms() {
                self.budget_purged_upto_ms = self.budget_purged_upto_ms.max(ms);
                self.pending_budget_upto_ms = self.pending_budget_upto_ms.max(ms);
            }
            any = true;
        }
        if !any {
            return None;
        }
        self.kick();
        self.ticket()
    }

    /// The error for a job not held (see [`State::not_found`]).
    pub(crate) fn job_not_found(&self, id: JobId) -> Error {
        self.not_found("job", &id, id.made_ms())
    }

    /// The error for a batch not held (see [`State::not_found`]).
    pub(crate) fn batch_not_found(&self, id: BatchId) -> Error {
        self.not_found("batch", &id, id.made_ms())
    }

    /// The error for an id not held: expired if it was made while this
    /// store existed and long enough ago to have been purged, else unknown.
    pub(super) fn not_found(
        &self,
        what: &str,
        id: &dyn std::fmt::Display,
        made_ms: Option<u64>,
    ) -> Error {
        let now = (self.clock)();
        match made_ms {
            Some(ms) if ms >= self.created_at_ms && ms + self.retention_ms <= now => {
                Error::NotFound(format!(
                    "{what} {id} has expired: finished jobs are kept for {} s (master flag --retention)",
                    self.retention_ms / 1000
                ))
            }
            Some(ms) if ms >= self.created_at_ms && ms <= self.budget_purged_upto_ms => {
                Error::NotFound(format!(
                    "{what} {id} was purged: finished work is kept up to {} bytes, oldest purged first (master flag --retention-bytes)",
                    self.retention_bytes
                ))
            }
            Some(ms) if ms >= self.created_at_ms && ms <= self.evicted_upto_ms => {
                let bytes = if self.retention_bytes < u64::MAX {
                    format!(
                        " and up to {} bytes of them (--retention-bytes)",
                        self.retention_bytes
                    )
                } else {
                    String::new()
                };
                Error::NotFound(format!(
                    "{what} {id} was evicted: the memory store keeps the last {} finished jobs (master flag --keep-finished){bytes}",
                    self.keep_finished
                ))
            }
            _ => Error::NotFound(format!("{what} {id} is not known")),
        }
    }
}
