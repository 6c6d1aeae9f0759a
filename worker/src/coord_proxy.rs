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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use drover_common::auth::{Presented, Token, presented};
use drover_common::net::{self, AuthChannel, ClientOptions};
use drover_common::pb::coord_client::CoordClient;
use drover_common::pb::coord_server::{Coord, CoordServer};
use drover_common::pb::{self};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// The metadata key that carries a job's slot number with `OpenSession`.
pub const JOB_SLOT_HEADER: &str = "drover-job-slot";

/// The jobs running in Python processes, and the sessions each opened.
#[derive(Clone)]
pub struct JobSessions {
    inner: Arc<Mutex<HashMap<u64, Held>>>,
    master: CoordClient<AuthChannel>,
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
        let mut master = self.master.clone();
        let owner = owner.to_string();
        tokio::spawn(async move {
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

/// Binds a loopback port and serves the proxy there until `stop`.
pub async fn start(
    master_url: &str,
    options: &ClientOptions,
    worker_name: &str,
    stop: CancellationToken,
) -> anyhow::Result<Proxy> {
    let channel = net::connect_lazy_with(master_url, options).map_err(anyhow::Error::msg)?;
    let master = CoordClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let jobs = JobSessions {
        inner: Arc::default(),
        master: master.clone(),
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
        jobs: jobs.clone(),
        worker: worker_name.to_string(),
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

struct ProxyService {
    master: CoordClient<AuthChannel>,
    jobs: JobSessions,
    worker: String,
}

/// The `Coord` implementation: `OpenSession` ties the session to its job;
/// every other call goes on to the master as it is.
macro_rules! forward_all {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Coord for ProxyService {
            async fn open_session(
                &self,
                request: Request<pb::OpenSessionRequest>,
            ) -> Result<Response<pb::OpenSessionResponse>, Status> {
                self.open_session_for_job(request).await
            }

            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.master.clone().$method(request.into_inner()).await
                }
            )*

            type CounterAddStreamStream = tonic::Streaming<pb::CounterResponse>;

            async fn counter_add_stream(
                &self,
                request: Request<tonic::Streaming<pb::CounterAddRequest>>,
            ) -> Result<Response<Self::CounterAddStreamStream>, Status> {
                // A job's stream that breaks ends the master's stream
                // there: what was sent before it stays added.
                let adds = request.into_inner().map_while(Result::ok);
                self.master.clone().counter_add_stream(adds).await
            }

            type KvWatchStream = tonic::Streaming<pb::KvEvent>;

            async fn kv_watch(
                &self,
                request: Request<pb::KvWatchRequest>,
            ) -> Result<Response<Self::KvWatchStream>, Status> {
                self.master.clone().kv_watch(request.into_inner()).await
            }
        }
    };
}

forward_all! {
    keep_alive(pb::KeepAliveRequest) -> pb::KeepAliveResponse;
    close_session(pb::CloseSessionRequest) -> pb::CloseSessionResponse;
    kv_get(pb::KvGetRequest) -> pb::KvGetResponse;
    kv_put(pb::KvPutRequest) -> pb::KvPutResponse;
    kv_delete(pb::KvDeleteRequest) -> pb::KvDeleteResponse;
    kv_list(pb::KvListRequest) -> pb::KvListResponse;
    counter_add(pb::CounterAddRequest) -> pb::CounterResponse;
    counter_get(pb::CounterGetRequest) -> pb::CounterResponse;
    counter_set(pb::CounterSetRequest) -> pb::CounterResponse;
    acquire(pb::AcquireRequest) -> pb::AcquireResponse;
    release(pb::ReleaseRequest) -> pb::ReleaseResponse;
    event_set(pb::EventRequest) -> pb::EventResponse;
    event_clear(pb::EventRequest) -> pb::EventResponse;
    event_wait(pb::EventWaitRequest) -> pb::EventResponse;
    barrier_wait(pb::BarrierWaitRequest) -> pb::BarrierWaitResponse;
    inspect(pb::InspectRequest) -> pb::InspectResponse;
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
        let Some(slot) = slot else {
            // Not from a running job (a process it left behind, say): an
            // ordinary session, ended by its lease.
            req.owner = format!("{} via worker {}", req.owner, self.worker);
            return self.master.clone().open_session(req).await;
        };
        let Some(owner) = self.jobs.owner(slot) else {
            return Err(Status::failed_precondition(format!(
                "job slot {slot} is not running on worker {}: a session is tied to a running \
                 job's attempt",
                self.worker
            )));
        };
        req.owner = format!("{owner} on worker {} ({})", self.worker, req.owner);
        let resp = self.master.clone().open_session(req).await?;
        let session = resp.get_ref().session;
        if !self.jobs.tie(slot, session) {
            // The job ended while its session was being opened.
            self.jobs.close(session, &owner);
            return Err(Status::failed_precondition(format!(
                "job slot {slot} ended on worker {} while its session was being opened",
                self.worker
            )));
        }
        Ok(resp)
    }
}
