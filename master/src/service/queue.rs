//! The `Queue` service: what clients call. Replies that carry results are
//! bounded in bytes (pages for `Get`, messages for `Watch`) and sent only
//! once what they show is committed.

use std::time::Duration;

use drover_common::Error;
use drover_common::ids::{BatchId, JobId};
use drover_common::pb::queue_server::Queue;
use drover_common::pb::{self};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{BoxStream, Master};

/// Results per `WatchResponse`: large enough to batch, small enough that a
/// client sees progress.
const WATCH_CHUNK: usize = 4096;

/// The bytes of results one `GetResponse` or `WatchResponse` aims at: a
/// quarter of the message limit, capped, so any page fits well under it
/// (a page always holds at least one job).
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

/// Results gathered for one message, bounded in bytes and count.
struct Page {
    jobs: Vec<pb::JobInfo>,
    bytes: usize,
    budget: usize,
    max_jobs: usize,
}

impl Page {
    fn new(budget: usize, max_jobs: usize) -> Page {
        Page {
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

/// Whether bit `i` of a bitmap is set.
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}
#[tonic::async_trait]
impl Queue for Master {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let pb::SubmitRequest { jobs, request_id } = request.into_inner();
        let (batch, ids, out) = {
            let mut st = self.inner.state.lock();
            let queued = st.count(pb::JobState::Queued);
            self.inner.guards.check_queue_room(queued, jobs.len())?;
            let (batch, ids) = st.submit_request(&request_id, jobs)?;
            (batch, ids, st.dispatch())
        };
        let ticket = out.ticket;
        self.send(out);
        self.settle(ticket).await?;
        Ok(Response::new(pb::SubmitResponse {
            batch_id: batch.to_string(),
            job_ids: ids.iter().map(JobId::to_string).collect(),
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
        if req.wait {
            let deadline = (req.timeout_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(req.timeout_ms));
            let mut receivers = self.batches_of(&ids);
            loop {
                for rx in &mut receivers {
                    rx.borrow_and_update();
                }
                if self.inner.state.lock().all_finished(&ids) {
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
        let start = page_start(&req.page_token, ids.len())?;
        let budget = page_bytes(self.inner.config.max_message_bytes);
        let (jobs, next, complete, ticket) = {
            let st = self.inner.state.lock();
            let mut page = Page::new(budget, usize::MAX);
            let mut next = start;
            let by_batch = !req.batch_id.is_empty();
            for id in &ids[start..] {
                if page.full() {
                    break;
                }
                // A batch's jobs are numbered by their place in it (a job
                // named again by key has another in its own batch).
                let at = next;
                next += 1;
                page.push(
                    st.job(id)
                        .map(|j| if by_batch { j.info_at(at) } else { j.info() }),
                );
            }
            (page.jobs, next, st.all_finished(&ids), st.ticket())
        };
        let next_page_token = if next < ids.len() {
            next.to_string()
        } else {
            String::new()
        };
        // What the reply shows must be committed: a result read before its
        // commit could be lost by a crash after the client saw it.
        self.settle(ticket).await?;
        Ok(Response::new(pb::GetResponse {
            jobs,
            complete,
            next_page_token,
        }))
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.inner.guards.watch_slot(request.remote_addr())?;
        let req = request.into_inner();
        let batch = BatchId::parse("batch_id", &req.batch_id)?;
        let mut notify = {
            let st = self.inner.state.lock();
            let total = st.batches.get(&batch).map_or(0, |b| b.jobs.len());
            if req.resume_from as usize > total {
                return Err(Error::invalid(format!(
                    "resume_from: {} is past the end of the batch's {total} jobs",
                    req.resume_from
                ))
                .into());
            }
            match st.subscribe(&batch) {
                Some(rx) => rx,
                None => return Err(st.batch_not_found(batch).into()),
            }
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
            let mut sent_count = 0usize;
            let mut rewinds = 0u64;
            loop {
                notify.borrow_and_update();
                let (chunk, full, done, total, ticket) = {
                    let st = master.inner.state.lock();
                    let Some(b) = st.batches.get(&batch) else {
                        // Purged while watched: say so, not a quiet end.
                        let gone = Status::from(st.batch_not_found(batch));
                        drop(st);
                        let _ = tx.try_send(Err(gone));
                        return;
                    };
                    let total = b.jobs.len();
                    if sent_count == 0 && !sent.is_empty() {
                        sent_count = (0..total).filter(|&i| bit(&sent, i)).count();
                    }
                    if b.rewinds != rewinds {
                        rewinds = b.rewinds;
                        cursor = 0;
                    }
                    let mut page = Page::new(budget, WATCH_CHUNK);
                    if req.ordered {
                        while !page.full() && cursor < total && st.is_finished(&b.jobs[cursor]) {
                            page.push(st.job(&b.jobs[cursor]).map(|j| j.info_at(cursor)));
                            cursor += 1;
                        }
                    } else {
                        while !page.full() && cursor < b.finished.len() {
                            let index = b.finished[cursor] as usize;
                            cursor += 1;
                            if !bit(&sent, index) {
                                if sent.len() <= index / 8 {
                                    sent.resize(index / 8 + 1, 0);
                                }
                                sent[index / 8] |= 1 << (index % 8);
                                sent_count += 1;
                                page.push(st.job(&b.jobs[index]).map(|j| j.info_at(index)));
                            }
                        }
                    }
                    let full = page.full();
                    let done = b.finished.len().min(total);
                    (page.jobs, full, done, total, st.ticket())
                };
                // Nothing is streamed before its commit (see `get`).
                if let Err(status) = master.settle(ticket).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if !chunk.is_empty() || total == 0 {
                    let msg = pb::WatchResponse {
                        jobs: chunk,
                        done: done as u32,
                        total: total as u32,
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
                    r = notify.changed() => if r.is_err() { return },
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
        let (retried, out) = {
            let mut st = self.inner.state.lock();
            let ids = if req.all_failed {
                st.failed_ids()
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
        Ok(Response::new(self.inner.state.lock().stats()))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let (list, ticket) = {
            let st = self.inner.state.lock();
            (st.list(&req)?, st.ticket())
        };
        self.settle(ticket).await?;
        Ok(Response::new(list))
    }
}
