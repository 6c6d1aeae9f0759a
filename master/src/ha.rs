//! High availability on PostgreSQL: several masters on one database, one
//! of them the leader.
//!
//! The leader holds the lease row (`drover_lease`: epoch, holder, its
//! address, expiry by the database's clock). It renews the lease every
//! `--leader-renew` (500 ms); a lease not renewed for `--leader-lease`
//! (2 s) expires. The other masters are standbys: they listen, answer
//! every Queue, Workers and Coord call UNAVAILABLE naming the leader,
//! report NOT_SERVING on grpc.health.v1, and poll the row. When it has
//! expired, one of them takes it, raising the epoch, recovers the queue
//! from the database and serves on the same listener.
//!
//! **Fencing.** The store writes as the epoch it was elected with, and
//! every commit checks it under a lock on the lease row
//! ([`crate::pg::PgStore`]): a leader that was paused past its lease
//! (SIGSTOP, a long GC-like stall, a partition) and wakes up can never
//! write again. It learns so at its next renewal or commit and steps down:
//! it stops, and the process exits non-zero, so a supervisor (compose's
//! `restart:`) starts it again as a standby.
//!
//! A leader stopped cleanly (SIGTERM) resigns: it expires its own lease
//! once its last commit is written, so a standby takes over at its next
//! poll instead of after the lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg;

/// The leader election's settings.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// A lease not renewed for this long expires.
    pub lease: Duration,
    /// How often the leader renews, and standbys poll.
    pub renew: Duration,
    /// The address clients and workers are told to dial for this master
    /// when it leads; by default the address it listens on.
    pub advertise: Option<String>,
    /// The epoch this master leads at: set by [`crate::run_ha`] once it is
    /// elected (with `advertise` filled in), for `drover status`; 0 before,
    /// and for a master alone on its store.
    pub epoch: u64,
}

impl Default for HaConfig {
    fn default() -> HaConfig {
        HaConfig {
            lease: Duration::from_secs(2),
            renew: Duration::from_millis(500),
            advertise: None,
            epoch: 0,
        }
    }
}

/// Who holds the lease, as the row says.
#[derive(Debug, Clone)]
pub struct Leader {
    /// The epoch of the last election.
    pub epoch: u64,
    /// The name of the master elected (host and pid).
    pub holder: String,
    /// The address it advertised.
    pub address: String,
    /// Whether its lease has not expired.
    pub live: bool,
    /// How long until it expires, by the database's clock (zero once it
    /// has): a standby tries to take over then, not a polling period later.
    pub expires_in: Duration,
}

impl Leader {
    /// What a standby tells any caller (the log says more): the address
    /// clients need, not the leader's host and process.
    fn for_callers(&self) -> String {
        if self.epoch == 0 || self.holder.is_empty() {
            return "no leader elected yet".into();
        }
        let expired = if self.live {
            ""
        } else {
            ", whose lease has expired"
        };
        format!(
            "the leader is {} at epoch {}{expired}",
            self.address, self.epoch
        )
    }

    /// The same election and liveness (what a standby logs a change of).
    fn same(&self, other: &Leader) -> bool {
        (self.epoch, &self.holder, &self.address, self.live)
            == (other.epoch, &other.holder, &other.address, other.live)
    }
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.epoch == 0 || self.holder.is_empty() {
            return write!(f, "no leader elected yet");
        }
        write!(
            f,
            "the leader is {} ({}) at epoch {}",
            self.address, self.holder, self.epoch
        )?;
        if !self.live {
            write!(f, ", whose lease has expired")?;
        }
        Ok(())
    }
}

