//! The `Queue` service: what clients call. Replies that carry results are
//! bounded in bytes (pages for `Get` and `ListJobs`, messages for `Watch`)
//! and sent only once what they show is committed.

use std::time::Duration;

use drover_common::Error;
use drover_common::ids::{BatchId, JobId};
use drover_common::pages::EncodedJobs;
use drover_common::pb::queue_server::Queue;
use drover_common::pb::{self};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{BoxStream, Master};
use crate::state::{Batch, Job, State, stored_info, stored_job};
use crate::store::{Store, StoredBatch};

/// Results per `WatchResponse`: large enough to batch, small enough that a
/// client sees progress.
const WATCH_CHUNK: usize = 4096;

/// The bytes of results one `GetResponse`, `ListJobsResponse` or
/// `WatchResponse` aims at: a quarter of the message limit, capped, so any
/// page fits well under it (a page always holds at least one job).
fn page_bytes(max_message_bytes: usize) -> usize {
    (max_message_bytes / 4).clamp(64 * 1024, 16 * 1024 * 1024)
}

/// Reads the position a page token names, within `len` jobs.
fn page_start(token: &str, len: usize) -> Result<usize, Error> {
    if token.is_empty() {
        return Ok(0);
    }
    match token.parse::<usize>() {
        Ok(n) if n <= len => Ok(n),
        _ => Err(Error::invalid(format!(
            "page_token: {token:?} is not a page of these {len} jobs; pass the next_page_token of the previous page"
        ))),
    }
}

/// Results gathered for one message, bounded in bytes and count, in
/// their wire form.
struct Page {
    jobs: EncodedJobs,
    budget: usize,
    max_jobs: usize,
}

impl Page {
    fn new(budget: usize, max_jobs: usize) -> Page {
        Page {
            jobs: EncodedJobs::default(),
            budget,
            max_jobs,
        }
    }

    fn bytes(&self) -> usize {
        self.jobs.as_bytes().len()
    }

    /// Whether the page holds what one message should.
    fn full(&self) -> bool {
        self.jobs.len() >= self.max_jobs || self.bytes() >= self.budget
    }
}

/// The jobs of a reply as taken under the lock, in order: those in memory
/// written at once into `hits`, and the places of those to read from the
/// store after it.
#[derive(Default)]
struct Slots {
    hits: EncodedJobs,
    list: Vec<Slot>,
}

/// One job of a reply.
enum Slot {
    /// Rendered from memory: its bytes in [`Slots::hits`].
    Hit(std::ops::Range<usize>),
    /// To read from the store after the lock (a finished job whose batch
    /// closed): the job, and its place in the batch read (if read by
    /// batch).
    Miss(JobId, Option<usize>),
}

