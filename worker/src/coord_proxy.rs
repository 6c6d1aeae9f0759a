//! The worker's door to the master's `Coord` service for its Python jobs:
//! `drover.Lock`, `drover.Value`, `drover.Dict` and the rest, called inside
//! a job, reach the master through here.
//!
//! The proxy serves `Coord` on a loopback port of its own, behind a secret
//! made at start; the Python processes find both in `DROVER_COORD` and
//! `DROVER_COORD_TOKEN`, so a job needs neither the master's address nor a
//! client token. Each call goes on to the master over a connection of the
//! worker's, with the worker's token and TLS settings.
//!
//! **A job's session ends with its attempt.** The runner puts the job's
//! slot number in `DROVER_JOB_SLOT` while it runs, and the client sends it
//! with `OpenSession`. The proxy names the session after the job and its
//! attempt and, when the attempt ends here for any reason (its result, a
//! failure, a timeout or cancel that killed its process, a drain), closes
//! it: the master releases its locks and semaphore permits at once, not a
//! lease later. A job that dies with its worker is covered by the lease:
//! nobody renews its session any more.
//!
//! **Calls follow the worker's session.** Given several masters, the proxy
//! forwards to the one that last welcomed the worker's session, so its
//! jobs' calls move to a new leader with the worker.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use drover_common::auth::{Presented, Token, presented};
use drover_common::net::{self, AuthChannel, ClientOptions};
use drover_common::pb::coord_client::CoordClient;
use drover_common::pb::coord_server::{Coord, CoordServer};
use drover_common::pb::{self};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::Masters;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

/// The metadata key that carries a job's slot number with `OpenSession`.
pub const JOB_SLOT_HEADER: &str = "drover-job-slot";

/// The jobs running in Python processes, and the sessions each opened.
#[derive(Clone)]
pub struct JobSessions {
    inner: Arc<Mutex<HashMap<u64, Held>>>,
    master: Upstream,
    /// The closes under way, waited for (briefly) when the worker stops.
    closing: TaskTracker,
}

impl std::fmt::Debug for JobSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSessions")
            .field("jobs", &self.book().len())
            .finish()
    }
}

#[derive(Debug)]
struct Held {
    /// "job ID attempt N", the owner the master shows.
    owner: String,
    sessions: Vec<u64>,
}

impl JobSessions {
    fn book(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        // Nothing panics while holding it; a poisoned book is still whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job held under `slot` may open sessions now.
    pub fn started(&self, slot: u64, job_id: &str, attempt: u32) {
        self.book().insert(
            slot,
            Held {
                owner: format!("job {job_id} attempt {attempt}"),
                sessions: Vec::new(),
            },
        );
    }

    /// The job held under `slot` has left this worker: its sessions are
    /// closed, so what they hold is released now.
    pub fn ended(&self, slot: u64) {
        let Some(held) = self.book().remove(&slot) else {
            return;
        };
        for session in held.sessions {
            self.close(session, &held.owner);
        }
    }

    fn close(&self, session: u64, owner: &str) {
        let mut master = self.master.quick();
        let owner = owner.to_string();
        self.closing.spawn(async move {
            let req = pb::CloseSessionRequest { session };
            match master.close_session(req).await {
                Ok(r) => tracing::debug!(
                    session, %owner, released = r.into_inner().released,
                    "closed the session of an ended job"
                ),
                // Gone already (expired, or the job closed it), or the
                // master is out of reach: its lease ends it then.
                Err(status) => tracing::debug!(
                    session, %owner, error = %status.message(),
                    "could not close the session of an ended job"
                ),
            }
        });
    }

    /// Waits up to `patience` for the sessions of ended jobs to be closed,
    /// so a worker that stops does not leave them to their leases.
    pub async fn flush(&self, patience: Duration) {
        self.closing.close();
        if tokio::time::timeout(patience, self.closing.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.closing.len(),
                "stopped before closing every ended job's session; their leases end them"
            );
        }
    }

    /// The owner to name a session after, if `slot` is a job running here.
    fn owner(&self, slot: u64) -> Option<String> {
        self.book().get(&slot).map(|h| h.owner.clone())
    }

    /// Ties `session` to the job under `slot`; false if the job has ended
    /// meanwhile (the caller closes it).
    fn tie(&self, slot: u64, session: u64) -> bool {
        match self.book().get_mut(&slot) {
            Some(held) => {
                held.sessions.push(session);
                true
            }
            None => false,
        }
    }
}