/// A master's side of the election: its own connection to the database,
/// made again after it breaks (PostgreSQL restarted, the session was
/// terminated).
pub struct Elector {
    /// The runtime that drives its connection (the lease's own, so that a
    /// master busy for seconds, recovering say, still renews it).
    runtime: tokio::runtime::Handle,
    url: String,
    client: tokio::sync::Mutex<Option<Client>>,
    lease_ms: f64,
    holder: String,
    address: String,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("holder", &self.holder)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// Connects to the database at `url`, creating drover's tables if they
    /// are missing, to stand for election as `address`; its connection is
    /// driven by `runtime`.
    pub async fn connect(
        url: &str,
        lease: Duration,
        address: String,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Elector> {
        let owned = url.to_string();
        let client = runtime
            .spawn(async move {
                let mut client = pg::connect(&owned, "election").await?;
                pg::ensure_schema(&mut client, &owned).await?;
                anyhow::Ok(client)
            })
            .await??;
        let host = hostname_or_unknown();
        Ok(Elector {
            runtime,
            url: url.to_string(),
            client: tokio::sync::Mutex::new(Some(client)),
            lease_ms: lease.as_millis() as f64,
            holder: format!("{host}:{}", std::process::id()),
            address,
        })
    }

    /// Runs one statement, connecting first if the last connection broke;
    /// a broken connection is dropped, to be made again by the next call.
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Option<tokio_postgres::Row>> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let url = self.url.clone();
            *slot = Some(
                self.runtime
                    .spawn(async move { pg::connect(&url, "election").await })
                    .await??,
            );
        }
        let client = slot.as_ref().expect("connected above");
        match client.query_opt(sql, params).await {
            Ok(row) => Ok(row),
            Err(e) => {
                if e.is_closed() {
                    *slot = None;
                }
                Err(e.into())
            }
        }
    }

    /// Takes the lease if it has expired: the new epoch, or who holds it.
    pub async fn try_acquire(&self) -> anyhow::Result<Result<u64, Leader>> {
        let row = self
            .query_opt(
                "UPDATE drover_lease SET epoch = epoch + 1, holder = $1, address = $2, \
                 expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE id = 1 AND expires_at < clock_timestamp() RETURNING epoch",
                &[&self.holder, &self.address, &self.lease_ms],
            )
            .await?;
        match row {
            Some(row) => Ok(Ok(row.get::<_, i64>(0) as u64)),
            None => Ok(Err(self.leader().await?)),
        }
    }

    /// Extends the lease of `epoch`; false when it is no longer this
    /// master's (another took over).
    pub async fn renew(&self, epoch: u64) -> anyhow::Result<bool> {
        let row = self
            .query_opt(
                "UPDATE drover_lease SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' \
                 WHERE id = 1 AND epoch = $1 RETURNING 1",
                &[&(epoch as i64), &self.lease_ms],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives up the lease of `epoch` at once, so a standby need not wait
    /// for it to expire.
    pub async fn resign(&self, epoch: u64) -> anyhow::Result<()> {
        self.query_opt(
            "UPDATE drover_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1 \
             RETURNING 1",
            &[&(epoch as i64)],
        )
        .await?;
        Ok(())
    }

    /// Who holds the lease now.
    pub async fn leader(&self) -> anyhow::Result<Leader> {
        let row = self
            .query_opt(
                "SELECT epoch, holder, address, expires_at > clock_timestamp(), \
                 CASE WHEN expires_at <= clock_timestamp() THEN 0 \
                 WHEN expires_at = 'infinity' THEN 'Infinity' \
                 ELSE EXTRACT(EPOCH FROM expires_at - clock_timestamp()) * 1000 END::float8 \
                 FROM drover_lease WHERE id = 1",
                &[],
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("the lease row is missing: drover_lease was emptied"))?;
        Ok(Leader {
            epoch: row.get::<_, i64>(0) as u64,
            holder: row.get(1),
            address: row.get(2),
            live: row.get(3),
            // Expired (a resigned lease is -infinity, which PostgreSQL
            // before 17 cannot subtract from): 0; infinity saturates.
            expires_in: Duration::try_from_secs_f64(row.get::<_, f64>(4) / 1000.0)
                .unwrap_or(Duration::MAX),
        })
    }
}

fn hostname_or_unknown() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What a standby answers: who leads, kept current by the polling loop.
#[derive(Debug, Clone)]
pub struct StandbyView(Arc<Mutex<Leader>>);

impl StandbyView {
    fn new(leader: &Leader) -> StandbyView {
        StandbyView(Arc::new(Mutex::new(leader.clone())))
    }

    fn set(&self, leader: &Leader) {
        *self.0.lock() = leader.clone();
    }

    /// Why a standby does not serve, naming the leader.
    pub fn message(&self) -> String {
        format!("this master is a standby: {}", self.0.lock().for_callers())
    }

    /// The epoch of the last election, as the lease row says.
    pub fn epoch(&self) -> u64 {
        self.0.lock().epoch
    }

    /// A standby's answer to every call but health: UNAVAILABLE, its
    /// message naming the leader, marked (`drover-standby`: the leader's
    /// address, empty while none is live) so that clients know the call was
    /// not applied and may send it to the next master.
    pub fn status(&self) -> tonic::Status {
        let address = {
            let leader = self.0.lock();
            match leader.live {
                true => leader.address.clone(),
                false => String::new(),
            }
        };
        let mut status = tonic::Status::unavailable(self.message());
        let value = address
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""));
        status
            .metadata_mut()
            .insert(drover_common::net::STANDBY_METADATA, value);
        status
    }

    /// What a standby's `--metrics-listen` serves: its build, that it
    /// stands by, and the epoch of the leader.
    fn metrics(&self) -> String {
        use drover_common::metrics::{Exposition, Kind};
        let mut e = Exposition::new();
        e.family("drover_info", Kind::Gauge, "The build of this master.");
        e.sample("drover_info", &[("version", drover_common::VERSION)], 1.0);
        crate::metrics::leadership(&mut e, true, self.epoch());
        e.finish()
    }
}