impl Slots {
    /// Adds a job in memory, as read at place `index`.
    fn hit(&mut self, job: &Job, index: u32) {
        let start = self.hits.as_bytes().len();
        self.hits.push_with(|buf| job.encode_info(index, buf));
        self.list.push(Slot::Hit(start..self.hits.as_bytes().len()));
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// The bytes of the jobs rendered so far.
    fn bytes(&self) -> usize {
        self.hits.as_bytes().len()
    }
}

/// Adds the job at place `at` of batch `b` to a watch message being built
/// under the lock: from memory, or as a miss to read from the store after
/// it, which goes alone in its message. Returns false (nothing added) when
/// the job is a miss and the message already holds others.
fn take_slot(st: &State, b: &Batch, at: usize, slots: &mut Slots) -> bool {
    match st.job_in(b, at) {
        Some(j) => slots.hit(j, at as u32),
        None if slots.len() > 0 => return false,
        None => slots.list.push(Slot::Miss(b.jobs[at], Some(at))),
    }
    true
}

/// Jobs not in memory read from the store for one page, at most.
const MISSES_PER_PAGE: usize = 4096;

/// The most job records read from the store in one read transaction.
const MAX_READ_RUN: usize = 1024;

/// Fills `page` from `slots` in order until it is full; returns how many
/// slots it used. Misses are read from the store in runs, one read
/// transaction each: a run starts at one job and doubles while what it read
/// is small next to the page's budget, so small records cost few reads and
/// large ones are not read past the page. A job in neither memory nor the
/// store is an error, `gone(id)`: its record was purged or evicted with its
/// own batch while a batch that named it again by key was kept (or the
/// listing's own batch went meanwhile). Skipping it answered a short
/// listing as if complete, and a `watch` waiting for the rest reconnected
/// for ever. What the store holds is committed.
fn fill_page(
    page: &mut Page,
    slots: Slots,
    archive: Option<&dyn Store>,
    gone: &dyn Fn(JobId) -> Status,
) -> Result<usize, Status> {
    if page.jobs.is_empty()
        && (page.budget, page.max_jobs) == (usize::MAX, usize::MAX)
        && slots.list.iter().all(|s| matches!(s, Slot::Hit(_)))
    {
        // All rendered under the lock, and room for all: the page is
        // those bytes as they are.
        page.jobs = slots.hits;
        return Ok(slots.list.len());
    }
    let mut used = 0;
    let mut run = 1;
    let hits = slots.hits.as_bytes();
    let mut slots = slots.list.into_iter().peekable();
    while !page.full() {
        let Some(slot) = slots.next() else {
            break;
        };
        let first = match slot {
            Slot::Hit(bytes) => {
                page.jobs.extend_from(&hits[bytes], 1);
                used += 1;
                continue;
            }
            Slot::Miss(id, at) => (id, at),
        };
        let mut misses = vec![first];
        while misses.len() < run
            && let Some(Slot::Miss(id, at)) = slots.peek()
        {
            misses.push((*id, *at));
            slots.next();
        }
        let Some(store) = archive else {
            return Err(gone(first.0));
        };
        let ids: Vec<JobId> = misses.iter().map(|(id, _)| *id).collect();
        let records = store
            .read_jobs(&ids)
            .map_err(|e| Status::internal(format!("reading jobs from the store failed: {e:#}")))?;
        let before = page.bytes();
        for (record, (id, at)) in records.into_iter().zip(misses) {
            // A run read past a full page is dropped: the next page reads
            // those jobs again.
            if page.full() {
                break;
            }
            used += 1;
            match record {
                Some(record) => {
                    let job = stored_job(record)?;
                    let index = at.map_or(job.index, |at| at as u32);
                    page.jobs.push_with(|buf| job.encode_info(index, buf));
                }
                None => return Err(gone(id)),
            }
        }
        if (page.bytes() - before) * 8 < page.budget {
            run = (run * 2).min(MAX_READ_RUN);
        }
    }
    Ok(used)
}

/// A `ListJobs` page being built: its jobs as messages (they are merged
/// by id from memory and the store), bounded in bytes and count.
struct ListPage {
    jobs: Vec<pb::JobInfo>,
    bytes: usize,
    budget: usize,
    max_jobs: usize,
}

impl ListPage {
    fn new(budget: usize, max_jobs: usize) -> ListPage {
        ListPage {
            jobs: Vec::new(),
            bytes: 0,
            budget,
            max_jobs,
        }
    }

    fn push(&mut self, info: Option<pb::JobInfo>) {
        if let Some(info) = info {
            self.bytes += prost::Message::encoded_len(&info);
            self.jobs.push(info);
        }
    }

    /// Whether the page holds what one message should.
    fn full(&self) -> bool {
        self.jobs.len() >= self.max_jobs || self.bytes >= self.budget
    }
}

/// Jobs in one `ListJobs` page, at most: memory's part of a page is
/// rendered under the state's lock, which a page of tiny jobs filling the
/// byte bound (hundreds of thousands of them) would hold for too long.
const LIST_PAGE_JOBS: usize = 4096;

/// Reads the job a listing's page token names: the last one the previous
/// page showed (the listing goes on after it, in job id order).
fn list_after(token: &str) -> Result<Option<JobId>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    JobId::parse("page_token", token).map(Some).map_err(|_| {
        Error::invalid(format!(
            "page_token: {token:?} is not a page of this listing; pass the next_page_token of the previous page"
        ))
    })
}

/// One source's part of a listing page, memory's or the store's: jobs
/// after the page's cursor, oldest first by id.
#[derive(Debug, Default)]
struct Run {
    jobs: Vec<pb::JobInfo>,
    /// Whether more jobs matched after these: the run stopped at the
    /// page's bounds, so what follows it is unknown to the merge.
    more: bool,
}

