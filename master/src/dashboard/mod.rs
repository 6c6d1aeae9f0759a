//! The web dashboard: the queue, its workers, batches and failed jobs in a
//! browser, with Retry and Cancel. Served on its own listener
//! (`--dashboard-listen`, default `127.0.0.1:9466`), over TLS when the
//! master has a certificate, by the master's own binary: the HTML is
//! rendered here and the CSS and the little JavaScript are embedded.
//!
//! # Layout
//!
//! - this file: the listener, the routes, and the sampler that makes the
//!   live snapshot every event stream shares.
//! - `access`: who may see and change what (the client token, by cookie or
//!   `Authorization` header; origin and CSRF checks on every POST; the
//!   Host check of an open loopback dashboard).
//! - `pages`: the HTML of each page.
//! - `assets/`: `style.css` and `app.js`.
//!
//! # What it reads
//!
//! Everything goes through the entry points the `Queue` service uses:
//! `Stats`, `Get`, `Retry` and `Cancel` are its very handlers, called in
//! process; what it has no call for (pages of jobs by state, kind and
//! batch; pages of batches; heartbeats) is in `state/dashboard_queries.rs`.
//! No page holds more than [`crate::state::MAX_PAGE`] jobs.
//!
//! # Cost
//!
//! One sampler task makes the live snapshot at most four times a second,
//! and only while an event stream is open (it counts finished jobs once a
//! second regardless, for the chart). Every open stream sends that same
//! snapshot, so five dashboards cost about what one does. List pages are
//! re-read by the browser at most once a second, and only while shown.

mod access;
mod pages;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as Axum};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover_common::job::{parse_kind, parse_state};
use drover_common::metrics::Histogram;
use drover_common::net;
use drover_common::pb;
use drover_common::pb::queue_server::Queue;
use futures::Stream;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Request;

use crate::Master;
use crate::state::JobFilter;

/// Where the dashboard is served unless told otherwise.
pub const DEFAULT_DASHBOARD_ADDR: &str = "127.0.0.1:9466";

/// Jobs on one page of a list.
const PAGE_JOBS: usize = 50;

/// Batches on one page.
const PAGE_BATCHES: usize = 25;

/// Seconds of throughput the overview charts.
const CHART_SECONDS: usize = 300;

/// How often the live snapshot may change: at most four events a second.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// Event streams open at once; more are refused (503) so that many open
/// tabs cannot load the master.
const MAX_STREAMS: usize = 32;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 128;

