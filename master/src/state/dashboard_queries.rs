//! What the web dashboard reads that the `Queue` service does not offer:
//! a page of jobs by state, kind and batch; a page of batches with their
//! counts; when each worker was last heard from; and the running total of
//! finished jobs for the throughput chart.
//!
//! These are the only places the dashboard reads the state itself; every
//! other read and every action goes through the `Queue` service's handlers.
//! A page starts under the state's lock from what is in memory (open
//! batches and their jobs) and, with a durable store, is finished outside
//! the lock from the store's closed batches ([`JobsRead::finish`],
//! [`BatchesRead::finish`]): the store's pages are read newest first and
//! stop at the page's end. Each costs at most one pass over the jobs in
//! memory it filters (a batch's jobs when a batch is named), and never
//! returns more than one page.

use super::*;
use closing::store_error;

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

/// A page of jobs begun from memory, finished from the store.
pub struct JobsRead {
    filter: JobFilter,
    /// The page, when memory holds all of it.
    done: Option<JobPage>,
    /// Memory's matches, newest first, up to the page's end.
    memory: Vec<pb::JobInfo>,
    /// How many jobs in memory match.
    memory_matched: usize,
    /// How many closed jobs match, when the counts tell (no kind filter).
    closed_matched: Option<u64>,
    /// A batch that is closed: its jobs are read from the store.
    closed_batch: Option<BatchId>,
    store: Option<Arc<dyn Store>>,
}

impl JobsRead {
    /// The page: what memory gave, with the store's closed jobs merged in
    /// (newest first), or a closed batch's jobs read from the store.
    pub fn finish(self) -> Result<JobPage, Error> {
        if let Some(page) = self.done {
            return Ok(page);
        }
        let Some(store) = self.store else {
            return Ok(JobPage::default());
        };
        let filter = &self.filter;
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let wanted = |r: &pb::JobRecord| {
            (filter.state == JobState::Unspecified || r.state == filter.state as i32)
                && (filter.kind == JobKind::Unspecified || r.kind == filter.kind as i32)
        };
        if let Some(b) = self.closed_batch {
            let batch = store.read_batch(&b).map_err(store_error)?.ok_or_else(|| {
                Error::NotFound(format!("batch_id: batch {b} is not known to this master"))
            })?;
            let mut page = JobPage::default();
            for (at, id) in batch.jobs.iter().enumerate() {
                let Some(record) = store.read_job(id).map_err(store_error)? else {
                    continue;
                };
                if !wanted(&record) {
                    continue;
                }
                if page.matched >= filter.offset && page.jobs.len() < limit {
                    page.jobs.push(stored_info(record, Some(at))?);
                }
                page.matched += 1;
            }
            return Ok(page);
        }
        let end = filter.offset.saturating_add(limit);
        let shown: HashSet<String> = self.memory.iter().map(|j| j.job_id.clone()).collect();
        let mut stored = Vec::new();
        let mut more = false;
        store
            .scan_closed_jobs_newest(&mut |r| {
                let finished = matches!(
                    JobState::try_from(r.state),
                    Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
                );
                if finished && wanted(&r) {
                    if stored.len() == end {
                        more = true;
                        return false;
                    }
                    stored.push(r);
                }
                true
            })
            .map_err(store_error)?;
        let in_memory = self.memory.len();
        let mut jobs = self.memory;
        for r in stored {
            let info = stored_info(r, None)?;
            if !shown.contains(&info.job_id) {
                jobs.push(info);
            }
        }
        let from_store = jobs.len() - in_memory;
        // Job ids are time-ordered UUIDs, and so are their strings.
        jobs.sort_unstable_by(|a, b| b.job_id.cmp(&a.job_id));
        let matched = self.memory_matched
            + match self.closed_matched {
                Some(n) => n as usize,
                // A kind filter: the counts do not tell; one more than was
                // seen while there is more, so the next page is offered.
                None => from_store + usize::from(more),
            };
        Ok(JobPage {
            jobs: jobs.into_iter().skip(filter.offset).take(limit).collect(),
            matched,
        })
    }
}

/// A page of batches begun from memory, finished from the store.
pub struct BatchesRead {
    /// Open batches (in memory), newest first, up to the page's end.
    memory: Vec<BatchSummary>,
    memory_total: usize,
    offset: usize,
    limit: usize,
    store: Option<Arc<dyn Store>>,
}