/// Waited past a lease's expiry before a standby tries to take it over:
/// the time of the query that read the expiry, with room to spare.
const EXPIRY_MARGIN: Duration = Duration::from_millis(5);

/// Serves as a standby on `listener` until this master is elected, then
/// stops serving and returns the epoch (or `None` if `shutdown` came
/// first). `standing_by` is called once, with the address and the leader,
/// when the standby starts serving.
pub(crate) async fn stand_by(
    elector: &Elector,
    config: &crate::Config,
    listener: TcpListener,
    side: crate::SideListeners,
    shutdown: &CancellationToken,
    standing_by: impl FnOnce(SocketAddr, &Leader),
) -> anyhow::Result<Option<u64>> {
    let ha = &config.ha;
    let leader = match elector.try_acquire().await? {
        Ok(epoch) => return Ok(Some(epoch)),
        Err(leader) => leader,
    };
    let addr = listener.local_addr()?;
    let view = StandbyView::new(&leader);
    standing_by(addr, &leader);
    tracing::info!(%leader, "standing by");
    let stop = shutdown.child_token();
    let server = tokio::spawn(serve_standby(
        config.clone(),
        listener,
        view.clone(),
        stop.clone(),
    ));
    if let Some(l) = side.metrics {
        let view = view.clone();
        let render: drover_common::metrics::Render = Arc::new(move || view.metrics());
        tokio::spawn(drover_common::metrics::serve(l, render, stop.clone()));
    }
    if let Some(l) = side.dashboard {
        let (view, config, stop) = (view.clone(), config.clone(), stop.clone());
        tokio::spawn(async move {
            let message = move || view.message();
            if let Err(e) = crate::dashboard::serve_standby(l, &config, message, stop).await {
                tracing::warn!(error = %e, "the standby's dashboard stopped");
            }
        });
    }
    // Tried again when the lease expires (a leader killed is replaced a
    // lease after its last renewal), and at least every --leader-renew.
    let mut wait = leader.expires_in.min(ha.renew);
    let mut last = leader;
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(None),
            () = tokio::time::sleep(wait + EXPIRY_MARGIN) => {}
        }
        wait = ha.renew;
        match elector.try_acquire().await {
            Ok(Ok(epoch)) => break Ok(Some(epoch)),
            Ok(Err(leader)) => {
                wait = leader.expires_in.min(ha.renew);
                if !leader.same(&last) {
                    tracing::info!(%leader, "standing by");
                    view.set(&leader);
                    last = leader;
                }
            }
            // The database may be restarting: a standby waits it out.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the lease failed; retrying")
            }
        }
    };
    stop.cancel();
    // Not awaited: a client's open health watch would hold it. Its
    // listener is a clone of the one the master goes on with.
    drop(server);
    result
}