/// What every request handler shares.
pub(crate) struct Dash {
    master: Master,
    /// The store's commit times (the same histogram `/metrics` shows).
    commits: Arc<Mutex<Histogram>>,
    /// Who may look and act.
    access: access::Access,
    /// The live snapshot (JSON), remade by the sampler while streams are
    /// open; each stream subscribes to it.
    snapshot: watch::Sender<Arc<str>>,
    /// Jobs finished in each of the last [`CHART_SECONDS`] seconds, oldest
    /// first.
    history: Mutex<VecDeque<u64>>,
    /// Open event streams, bounded.
    streams: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// Serves the dashboard on `listener` until `shutdown`: the master's
/// [`crate::run_notify`] starts it on `--dashboard-listen`.
pub async fn serve(
    listener: TcpListener,
    master: Master,
    commits: Arc<Mutex<Histogram>>,
    config: &crate::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let tls = match &config.tls {
        Some(t) => Some(access::tls_acceptor(t)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let access = access::Access::new(config.tokens.client.clone(), tls.is_some(), addr);
    tracing::info!(%addr, "serving the dashboard on {scheme}://{addr}/");
    let dash = Arc::new(Dash {
        master: master.clone(),
        commits,
        access,
        snapshot: watch::Sender::new(Arc::from("{}")),
        history: Mutex::new(VecDeque::from(vec![0; CHART_SECONDS])),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        shutdown: shutdown.clone(),
    });
    let tasks = master.tasks().clone();
    tasks.spawn(sample(dash.clone()));
    serve_app(listener, router(dash), tls, &tasks, shutdown).await
}

/// A standby's dashboard: every page answers 503 with `message` (which
/// names the leader), until `shutdown`.
pub async fn serve_standby(
    listener: TcpListener,
    config: &crate::Config,
    message: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some(t) => Some(access::tls_acceptor(t)?),
        None => None,
    };
    let app = Router::new().fallback(move || {
        let text = message();
        async move {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, text);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    });
    serve_app(listener, app, tls, &TaskTracker::new(), shutdown).await
}

/// Serves `app` over HTTP/1.1 (on TLS if `tls`) on `listener` until
/// `shutdown`, each connection a task of `tasks`.
async fn serve_app(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "dashboard accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let (app, shutdown, tls) = (app.clone(), shutdown.clone(), tls.clone());
        tasks.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, app, shutdown).await,
                Some(tls) => {
                    match tokio::time::timeout(net::TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                    {
                        Ok(Ok(stream)) => connection(stream, app, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "dashboard TLS failed"),
                        Err(_) => tracing::debug!(%peer, "dashboard TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one HTTP/1.1 connection until it ends or the master shuts down.
async fn connection<S>(io: S, app: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn router(dash: Arc<Dash>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/workers", get(workers))
        .route("/batches", get(batches))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/events", get(events))
        .route("/api/summary", get(summary))
        .route("/actions/retry", post(retry))
        .route("/actions/cancel", post(cancel))
        .route("/login", get(access::login_page).post(access::login))
        .route("/logout", post(access::logout))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            dash.clone(),
            access::check,
        ))
        .with_state(dash)
}

type Shared = Axum<Arc<Dash>>;

/// A page's reply: the whole document, or only its `<main>` when the
/// page's script asks for a fresh copy (`X-Drover-Fragment`).
fn page(headers: &HeaderMap, uri: &Uri, dash: &Dash, p: pages::Page) -> Response {
    let html = if headers.contains_key("x-drover-fragment") {
        p.body
    } else {
        pages::document(&p, uri, &dash.access)
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// A refusal or failure, as plain text naming what was wrong.
pub(crate) fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into() + "\n",
    )
        .into_response()
}

/// A refusal of bad input: its status and the text naming the field.
pub(crate) struct Refused(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        plain(self.0, self.1)
    }
}

/// Maps a `Queue` error to its HTTP status.
fn failed(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    plain(code, status.message())
}

/// The query string's `key=value` pairs, decoded.
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// The value of `key` among `pairs`, if given and not empty.
pub(crate) fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The page number asked for (from 1).
fn page_number(pairs: &[(String, String)]) -> Result<usize, Refused> {
    match field(pairs, "page") {
        None => Ok(1),
        Some(p) => p.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
            Refused(
                StatusCode::BAD_REQUEST,
                format!("page: {p:?} is not a page number (1 or more)"),
            )
        }),
    }
}

async fn stats(master: &Master) -> Result<pb::StatsResponse, tonic::Status> {
    Ok(Queue::stats(master, Request::new(pb::StatsRequest {}))
        .await?
        .into_inner())
}

async fn overview(Axum(dash): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let snap = match snapshot(&dash).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    page(&headers, &uri, &dash, pages::overview(&snap))
}

async fn workers(Axum(dash): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let stats = match stats(&dash.master).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let beats = match dash.master.read(|st| st.dashboard_heartbeats()).await {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    page(
        &headers,
        &uri,
        &dash,
        pages::workers(&stats.workers, &beats),
    )
}

async fn batches(Axum(dash): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let q = pairs(uri.query().unwrap_or(""));
    let n = match page_number(&q) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let offset = (n - 1) * PAGE_BATCHES;
    let (list, total) = match dash
        .master
        .read(|st| st.dashboard_batches(offset, PAGE_BATCHES))
        .await
        .map(|read| read.finish())
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failed(e.into()),
        Err(e) => return failed(e),
    };
    let p = pages::batches(
        &list,
        pages::Pager::new(n, PAGE_BATCHES, total),
        &dash.access,
    );
    page(&headers, &uri, &dash, p)
}

async fn jobs(Axum(dash): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let q = pairs(uri.query().unwrap_or(""));
    let n = match page_number(&q) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let mut filter = JobFilter {
        offset: (n - 1) * PAGE_JOBS,
        limit: PAGE_JOBS,
        ..JobFilter::default()
    };
    if let Some(s) = field(&q, "state") {
        match parse_state(s) {
            Ok(state) => filter.state = state,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("state: {e}")),
        }
    }
    if let Some(k) = field(&q, "kind") {
        match parse_kind(k) {
            Ok(kind) => filter.kind = kind,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("kind: {e}")),
        }
    }
    if let Some(b) = field(&q, "batch") {
        match drover_common::ids::BatchId::parse("batch", b) {
            Ok(id) => filter.batch = Some(id),
            Err(e) => return failed(e.into()),
        }
    }
    let list = match dash
        .master
        .read(|st| st.dashboard_jobs(&filter))
        .await
        .map(|read| read.and_then(|r| r.finish()))
    {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => return failed(e.into()),
        Err(e) => return failed(e),
    };
    let pager = pages::Pager::new(n, PAGE_JOBS, list.matched);
    page(
        &headers,
        &uri,
        &dash,
        pages::jobs(&filter, &list.jobs, pager, &dash.access),
    )
}

