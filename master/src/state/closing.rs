//! Closing: a batch whose every job is finished leaves memory. With the
//! durable store it is written closed in the commit that finishes it, and
//! leaves once that commit is written ([`State::committed`]); its jobs are
//! then read from the store on demand. With the memory store, finished
//! batches are evicted, oldest first, once more finished jobs are kept
//! than the bound ([`State::evict_over_bound`]). A retry of a job that left
//! brings its batch back ([`State::reopen`]).

use super::*;
use crate::store::{ClosedCounts, encode_closed_batch};

impl State {
    /// Notes a batch whose finished list has caught up with its jobs: it
    /// may close.
    pub(super) fn note_closing(&mut self, batch: BatchId) {
        if let Some(b) = self.batches.get(&batch)
            && b.finished.len() >= b.jobs.len()
        {
            self.closing.push_back(batch);
        }
    }

    /// The jobs in memory a batch made, each once: a batch may list its
    /// own job twice (two of its specs with the same new key), and lists
    /// jobs of other batches named again by key.
    fn own_jobs<'a>(&'a self, id: BatchId, b: &'a Batch) -> impl Iterator<Item = &'a Job> {
        self.jobs
            .of_batch(b)
            .enumerate()
            .filter_map(move |(i, j)| j.filter(|j| j.batch == id && j.index as usize == i))
    }

    /// Whether every job a batch lists is finished (a job not in memory
    /// left with its own closed batch, so it is finished).
    fn all_done(&self, b: &Batch) -> bool {
        self.jobs
            .of_batch(b)
            .all(|j| j.is_none_or(Job::is_finished))
    }

    /// Writes the batches that closed since the last commit as closed
    /// records into `changes` (commit `number`); they leave memory once it
    /// is written. Their jobs' last records are in the same commit.
    pub(super) fn take_closing(&mut self, number: u64, changes: &mut Changes) {
        let now = self.now_ms();
        let mut seen = HashSet::new();
        for id in std::mem::take(&mut self.closing) {
            let Some(b) = self.batches.get(&id) else {
                continue;
            };
            if !seen.insert(id) || !self.all_done(b) {
                continue;
            }
            let mut info = pb::ClosedInfo {
                closed_at_ms: now,
                ..Default::default()
            };
            // The bytes of its jobs' records, when this master wrote each
            // (the store reads them back otherwise).
            let mut own_bytes = Some(0u64);
            for j in self.own_jobs(id, b) {
                match j.state {
                    JobState::Succeeded => info.succeeded += 1,
                    JobState::Failed => info.failed += 1,
                    _ => info.cancelled += 1,
                }
                own_bytes = own_bytes
                    .filter(|_| j.record_len > 0)
                    .map(|sum| sum + u64::from(j.record_len));
            }
            if let Some(bytes) = own_bytes {
                changes.closed_own_bytes.insert(id, bytes);
            }
            let request_id = b.request_id.as_deref().unwrap_or_default();
            changes.batches.push((
                id,
                encode_closed_batch(&b.jobs, &b.finished, request_id, now),
            ));
            self.closed_in
                .push((number, id, [info.succeeded, info.failed, info.cancelled]));
            changes.closed.push((id, info));
        }
    }

    /// Called once commit `number` is written, with the store's counts of
    /// closed jobs as of it: the batches it closed leave memory, unless
    /// something changed them since (a retry), and the counts shown for
    /// what left are the store's, less those of batches it counts closed
    /// that are kept in memory (`closed_kept`), which memory counts.
    ///
    /// Returns what left memory, for the caller to drop once it has let go
    /// of the lock: freeing a closed batch of 200,000 jobs (their
    /// arguments and results) took longer than taking them out, while
    /// every request waited for the lock.
    pub fn committed(&mut self, number: u64, closed: ClosedCounts) -> Evicted {
        let mut evicted = Evicted::default();
        self.purging.clear();
        // Opened again or purged by now: the store no longer counts them.
        let (unclosed, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unclosed_in)
            .into_iter()
            .partition(|(n, _)| *n <= number);
        self.unclosed_in = later;
        for (_, id) in unclosed {
            self.closed_kept.remove(&id);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed_in)
            .into_iter()
            .partition(|(n, _, _)| *n <= number);
        self.closed_in = later;
        for (_, id, counts) in due {
            self.closed_kept.remove(&id);
            // Every job finished and written: one pass over the batch.
            let clean = self.batches.get(&id).is_some_and(|b| {
                self.jobs
                    .of_batch(b)
                    .all(|j| j.is_none_or(|j| j.is_finished() && !j.dirty))
            }) && !self.dirty_batches.contains(&id);
            if clean && self.archive.is_some() {
                let (batch, jobs) = self.take_out(id, true);
                evicted.batches.extend(batch);
                evicted.jobs.extend(jobs);
            } else if self.batches.contains_key(&id) {
                // Changed since (a retry): it stays, and memory counts it.
                self.closed_kept.insert(id, counts);
            }
        }
        let mut kept = [0u64; 3];
        for counts in self.closed_kept.values() {
            for (k, c) in kept.iter_mut().zip(counts) {
                *k += c;
            }
        }
        self.archived[JobState::Succeeded as usize] = closed[0].saturating_sub(kept[0]);
        self.archived[JobState::Failed as usize] = closed[1].saturating_sub(kept[1]);
        self.archived[JobState::Cancelled as usize] = closed[2].saturating_sub(kept[2]);
        evicted
    }

