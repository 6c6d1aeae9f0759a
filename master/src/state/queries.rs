//! Queries: what clients read (ids resolved, jobs, stats, listings).

use super::*;
use crate::store::StoredBatch;
use closing::store_error;

impl State {
    /// The ids a request names: a batch's jobs in order, or the given ids.
    pub fn resolve(&self, job_ids: &[String], batch_id: &str) -> Result<Vec<JobId>, Error> {
        if !batch_id.is_empty() {
            let id = BatchId::parse("batch_id", batch_id)?;
            return match self.batches.get(&id) {
                Some(b) => Ok(b.jobs.clone()),
                None => match self.stored_batch(&id)? {
                    Some(b) => Ok(b.jobs),
                    None => Err(self.batch_not_found(id)),
                },
            };
        }
        if job_ids.is_empty() {
            return Err(Error::invalid(
                "job_ids: name at least one job id, or a batch_id",
            ));
        }
        let mut out = Vec::with_capacity(job_ids.len());
        for (i, raw) in job_ids.iter().enumerate() {
            let id = JobId::parse(&format!("job_ids[{i}]"), raw)?;
            if !self.jobs.contains_key(&id) {
                // The CLI takes a batch id where it takes job ids: the
                // one place an id is looked up as either kind.
                if let Some(b) = self.batches.get(&BatchId::from_uuid(id.uuid())) {
                    out.extend_from_slice(&b.jobs);
                    continue;
                }
                // Finished work that left memory is in the store.
                if let Some(store) = &self.archive
                    && store.has_job(&id).map_err(store_error)?
                {
                    out.push(id);
                    continue;
                }
                if let Some(b) = self.stored_batch(&BatchId::from_uuid(id.uuid()))? {
                    out.extend_from_slice(&b.jobs);
                    continue;
                }
                // Either kind of id may have been meant.
                return Err(self.not_found("job or batch", &id, id.made_ms()));
            }
            out.push(id);
        }
        Ok(out)
    }

    /// A batch that left memory, read from the store.
    pub fn stored_batch(&self, id: &BatchId) -> Result<Option<StoredBatch>, Error> {
        match &self.archive {
            Some(store) => store.read_batch(id).map_err(store_error),
            None => Ok(None),
        }
    }

    /// Whether a job is finished or left memory (a job not in memory left
    /// with its closed batch, or was purged).
    pub fn is_done(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_none_or(|j| j.is_finished())
    }

    /// Whether every named job is finished.
    pub fn all_finished(&self, ids: &[JobId]) -> bool {
        ids.iter()
            .all(|id| self.jobs.get(id).is_none_or(|j| j.is_finished()))
    }

    /// A job, if known.
    pub(crate) fn job(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// The job at `index` in a batch, if in memory (found by the batch's
    /// slot hint when it still holds it).
    pub(crate) fn job_in(&self, b: &Batch, index: usize) -> Option<&Job> {
        self.jobs.in_batch(b, index)
    }

    /// Whether a job is finished.
    pub(crate) fn is_finished(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_some_and(|j| j.is_finished())
    }

    /// A receiver that changes whenever a job of `batch` finishes.
    pub fn subscribe(&self, batch: &BatchId) -> Option<watch::Receiver<u64>> {
        self.batches.get(batch).map(|b| b.notify.subscribe())
    }

    /// Figures for `Stats`.
    pub fn stats(&self) -> pb::StatsResponse {
        let now_s = self.started.elapsed().as_secs();
        // The current second is still filling: average the ten before it.
        let recent: u64 = self
            .counters
            .per_second
            .iter()
            .filter(|(s, _)| *s < now_s && *s + 10 >= now_s)
            .map(|(_, n)| n)
            .sum();
        let mut workers: Vec<pb::WorkerInfo> = self
            .sessions
            .iter()
            .map(|(id, s)| pb::WorkerInfo {
                worker_id: id.to_string(),
                name: s.name.to_string(),
                host: s.host.clone(),
                cpu_slots: s.cpu_slots,
                io_slots: s.io_slots,
                running: s.held.len() as u32,
                completed: s.completed,
                child_pids: s.child_pids.clone(),
                children_restarted: s.children_restarted,
                version: s.version.clone(),
                draining: s.draining,
                connected_s: (self.now_ms().saturating_sub(s.connected_at_ms)) / 1000,
                pid: s.pid,
                kinds: s.kinds.clone(),
                python_modules: s.python_modules.iter().map(|m| m.to_string()).collect(),
                python_slots: s.python_slots,
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        let (waiting_for_capability, missing_modules) = self.waiting_for_capability();
        pb::StatsResponse {
            queued: self.count(JobState::Queued),
            running: self.count(JobState::Running),
            succeeded: self.count(JobState::Succeeded),
            failed: self.count(JobState::Failed),
            cancelled: self.count(JobState::Cancelled),
            workers,
            jobs_per_s: recent as f64 / 10.0,
            late_results_dropped: self.counters.late_results_dropped,
            retried: self.counters.retried,
            version: drover_common::VERSION.to_string(),
            uptime_s: now_s,
            waiting_for_capability,
            missing_modules,
            // The service fills these in: the state does not know.
            leader_epoch: 0,
            leader_address: String::new(),
        }
    }

    /// A page of a listing from memory: the first `max` jobs in `req`'s
    /// state (or all) and batch (or any) after `after`, oldest first by
    /// id (the store's order, with which the service merges them: by
    /// submission `seq` the two orders part where a restart's clock went
    /// back, and a page's cursor skipped or repeated jobs), and whether
    /// more matched. The service renders them while it holds the lock.
    pub(crate) fn list(
        &self,
        req: &pb::ListJobsRequest,
        after: Option<JobId>,
        max: usize,
    ) -> Result<(Vec<&Job>, bool), Error> {
        let state = JobState::try_from(req.state)
            .map_err(|_| Error::invalid(format!("state: unknown state {}", req.state)))?;
        let batch = if req.batch_id.is_empty() {
            None
        } else {
            Some(BatchId::parse("batch_id", &req.batch_id)?)
        };
        let mut matched: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| state == JobState::Unspecified || j.state == state)
            .filter(|j| batch.is_none_or(|b| j.batch == b))
            .filter(|j| after.is_none_or(|a| j.id > a))
            .collect();
        // The page's jobs without sorting all of them: a listing of a
        // million queued jobs is read a page at a time, under the lock.
        let more = matched.len() > max;
        if more {
            matched.select_nth_unstable_by_key(max, |j| j.id);
            matched.truncate(max);
        }
        matched.sort_unstable_by_key(|j| j.id);
        Ok((matched, more))
    }

    /// Ids of every failed job.
    pub fn failed_ids(&self) -> Vec<JobId> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Failed)
            .map(|j| j.id)
            .collect()
    }
}