/// The finished jobs the store holds that a listing shows after `after`
/// (those of `batch`, a closed one, or of every closed batch), oldest
/// first by id, as many as fit in `page`. One more matching job is looked
/// for past a full page, so `more` is exact.
fn stored_run(
    store: &dyn Store,
    req: &pb::ListJobsRequest,
    after: Option<JobId>,
    batch: Option<BatchId>,
    mut page: ListPage,
) -> Result<Run, Status> {
    // The store holds finished jobs only (a closed batch's): a listing of
    // queued or running ones is memory's whole, with no read of the
    // store (which, with no index of those states, was a scan of every
    // record ever kept).
    if matches!(
        pb::JobState::try_from(req.state),
        Ok(pb::JobState::Queued | pb::JobState::Running)
    ) {
        return Ok(Run::default());
    }
    let failed = |e: anyhow::Error| Status::internal(format!("reading the store failed: {e:#}"));
    let wanted = |r: &pb::JobRecord| {
        (req.state == 0 || r.state == req.state)
            && matches!(
                pb::JobState::try_from(r.state),
                Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
            )
    };
    let mut more = false;
    let mut corrupt = None;
    // Takes a record in id order; false once the page is full.
    let mut visit = |r: pb::JobRecord| {
        if !wanted(&r) {
            return true;
        }
        if page.full() {
            more = true;
            return false;
        }
        match stored_info(r, None) {
            Ok(info) => page.push(Some(info)),
            Err(e) => corrupt = Some(e),
        }
        corrupt.is_none()
    };
    match batch {
        Some(b) => {
            if let Some(closed) = store.read_batch(&b).map_err(failed)? {
                // Its own jobs, each once (a key named twice in a submit
                // lists its job twice), in id order.
                let mut ids = closed.jobs;
                ids.retain(|id| after.is_none_or(|a| *id > a));
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    if let Some(r) = store.read_job(&id).map_err(failed)?
                        && r.batch == b.as_bytes()
                        && !visit(r)
                    {
                        break;
                    }
                }
            }
        }
        // Failed and cancelled jobs from the store's index of them.
        None => match pb::JobState::try_from(req.state) {
            Ok(state) if req.state != 0 => store.scan_jobs_in_state(state, after, &mut visit),
            _ => store.scan_jobs(after, &mut visit),
        }
        .map_err(failed)?,
    }
    if let Some(e) = corrupt {
        return Err(e.into());
    }
    Ok(Run {
        jobs: page.jobs,
        more,
    })
}

/// Merges memory's and the store's runs of a listing into `page`, oldest
/// first by id; a job in both is shown as memory has it. The page ends at
/// its bounds, and where a run that stopped short ends: the jobs after
/// it, unread, may come before the other run's next. Returns the page's
/// jobs and whether more matched after them.
fn merge_runs(memory: Run, stored: Run, mut page: ListPage) -> (Vec<pb::JobInfo>, bool) {
    let (mut a, mut b) = (
        memory.jobs.into_iter().peekable(),
        stored.jobs.into_iter().peekable(),
    );
    while !page.full() {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.job_id < x.job_id => b.next(),
            (Some(x), Some(y)) if y.job_id == x.job_id => {
                b.next();
                a.next()
            }
            (Some(_), None) if stored.more => break,
            (None, Some(_)) if memory.more => break,
            (Some(_), _) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        page.push(next);
    }
    let more = memory.more || stored.more || a.peek().is_some() || b.peek().is_some();
    (page.jobs, more)
}