    /// With the memory store: counts the bytes of the batches that
    /// finished since the last call, against the byte budget.
    fn count_closing_bytes(&mut self) {
        if self.durable || self.retention_bytes == u64::MAX {
            return;
        }
        let start = self.closing_counted.min(self.closing.len());
        for i in start..self.closing.len() {
            let id = self.closing[i];
            let Some(b) = self.batches.get(&id).filter(|b| self.all_done(b)) else {
                continue;
            };
            let bytes: u64 =
                self.own_jobs(id, b).map(Job::stored_bytes).sum::<u64>() + 16 * b.jobs.len() as u64;
            let was = self.closing_bytes.insert(id, bytes).unwrap_or(0);
            self.finished_bytes = self.finished_bytes - was + bytes;
        }
        self.closing_counted = self.closing.len();
    }

    /// Forgets the bytes counted for a batch that left or is open again.
    pub(super) fn uncount_bytes(&mut self, id: &BatchId) {
        if let Some(n) = self.closing_bytes.remove(id) {
            self.finished_bytes -= n;
        }
    }

    /// With the memory store: evicts the batches that finished first while
    /// more finished jobs are kept than the bound, or more bytes of them
    /// than the byte budget. Returns how many jobs went.
    pub fn evict_over_bound(&mut self) -> usize {
        let finished = |st: &State| {
            st.counts[JobState::Succeeded as usize]
                + st.counts[JobState::Failed as usize]
                + st.counts[JobState::Cancelled as usize]
        };
        self.count_closing_bytes();
        let mut evicted = 0;
        while (finished(self) > self.keep_finished || self.finished_bytes > self.retention_bytes)
            && let Some(id) = self.closing.pop_front()
        {
            self.closing_counted = self.closing_counted.saturating_sub(1);
            if !self.batches.get(&id).is_some_and(|b| self.all_done(b)) {
                // Open again (a retry): counted again when it finishes.
                self.uncount_bytes(&id);
            } else {
                // What leaves is still counted, as the store's closed
                // counts are with redb: Stats' totals never go down.
                let own: Vec<JobState> = self
                    .own_jobs(id, &self.batches[&id])
                    .map(|j| j.state)
                    .collect();
                for state in own {
                    self.archived[state as usize] += 1;
                }
                evicted += self.evict(id);
                if let Some(ms) = id.made_ms() {
                    self.evicted_upto_ms = self.evicted_upto_ms.max(ms);
                }
            }
        }
        evicted
    }

    /// Takes a finished batch and its own jobs out of memory. Returns how
    /// many jobs went.
    fn evict(&mut self, id: BatchId) -> usize {
        self.take_out(id, true).1.len()
    }

