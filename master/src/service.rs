//! The gRPC services: `Queue` for clients and `Workers` for worker sessions.
//!
//! Each handler locks the [`State`], changes it, releases the lock, and only
//! then sends what the change produced: no lock is held across an await.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_common::ids::{BatchId, JobId, SessionId};
use drover_common::pb::queue_server::Queue;
use drover_common::pb::workers_server::Workers;
use drover_common::pb::{self, master_message, worker_message};
use drover_common::{Error, PROTOCOL_VERSION};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::Config;
use crate::committer::{self, CommitState};
use crate::limits::Guards;
use crate::state::{Outgoing, State};
use crate::store::Store;

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

/// The master's services, sharing one queue.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    config: Config,
    /// Ends every long-lived stream when the master shuts down.
    shutdown: CancellationToken,
    /// What the committer has written; `None` with a store that keeps nothing.
    committed: Option<watch::Receiver<CommitState>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every task the master spawns (sessions, watches, timers, wake-ups),
    /// waited for on shutdown.
    tasks: TaskTracker,
    /// The queue and watch limits, and what was refused.
    guards: Arc<Guards>,
}

impl Master {
    /// Creates the services over what `store` holds, recovering its jobs,
    /// and starts the committer if the store is durable.
    pub fn open(
        config: Config,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let durable = store.is_durable();
        let mut state = State::new(crate::state::Settings {
            limits: config.limits,
            default_max_attempts: config.default_max_attempts,
            retry: config.retry,
            retention_ms: config.retention.as_millis() as u64,
            durable,
        });
        let started = std::time::Instant::now();
        let mut report = crate::state::RecoveryReport::default();
        let created_at = store.load(&mut |item| state.recover_item(item, &mut report))?;
        state.set_created_at(created_at);
        state.finish_recovery(&mut report);
        if report.queued + report.requeued + report.finished > 0 {
            tracing::info!(
                queued = report.queued,
                requeued = report.requeued,
                finished = report.finished,
                batches = report.batches,
                ms = started.elapsed().as_millis() as u64,
                "recovered the queue"
            );
        }
        let (kick_tx, kick_rx) = std::sync::mpsc::channel();
        state.set_kick(kick_tx);
        let state = Arc::new(Mutex::new(state));
        let (committed, committer) = if durable {
            let (tx, rx) = watch::channel(CommitState::default());
            let handle = committer::start(state.clone(), store, kick_rx, tx, shutdown.clone());
            // Recovery may have changed jobs (running ones queued again).
            state.lock().nudge();
            (Some(rx), Some(handle))
        } else {
            (None, None)
        };
        let guards = Arc::new(Guards::new(
            config.max_queued,
            config.max_watches_per_client,
        ));
        Ok(Master {
            inner: Arc::new(Inner {
                guards,
                state,
                config,
                shutdown,
                committed,
                committer: Mutex::new(committer),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Waits for the committer to write what is left (after shutdown).
    pub fn join_committer(&self) {
        if let Some(handle) = self.inner.committer.lock().take() {
            let _ = handle.join();
        }
    }

    /// The queue (for the metrics).
    pub(crate) fn state(&self) -> &Mutex<State> {
        &self.inner.state
    }

    /// The limits and refusal counts.
    pub fn guards(&self) -> &Arc<Guards> {
        &self.inner.guards
    }

    /// The tasks the master spawned, to wait for on shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Acts on what a change produced, once the lock is released: queues
    /// each message on its session's stream (which holds it back until its
    /// commit is done) and wakes the batches' waiters, at once or, with a
    /// durable store, once the commit is done.
    fn send(&self, out: Outgoing) {
        for (outbox, msg) in out.messages {
            // A closed outbox means the session is ending; its jobs are
            // handled when it ends.
            let _ = outbox.send((out.ticket, msg));
        }
        if out.notify.is_empty() {
            return;
        }
        match (out.ticket, &self.inner.committed) {
            (Some(ticket), Some(committed)) => {
                let mut committed = committed.clone();
                let notify = out.notify;
                self.inner.tasks.spawn(async move {
                    if committer::wait_for(&mut committed, ticket).await.is_ok() {
                        for n in notify {
                            n.send_modify(|v| *v += 1);
                        }
                    }
                });
            }
            _ => {
                for n in out.notify {
                    n.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// Waits until a change is durable.
    async fn settle(&self, ticket: Option<u64>) -> Result<(), Status> {
        match (ticket, &self.inner.committed) {
            (Some(t), Some(rx)) => Ok(committer::wait_for(&mut rx.clone(), t).await?),
            _ => Ok(()),
        }
    }

    /// Runs the timers until shutdown: ends the sessions of workers not
    /// heard from within the lease (their jobs go back to the queue),
    /// releases retried jobs whose backoff is over, and purges jobs past
    /// the retention period.
    pub async fn run_timers(self) {
        let lease = self.inner.config.lease;
        let retention = self.inner.config.retention;
        let purge_every =
            (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut last_reap = Instant::now();
        let mut last_purge = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            let mut st = self.inner.state.lock();
            let out = st.promote_due();
            if last_reap.elapsed() >= (lease / 4).max(Duration::from_millis(50)) {
                last_reap = Instant::now();
                for sid in st.expired_sessions(lease) {
                    tracing::warn!(
                        session = sid.get(),
                        lease_ms = lease.as_millis() as u64,
                        "lease expired"
                    );
                    let (_, out) = st.end_session(sid, "lease expired");
                    self.send(out);
                }
            }
            if last_purge.elapsed() >= purge_every {
                last_purge = Instant::now();
                let n = st.purge_expired();
                if n > 0 {
                    tracing::info!(jobs = n, "purged finished jobs past the retention period");
                }
            }
            drop(st);
            self.send(out);
        }
    }

    fn batches_of(&self, ids: &[JobId]) -> Vec<tokio::sync::watch::Receiver<u64>> {
        let st = self.inner.state.lock();
        let batches: HashSet<BatchId> = ids
            .iter()
            .filter_map(|id| st.job(id).map(|j| j.batch))
            .collect();
        batches.iter().filter_map(|b| st.subscribe(b)).collect()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Queue for Master {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let jobs = request.into_inner().jobs;
        let (batch, ids, out) = {
            let mut st = self.inner.state.lock();
            let queued = st.count(pb::JobState::Queued);
            self.inner.guards.check_queue_room(queued, jobs.len())?;
            let (batch, ids) = st.submit(jobs)?;
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
            for id in &ids[start..] {
                if page.full() {
                    break;
                }
                next += 1;
                page.push(st.job(id).map(|j| j.info()));
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
            loop {
                notify.borrow_and_update();
                let (chunk, full, done, total, ticket) = {
                    let st = master.inner.state.lock();
                    let Some(b) = st.batches.get(&batch) else {
                        return;
                    };
                    let total = b.jobs.len();
                    let mut page = Page::new(budget, WATCH_CHUNK);
                    if req.ordered {
                        while !page.full() && cursor < total && st.is_finished(&b.jobs[cursor]) {
                            page.push(st.job(&b.jobs[cursor]).map(|j| j.info()));
                            cursor += 1;
                        }
                    } else {
                        while !page.full() && cursor < b.finished.len() {
                            let index = b.finished[cursor] as usize;
                            cursor += 1;
                            if !bit(&req.received, index) {
                                page.push(st.job(&b.jobs[index]).map(|j| j.info()));
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
                if cursor >= total {
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

#[tonic::async_trait]
impl Workers for Master {
    type ConnectStream = BoxStream<pb::MasterMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(worker_message::Msg::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "msg: the first message must be a hello",
                ));
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "worker speaks protocol {}, this master speaks {PROTOCOL_VERSION}",
                hello.protocol
            ))
            .into());
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the master is shutting down".into()).into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = self.inner.config.lease;
        let welcome = |sid: SessionId| pb::MasterMessage {
            msg: Some(master_message::Msg::Welcome(pb::Welcome {
                worker_id: sid.to_string(),
                lease_ms: lease.as_millis() as u64,
                heartbeat_ms: (lease / 4).as_millis().max(10) as u64,
            })),
        };
        let session = {
            let mut st = self.inner.state.lock();
            let sid = st.add_session(&hello, tx.clone());
            let _ = tx.send((None, welcome(sid)));
            sid
        };
        // Only the state keeps a sender: when the session ends there, the
        // outbound stream ends and the worker sees it.
        drop(tx);
        tracing::info!(
            worker = %hello.name, host = %hello.host,
            session = session.get(), cpu_slots = hello.cpu_slots, io_slots = hello.io_slots,
            "worker connected"
        );
        let master = self.clone();
        self.inner.tasks.spawn(async move {
            let reason = loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = master.inner.shutdown.cancelled() => break "master shutting down".to_string(),
                };
                match msg {
                    Ok(Some(m)) => {
                        if !master.handle(session, m) {
                            break "session already ended".to_string();
                        }
                    }
                    Ok(None) => break "stream closed".to_string(),
                    Err(status) => break format!("stream error: {}", status.message()),
                }
            };
            let (_, out) = master.inner.state.lock().end_session(session, &reason);
            master.send(out);
        });
        let shutdown = self.inner.shutdown.clone().cancelled_owned();
        let committed = self.inner.committed.clone();
        let worker_name = hello.name.clone();
        // Each message waits for the commit of the change it announces;
        // commits finish in order, so the stream keeps its order.
        let stream = futures::StreamExt::take_until(UnboundedReceiverStream::new(rx), shutdown)
            .then(move |(ticket, msg)| {
                let committed = committed.clone();
                async move {
                    match (ticket, committed) {
                        (Some(t), Some(mut rx)) => committer::wait_for(&mut rx, t)
                            .await
                            .map(|()| msg)
                            .map_err(Status::from),
                        _ => Ok(msg),
                    }
                }
            })
            .map(move |msg| {
                if let Ok(m) = &msg {
                    crate::trace::assigned(&worker_name, m);
                }
                msg
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Master {
    /// Handles one message of a session; false when the session is gone.
    fn handle(&self, session: SessionId, msg: pb::WorkerMessage) -> bool {
        let mut st = self.inner.state.lock();
        if !st.touch(session) {
            // The lease expired while the worker was silent. End the stream
            // so it reconnects with a fresh session; it sends again there
            // the results we never acknowledged, where late ones are
            // dropped and counted.
            return false;
        }
        let out = match msg.msg {
            Some(worker_message::Msg::Credit(c)) => st.add_credit(session, c.cpu, c.io),
            Some(worker_message::Msg::Results(r)) => {
                crate::trace::results(&st, session, &r.results);
                st.record_results(session, r.seq, r.results)
            }
            Some(worker_message::Msg::Pool(p)) => {
                st.set_pool(session, p);
                return true;
            }
            Some(worker_message::Msg::Returned(r)) => {
                // A malformed id names no job this session holds.
                let ids: Vec<JobId> = r
                    .job_ids
                    .iter()
                    .filter_map(|raw| JobId::parse("job_ids", raw).ok())
                    .collect();
                st.return_jobs(session, &ids)
            }
            Some(worker_message::Msg::Draining(_)) => {
                st.set_draining(session);
                return true;
            }
            Some(worker_message::Msg::Heartbeat(_))
            | Some(worker_message::Msg::Hello(_))
            | None => {
                return true;
            }
        };
        drop(st);
        self.send(out);
        true
    }
}