/// A standby's server: health says NOT_SERVING for the queue, the workers
/// and coordination, and every other call is answered UNAVAILABLE naming
/// the leader.
async fn serve_standby(
    config: crate::Config,
    listener: TcpListener,
    view: StandbyView,
    stop: CancellationToken,
) {
    use drover_common::pb::coord_server::CoordServer;
    use drover_common::pb::queue_server::QueueServer;
    use drover_common::pb::workers_server::WorkersServer;
    let (health, health_service) = tonic_health::server::health_reporter();
    // The server as a whole ("") too: `drover health` and load balancers
    // ask for it.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health.set_not_serving::<QueueServer<crate::Master>>().await;
    health
        .set_not_serving::<WorkersServer<crate::Master>>()
        .await;
    health
        .set_not_serving::<CoordServer<crate::coord::CoordService>>()
        .await;
    let router = tonic::service::Routes::new(health_service)
        .prepare()
        .into_axum_router()
        .fallback(move || {
            let status = view.status();
            async move { status.into_http::<axum::body::Body>() }
        });
    let server =
        match drover_common::net::server_with(config.tls.as_ref(), config.max_concurrent_streams) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the standby cannot serve");
                return;
            }
        };
    let served = server
        .clone()
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(
            crate::accept::incoming(listener, config.tls.is_some(), stop.clone()),
            stop.cancelled(),
        )
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the standby's server stopped");
    }
}

/// The runtime the lease lives on: a master whose own threads are busy for
/// a while (recovering, answering a large read) must still renew it, or a
/// standby takes over from a master that is working. Shut down in the
/// background when dropped (it may be dropped inside another runtime).
#[derive(Debug)]
pub struct LeaseRuntime(Option<tokio::runtime::Runtime>);

impl LeaseRuntime {
    /// One worker thread, `drover-lease`.
    pub fn new() -> std::io::Result<LeaseRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("drover-lease")
            .enable_all()
            .build()?;
        Ok(LeaseRuntime(Some(runtime)))
    }

    /// A handle to spawn on it.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("alive until dropped")
            .handle()
            .clone()
    }
}

impl Drop for LeaseRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why a leader stepped down.
#[derive(Debug, Clone, Default)]
pub struct SteppedDown(Arc<Mutex<Option<String>>>);

impl SteppedDown {
    /// The reason, if it did.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

/// Renews the lease of `epoch` until `shutdown`; if it is lost (another
/// master took it, or it could not be renewed for a whole lease), records
/// why and cancels `shutdown`: the leader steps down.
pub async fn keep_lease(
    elector: Arc<Elector>,
    epoch: u64,
    ha: HaConfig,
    shutdown: CancellationToken,
    stepped_down: SteppedDown,
) {
    // When the lease ends by this master's clock: a whole lease after the
    // last renewal that succeeded was *sent* (the database's expiry is
    // later still), so this master stops acting as the leader before a
    // standby can take over, however long a call to the database hangs.
    let mut expires = Instant::now() + ha.lease;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ha.renew) => {}
        }
        let sent = Instant::now();
        let left = expires.saturating_duration_since(sent);
        let lost = match tokio::time::timeout(left, elector.renew(epoch)).await {
            Ok(Ok(true)) => {
                expires = sent + ha.lease;
                None
            }
            Ok(Ok(false)) => Some(format!(
                "another master took the lease of epoch {epoch} ({})",
                match tokio::time::timeout(ha.renew, elector.leader()).await {
                    Ok(Ok(leader)) => leader.to_string(),
                    Ok(Err(e)) => format!("reading it failed: {e:#}"),
                    Err(_) => "reading it timed out".into(),
                }
            )),
            Err(_) => Some(format!(
                "the lease of epoch {epoch} could not be renewed within {:?} (the database \
                 did not answer in time, or this master was paused)",
                ha.lease
            )),
            Ok(Err(e)) if Instant::now() >= expires => Some(format!(
                "the lease of epoch {epoch} could not be renewed within {:?}: {e:#}",
                ha.lease
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), epoch, "renewing the lease failed; retrying");
                None
            }
        };
        if let Some(reason) = lost {
            tracing::error!(%reason, "stepping down");
            *stepped_down.0.lock() = Some(reason);
            shutdown.cancel();
            return;
        }
    }
}