impl BatchesRead {
    /// The page: open batches first (they are the newest work), then
    /// closed ones from the store, newest first; and how many in all.
    pub fn finish(self) -> Result<(Vec<BatchSummary>, usize), Error> {
        let mut page: Vec<BatchSummary> = self
            .memory
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .collect();
        let Some(store) = self.store else {
            return Ok((page, self.memory_total));
        };
        let skip = self.offset.saturating_sub(self.memory_total);
        let room = self.limit - page.len();
        let (closed, closed_total) = store
            .closed_batches_newest(skip, room)
            .map_err(store_error)?;
        for (id, info) in closed {
            let mut counts = [0; 6];
            counts[JobState::Succeeded as usize] = info.succeeded;
            counts[JobState::Failed as usize] = info.failed;
            counts[JobState::Cancelled as usize] = info.cancelled;
            page.push(BatchSummary {
                id,
                total: info.succeeded + info.failed + info.cancelled,
                counts,
                submitted_ms: id.made_ms().unwrap_or_default(),
                last_finished_ms: info.closed_at_ms,
            });
        }
        Ok((page, self.memory_total + closed_total))
    }
}

impl State {
    /// A page of jobs matching `filter`, begun from memory; call
    /// [`JobsRead::finish`] outside the lock.
    pub fn dashboard_jobs(&self, filter: &JobFilter) -> Result<JobsRead, Error> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let wanted = |j: &Job| {
            (filter.state == JobState::Unspecified || j.state == filter.state)
                && (filter.kind == JobKind::Unspecified || j.kind == filter.kind)
        };
        let mut read = JobsRead {
            filter: filter.clone(),
            done: None,
            memory: Vec::new(),
            memory_matched: 0,
            closed_matched: None,
            closed_batch: None,
            store: self.archive().cloned(),
        };
        if let Some(b) = filter.batch {
            let Some(batch) = self.batches.get(&b) else {
                if read.store.is_some() {
                    read.closed_batch = Some(b);
                    return Ok(read);
                }
                return Err(self.batch_not_found(b));
            };
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
            read.done = Some(page);
            return Ok(read);
        }
        let mut matched: Vec<(u64, &Job)> = self
            .jobs
            .values()
            .filter(|j| wanted(j))
            .map(|j| (j.seq, j))
            .collect();
        let total = matched.len();
        let end = filter.offset.saturating_add(limit).min(total);
        // Newest first; only the jobs up to the page's end are sorted.
        let by_newest = |a: &(u64, &Job), b: &(u64, &Job)| b.0.cmp(&a.0);
        if end < total {
            matched.select_nth_unstable_by(end, by_newest);
            matched.truncate(end);
        }
        matched.sort_unstable_by(by_newest);
        if read.store.is_none() {
            read.done = Some(JobPage {
                jobs: matched
                    .iter()
                    .skip(filter.offset)
                    .map(|(_, j)| j.info())
                    .collect(),
                matched: total,
            });
            return Ok(read);
        }
        // With the store, the page may hold closed jobs newer than these:
        // keep memory's first page-end matches for the merge.
        read.memory = matched.iter().map(|(_, j)| j.info()).collect();
        read.memory_matched = total;
        if filter.kind == JobKind::Unspecified {
            let closed = |s: JobState| self.archived[s as usize];
            read.closed_matched = Some(match filter.state {
                JobState::Unspecified => {
                    closed(JobState::Succeeded)
                        + closed(JobState::Failed)
                        + closed(JobState::Cancelled)
                }
                s => closed(s),
            });
        }
        Ok(read)
    }

    /// A page of batches, newest first, with how many of their jobs are in
    /// each state, begun from memory (open batches); call
    /// [`BatchesRead::finish`] outside the lock for the closed ones.
    pub fn dashboard_batches(&self, offset: usize, limit: usize) -> BatchesRead {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut ids: Vec<&BatchId> = self.batches.keys().collect();
        let total = ids.len();
        // UUID v7: ordered by when they were made.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let memory = ids
            .into_iter()
            .take(offset.saturating_add(limit))
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
        BatchesRead {
            memory,
            memory_total: total,
            offset,
            limit,
            store: self.archive().cloned(),
        }
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