/// The proxy, started by [`start`].
#[derive(Debug)]
pub struct Proxy {
    /// Where the Python processes reach it.
    pub url: String,
    /// The secret they present.
    pub token: String,
    /// The jobs' sessions, kept by the engine.
    pub jobs: JobSessions,
}

/// Binds a loopback port and serves the proxy there until `stop`,
/// forwarding to the master of `masters` that the worker's session is with.
pub async fn start(
    masters: Masters,
    options: &ClientOptions,
    worker_name: &str,
    stop: CancellationToken,
) -> anyhow::Result<Proxy> {
    let waits = WaitConnections {
        pool: Arc::default(),
        masters: masters.clone(),
        options: options.clone(),
    };
    let quick = (0..masters.urls().len())
        .map(|i| waits.connect(i))
        .collect::<anyhow::Result<_>>()?;
    let master = Upstream {
        masters: masters.clone(),
        quick,
    };
    let jobs = JobSessions {
        inner: Arc::default(),
        master: master.clone(),
        closing: TaskTracker::new(),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot bind a loopback port for the jobs' Coord proxy: {e}")
        })?;
    let addr = listener.local_addr()?;
    // ThreadRng is a CSPRNG (ChaCha), seeded from the OS.
    let secret = format!("{:032x}", rand::random::<u128>());
    let token = Token::new(&secret, "the Coord proxy's token").map_err(anyhow::Error::msg)?;
    let service = CoordServer::new(ProxyService {
        master,
        waits,
        jobs: jobs.clone(),
        explain: Explain {
            worker: worker_name.into(),
            masters,
        },
    })
    .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let gate = move |request: Request<()>| match presented(request.metadata()) {
        Presented::Bearer(t) if token.matches(t) => Ok(request),
        _ => Err(Status::unauthenticated(
            "this is a worker's Coord proxy for its own jobs: present DROVER_COORD_TOKEN",
        )),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let served = net::server()
            .add_service(InterceptedService::new(service, gate))
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the jobs' Coord proxy stopped");
        }
    });
    tracing::info!(%addr, "serving Coord to Python jobs");
    Ok(Proxy {
        url: format!("http://{addr}"),
        token: secret,
        jobs,
    })
}

/// The master the proxy forwards to: the one the worker's session is with.
#[derive(Clone)]
struct Upstream {
    masters: Masters,
    /// A connection to each master for quick calls, many at once; each
    /// opened by its first call.
    quick: Arc<[CoordClient<AuthChannel>]>,
}

impl Upstream {
    /// The connection for quick calls to the current master.
    fn quick(&self) -> CoordClient<AuthChannel> {
        self.quick[self.masters.current()].clone()
    }
}

struct ProxyService {
    /// Where calls go.
    master: Upstream,
    waits: WaitConnections,
    jobs: JobSessions,
    explain: Explain,
}

/// How many connections for waiting calls are kept when no call uses them.
const IDLE_WAIT_CONNECTIONS: usize = 16;
/// The most connections waiting calls open; past that many waits at once,
/// they share the least used (the master's default of 1,024 streams per
/// connection leaves room for 64 x 1,024 waits).
const MAX_WAIT_CONNECTIONS: usize = 64;

/// Connections for the calls that wait (an acquire, an event or barrier
/// wait, a watch, a stream of adds), one such call on each while fewer
/// than [`MAX_WAIT_CONNECTIONS`] wait.
///
/// A waiting call holds its HTTP/2 stream for as long as it waits, and a
/// connection carries only the master's `--max-concurrent-streams` at
/// once: on a shared connection the calls past that would queue behind the
/// waits, their own timeouts and all. With a connection each, no call
/// waits for another's stream. A connection given back is used again, so a
/// lock taken and given back in a loop opens one connection, not one each
/// time.
#[derive(Clone)]
struct WaitConnections {
    pool: Arc<Mutex<Vec<Pooled>>>,
    masters: Masters,
    options: ClientOptions,
}

struct Pooled {
    /// Which connection, for the [`Lent`] to find it again.
    id: u64,
    /// The index of the master it goes to: only the current master's are
    /// lent, and the others' are dropped once unused.
    master: usize,
    client: CoordClient<AuthChannel>,
    /// The waiting calls on it now.
    calls: usize,
}

