//! Prometheus metrics: fixed-bucket histograms, per-kind tables of them
//! and of counters, the master's job figures ([`JobMetrics`]), a writer for
//! the text exposition format (version 0.0.4), and a small HTTP responder
//! that serves `GET /metrics`.
//!
//! The daemons keep their figures in plain counters (the master's under its
//! state's lock, where they cost a few nanoseconds a job) and render them
//! only when scraped, so no metrics library sits on a hot path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::job::kind_name;
use crate::pb::{JobKind, JobState};

/// Bucket bounds, in seconds, for job run times and queue waits: from a
/// tenth of a millisecond (a small prime) to ten minutes.
pub const JOB_SECONDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 600.0,
];

/// Bucket bounds, in seconds, for store commits (an fsync each).
pub const COMMIT_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram with fixed bucket bounds. Observing is a short scan and two
/// additions; nothing allocates after [`Histogram::new`].
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, in the unit observed).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The upper bound of the bucket holding the `q` quantile (0..=1) of
    /// the observations: at least that share were at or under it. `None`
    /// with no observations, or when it falls in the `+Inf` bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return self.bounds.get(i).copied();
            }
        }
        None
    }
}

/// The kinds figures are written for, in the order their samples appear.
pub const KINDS: [JobKind; 4] = [
    JobKind::Fib,
    JobKind::Prime,
    JobKind::Sleep,
    JobKind::Python,
];

/// One figure per job kind, indexed by [`JobKind`]. A job of a kind this
/// build does not know is counted under [`JobKind::Unspecified`], which is
/// kept but never written out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerKind<T>([T; 5]);

impl<T> PerKind<T> {
    fn slot(kind: JobKind) -> usize {
        (kind as usize).min(4)
    }
}

impl PerKind<Histogram> {
    /// An empty histogram over `bounds` for every kind.
    pub fn histograms(bounds: &'static [f64]) -> PerKind<Histogram> {
        PerKind(std::array::from_fn(|_| Histogram::new(bounds)))
    }
}

impl<T> Index<JobKind> for PerKind<T> {
    type Output = T;

    fn index(&self, kind: JobKind) -> &T {
        &self.0[Self::slot(kind)]
    }
}

impl<T> IndexMut<JobKind> for PerKind<T> {
    fn index_mut(&mut self, kind: JobKind) -> &mut T {
        &mut self.0[Self::slot(kind)]
    }
}

/// Jobs by kind, as the master counts them: how many were submitted and
/// how each ended, and how long they ran and waited. Kept in the master's
/// state and copied out when scraped.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    submitted: PerKind<u64>,
    succeeded: PerKind<u64>,
    failed: PerKind<u64>,
    cancelled: PerKind<u64>,
    retried: PerKind<u64>,
    /// Run time reported by the worker, of jobs that succeeded.
    run: PerKind<Histogram>,
    /// From submit to the first assignment.
    wait: PerKind<Histogram>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            submitted: PerKind::default(),
            succeeded: PerKind::default(),
            failed: PerKind::default(),
            cancelled: PerKind::default(),
            retried: PerKind::default(),
            run: PerKind::histograms(JOB_SECONDS),
            wait: PerKind::histograms(JOB_SECONDS),
        }
    }
}

impl JobMetrics {
    /// Counts a job accepted by a submit.
    pub fn submitted(&mut self, kind: JobKind) {
        self.submitted[kind] += 1;
    }

    /// Counts a job that reached a final state.
    pub fn finished(&mut self, kind: JobKind, state: JobState) {
        match state {
            JobState::Succeeded => self.succeeded[kind] += 1,
            JobState::Failed => self.failed[kind] += 1,
            JobState::Cancelled => self.cancelled[kind] += 1,
            _ => {}
        }
    }

    /// Jobs that reached a final state, all kinds and outcomes.
    pub fn finished_total(&self) -> u64 {
        [&self.succeeded, &self.failed, &self.cancelled]
            .iter()
            .flat_map(|per_kind| per_kind.0.iter())
            .sum()
    }

