//! The `Coord` service: shared state across hosts, kept in the master's
//! store. Key-value entries with versions, counters, locks and semaphores
//! with leases and fencing tokens, events and barriers.
//!
//! - `state`: the state itself, pure (no I/O, no await), unit-tested.
//! - `persist`: its records in the store, and the thread that
//!   group-commits them.
//!
//! Each handler locks the state, changes it, releases the lock, and replies
//! once the change is durable (many requests share one transaction). A
//! read replies once everything it could have seen is durable. A lock
//! grant belongs to a session, kept alive by heartbeats (`KeepAlive`); the
//! timer ends a session not heard from within its lease, which releases
//! its grants. Fencing tokens come from one counter, stored with each
//! grant, so they never go back across a restart.
//!
//! `CounterAddStream` carries many adds on one call: each is applied as
//! it is read, like a `CounterAdd`, and answered in order once its commit
//! is written, so a stream's adds share commits with each other and with
//! every other call.

mod persist;
mod state;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_common::pb::coord_server::Coord;
use drover_common::pb::{self};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use persist::{CoordStore, Record};
pub use state::CoordLimits;
use state::{Acquired, BarrierOutcome, CoordState, Granted, check_name, check_timeout};

use crate::committer::{self, CommitState};
use crate::limits::Guards;
use crate::store::Store;

/// How often sessions are checked for an expired lease.
const REAP_EVERY: Duration = Duration::from_millis(25);
/// Changes buffered per watcher before it is told it fell behind.
const WATCH_BUFFER: usize = 4096;
/// Answers of one `CounterAddStream` applied but not yet sent (waiting for
/// their commit, or for the client to take them) at which it stops
/// reading adds, so a client that does not read cannot grow the master's
/// memory.
const MAX_UNSENT_ADDS: usize = 4096;

/// The `Coord` service over one [`CoordState`].
#[derive(Clone)]
pub struct CoordService {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<CoordState>>,
    /// What the committer has written; `None` with a store that keeps
    /// nothing.
    committed: Option<watch::Receiver<CommitState>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Committed key-value changes, for watchers.
    events: broadcast::Sender<Arc<pb::KvEvent>>,
    /// Ends waits and watches when the master shuts down.
    shutdown: CancellationToken,
    /// The per-client limit on watch streams, shared with `Queue`.
    guards: Arc<Guards>,
}

impl CoordService {
    /// Recovers the coordination state from `store` and starts its
    /// committer if the store is durable.
    pub fn open(
        store: Arc<dyn Store>,
        limits: CoordLimits,
        guards: Arc<Guards>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let durable = store.is_durable() && store.coord().is_some();
        let mut st = CoordState::new(limits, durable);
        if let Some(coord) = store.coord() {
            let now = Instant::now();
            coord.load_coord(&mut |r| st.recover(r, now))?;
            st.finish_recovery();
            let (keys, counters, sessions, grants) = st.counts();
            if keys + counters + sessions > 0 {
                tracing::info!(
                    keys,
                    counters,
                    sessions,
                    grants,
                    "recovered the coordination state"
                );
            }
        }
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let (kick_tx, kick_rx) = std::sync::mpsc::channel();
        st.set_kick(kick_tx);
        let state = Arc::new(Mutex::new(st));
        let (committed, committer) = if durable {
            let (tx, rx) = watch::channel(CommitState::default());
            let handle = persist::start_committer(
                state.clone(),
                store,
                kick_rx,
                tx,
                events.clone(),
                shutdown.clone(),
            );
            (Some(rx), Some(handle))
        } else {
            (None, None)
        };
        Ok(CoordService {
            inner: Arc::new(Inner {
                state,
                committed,
                committer: Mutex::new(committer),
                events,
                shutdown,
                guards,
            }),
        })
    }

    /// Why the store failed, if a coordination commit did (the master then
    /// stops).
    pub fn store_failure(&self) -> Option<Arc<str>> {
        self.inner
            .committed
            .as_ref()
            .and_then(|rx| rx.borrow().failed.clone())
    }

    /// Waits for the committer to write what is left (after shutdown).
    pub fn join_committer(&self) {
        if let Some(handle) = self.inner.committer.lock().take() {
            let _ = handle.join();
        }
    }

