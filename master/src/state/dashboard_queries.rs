//! What the web dashboard reads that the `Queue` service does not offer:
//! a page of jobs by state, kind and batch; a page of batches with their
//! counts; when each worker was last heard from; and the running total of
//! finished jobs for the throughput chart.
//!
//! These are the only places the dashboard reads the state itself; every
//! other read and every action goes through the `Queue` service's handlers.
//! They read the in-memory job table: where finished jobs move to the
//! store, these functions are the ones to re-point. Each costs at most one
//! pass over the jobs it filters (a batch's jobs when a batch is named), and
//! never returns more than one page.

use super::*;

/// The most jobs or batches one dashboard page shows.
pub const MAX_PAGE: usize = 200;

/// Which jobs a dashboard page lists.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state (`Unspecified`: every state).
    pub state: JobState,
    /// Only jobs of this kind (`Unspecified`: every kind).
    pub kind: JobKind,
    /// Only the jobs of this batch, in their order in it.
    pub batch: Option<BatchId>,
    /// Jobs skipped before the page.
    pub offset: usize,
    /// Jobs on the page, at most [`MAX_PAGE`].
    pub limit: usize,
}

/// One page of jobs.
#[derive(Debug, Default)]
pub struct JobPage {
    /// The jobs on the page: a batch's in their order, else newest first.
    pub jobs: Vec<pb::JobInfo>,
    /// How many jobs matched the filter in all.
    pub matched: usize,
}

/// A batch as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct BatchSummary {
    /// The batch.
    pub id: BatchId,
    /// Its jobs.
    pub total: u64,
    /// Its jobs in each state, indexed by the state's wire value.
    pub counts: [u64; 6],
    /// When it was submitted (unix ms).
    pub submitted_ms: u64,
    /// When its last job so far finished (unix ms), 0 if none has.
    pub last_finished_ms: u64,
}

impl State {
    /// A page of jobs matching `filter`.
    pub fn dashboard_jobs(&self, filter: &JobFilter) -> Result<JobPage, Error> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let wanted = |j: &Job| {
            (filter.state == JobState::Unspecified || j.state == filter.state)
                && (filter.kind == JobKind::Unspecified || j.kind == filter.kind)
        };
        if let Some(b) = filter.batch {
            let batch = self
                .batches
                .get(&b)
                .ok_or_else(|| self.batch_not_found(b))?;
            let mut page = JobPage::default();
            for (at, id) in batch.jobs.iter().enumerate() {
                let Some(job) = self.jobs.get(id).filter(|j| wanted(j)) else {
                    continue;
                };
                if page.matched >= filter.offset && page.jobs.len() < limit {
                    page.jobs.push(job.info_at(at));
                }
                page.matched += 1;
            }
            return Ok(page);
        }
        let mut matched: Vec<(u64, &Job)> = self
            .jobs
            .values()
            .filter(|j| wanted(j))
            .map(|j| (j.seq, j))
            .collect();
        let total = matched.len();
        let end = filter.offset.saturating_add(limit).min(total);
        if filter.offset >= total {
            return Ok(JobPage {
                jobs: Vec::new(),
                matched: total,
            });
        }
        // Newest first; only the jobs up to the page's end are sorted.
        let by_newest = |a: &(u64, &Job), b: &(u64, &Job)| b.0.cmp(&a.0);
        if end < total {
            matched.select_nth_unstable_by(end, by_newest);
            matched.truncate(end);
        }
        matched.sort_unstable_by(by_newest);
        Ok(JobPage {
            jobs: matched[filter.offset..end]
                .iter()
                .map(|(_, j)| j.info())
                .collect(),
            matched: total,
        })
    }

    /// A page of batches, newest first, with how many of their jobs are in
    /// each state; and how many batches there are.
    pub fn dashboard_batches(&self, offset: usize, limit: usize) -> (Vec<BatchSummary>, usize) {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut ids: Vec<&BatchId> = self.batches.keys().collect();
        let total = ids.len();
        // UUID v7: ordered by when they were made.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let page = ids
            .into_iter()
            .skip(offset)
            .take(limit)
            .filter_map(|id| {
                let batch = self.batches.get(id)?;
                let mut summary = BatchSummary {
                    id: *id,
                    total: batch.jobs.len() as u64,
                    counts: [0; 6],
                    submitted_ms: id.made_ms().unwrap_or_default(),
                    last_finished_ms: 0,
                };
                for job in batch.jobs.iter().filter_map(|j| self.jobs.get(j)) {
                    summary.counts[job.state as usize] += 1;
                    summary.last_finished_ms = summary.last_finished_ms.max(job.x().finished_at_ms);
                }
                Some(summary)
            })
            .collect();
        (page, total)
    }

    /// How long ago (ms) each connected worker, by its `worker_id` as
    /// `Stats` names it, was last heard from.
    pub fn dashboard_heartbeats(&self) -> HashMap<String, u64> {
        let now = self.now_ms();
        self.sessions
            .iter()
            .map(|(id, s)| (id.to_string(), now.saturating_sub(s.last_seen_ms)))
            .collect()
    }

    /// Jobs finished (succeeded, failed or cancelled) since the master
    /// started: the dashboard charts its differences as jobs per second.
    pub fn finished_total(&self) -> u64 {
        self.counters.jobs.finished_total()
    }
}