    /// Counts an attempt that failed and was queued again.
    pub fn retried(&mut self, kind: JobKind) {
        self.retried[kind] += 1;
    }

    /// Records the run time a worker reported for a job that succeeded.
    pub fn ran(&mut self, kind: JobKind, run_us: u64) {
        self.run[kind].observe(run_us as f64 / 1e6);
    }

    /// Records how long job `id` waited from its submit (the time in its
    /// UUID v7) until its first assignment at `now_ms`.
    pub fn waited(&mut self, kind: JobKind, id: &Uuid, now_ms: u64) {
        if let Some(ts) = id.get_timestamp() {
            let (secs, nanos) = ts.to_unix();
            let made_ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            self.wait[kind].observe(now_ms.saturating_sub(made_ms) as f64 / 1e3);
        }
    }

    /// Writes the per-kind families of the master's `/metrics`: the job
    /// counters, then the run and queue-wait histograms.
    pub fn write(&self, e: &mut Exposition) {
        let counters: [(&str, &str, &PerKind<u64>); 5] = [
            (
                "drover_jobs_submitted_total",
                "Jobs accepted by submits.",
                &self.submitted,
            ),
            (
                "drover_jobs_completed_total",
                "Jobs that succeeded.",
                &self.succeeded,
            ),
            (
                "drover_jobs_failed_total",
                "Jobs that failed for good (bad input, or attempts exhausted).",
                &self.failed,
            ),
            (
                "drover_jobs_retried_total",
                "Failed attempts queued again.",
                &self.retried,
            ),
            (
                "drover_jobs_cancelled_total",
                "Jobs cancelled.",
                &self.cancelled,
            ),
        ];
        for (name, help, values) in counters {
            e.counters_by_kind(name, help, &[], values);
        }
        e.histograms_by_kind(
            "drover_job_run_seconds",
            "Run time of jobs that succeeded, as their workers measured it.",
            &[],
            &self.run,
        );
        e.histograms_by_kind(
            "drover_job_queue_wait_seconds",
            "Time from a job's submit to its first assignment to a worker.",
            &[],
            &self.wait,
        );
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever rises (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, a sum and a count.
    Histogram,
}

/// Writes the Prometheus text format: each family's `# HELP` and `# TYPE`
/// lines, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family. Every sample of it must follow before the next.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Writes one sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Writes the samples of one histogram: cumulative buckets, sum, count.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            le.clear();
            match h.bounds.get(i) {
                Some(b) => write_value(&mut le, *b),
                None => le.push_str("+Inf"),
            }
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, h.sum);
        self.out.push('\n');
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    /// Writes a counter family with one sample per kind of [`KINDS`],
    /// labelled `labels` and then `kind`.
    pub fn counters_by_kind(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        values: &PerKind<u64>,
    ) {
        self.family(name, Kind::Counter, help);
        for kind in KINDS {
            self.sample(name, &with_kind(labels, kind), values[kind] as f64);
        }
    }