    /// Ends sessions whose lease ran out, until shutdown.
    pub async fn run_timers(self) {
        let mut tick = tokio::time::interval(REAP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            let mut st = self.inner.state.lock();
            for (session, owner) in st.expire_sessions(Instant::now()) {
                tracing::warn!(session, owner = %owner, "coordination session expired; its grants are released");
            }
            self.announce(&mut st);
        }
    }

    /// With a store that keeps nothing, sends key-value changes to the
    /// watchers at once (the committer does it otherwise, after the write).
    fn announce(&self, st: &mut CoordState) {
        if self.inner.committed.is_none() {
            for e in st.take_events() {
                let _ = self.inner.events.send(Arc::new(e));
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

    /// Waits until everything visible now is durable (before a read replies).
    async fn settle_visible(&self) -> Result<(), Status> {
        let ticket = self.inner.state.lock().visible();
        self.settle(ticket).await
    }

    /// The last commit written: every ticket up to it is durable. With a
    /// store that keeps nothing there are no tickets to wait for.
    fn durable_through(&self) -> u64 {
        self.inner
            .committed
            .as_ref()
            .map_or(u64::MAX, |rx| rx.borrow().committed)
    }

    /// Runs `f` on the locked state; returns its value and the ticket to
    /// wait for before it is told.
    fn apply<T>(
        &self,
        f: impl FnOnce(&mut CoordState) -> Result<(T, Option<u64>), Status>,
    ) -> Result<(T, Option<u64>), Status> {
        let mut st = self.inner.state.lock();
        let out = f(&mut st);
        self.announce(&mut st);
        out
    }

    /// Runs `f` on the locked state, then waits for its change's commit.
    async fn change<T>(
        &self,
        f: impl FnOnce(&mut CoordState) -> Result<(T, Option<u64>), Status>,
    ) -> Result<T, Status> {
        let (value, ticket) = self.apply(f)?;
        self.settle(ticket).await?;
        Ok(value)
    }

    /// Answers a stream of counter adds (`CounterAddStream`): each add is
    /// applied as it is read and answered, in order, once its commit is
    /// written.
    fn counter_adds<S>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = Result<pb::CounterResponse, Status>> + Send + 'static
    where
        S: Stream<Item = Result<pb::CounterAddRequest, Status>> + Send + Unpin + 'static,
    {
        let adds = AddStream {
            service: self.clone(),
            incoming,
            read: 0,
            durable: 0,
            unsent: VecDeque::new(),
            done: false,
            end: None,
        };
        futures::stream::unfold(Some(adds), |adds| async move {
            let mut adds = adds?;
            match adds.next_answer().await? {
                Ok(value) => Some((Ok(pb::CounterResponse { value }), Some(adds))),
                Err(status) => Some((Err(status), None)),
            }
        })
    }

    /// Waits for `rx` up to `timeout` (or forever), or until shutdown.
    async fn wait<T>(
        &self,
        rx: &mut oneshot::Receiver<T>,
        timeout: Option<Duration>,
    ) -> Result<Option<Result<T, oneshot::error::RecvError>>, Status> {
        let sleep = async {
            match timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rx => Ok(Some(r)),
            _ = sleep => Ok(None),
            _ = self.inner.shutdown.cancelled() => Err(Status::unavailable("the master is shutting down")),
        }
    }
}

/// A caller waiting for a lock. Dropped before it is done (the call was
/// cancelled, its client died, or the wait failed) it leaves the queue
/// and gives back a grant that reached it, so nothing is held for a caller
/// that never heard of it.
struct LockWait {
    service: CoordService,
    name: String,
    /// The waiter's id (0: granted at once, never queued).
    id: u64,
    rx: Option<oneshot::Receiver<Granted>>,
    token: Option<u64>,
    done: bool,
}

impl Drop for LockWait {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.service.inner.state.lock();
        if self.id != 0 {
            st.cancel_wait(&self.name, self.id);
        }
        let token = self.token.or_else(|| {
            self.rx
                .as_mut()
                .and_then(|rx| rx.try_recv().ok())
                .map(|g| g.0)
        });
        if let Some(token) = token {
            let _ = st.release(&self.name, token, None);
        }
    }
}

/// One `CounterAddStream` call. It reads adds while fewer than
/// [`MAX_UNSENT_ADDS`] answers are unsent, and sends the oldest answers
/// whose commit is written; a bad add, the end of the client's stream, or
/// shutdown ends the reading, and the stream ends once every answer before
/// it is sent. Dropped (the client went away), it stops: its applied adds
/// are committed all the same.
struct AddStream<S> {
    service: CoordService,
    incoming: S,
    /// Adds read so far: the index of the next one, for a bad add's message.
    read: u64,
    /// The last commit known to be written, so most answers are sent
    /// without looking at the committer's channel.
    durable: u64,
    /// Applied adds not answered yet, oldest first: their ticket and value.
    unsent: VecDeque<(Option<u64>, i64)>,
    /// Set once nothing more is read.
    done: bool,
    /// How the stream ends after the last answer (a bad add's status); a
    /// client's stream that ended ends it without one.
    end: Option<Status>,
}

impl<S> AddStream<S>
where
    S: Stream<Item = Result<pb::CounterAddRequest, Status>> + Unpin,
{
    /// Returns the next answer, or the status that ends the stream, or
    /// `None` once the client's stream ended and everything is answered.
    async fn next_answer(&mut self) -> Option<Result<i64, Status>> {
        loop {
            if let Some(&(ticket, value)) = self.unsent.front() {
                let ticket = ticket.unwrap_or(0);
                if ticket > self.durable {
                    self.durable = self.service.durable_through();
                }
                if ticket <= self.durable {
                    self.unsent.pop_front();
                    return Some(Ok(value));
                }
            } else if self.done {
                return self.end.take().map(Err);
            }
            let oldest = self.unsent.front().and_then(|a| a.0);
            let reading = !self.done && self.unsent.len() < MAX_UNSENT_ADDS;
            // Reading first: adds that arrived while a commit was written
            // join the next one.
            tokio::select! {
                biased;
                next = self.incoming.next(), if reading => match next {
                    Some(Ok(req)) => self.add(req),
                    Some(Err(status)) => self.stop(Some(status)),
                    None => self.stop(None),
                },
                settled = self.service.settle(oldest), if oldest.is_some() => {
                    if let Err(status) = settled {
                        return Some(Err(status));
                    }
                }
                _ = self.service.inner.shutdown.cancelled(), if !self.done => {
                    self.stop(Some(Status::unavailable(format!(
                        "the master is shutting down; adds after the first {} were not read",
                        self.read
                    ))));
                }
            }
        }
    }

    /// Applies one add, as the unary `CounterAdd` does.
    fn add(&mut self, req: pb::CounterAddRequest) {
        let index = self.read;
        self.read += 1;
        match self.service.apply(|st| st.counter_add(req.name, req.delta)) {
            Ok((value, ticket)) => self.unsent.push_back((ticket, value)),
            Err(s) => self.stop(Some(Status::new(
                s.code(),
                format!("add {index}: {}", s.message()),
            ))),
        }
    }

    /// Stops reading; `end` ends the stream once the answers before it are sent.
    fn stop(&mut self, end: Option<Status>) {
        self.done = true;
        self.end = end;
    }
}

/// A party waiting at a barrier. Dropped before the barrier opened, it
/// breaks the barrier for every other party.
struct BarrierWait {
    service: CoordService,
    name: String,
    id: u64,
    done: bool,
}

impl Drop for BarrierWait {
    fn drop(&mut self) {
        if !self.done {
            self.service.inner.state.lock().barrier_leave(
                &self.name,
                self.id,
                "a party left before it opened (its call ended)",
            );
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Coord for CoordService {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let req = request.into_inner();
        let (session, lease) = self
            .change(|st| {
                let (id, lease, ticket) =
                    st.open_session(req.lease_ms, req.owner, Instant::now())?;
                Ok(((id, lease), ticket))
            })
            .await?;
        Ok(Response::new(pb::OpenSessionResponse {
            session,
            lease_ms: lease.as_millis() as u64,
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let session = request.into_inner().session;
        let lease = self
            .inner
            .state
            .lock()
            .keep_alive(session, Instant::now())?;
        Ok(Response::new(pb::KeepAliveResponse {
            lease_ms: lease.as_millis() as u64,
        }))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = request.into_inner().session;
        let released = self
            .change(|st| {
                Ok(st
                    .end_session(session, "it was closed")
                    .unwrap_or((0, None)))
            })
            .await?;
        Ok(Response::new(pb::CloseSessionResponse { released }))
    }

    async fn kv_get(
        &self,
        request: Request<pb::KvGetRequest>,
    ) -> Result<Response<pb::KvGetResponse>, Status> {
        let key = request.into_inner().key;
        let (entry, ticket) = {
            let st = self.inner.state.lock();
            (st.kv_get(&key)?, st.visible())
        };
        self.settle(ticket).await?;
        Ok(Response::new(pb::KvGetResponse { entry }))
    }

    async fn kv_put(
        &self,
        request: Request<pb::KvPutRequest>,
    ) -> Result<Response<pb::KvPutResponse>, Status> {
        let req = request.into_inner();
        let (applied, version) = self
            .change(|st| {
                let (applied, version, ticket) =
                    st.kv_put(req.key, req.value, req.expected_version)?;
                // A refused swap shows the current version: it must be durable too.
                Ok(((applied, version), ticket.or(st.visible())))
            })
            .await?;
        Ok(Response::new(pb::KvPutResponse { applied, version }))
    }

    async fn kv_delete(
        &self,
        request: Request<pb::KvDeleteRequest>,
    ) -> Result<Response<pb::KvDeleteResponse>, Status> {
        let req = request.into_inner();
        let (deleted, version) = self
            .change(|st| {
                let (deleted, version, ticket) = st.kv_delete(&req.key, req.expected_version)?;
                Ok(((deleted, version), ticket.or(st.visible())))
            })
            .await?;
        Ok(Response::new(pb::KvDeleteResponse { deleted, version }))
    }

    async fn kv_list(
        &self,
        request: Request<pb::KvListRequest>,
    ) -> Result<Response<pb::KvListResponse>, Status> {
        let req = request.into_inner();
        let ((entries, more), ticket) = {
            let st = self.inner.state.lock();
            (
                st.kv_list(&req.prefix, &req.start_after, req.limit)?,
                st.visible(),
            )
        };
        self.settle(ticket).await?;
        Ok(Response::new(pb::KvListResponse { entries, more }))
    }

    type KvWatchStream = BoxStream<pb::KvEvent>;

    async fn kv_watch(
        &self,
        request: Request<pb::KvWatchRequest>,
    ) -> Result<Response<Self::KvWatchStream>, Status> {
        let slot = self.inner.guards.watch_slot(request.remote_addr())?;
        let req = request.into_inner();
        if !(req.prefix && req.key.is_empty()) {
            let limits = *self.inner.state.lock().limits();
            check_name("key", &req.key, &limits)?;
        }
        let rx = self.inner.events.subscribe();
        let shutdown = self.inner.shutdown.clone();
        let stream = futures::stream::unfold(Some((rx, shutdown, slot)), move |held| {
            let (key, prefix) = (req.key.clone(), req.prefix);
            async move {
                let (mut rx, shutdown, slot) = held?;
                loop {
                    let next = tokio::select! {
                        r = rx.recv() => r,
                        _ = shutdown.cancelled() => return None,
                    };
                    match next {
                        Ok(e) if (prefix && e.key.starts_with(&key)) || e.key == key => {
                            return Some((Ok((*e).clone()), Some((rx, shutdown, slot))));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let msg = format!(
                                "the watch fell {n} changes behind and was ended; list the keys again and watch anew"
                            );
                            return Some((Err(Status::data_loss(msg)), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn counter_add(
        &self,
        request: Request<pb::CounterAddRequest>,
    ) -> Result<Response<pb::CounterResponse>, Status> {
        let req = request.into_inner();
        let value = self
            .change(|st| st.counter_add(req.name, req.delta))
            .await?;
        Ok(Response::new(pb::CounterResponse { value }))
    }

    type CounterAddStreamStream = BoxStream<pb::CounterResponse>;

    async fn counter_add_stream(
        &self,
        request: Request<Streaming<pb::CounterAddRequest>>,
    ) -> Result<Response<Self::CounterAddStreamStream>, Status> {
        let incoming = request.into_inner();
        Ok(Response::new(Box::pin(self.counter_adds(incoming))))
    }

    async fn counter_get(
        &self,
        request: Request<pb::CounterGetRequest>,
    ) -> Result<Response<pb::CounterResponse>, Status> {
        let name = request.into_inner().name;
        let value = self.inner.state.lock().counter_get(&name)?;
        self.settle_visible().await?;
        Ok(Response::new(pb::CounterResponse { value }))
    }

    async fn counter_set(
        &self,
        request: Request<pb::CounterSetRequest>,
    ) -> Result<Response<pb::CounterResponse>, Status> {
        let req = request.into_inner();
        let value = self
            .change(|st| st.counter_set(req.name, req.value))
            .await?;
        Ok(Response::new(pb::CounterResponse { value }))
    }

    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let req = request.into_inner();
        let timeout = check_timeout(req.timeout_ms)?;
        let outcome =
            self.inner
                .state
                .lock()
                .acquire(req.name.clone(), req.permits, req.session)?;
        let mut wait = LockWait {
            service: self.clone(),
            name: req.name.clone(),
            id: 0,
            rx: None,
            token: None,
            done: false,
        };
        let (token, ticket) = match outcome {
            Acquired::Now(granted) => granted,
            Acquired::Queued(id, rx) => {
                wait.id = id;
                let rx = wait.rx.insert(rx);
                match self.wait(rx, timeout).await? {
                    Some(Ok(granted)) => granted,
                    Some(Err(_)) => {
                        return Err(Status::not_found(format!(
                            "session {} ended while waiting for lock {}",
                            req.session, req.name
                        )));
                    }
                    None => {
                        let (holders, waiters) = {
                            let mut st = self.inner.state.lock();
                            st.cancel_wait(&req.name, id);
                            st.lock_state(&req.name)
                        };
                        wait.id = 0;
                        match rx.try_recv() {
                            Ok(granted) => granted,
                            Err(_) => {
                                return Err(Status::deadline_exceeded(format!(
                                    "lock {}: not acquired within {} ms ({holders} holders, {waiters} other waiters)",
                                    req.name,
                                    req.timeout_ms.unwrap_or(0)
                                )));
                            }
                        }
                    }
                }
            }
        };
        // From here a call that ends early gives the grant back.
        wait.token = Some(token);
        self.settle(ticket).await?;
        wait.done = true;
        Ok(Response::new(pb::AcquireResponse {
            fencing_token: token,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let req = request.into_inner();
        self.change(|st| {
            Ok((
                (),
                st.release(&req.name, req.fencing_token, Some(req.session))?,
            ))
        })
        .await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn event_set(
        &self,
        request: Request<pb::EventRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let name = request.into_inner().name;
        self.change(|st| Ok(((), st.event_set(name)?))).await?;
        Ok(Response::new(pb::EventResponse { is_set: true }))
    }

    async fn event_clear(
        &self,
        request: Request<pb::EventRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let name = request.into_inner().name;
        self.change(|st| Ok(((), st.event_clear(name)?))).await?;
        Ok(Response::new(pb::EventResponse { is_set: false }))
    }

    async fn event_wait(
        &self,
        request: Request<pb::EventWaitRequest>,
    ) -> Result<Response<pb::EventResponse>, Status> {
        let req = request.into_inner();
        let timeout = check_timeout(req.timeout_ms)?;
        let waiting = self.inner.state.lock().event_wait(req.name)?;
        let is_set = match waiting {
            Ok(()) => {
                self.settle_visible().await?;
                true
            }
            Err(mut rx) => match self.wait(&mut rx, timeout).await? {
                Some(Ok(ticket)) => {
                    self.settle(ticket).await?;
                    true
                }
                Some(Err(_)) | None => false,
            },
        };
        Ok(Response::new(pb::EventResponse { is_set }))
    }

    async fn barrier_wait(
        &self,
        request: Request<pb::BarrierWaitRequest>,
    ) -> Result<Response<pb::BarrierWaitResponse>, Status> {
        let req = request.into_inner();
        let timeout = check_timeout(req.timeout_ms)?;
        let (id, mut rx) =
            self.inner
                .state
                .lock()
                .barrier_wait(req.name.clone(), req.parties, req.session)?;
        let mut party = BarrierWait {
            service: self.clone(),
            name: req.name.clone(),
            id,
            done: false,
        };
        let outcome: BarrierOutcome = match self.wait(&mut rx, timeout).await? {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Err(format!("barrier {} is broken", req.name)),
            None => {
                self.inner.state.lock().barrier_leave(
                    &req.name,
                    id,
                    &format!("a party timed out after {} ms", req.timeout_ms.unwrap_or(0)),
                );
                rx.try_recv()
                    .unwrap_or_else(|_| Err(format!("barrier {} is broken", req.name)))
            }
        };
        party.done = true;
        match outcome {
            Ok(index) => Ok(Response::new(pb::BarrierWaitResponse { index })),
            Err(reason) => Err(Status::aborted(reason)),
        }
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let name = request.into_inner().name;
        let out = self.inner.state.lock().inspect(&name)?;
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::store::RedbStore;

    /// A service on a redb store in `dir`, with the store to read back.
    fn service(dir: &std::path::Path) -> (CoordService, Arc<dyn Store>, CancellationToken) {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir).unwrap());
        let shutdown = CancellationToken::new();
        let service = CoordService::open(
            store.clone(),
            CoordLimits::default(),
            Arc::new(Guards::new(1, 1)),
            shutdown.clone(),
        )
        .unwrap();
        (service, store, shutdown)
    }

    fn stop(service: CoordService, shutdown: CancellationToken) {
        shutdown.cancel();
        service.join_committer();
    }

    fn stored(store: &Arc<dyn Store>) -> Vec<Record> {
        let mut found = Vec::new();
        store
            .coord()
            .unwrap()
            .load_coord(&mut |r| found.push(r))
            .unwrap();
        found
    }

    /// Joins callers that each return the last value they were answered;
    /// checks that the largest is `total`, and that the store holds it
    /// already.
    async fn assert_answered_and_stored(
        mut tasks: tokio::task::JoinSet<i64>,
        store: &Arc<dyn Store>,
        total: i64,
    ) {
        let mut most = 0;
        while let Some(r) = tasks.join_next().await {
            most = most.max(r.unwrap());
        }
        assert_eq!(most, total);
        let value = stored(store).into_iter().find_map(|r| match r {
            Record::Counter { value, .. } => Some(value),
            _ => None,
        });
        assert_eq!(value, Some(total));
    }

    /// Many callers at once share commits, and each answer comes after the
    /// commit holding its change: every acknowledged add is in the store,
    /// read while the master still runs (no last write at shutdown).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_adds_are_durable_once_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store, shutdown) = service(dir.path());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let svc = svc.clone();
            tasks.spawn(async move {
                let mut last = 0;
                for _ in 0..50 {
                    let req = Request::new(pb::CounterAddRequest {
                        name: "n".into(),
                        delta: 1,
                    });
                    last = svc.counter_add(req).await.unwrap().into_inner().value;
                }
                last
            });
        }
        assert_answered_and_stored(tasks, &store, 800).await;
        stop(svc, shutdown);
    }

    /// A service on a durable state with no committer: nothing is durable
    /// until the test sends a commit number on the returned channel.
    fn held_service() -> (CoordService, watch::Sender<CommitState>) {
        let (commits, committed) = watch::channel(CommitState::default());
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let svc = CoordService {
            inner: Arc::new(Inner {
                state: Arc::new(Mutex::new(CoordState::new(CoordLimits::default(), true))),
                committed: Some(committed),
                committer: Mutex::new(None),
                events,
                shutdown: CancellationToken::new(),
                guards: Arc::new(Guards::new(1, 1)),
            }),
        };
        (svc, commits)
    }

    fn add(name: &str) -> Result<pb::CounterAddRequest, Status> {
        Ok(pb::CounterAddRequest {
            name: name.into(),
            delta: 1,
        })
    }

    /// An add of 1 to each of `names`, all ready at once, and a count of
    /// those the stream has read.
    fn adds(
        names: Vec<&'static str>,
    ) -> (
        impl Stream<Item = Result<pb::CounterAddRequest, Status>> + Send + Unpin + 'static,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = read.clone();
        let stream = futures::stream::iter(names.into_iter().map(add)).inspect(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        (stream, read)
    }

    /// Streams share commits, each stream is answered in order, and each
    /// answer comes after the commit holding its add: when the last answer
    /// is in hand the store holds every add, read while the master runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_adds_are_answered_in_order_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store, shutdown) = service(dir.path());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let svc = svc.clone();
            tasks.spawn(async move {
                let (incoming, _) = adds(vec!["n"; 500]);
                let answers: Vec<i64> = svc
                    .counter_adds(incoming)
                    .map(|r| r.unwrap().value)
                    .collect()
                    .await;
                assert_eq!(answers.len(), 500);
                assert!(answers.windows(2).all(|w| w[0] < w[1]), "{answers:?}");
                answers[499]
            });
        }
        assert_answered_and_stored(tasks, &store, 4000).await;
        stop(svc, shutdown);
    }

    /// With its answers waiting for a commit, a stream reads no more than
    /// its bound of adds; once they are written it answers them and reads
    /// on.
    #[tokio::test]
    async fn a_stream_stops_reading_while_its_answers_are_unsent() {
        let (svc, commits) = held_service();
        let (incoming, read) = adds(vec!["n"; 10_000]);
        let mut answers = Box::pin(svc.counter_adds(incoming));
        assert!(answers.next().now_or_never().is_none());
        assert_eq!(
            read.load(std::sync::atomic::Ordering::SeqCst),
            MAX_UNSENT_ADDS
        );
        assert_eq!(
            svc.inner.state.lock().counter_get("n").unwrap(),
            MAX_UNSENT_ADDS as i64
        );
        // Every add so far is in the state's first commit.
        commits.send_modify(|s| s.committed = 1);
        let values: Vec<i64> = answers.map(|r| r.unwrap().value).collect().await;
        assert_eq!(values, (1..=10_000).collect::<Vec<i64>>());
    }

    /// A bad add ends the stream with its status and index, after the
    /// answers of the adds before it, which stay applied; the adds after
    /// it are not read.
    #[tokio::test]
    async fn a_bad_add_ends_the_stream_after_the_answers_before_it() {
        let (svc, commits) = held_service();
        let (incoming, read) = adds(vec!["n", "n", "n", "", "n", "n"]);
        let mut answers = Box::pin(svc.counter_adds(incoming));
        // The refusal waits behind the answers, which wait for the commit.
        assert!(answers.next().now_or_never().is_none());
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 4);
        commits.send_modify(|s| s.committed = 1);
        let got: Vec<Result<i64, Status>> = answers.map(|r| r.map(|a| a.value)).collect().await;
        assert_eq!(got.len(), 4, "{got:?}");
        for (i, r) in got[..3].iter().enumerate() {
            assert_eq!(r.as_ref().unwrap(), &(i as i64 + 1));
        }
        let err = got[3].as_ref().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "add 3: name: must not be empty");
        assert_eq!(svc.inner.state.lock().counter_get("n").unwrap(), 3);
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    /// A grant given back by a call that ended (nobody waits for that
    /// commit) is written all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_nobody_waits_for_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store, shutdown) = service(dir.path());
        let session = svc
            .open_session(Request::new(pb::OpenSessionRequest {
                lease_ms: 60_000,
                owner: "t".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .session;
        let token = svc
            .acquire(Request::new(pb::AcquireRequest {
                name: "l".into(),
                permits: 1,
                session,
                timeout_ms: Some(1_000),
            }))
            .await
            .unwrap()
            .into_inner()
            .fencing_token;
        let grants = || {
            stored(&store)
                .iter()
                .filter(|r| matches!(r, Record::Grant { .. }))
                .count()
        };
        assert_eq!(grants(), 1);
        // Given back the way a call that ended gives it back: no reply
        // waits for the commit.
        drop(LockWait {
            service: svc.clone(),
            name: "l".into(),
            id: 0,
            rx: None,
            token: Some(token),
            done: false,
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while grants() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the release was not written"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop(svc, shutdown);
    }
}