async fn job(Axum(dash): Shared, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let request = pb::GetRequest {
        job_ids: vec![id],
        ..Default::default()
    };
    let info = match Queue::get(&dash.master, Request::new(request)).await {
        // The master's reply holds its jobs encoded.
        Ok(r) => match r.into_inner().into_jobs() {
            Ok(jobs) => jobs.into_iter().next(),
            Err(e) => return failed(tonic::Status::internal(format!("reading the reply: {e}"))),
        },
        Err(e) => return failed(e),
    };
    match info {
        Some(info) => page(&headers, &uri, &dash, pages::job(&info, &dash.access)),
        None => plain(StatusCode::NOT_FOUND, "no such job"),
    }
}

/// The form of an action: which jobs it names.
struct Target {
    job: Option<String>,
    batch: Option<String>,
    all_failed: bool,
    /// The page to go back to.
    back: String,
}

/// The jobs an action's form names, once its CSRF token is checked.
fn action_target(dash: &Dash, headers: &HeaderMap, body: &Bytes) -> Result<Target, Refused> {
    target(&dash.access.form(headers, body)?)
}

fn target(form: &[(String, String)]) -> Result<Target, Refused> {
    let back = field(form, "back")
        .filter(|b| {
            b.starts_with('/')
                && !b.starts_with("//")
                && !b.contains('\\')
                && !b.chars().any(char::is_control)
        })
        .unwrap_or("/")
        .to_string();
    let t = Target {
        job: field(form, "job").map(str::to_string),
        batch: field(form, "batch").map(str::to_string),
        all_failed: field(form, "all") == Some("failed"),
        back,
    };
    let named =
        usize::from(t.job.is_some()) + usize::from(t.batch.is_some()) + usize::from(t.all_failed);
    if named != 1 {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "name exactly one of: job (a job id), batch (a batch id), all=failed".into(),
        ));
    }
    Ok(t)
}

/// Goes back to the page the action was sent from, saying what was done.
fn done(back: &str, notice: &str) -> Response {
    let sep = if back.contains('?') { '&' } else { '?' };
    let encoded = percent_encoding::utf8_percent_encode(notice, percent_encoding::NON_ALPHANUMERIC);
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("{back}{sep}notice={encoded}"))],
    )
        .into_response()
}