/// Whether bit `i` of a bitmap is set.
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}
/// Streams what is left of a closed batch, read from the store: every
/// job from `cursor` on (ordered), or every job not in `sent` in the order
/// they finished (unordered), in messages bounded in bytes. What the store
/// holds is committed.
async fn stream_closed(
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
    master: &Master,
    closed: StoredBatch,
    ordered: bool,
    cursor: usize,
    sent: Vec<u8>,
    budget: usize,
) {
    let archive = master.inner.state.lock().archive().cloned();
    let total = closed.jobs.len();
    let places: Vec<usize> = if ordered {
        (cursor..total).collect()
    } else {
        let order: Vec<usize> = if closed.finished.len() == total {
            closed.finished.iter().map(|&i| i as usize).collect()
        } else {
            (0..total).collect()
        };
        order.into_iter().filter(|&i| !bit(&sent, i)).collect()
    };
    let last = places.len();
    let mut from = 0;
    while from < last {
        let slots = Slots {
            hits: EncodedJobs::default(),
            list: places[from..(from + WATCH_CHUNK).min(last)]
                .iter()
                .map(|&at| Slot::Miss(closed.jobs[at], Some(at)))
                .collect(),
        };
        let mut page = Page::new(budget, WATCH_CHUNK);
        match fill_page(&mut page, slots, archive.as_deref(), &|id| {
            master.job_gone(id)
        }) {
            // What the page did not use is read for the next one.
            Ok(used) => from += used.max(1),
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
        let msg = pb::WatchResponse {
            encoded: page.jobs,
            done: total as u32,
            total: total as u32,
            ..Default::default()
        };
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
    if last == 0 && total == 0 {
        let _ = tx
            .send(Ok(pb::WatchResponse {
                done: total as u32,
                total: total as u32,
                ..Default::default()
            }))
            .await;
    }
}

impl Master {
    /// The first page from `page_token` of the jobs `ids` (a batch's, in
    /// order, when `by_batch`), after waiting up to `timeout_ms` (0: without
    /// limit) for all of them to finish when `wait`: Get's answer, and
    /// Submit's with wait. Every job the page shows is committed.
    async fn read_jobs(
        &self,
        ids: &[JobId],
        by_batch: bool,
        wait: bool,
        timeout_ms: u64,
        page_token: &str,
    ) -> Result<pb::GetResponse, Status> {
        if wait {
            // A timeout past what an Instant can hold is no limit.
            let deadline = (timeout_ms > 0)
                .then(|| Instant::now().checked_add(Duration::from_millis(timeout_ms)))
                .flatten();
            let mut receivers = self.batches_of(ids);
            loop {
                for rx in &mut receivers {
                    rx.borrow_and_update();
                }
                if self.inner.state.lock().all_finished(ids) {
                    break;
                }
                let changed = futures::future::select_all(
                    receivers.iter_mut().map(|rx| Box::pin(rx.changed())),
                );
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = changed => {}
                    _ = expired => break,
                    _ = self.inner.shutdown.cancelled() => break,
                }
            }
        }
        let start = page_start(page_token, ids.len())?;
        let budget = page_bytes(self.inner.config.max_message_bytes);
        // Under the lock: the jobs in memory, and the places of those that
        // left it (finished, committed, in the store), read after it.
        let (slots, complete, ticket, archive) = {
            let st = self.inner.state.lock();
            let mut slots = Slots::default();
            let mut misses = 0;
            for (at, id) in ids.iter().enumerate().skip(start) {
                if slots.bytes() >= budget || misses >= MISSES_PER_PAGE {
                    break;
                }
                // A batch's jobs are numbered by their place in it (a job
                // named again by key has another in its own batch).
                match st.job(id) {
                    Some(j) => slots.hit(j, if by_batch { at as u32 } else { j.index }),
                    None => {
                        misses += 1;
                        slots.list.push(Slot::Miss(*id, by_batch.then_some(at)));
                    }
                }
            }
            (
                slots,
                st.all_finished(ids),
                st.ticket(),
                st.archive().cloned(),
            )
        };
        let mut page = Page::new(budget, usize::MAX);
        let next = start
            + fill_page(&mut page, slots, archive.as_deref(), &|id| {
                self.job_gone(id)
            })?;
        let encoded = page.jobs;
        let next_page_token = if next < ids.len() {
            next.to_string()
        } else {
            String::new()
        };
        // What the reply shows must be committed: a result read before its
        // commit could be lost by a crash after the client saw it.
        self.settle(ticket).await?;
        Ok(pb::GetResponse {
            encoded,
            complete,
            next_page_token,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Queue for Master {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let pb::SubmitRequest {
            jobs,
            request_id,
            wait,
            timeout_ms,
        } = request.into_inner();
        let (batch, ids, out) = {
            let mut st = self.inner.state.lock();
            let queued = st.count(pb::JobState::Queued);
            let guards = &self.inner.guards;
            let (batch, ids) =
                st.submit_with_room(&request_id, jobs, |n| guards.check_queue_room(queued, n))?;
            (batch, ids, st.dispatch())
        };
        let ticket = out.ticket;
        self.send(out);
        self.settle(ticket).await?;
        let job_ids = ids.iter().map(JobId::to_string).collect();
        let result = match wait {
            true => Some(self.read_jobs(&ids, true, true, timeout_ms, "").await?),
            false => None,
        };
        Ok(Response::new(pb::SubmitResponse {
            batch_id: batch.to_string(),
            job_ids,
            result,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        let ids = self
            .inner
            .state
            .lock()
            .resolve(&req.job_ids, &req.batch_id)?;
        let by_batch = !req.batch_id.is_empty();
        let page = self
            .read_jobs(&ids, by_batch, req.wait, req.timeout_ms, &req.page_token)
            .await?;
        Ok(Response::new(page))
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.inner.guards.watch_slot(request.remote_addr())?;
        let req = request.into_inner();
        let batch = BatchId::parse("batch_id", &req.batch_id)?;
        // A batch in memory is watched as its jobs finish; one that closed
        // is read whole from the store.
        let (notify, closed) = {
            let st = self.inner.state.lock();
            let (total, notify, closed) = match st.subscribe(&batch) {
                Some(rx) => (
                    st.batches.get(&batch).map_or(0, |b| b.jobs.len()),
                    Some(rx),
                    None,
                ),
                None => match st.stored_batch(&batch)? {
                    Some(b) => (b.jobs.len(), None, Some(b)),
                    None => return Err(st.batch_not_found(batch).into()),
                },
            };
            if req.resume_from as usize > total {
                return Err(Error::invalid(format!(
                    "resume_from: {} is past the end of the batch's {total} jobs",
                    req.resume_from
                ))
                .into());
            }
            (notify, closed)
        };
        let budget = page_bytes(self.inner.config.max_message_bytes);
        let (tx, rx) = mpsc::channel(4);
        let master = self.clone();
        self.inner.tasks.spawn(async move {
            // Held while the stream is open.
            let _slot = slot;
            // Ordered: the next index to send. Unordered: how much of the
            // batch's completion list was looked at.
            let mut cursor = if req.ordered {
                req.resume_from as usize
            } else {
                0
            };
            // Unordered: the places sent (or received before a resume), so
            // each job is sent once even when a retry shortens the batch's
            // finished list under the cursor.
            let mut sent = req.received.clone();
            let mut notify = match (notify, closed) {
                (Some(n), _) => n,
                (None, Some(closed)) => {
                    stream_closed(&tx, &master, closed, req.ordered, cursor, sent, budget).await;
                    return;
                }
                (None, None) => return,
            };
            let mut sent_count = 0usize;
            let mut rewinds = 0u64;
            loop {
                notify.borrow_and_update();
                let step: Result<_, (Option<std::sync::Arc<dyn Store>>, Status)> = (|| {
                    let st = master.inner.state.lock();
                    let Some(b) = st.batches.get(&batch) else {
                        return Err((st.archive().cloned(), Status::from(st.batch_not_found(batch))));
                    };
                    let total = b.jobs.len();
                    if sent_count == 0 && !sent.is_empty() {
                        sent_count = (0..total).filter(|&i| bit(&sent, i)).count();
                    }
                    if b.rewinds != rewinds {
                        rewinds = b.rewinds;
                        cursor = 0;
                    }
                    // A job not in memory (named again by key, its own batch
                    // closed) goes alone in its message, read after the lock.
                    let mut slots = Slots::default();
                    let mut stopped = false;
                    let is_full = |slots: &Slots| {
                        slots.len() >= WATCH_CHUNK
                            || slots.bytes() >= budget
                            || matches!(slots.list.last(), Some(Slot::Miss(..)))
                    };
                    if req.ordered {
                        while !is_full(&slots)
                            && cursor < total
                            && st.job_in(b, cursor).is_none_or(Job::is_finished)
                        {
                            if !take_slot(&st, b, cursor, &mut slots) {
                                stopped = true;
                                break;
                            }
                            cursor += 1;
                        }
                    } else {
                        while !is_full(&slots) && cursor < b.finished.len() {
                            let index = b.finished[cursor] as usize;
                            if !bit(&sent, index) {
                                if !take_slot(&st, b, index, &mut slots) {
                                    stopped = true;
                                    break;
                                }
                                if sent.len() <= index / 8 {
                                    sent.resize(index / 8 + 1, 0);
                                }
                                sent[index / 8] |= 1 << (index % 8);
                                sent_count += 1;
                            }
                            cursor += 1;
                        }
                    }
                    // A miss left for the next message: go on at once.
                    let full = stopped || is_full(&slots);
                    let done = b.finished.len().min(total);
                    Ok((slots, full, done, total, st.ticket()))
                })();
                let (slots, full, done, total, ticket) = match step {
                    Ok(page) => page,
                    Err((archive, gone)) => {
                        // Closed (or purged) while watched: the rest is
                        // read from the store, if it is there.
                        let stored = match &archive {
                            Some(store) => store.read_batch(&batch).ok().flatten(),
                            None => None,
                        };
                        match stored {
                            Some(closed) => {
                                stream_closed(&tx, &master, closed, req.ordered, cursor, sent, budget).await;
                            }
                            None => {
                                let _ = tx.try_send(Err(gone));
                            }
                        }
                        return;
                    }
                };
                // Nothing is streamed before its commit (see `get`).
                if let Err(status) = master.settle(ticket).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let archive = master.inner.state.lock().archive().cloned();
                // Everything taken under the lock is sent (the cursor has
                // moved past it).
                let mut page = Page::new(usize::MAX, usize::MAX);
                if let Err(status) = fill_page(&mut page, slots, archive.as_deref(), &|id| master.job_gone(id)) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let chunk = page.jobs;
                if !chunk.is_empty() || total == 0 {
                    let msg = pb::WatchResponse {
                        encoded: chunk,
                        done: done as u32,
                        total: total as u32,
                        ..Default::default()
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                let finished = if req.ordered { cursor } else { sent_count };
                if finished >= total {
                    return;
                }
                if full {
                    // More may be ready than one chunk held.
                    continue;
                }
                tokio::select! {
                    r = notify.changed() => if r.is_err() {
                        // The batch left memory (and may be back, after a
                        // retry): listen to it anew, or read the store.
                        if let Some(n) = master.inner.state.lock().subscribe(&batch) {
                            notify = n;
                        }
                    },
                    _ = tx.closed() => return,
                    _ = master.inner.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the master is shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let req = request.into_inner();
        let (resp, out) = {
            let mut st = self.inner.state.lock();
            let ids = st.resolve(&req.job_ids, &req.batch_id)?;
            st.cancel(&ids)?
        };
        let ticket = out.ticket;
        self.send(out);
        self.settle(ticket).await?;
        Ok(Response::new(resp))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let req = request.into_inner();
        // Failed jobs whose batch closed are in the store (read before the
        // lock, from its index of failed jobs).
        let archive = self.inner.state.lock().archive().cloned();
        let mut stored_failed = Vec::new();
        if req.all_failed
            && let Some(store) = &archive
        {
            store
                .scan_jobs_in_state(pb::JobState::Failed, None, &mut |r| {
                    if let Some(id) = JobId::from_slice(&r.id) {
                        stored_failed.push(id);
                    }
                    true
                })
                .map_err(|e| Status::internal(format!("reading the store failed: {e:#}")))?;
        }
        let (retried, out) = {
            let mut st = self.inner.state.lock();
            let ids = if req.all_failed {
                let mut ids = st.failed_ids();
                ids.extend(stored_failed);
                ids
            } else {
                st.resolve(&req.job_ids, &req.batch_id)?
            };
            st.retry_jobs(&ids)
        };
        let ticket = out.ticket;
        self.send(out);
        self.settle(ticket).await?;
        Ok(Response::new(pb::RetryResponse { retried }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let mut stats = self.inner.state.lock().stats();
        let ha = &self.inner.config.ha;
        if ha.epoch > 0 {
            stats.leader_epoch = ha.epoch;
            stats.leader_address = ha.advertise.clone().unwrap_or_default();
        }
        Ok(Response::new(stats))
    }

    async fn limits(
        &self,
        request: Request<pb::LimitsRequest>,
    ) -> Result<Response<pb::LimitsResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.inner.state.lock().limits_report(&name)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let after = list_after(&req.page_token)?;
        let limit = match req.limit {
            0 => 1000,
            n => n as usize,
        };
        let max = limit.min(LIST_PAGE_JOBS);
        let budget = page_bytes(self.inner.config.max_message_bytes);
        let (memory, ticket, archive, closed) = {
            let st = self.inner.state.lock();
            let (jobs, more) = st.list(&req, after, max)?;
            let listed = jobs.len();
            let mut page = ListPage::new(budget, max);
            for j in jobs {
                if page.full() {
                    break;
                }
                page.push(Some(j.info()));
            }
            let memory = Run {
                more: more || page.jobs.len() < listed,
                jobs: page.jobs,
            };
            // A batch that closed is read from the store, and so are the
            // finished jobs of closed batches when no batch is named.
            let closed = if req.batch_id.is_empty() {
                None
            } else {
                let id = BatchId::parse("batch_id", &req.batch_id)?;
                match st.batches.contains_key(&id) {
                    true => Some(None),
                    false => Some(Some(id)),
                }
            };
            (memory, st.ticket(), st.archive().cloned(), closed)
        };
        self.settle(ticket).await?;
        let stored = match archive {
            Some(store) if closed != Some(None) => stored_run(
                &*store,
                &req,
                after,
                closed.flatten(),
                ListPage::new(budget, max),
            )?,
            _ => Run::default(),
        };
        let (jobs, more) = merge_runs(memory, stored, ListPage::new(budget, max));
        // The cursor is the last job shown: the next page starts after it
        // in memory and in the store alike, whatever moved between them.
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.job_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            truncated: more,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Changes, Loaded};

    /// A store that fails any read: what a listing must not touch.
    struct Untouchable;

    impl Store for Untouchable {
        fn is_durable(&self) -> bool {
            true
        }
        fn load(&self, _: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64> {
            Ok(0)
        }
        fn write(&self, _: Changes) -> anyhow::Result<()> {
            Ok(())
        }
        fn scan_jobs(
            &self,
            _: Option<JobId>,
            _: &mut dyn FnMut(pb::JobRecord) -> bool,
        ) -> anyhow::Result<()> {
            anyhow::bail!("scanned every job")
        }
        fn scan_jobs_in_state(
            &self,
            _: pb::JobState,
            _: Option<JobId>,
            _: &mut dyn FnMut(pb::JobRecord) -> bool,
        ) -> anyhow::Result<()> {
            anyhow::bail!("scanned jobs by state")
        }
        fn read_batch(&self, _: &BatchId) -> anyhow::Result<Option<StoredBatch>> {
            anyhow::bail!("read a batch")
        }
    }

    #[test]
    fn unfinished_jobs_are_listed_from_memory_without_reading_the_store() {
        for state in [pb::JobState::Queued, pb::JobState::Running] {
            let req = pb::ListJobsRequest {
                state: state as i32,
                ..Default::default()
            };
            let page = ListPage::new(usize::MAX, usize::MAX);
            let run = stored_run(&Untouchable, &req, None, None, page).unwrap();
            assert!(run.jobs.is_empty() && !run.more, "{state:?}");
        }
        // Finished ones do read it (the fake says so by failing).
        let req = pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        };
        let page = ListPage::new(usize::MAX, usize::MAX);
        let err = stored_run(&Untouchable, &req, None, None, page).unwrap_err();
        assert!(err.message().contains("scanned"), "{err:?}");
    }

    /// The id of job `n`: ids of smaller `n` are older.
    fn id(n: u128) -> String {
        JobId::from_uuid(uuid::Uuid::from_u128(n)).to_string()
    }

    /// A source's run of a page: its first `max` jobs after `after`, each
    /// marked with where it came from.
    fn run(source: &[u128], from: &str, after: Option<&str>, max: usize) -> Run {
        let mut jobs: Vec<pb::JobInfo> = source
            .iter()
            .map(|&n| pb::JobInfo {
                job_id: id(n),
                arg: from.into(),
                ..Default::default()
            })
            .filter(|j| after.is_none_or(|a| j.job_id.as_str() > a))
            .collect();
        let more = jobs.len() > max;
        jobs.truncate(max);
        Run { jobs, more }
    }

    /// Pages through memory and store with runs of `max` and pages of
    /// `per_page`, as the service and the CLI do; returns each page.
    fn pages(memory: &[u128], stored: &[u128], max: usize, per_page: usize) -> Vec<Vec<String>> {
        let mut token: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            let after = token.as_deref();
            let (jobs, more) = merge_runs(
                run(memory, "memory", after, max),
                run(stored, "store", after, max),
                ListPage::new(usize::MAX, per_page),
            );
            for j in &jobs {
                let n = u128::from_str_radix(&j.job_id.replace('-', ""), 16).unwrap();
                // A job in both is shown as memory has it.
                let want = if memory.contains(&n) {
                    "memory"
                } else {
                    "store"
                };
                assert_eq!(j.arg, want, "job {n}");
            }
            token = jobs.last().map(|j| j.job_id.clone());
            pages.push(jobs.into_iter().map(|j| j.job_id).collect());
            if !more {
                return pages;
            }
            assert!(token.is_some(), "more jobs, but an empty page: no cursor");
        }
    }

    #[test]
    fn listing_pages_show_memory_and_store_jobs_each_once_oldest_first() {
        // Interleaved, with jobs in both (a closed batch's job still in
        // memory), and runs that stop short of what the other holds.
        let memory = [1, 3, 5, 6, 7, 8, 20, 21];
        let stored = [2, 3, 4, 6, 9, 10, 11, 12, 13, 21, 22];
        let mut want: Vec<u128> = memory.iter().chain(&stored).copied().collect();
        want.sort_unstable();
        want.dedup();
        let want: Vec<String> = want.into_iter().map(id).collect();
        for max in 1..=want.len() + 1 {
            for per_page in 1..=want.len() + 1 {
                let pages = pages(&memory, &stored, max, per_page);
                let got: Vec<String> = pages.concat();
                assert_eq!(got, want, "runs of {max}, pages of {per_page}");
                assert!(pages.iter().all(|p| !p.is_empty() && p.len() <= per_page));
            }
        }
        // Nothing at all: one empty page, and no more.
        assert_eq!(pages(&[], &[], 3, 3), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_run_that_stopped_short_ends_the_page_where_it_ends() {
        // Memory's run holds 1 and 3 of more: the store's 4 may not be
        // shown before memory's next job, which may be older.
        let (jobs, more) = merge_runs(
            Run {
                jobs: vec![info(1), info(3)],
                more: true,
            },
            Run {
                jobs: vec![info(2), info(4)],
                more: false,
            },
            ListPage::new(usize::MAX, usize::MAX),
        );
        assert_eq!(ids(&jobs), [id(1), id(2), id(3)]);
        assert!(more);
        // A page ends at its byte bound, after the job that reached it.
        let big = pb::JobInfo {
            arg: "x".repeat(100),
            ..info(1)
        };
        let (jobs, more) = merge_runs(
            Run {
                jobs: vec![big, info(2)],
                more: false,
            },
            Run::default(),
            ListPage::new(50, usize::MAX),
        );
        assert_eq!(ids(&jobs), [id(1)]);
        assert!(more);
    }

    fn info(n: u128) -> pb::JobInfo {
        pb::JobInfo {
            job_id: id(n),
            ..Default::default()
        }
    }

    fn ids(jobs: &[pb::JobInfo]) -> Vec<String> {
        jobs.iter().map(|j| j.job_id.clone()).collect()
    }

    #[test]
    fn a_malformed_listing_page_token_names_the_field() {
        assert_eq!(list_after("").unwrap(), None);
        let job = JobId::new();
        assert_eq!(list_after(&job.to_string()).unwrap(), Some(job));
        for bad in ["7", "not a token", "019"] {
            let err = list_after(bad).unwrap_err();
            assert!(err.to_string().contains("page_token"), "{err}");
        }
    }
}