impl WaitConnections {
    /// A new connection to the master `at` in the list, opened by its
    /// first call.
    fn connect(&self, at: usize) -> anyhow::Result<CoordClient<AuthChannel>> {
        let channel = net::connect_lazy_with(&self.masters.urls()[at], &self.options)
            .map_err(anyhow::Error::msg)?;
        Ok(CoordClient::new(channel)
            .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(net::MAX_MESSAGE_BYTES))
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Pooled>> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection to the current master for one waiting call, given
    /// back when the [`Lent`] drops: an unused one, else a new one, else
    /// (at the cap) the least used.
    fn lend(&self) -> Result<Lent, Status> {
        let master = self.masters.current();
        let mut pool = self.pool();
        // Another master's, from before the session moved: unused, they go.
        pool.retain(|c| c.master == master || c.calls > 0);
        let mine: Vec<usize> = (0..pool.len())
            .filter(|&i| pool[i].master == master)
            .collect();
        let i = match mine.iter().copied().find(|&i| pool[i].calls == 0) {
            Some(i) => i,
            None if pool.len() < MAX_WAIT_CONNECTIONS || mine.is_empty() => {
                let client = self
                    .connect(master)
                    .map_err(|e| Status::internal(format!("the Coord proxy's connection: {e}")))?;
                let id = pool.iter().map(|c| c.id + 1).max().unwrap_or(0);
                pool.push(Pooled {
                    id,
                    master,
                    client,
                    calls: 0,
                });
                pool.len() - 1
            }
            None => mine
                .into_iter()
                .min_by_key(|&i| pool[i].calls)
                .expect("the current master has connections"),
        };
        let pooled = &mut pool[i];
        pooled.calls += 1;
        Ok(Lent {
            id: pooled.id,
            client: pooled.client.clone(),
            home: self.clone(),
        })
    }
}

/// A connection of [`WaitConnections`] in use by one call.
struct Lent {
    id: u64,
    client: CoordClient<AuthChannel>,
    home: WaitConnections,
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut pool = self.home.pool();
        if let Some(i) = pool.iter().position(|c| c.id == self.id) {
            pool[i].calls -= 1;
            let unused = pool.iter().filter(|c| c.calls == 0).count();
            let stale = pool[i].master != self.home.masters.current();
            if pool[i].calls == 0 && (stale || unused > IDLE_WAIT_CONNECTIONS) {
                pool.swap_remove(i);
            }
        }
    }
}

/// A stream the proxy passes on to a job.
type Relayed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Passes on the master's `stream`, holding `lent` until it ends and
/// explaining a transport error in it as [`Explain::status`] does.
fn relayed<T: Send + 'static>(
    stream: tonic::Streaming<T>,
    lent: Lent,
    explain: Explain,
) -> Relayed<T> {
    Box::pin(stream.map(move |item| {
        let _held = &lent;
        item.map_err(|status| explain.status(status))
    }))
}

/// The longest owner the proxy names a session with (the master takes 256
/// bytes); a longer one, made long by the worker's name, is cut.
const MAX_OWNER_BYTES: usize = 200;

fn owner_within(mut owner: String) -> String {
    if owner.len() > MAX_OWNER_BYTES {
        let mut end = MAX_OWNER_BYTES;
        while !owner.is_char_boundary(end) {
            end -= 1;
        }
        owner.truncate(end);
        owner.push_str("...");
    }
    owner
}

/// How often a call the master refused unprocessed is made before its
/// refusal is passed on.
const REFUSED_TRIES: usize = 10;