    /// Takes a batch and its own jobs out of memory, with their request id
    /// and keys, and the batch from the jobs it named again; returns the
    /// batch and its own jobs taken out. An own job named again by a batch
    /// still in memory keeps that link if `keep_adopted` (it left to the
    /// store, and a retry brings it back), else the link goes too. Its
    /// jobs are found by their slots (a hash of each id was most of the
    /// time this took, under the lock).
    pub(super) fn take_out(
        &mut self,
        id: BatchId,
        keep_adopted: bool,
    ) -> (Option<Batch>, Vec<Job>) {
        let Some(batch) = self.batches.remove(&id) else {
            return (None, Vec::new());
        };
        self.uncount_bytes(&id);
        if let Some(r) = &batch.request_id
            && self.requests.get(r) == Some(&id)
        {
            self.requests.remove(r);
        }
        if !self.adopted.is_empty() {
            for job_id in &batch.jobs {
                if let Some(adopters) = self.adopted.get_mut(job_id) {
                    adopters.retain(|(a, _)| *a != id);
                    if adopters.is_empty() {
                        self.adopted.remove(job_id);
                    }
                }
            }
        }
        let mut gone = Vec::new();
        for (i, job_id) in batch.jobs.iter().enumerate() {
            let Some(job) = self
                .jobs
                .take_if_hinted(job_id, batch.slot(i), |j| j.batch == id)
            else {
                continue;
            };
            if !keep_adopted && !self.adopted.is_empty() {
                self.adopted.remove(job_id);
            }
            self.counts[job.state as usize] -= 1;
            if let Some(key) = &job.x().idempotency_key
                && self.idempotency.get(key.as_ref()) == Some(job_id)
            {
                self.idempotency.remove(key.as_ref());
            }
            gone.push(job);
        }
        (Some(batch), gone)
    }

    /// Brings a closed batch back from the store into memory, with its own
    /// jobs (a retry of one of them queues it again). Returns whether the
    /// batch is in memory now.
    pub(super) fn reopen(&mut self, id: BatchId) -> Result<bool, Error> {
        if self.batches.contains_key(&id) {
            return Ok(true);
        }
        // A purge being written takes its records: the batch has expired.
        if self.purging.contains(&id) {
            return Ok(false);
        }
        let Some(store) = self.archive.clone() else {
            return Ok(false);
        };
        let Some(stored) = store.read_batch(&id).map_err(store_error)? else {
            return Ok(false);
        };
        // The store counts it closed until the commit opening it again is
        // written (see `committed`).
        let mut kept = [0u64; 3];
        let mut back = HashSet::new();
        for job_id in &stored.jobs {
            if self.jobs.contains_key(job_id) {
                continue;
            }
            let Some(record) = store.read_job(job_id).map_err(store_error)? else {
                continue;
            };
            if record.batch != id.as_bytes() {
                continue;
            }
            let job = Job::from_record(record).map_err(Error::Internal)?;
            match job.state {
                JobState::Succeeded => kept[0] += 1,
                JobState::Failed => kept[1] += 1,
                _ => kept[2] += 1,
            }
            self.counts[job.state as usize] += 1;
            let a = &mut self.archived[job.state as usize];
            *a = a.saturating_sub(1);
            if let Some(key) = &job.x().idempotency_key {
                self.idempotency.insert(key.clone(), job.id);
            }
            self.next_seq = self.next_seq.max(job.seq + 1);
            back.insert(job.id);
            self.jobs.insert(job.id, job);
        }
        let mut finished = stored.finished.clone();
        if finished.is_empty() {
            finished = (0..stored.jobs.len() as u32).collect();
        }
        for (i, job_id) in stored.jobs.iter().enumerate() {
            if self
                .jobs
                .get(job_id)
                .is_none_or(|j| j.batch != id || j.index != i as u32)
            {
                self.adopted
                    .entry(*job_id)
                    .or_default()
                    .push((id, i as u32));
            }
        }
        let request_id =
            (!stored.request_id.is_empty()).then(|| stored.request_id.into_boxed_str());
        if let Some(r) = &request_id {
            self.requests.insert(r.clone(), id);
        }
        self.closed_kept.insert(id, kept);
        let (tx, _) = watch::channel(0);
        self.batches.insert(
            id,
            Batch {
                jobs: stored.jobs,
                slots: Vec::new(),
                finished,
                notify: tx,
                rewinds: 0,
                request_id,
            },
        );
        // Counted open again at the next commit (see `retry_jobs`). A
        // retention purge of it not yet taken by the committer is called
        // off: its records stay, its jobs' too (a purge of it while in
        // memory, see `purge_expired`, deletes them one by one).
        self.deleted_batches.retain(|b| *b != id);
        if !back.is_empty() {
            self.deleted_jobs.retain(|j| !back.contains(j));
        }
        Ok(true)
    }

    /// The store, if finished work is read from it.
    pub fn archive(&self) -> Option<&Arc<dyn Store>> {
        self.archive.as_ref()
    }
}

/// A store read that failed, for a client.
pub(crate) fn store_error(e: anyhow::Error) -> Error {
    Error::Internal(format!("reading the store failed: {e:#}"))
}