    /// Writes a histogram family with one histogram per kind of [`KINDS`],
    /// labelled `labels` and then `kind`.
    pub fn histograms_by_kind(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        values: &PerKind<Histogram>,
    ) {
        self.family(name, Kind::Histogram, help);
        for kind in KINDS {
            self.histogram(name, &with_kind(labels, kind), &values[kind]);
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `labels` and then the `kind` label of `kind`.
fn with_kind<'a>(labels: &[(&'a str, &'a str)], kind: JobKind) -> Vec<(&'a str, &'a str)> {
    let mut all = labels.to_vec();
    all.push(("kind", kind_name(kind as i32)));
    all
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Where a daemon serves its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// Not at all.
    Off,
    /// The default address: if it is taken (another daemon on this host),
    /// the daemon warns and runs without metrics.
    Default(String),
    /// An address the operator chose: if it cannot be bound, the daemon
    /// refuses to start.
    Explicit(String),
}

impl MetricsListen {
    /// Reads `--metrics-listen`: absent means `default`; `off` or empty
    /// means no metrics.
    pub fn from_flag(flag: Option<&str>, default: &str) -> MetricsListen {
        match flag.map(str::trim) {
            None => MetricsListen::Default(default.to_string()),
            Some("") => MetricsListen::Off,
            Some(s) if s.eq_ignore_ascii_case("off") => MetricsListen::Off,
            Some(s) => MetricsListen::Explicit(s.to_string()),
        }
    }

    /// Binds the address, if any. A default address that is taken gives a
    /// warning and no listener; an explicit one gives an error.
    pub async fn bind(&self) -> Result<Option<TcpListener>, String> {
        self.bind_as("--metrics-listen", "metrics").await
    }

    /// Like [`MetricsListen::bind`], for the listener of `what` set by
    /// `flag` (the master's dashboard uses the same rules).
    pub async fn bind_as(&self, flag: &str, what: &str) -> Result<Option<TcpListener>, String> {
        let (addr, explicit) = match self {
            MetricsListen::Off => return Ok(None),
            MetricsListen::Default(a) => (a, false),
            MetricsListen::Explicit(a) => (a, true),
        };
        match TcpListener::bind(addr.as_str()).await {
            Ok(l) => Ok(Some(l)),
            Err(e) if !explicit => {
                tracing::warn!(
                    addr = %addr, error = %e,
                    "cannot serve {what} on the default address; running without \
                     (set {flag} to another address, or off)"
                );
                Ok(None)
            }
            Err(e) => Err(format!("{flag}: cannot listen on {addr}: {e}")),
        }
    }
}

/// Renders the metrics text when scraped.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections served at once; more wait to be accepted.
const MAX_SCRAPES: usize = 16;

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
/// Each connection gets one answer and is closed.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &render).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            if head.len() > 8192 {
                return Err(std::io::Error::other("request head too large"));
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow request"))??;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "drover metrics: GET /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Fetches `http://{addr}/metrics` (for tests and `drover status`).
pub async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: drover\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "metrics answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_bound_of_its_bucket() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        assert_eq!(h.quantile_bound(0.5), None);
        for _ in 0..9 {
            h.observe(0.05);
        }
        h.observe(0.5);
        assert_eq!(h.quantile_bound(0.5), Some(0.1));
        assert_eq!(h.quantile_bound(0.9), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(1.0));
        h.observe(5.0);
        assert_eq!(h.quantile_bound(1.0), None);
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut e = Exposition::new();
        e.family("t_seconds", Kind::Histogram, "a test");
        e.histogram("t_seconds", &[("kind", "fib")], &h);
        let text = e.finish();
        assert!(
            text.contains("t_seconds_bucket{kind=\"fib\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{kind=\"fib\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{kind=\"fib\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_count{kind=\"fib\"} 3\n"), "{text}");
        assert!(
            text.contains("t_seconds_sum{kind=\"fib\"} 5.55\n"),
            "{text}"
        );
    }