/// Whether the master reset the call's stream with REFUSED_STREAM, which
/// HTTP/2 promises it sends only for a stream it did not process.
fn refused(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            return e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

/// Whether `status` was made by this side's transport (the master never
/// answered), rather than sent by the master.
fn is_local(status: &Status) -> bool {
    status.source().is_some()
}

/// The text of `status` and the errors under it.
fn chain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = status.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What a job is told when the master did not answer its call or refused
/// the worker's credentials.
#[derive(Clone)]
struct Explain {
    worker: Arc<str>,
    /// The master the calls go to is named as the current one.
    masters: Masters,
}

impl Explain {
    /// UNAVAILABLE as from the master itself, saying whether the call was
    /// never sent (it can be sent again as it is) or cut off in flight; and
    /// what to do when the master refuses the worker's credentials.
    fn status(&self, status: Status) -> Status {
        let (worker, url) = (&self.worker, self.masters.current_url());
        if is_local(&status) {
            let text = chain(&status);
            if refused(&status) || net::never_connected(&status) {
                return Status::unavailable(format!(
                    "worker {worker} failed to connect to the master at {url}: {text}"
                ));
            }
            return Status::unavailable(format!(
                "worker {worker} lost its connection to the master at {url} during the call: {text}"
            ));
        }
        if status.code() == Code::Unauthenticated || status.code() == Code::PermissionDenied {
            return Status::new(
                status.code(),
                format!(
                    "{} (the master refused worker {worker}'s call for its job: jobs reach Coord \
                     with their worker's credentials, so give the master --worker-token and the \
                     worker --token, or use --client-ca with worker certificates)",
                    status.message()
                ),
            );
        }
        status
    }
}

impl ProxyService {
    /// Makes a call to the master, made again (with a short backoff) while
    /// the master refuses its stream before processing it: a connection
    /// just opened does not know the master's stream limit yet, and a
    /// refused stream is sure not to have been applied.
    async fn relay<T, Call, Fut>(&self, call: Call) -> Result<Response<T>, Status>
    where
        Call: Fn() -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut delay = Duration::from_millis(2);
        for _ in 0..REFUSED_TRIES {
            match call().await {
                Err(status) if refused(&status) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                done => return done.map_err(|s| self.explain.status(s)),
            }
        }
        call().await.map_err(|s| self.explain.status(s))
    }
}

/// The `Coord` implementation: `OpenSession` ties the session to its job;
/// every other call goes on to the master as it is, a quick one on the
/// shared connection, one that waits on a connection of its own.
macro_rules! forward_all {
    (
        quick { $($quick:ident($qreq:ty) -> $qresp:ty;)* }
        waiting { $($wait:ident($wreq:ty) -> $wresp:ty;)* }
    ) => {
        #[tonic::async_trait]
        impl Coord for ProxyService {
            async fn open_session(
                &self,
                request: Request<pb::OpenSessionRequest>,
            ) -> Result<Response<pb::OpenSessionResponse>, Status> {
                self.open_session_for_job(request).await
            }

            $(
                async fn $quick(&self, request: Request<$qreq>) -> Result<Response<$qresp>, Status> {
                    let req = request.into_inner();
                    self.relay(|| {
                        let (mut client, req) = (self.master.quick(), req.clone());
                        async move { client.$quick(req).await }
                    })
                    .await
                }
            )*

            $(
                async fn $wait(&self, request: Request<$wreq>) -> Result<Response<$wresp>, Status> {
                    let req = request.into_inner();
                    let lent = self.waits.lend()?;
                    self.relay(|| {
                        let (mut client, req) = (lent.client.clone(), req.clone());
                        async move { client.$wait(req).await }
                    })
                    .await
                }
            )*

            type CounterAddStreamStream = Relayed<pb::CounterResponse>;

            async fn counter_add_stream(
                &self,
                request: Request<tonic::Streaming<pb::CounterAddRequest>>,
            ) -> Result<Response<Self::CounterAddStreamStream>, Status> {
                // A job's stream that breaks ends the master's stream
                // there: what was sent before it stays added.
                let adds = request.into_inner().map_while(Result::ok);
                // The connection goes back when the answers end; should
                // the master end them before the job stops sending, the
                // rest of the job's adds are still sent (and refused) on
                // it, beside the next call it carries: harmless.
                let lent = self.waits.lend()?;
                // Not made again: the adds it read are gone with it.
                let answers = lent
                    .client
                    .clone()
                    .counter_add_stream(adds)
                    .await
                    .map_err(|s| self.explain.status(s))?;
                Ok(answers.map(|s| relayed(s, lent, self.explain.clone())))
            }

            type KvWatchStream = Relayed<pb::KvEvent>;

            async fn kv_watch(
                &self,
                request: Request<pb::KvWatchRequest>,
            ) -> Result<Response<Self::KvWatchStream>, Status> {
                let req = request.into_inner();
                let lent = self.waits.lend()?;
                let changes = self
                    .relay(|| {
                        let (mut client, req) = (lent.client.clone(), req.clone());
                        async move { client.kv_watch(req).await }
                    })
                    .await?;
                Ok(changes.map(|s| relayed(s, lent, self.explain.clone())))
            }
        }
    };
}

