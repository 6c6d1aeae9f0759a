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
            let Some(batch) = self.batches.remove(&b) else {
                continue;
            };
            if let Some(r) = &batch.request_id {
                self.requests.remove(r);
            }
            for id in &batch.jobs {
                if let Some(adopters) = self.adopted.get_mut(id) {
                    adopters.retain(|(a, _)| *a != b);
                    if adopters.is_empty() {
                        self.adopted.remove(id);
                    }
                }
            }
            for id in &batch.jobs {
                if self.jobs.get(id).is_none_or(|j| j.batch != b) {
                    continue;
                }
                if let Some(job) = self.jobs.remove(id) {
                    self.adopted.remove(id);
                    self.counts[job.state as usize] -= 1;
                    if let Some(key) = &job.x().idempotency_key {
                        self.idempotency.remove(key.as_ref());
                    }
                    if self.durable {
                        self.deleted_jobs.push(*id);
                    }
                    purged += 1;
                }
            }
            if self.durable {
                self.deleted_batches.push(b);
                self.kick();
            }
        }
        purged
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
    fn not_found(&self, what: &str, id: &dyn std::fmt::Display, made_ms: Option<u64>) -> Error {
        let now = (self.clock)();
        match made_ms {
            Some(ms) if ms >= self.created_at_ms && ms + self.retention_ms <= now => {
                Error::NotFound(format!(
                    "{what} {id} has expired: finished jobs are kept for {} s (master flag --retention)",
                    self.retention_ms / 1000
                ))
            }
            _ => Error::NotFound(format!("{what} {id} is not known")),
        }
    }
}