    #[test]
    fn per_kind_families_label_every_kind_after_the_others() {
        let mut counts = PerKind::<u64>::default();
        counts[JobKind::Prime] += 2;
        counts[JobKind::Unspecified] += 7;
        let mut runs = PerKind::histograms(&[1.0]);
        runs[JobKind::Sleep].observe(0.5);
        let mut e = Exposition::new();
        e.counters_by_kind("c_total", "counted", &[("worker", "w")], &counts);
        e.histograms_by_kind("r_seconds", "ran", &[], &runs);
        let text = e.finish();
        assert!(
            text.starts_with(
                "# HELP c_total counted\n# TYPE c_total counter\n\
                 c_total{worker=\"w\",kind=\"fib\"} 0\n\
                 c_total{worker=\"w\",kind=\"prime\"} 2\n\
                 c_total{worker=\"w\",kind=\"sleep\"} 0\n\
                 c_total{worker=\"w\",kind=\"python\"} 0\n\
                 # HELP r_seconds ran\n# TYPE r_seconds histogram\n"
            ),
            "{text}"
        );
        // Jobs of an unknown kind are kept apart and not written out.
        assert!(!text.contains("unknown"), "{text}");
        assert!(
            text.contains("r_seconds_bucket{kind=\"sleep\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("r_seconds_count{kind=\"fib\"} 0\n"), "{text}");
    }

    #[test]
    fn job_metrics_count_by_kind() {
        let mut m = JobMetrics::default();
        m.submitted(JobKind::Fib);
        m.submitted(JobKind::Fib);
        m.finished(JobKind::Fib, JobState::Succeeded);
        m.finished(JobKind::Prime, JobState::Failed);
        m.finished(JobKind::Sleep, JobState::Cancelled);
        m.finished(JobKind::Sleep, JobState::Running);
        m.finished(JobKind::Python, JobState::Failed);
        m.retried(JobKind::Prime);
        m.ran(JobKind::Fib, 1500);
        let id = Uuid::now_v7();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        m.waited(JobKind::Fib, &id, now_ms + 2000);
        let waited = m.wait[JobKind::Fib].sum();
        assert!((1.9..2.1).contains(&waited), "{waited}");
        let mut e = Exposition::new();
        m.write(&mut e);
        let text = e.finish();
        for line in [
            "drover_jobs_submitted_total{kind=\"fib\"} 2\n",
            "drover_jobs_completed_total{kind=\"fib\"} 1\n",
            "drover_jobs_failed_total{kind=\"prime\"} 1\n",
            "drover_jobs_retried_total{kind=\"prime\"} 1\n",
            "drover_jobs_cancelled_total{kind=\"sleep\"} 1\n",
            "drover_jobs_completed_total{kind=\"sleep\"} 0\n",
            "drover_jobs_failed_total{kind=\"python\"} 1\n",
            "drover_jobs_failed_total{kind=\"sleep\"} 0\n",
            "drover_job_run_seconds_count{kind=\"fib\"} 1\n",
            "drover_job_run_seconds_sum{kind=\"fib\"} 0.0015\n",
            "drover_job_queue_wait_seconds_count{kind=\"fib\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.family("x", Kind::Gauge, "help\nmore");
        e.sample("x", &[("name", "a\"b\\c\nd")], 1.5);
        let text = e.finish();
        assert!(text.contains("# HELP x help\\nmore\n"), "{text}");
        assert!(text.contains("x{name=\"a\\\"b\\\\c\\nd\"} 1.5\n"), "{text}");
    }

    #[test]
    fn the_flag_picks_the_address() {
        assert_eq!(
            MetricsListen::from_flag(None, "127.0.0.1:9464"),
            MetricsListen::Default("127.0.0.1:9464".into())
        );
        assert_eq!(
            MetricsListen::from_flag(Some("off"), "x"),
            MetricsListen::Off
        );
        assert_eq!(MetricsListen::from_flag(Some(""), "x"), MetricsListen::Off);
        assert_eq!(
            MetricsListen::from_flag(Some("0.0.0.0:1"), "x"),
            MetricsListen::Explicit("0.0.0.0:1".into())
        );
    }

    #[tokio::test]
    async fn a_taken_default_address_is_skipped_an_explicit_one_refused() {
        let l = MetricsListen::Explicit("127.0.0.1:0".into())
            .bind()
            .await
            .unwrap()
            .expect("port 0 binds a free port");
        let taken = l.local_addr().unwrap().to_string();
        assert!(
            MetricsListen::Default(taken.clone())
                .bind()
                .await
                .unwrap()
                .is_none()
        );
        let e = MetricsListen::Explicit(taken).bind().await.unwrap_err();
        assert!(e.contains("--metrics-listen"), "{e}");
        assert!(MetricsListen::Off.bind().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn serves_get_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let render: Render = Arc::new(|| "up 1\n".to_string());
        let server = tokio::spawn(serve(listener, render, shutdown.clone()));
        assert_eq!(scrape(addr).await.unwrap(), "up 1\n");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