forward_all! {
    quick {
        keep_alive(pb::KeepAliveRequest) -> pb::KeepAliveResponse;
        close_session(pb::CloseSessionRequest) -> pb::CloseSessionResponse;
        kv_get(pb::KvGetRequest) -> pb::KvGetResponse;
        kv_put(pb::KvPutRequest) -> pb::KvPutResponse;
        kv_delete(pb::KvDeleteRequest) -> pb::KvDeleteResponse;
        kv_list(pb::KvListRequest) -> pb::KvListResponse;
        counter_add(pb::CounterAddRequest) -> pb::CounterResponse;
        counter_get(pb::CounterGetRequest) -> pb::CounterResponse;
        counter_set(pb::CounterSetRequest) -> pb::CounterResponse;
        release(pb::ReleaseRequest) -> pb::ReleaseResponse;
        event_set(pb::EventRequest) -> pb::EventResponse;
        event_clear(pb::EventRequest) -> pb::EventResponse;
        inspect(pb::InspectRequest) -> pb::InspectResponse;
    }
    waiting {
        acquire(pb::AcquireRequest) -> pb::AcquireResponse;
        event_wait(pb::EventWaitRequest) -> pb::EventResponse;
        barrier_wait(pb::BarrierWaitRequest) -> pb::BarrierWaitResponse;
    }
}