async fn retry(Axum(dash): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let t = match action_target(&dash, &headers, &body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let request = pb::RetryRequest {
        job_ids: t.job.into_iter().collect(),
        batch_id: t.batch.unwrap_or_default(),
        all_failed: t.all_failed,
    };
    match Queue::retry(&dash.master, Request::new(request)).await {
        Ok(r) => {
            let n = r.into_inner().retried;
            done(&t.back, &format!("retried {n} failed job{}", plural(n)))
        }
        Err(e) => failed(e),
    }
}

async fn cancel(Axum(dash): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let t = match action_target(&dash, &headers, &body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if t.all_failed {
        return plain(
            StatusCode::BAD_REQUEST,
            "all=failed: failed jobs are finished; cancel names a job or a batch",
        );
    }
    let request = pb::CancelRequest {
        job_ids: t.job.into_iter().collect(),
        batch_id: t.batch.unwrap_or_default(),
    };
    match Queue::cancel(&dash.master, Request::new(request)).await {
        Ok(r) => {
            let r = r.into_inner();
            done(
                &t.back,
                &format!(
                    "cancelled {} job{}, {} already finished",
                    r.cancelled,
                    plural(r.cancelled),
                    r.already_finished
                ),
            )
        }
        Err(e) => failed(e),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    plain(StatusCode::NOT_FOUND, format!("not found: {}", uri.path()))
}

/// The live figures: what the overview shows and every event carries.
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    version: String,
    uptime_s: u64,
    queued: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    retried: u64,
    /// Finished jobs per second over the last ten seconds.
    jobs_per_s: f64,
    workers: usize,
    /// Jobs the workers hold, and their slots.
    busy: u64,
    slots: u64,
    /// Mean commit time over all commits so far, and the bound of the
    /// bucket holding the 99th percentile, in milliseconds.
    commit_mean_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
    commits: u64,
    /// The epoch this master leads at, on a PostgreSQL store shared with
    /// standbys; 0 otherwise.
    leader_epoch: u64,
    /// Jobs finished in each of the last [`CHART_SECONDS`] seconds.
    series: Vec<u64>,
}

async fn snapshot(dash: &Dash) -> Result<Snapshot, tonic::Status> {
    let s = stats(&dash.master).await?;
    let commits = dash.commits.lock().clone();
    let count = commits.count();
    Ok(Snapshot {
        version: s.version,
        uptime_s: s.uptime_s,
        queued: s.queued,
        running: s.running,
        succeeded: s.succeeded,
        failed: s.failed,
        cancelled: s.cancelled,
        retried: s.retried,
        jobs_per_s: s.jobs_per_s,
        workers: s.workers.len(),
        busy: s.workers.iter().map(|w| u64::from(w.running)).sum(),
        slots: s
            .workers
            .iter()
            .map(|w| u64::from(w.cpu_slots) + u64::from(w.io_slots))
            .sum(),
        commit_mean_ms: (count > 0).then(|| commits.sum() / count as f64 * 1000.0),
        commit_p99_ms: commits.quantile_bound(0.99).map(|b| b * 1000.0),
        commits: count,
        leader_epoch: s.leader_epoch,
        series: dash.history.lock().iter().copied().collect(),
    })
}

async fn summary(Axum(dash): Shared) -> Response {
    match snapshot(&dash).await {
        Ok(s) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            serde_json::to_string(&s).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

/// Counts finished jobs once a second for the chart, and remakes the live
/// snapshot while anyone listens.
async fn sample(dash: Arc<Dash>) {
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = Instant::now();
    let mut last_total = dash.master.read(|st| st.finished_total()).await.ok();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = dash.shutdown.cancelled() => return,
        }
        if second.elapsed() >= Duration::from_secs(1) {
            second += Duration::from_secs(1);
            if let Ok(total) = dash.master.read(|st| st.finished_total()).await {
                let n = last_total.map_or(0, |last| total.saturating_sub(last));
                last_total = Some(total);
                let mut h = dash.history.lock();
                h.pop_front();
                h.push_back(n);
            }
        }
        if dash.snapshot.receiver_count() == 0 {
            continue;
        }
        if let Ok(s) = snapshot(&dash).await {
            let json: Arc<str> = Arc::from(serde_json::to_string(&s).unwrap_or_default());
            dash.snapshot.send_if_modified(|old| {
                let changed = *old != json;
                if changed {
                    *old = json;
                }
                changed
            });
        }
    }
}

/// The live snapshot as server-sent events: one `snapshot` event each time
/// it changes (at most four a second), until the page closes or the master
/// shuts down.
async fn events(Axum(dash): Shared) -> Response {
    let Ok(permit) = dash.streams.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many open dashboards (at most {MAX_STREAMS} event streams)"),
        );
    };
    let rx = dash.snapshot.subscribe();
    let stream = snapshots(rx, dash.shutdown.clone(), permit);
    ([(header::CACHE_CONTROL, "no-store")], Sse::new(stream)).into_response()
}

fn snapshots(
    rx: watch::Receiver<Arc<str>>,
    shutdown: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (rx, shutdown, permit),
        |(mut rx, shutdown, permit)| async move {
            tokio::select! {
                r = rx.changed() => r.ok()?,
                _ = shutdown.cancelled() => return None,
            }
            let data = rx.borrow_and_update().clone();
            let event = Event::default().event("snapshot").data(&*data);
            Some((Ok(event), (rx, shutdown, permit)))
        },
    )
}