impl ProxyService {
    /// Opens a session on the master; with a job's slot, names it after
    /// the job's attempt and records it, to be closed when the job ends.
    async fn open_session_for_job(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let slot = match request.metadata().get(JOB_SLOT_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{JOB_SLOT_HEADER} must be a job's slot number (DROVER_JOB_SLOT)"
                        ))
                    })?,
            ),
        };
        let mut req = request.into_inner();
        let tied = slot.and_then(|slot| Some((slot, self.jobs.owner(slot)?)));
        let Some((slot, owner)) = tied else {
            // Not from a running job: a process one left behind (it
            // inherited the slot), say. An ordinary session, ended by its
            // lease.
            req.owner = owner_within(match slot {
                Some(slot) => format!(
                    "{} (left by job slot {slot}) via worker {}",
                    req.owner, self.explain.worker
                ),
                None => format!("{} via worker {}", req.owner, self.explain.worker),
            });
            return self
                .relay(|| {
                    let (mut client, req) = (self.master.quick(), req.clone());
                    async move { client.open_session(req).await }
                })
                .await;
        };
        req.owner = owner_within(format!(
            "{owner} on worker {} ({})",
            self.explain.worker, req.owner
        ));
        let resp = self
            .relay(|| {
                let (mut client, req) = (self.master.quick(), req.clone());
                async move { client.open_session(req).await }
            })
            .await?;
        let session = resp.get_ref().session;
        if !self.jobs.tie(slot, session) {
            // The job ended while its session was being opened: what is
            // left of it (a thread, a process) has an ordinary session.
            tracing::debug!(
                slot,
                session,
                "a session opened as its job ended is left to its lease"
            );
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_common::auth::AttachToken;

    fn masters(url: &str) -> Masters {
        Masters::new(vec![url.to_string()])
    }

    /// A proxy of worker "w1" in front of the one master at `url`.
    async fn proxy_for(url: &str, stop: &CancellationToken) -> Proxy {
        start(masters(url), &ClientOptions::default(), "w1", stop.clone())
            .await
            .unwrap()
    }

    /// A port with nothing listening on it.
    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    async fn proxy_client(proxy: &Proxy, token: &str) -> CoordClient<AuthChannel> {
        let token = Token::new(token, "t").unwrap();
        let channel = net::connect(&proxy.url).await.unwrap();
        CoordClient::new(InterceptedService::new(
            channel,
            AttachToken::new(Some(&token)),
        ))
    }

    /// Adds through a proxy in front of `master`, and checks the add fails
    /// as UNAVAILABLE saying the master never got it (the client sends
    /// such a call again as it is).
    async fn assert_an_add_is_unsent(master: &str) {
        let stop = CancellationToken::new();
        let proxy = proxy_for(master, &stop).await;
        let mut c = proxy_client(&proxy, &proxy.token.clone()).await;
        let err = c
            .counter_add(pb::CounterAddRequest {
                name: "n".into(),
                delta: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().starts_with(&format!(
                "worker w1 failed to connect to the master at {master}"
            )),
            "{}",
            err.message()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_call_that_never_reached_the_master_says_so_as_unavailable() {
        assert_an_add_is_unsent(&format!("http://127.0.0.1:{}", closed_port().await)).await;
    }

    /// A master that resets its first `refuse` streams with REFUSED_STREAM
    /// and answers each later one with an empty message; counts the
    /// streams it saw.
    async fn refusing_master(refuse: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = conn.accept().await {
                        if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let head = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut body = respond.send_response(head, false).unwrap();
                        // One gRPC frame: not compressed, 0 bytes long.
                        body.send_data(bytes::Bytes::from_static(&[0; 5]), false)
                            .unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        body.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_stream_the_master_refused_unprocessed_is_sent_again() {
        let (master, seen) = refusing_master(3).await;
        let stop = CancellationToken::new();
        let proxy = proxy_for(&master, &stop).await;
        let mut c = proxy_client(&proxy, &proxy.token.clone()).await;
        // A waiting call and a quick one: both are made again until the
        // master takes them.
        c.acquire(pb::AcquireRequest::default()).await.unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
        c.counter_get(pb::CounterGetRequest { name: "n".into() })
            .await
            .unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_master_that_refuses_every_try_is_unavailable_and_the_call_unsent() {
        let (master, seen) = refusing_master(usize::MAX).await;
        assert_an_add_is_unsent(&master).await;
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            REFUSED_TRIES + 1
        );
    }

    #[tokio::test]
    async fn the_proxy_needs_its_secret() {
        let master = format!("http://127.0.0.1:{}", closed_port().await);
        let stop = CancellationToken::new();
        let proxy = proxy_for(&master, &stop).await;
        let mut c = proxy_client(&proxy, "not-the-secret").await;
        let err = c
            .counter_get(pb::CounterGetRequest { name: "n".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(
            err.message().contains("DROVER_COORD_TOKEN"),
            "{}",
            err.message()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn waits_get_a_connection_each_up_to_the_cap_then_share_the_least_used() {
        let waits = WaitConnections {
            pool: Arc::default(),
            masters: masters(&format!("http://127.0.0.1:{}", closed_port().await)),
            options: ClientOptions::default(),
        };
        let lent: Vec<Lent> = (0..MAX_WAIT_CONNECTIONS + 2)
            .map(|_| waits.lend().unwrap())
            .collect();
        let ids: std::collections::HashSet<u64> = lent.iter().map(|l| l.id).collect();
        assert_eq!(ids.len(), MAX_WAIT_CONNECTIONS);
        assert_eq!(waits.pool().len(), MAX_WAIT_CONNECTIONS);
        assert!(waits.pool().iter().all(|c| (1..=2).contains(&c.calls)));
        // The connection given back is the one the next wait gets.
        let freed = lent[10].id;
        let mut lent = lent;
        lent.remove(10);
        assert_eq!(waits.lend().unwrap().id, freed);
        // With every wait over, IDLE_WAIT_CONNECTIONS are kept.
        drop(lent);
        assert_eq!(waits.pool().len(), IDLE_WAIT_CONNECTIONS);
        assert!(waits.pool().iter().all(|c| c.calls == 0));
    }

    #[tokio::test]
    async fn waits_go_to_the_master_the_session_moved_to() {
        let (a, b) = (closed_port().await, closed_port().await);
        let masters = Masters::new(vec![
            format!("http://127.0.0.1:{a}"),
            format!("http://127.0.0.1:{b}"),
        ]);
        let waits = WaitConnections {
            pool: Arc::default(),
            masters: masters.clone(),
            options: ClientOptions::default(),
        };
        let (held, idle) = (waits.lend().unwrap(), waits.lend().unwrap());
        drop(idle);
        masters.welcomed_by(1);
        // The old master's idle connection is not lent: it goes.
        let moved = waits.lend().unwrap();
        assert_eq!(
            waits.pool().iter().map(|c| c.master).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_ne!(moved.id, held.id);
        // The one still waiting on the old master goes when its call ends.
        drop(held);
        assert_eq!(
            waits.pool().iter().map(|c| c.master).collect::<Vec<_>>(),
            [1]
        );
        drop(moved);
        assert_eq!(waits.pool().len(), 1);
    }

    #[test]
    fn a_long_owner_is_cut_within_the_masters_limit() {
        let owner = owner_within(format!("job x on worker {}", "é".repeat(300)));
        assert!(owner.len() <= MAX_OWNER_BYTES + 3, "{}", owner.len());
        assert!(owner.ends_with("..."));
        assert_eq!(owner_within("short".into()), "short");
    }
}
