//! Helpers for the security and observability tests: certificates made on
//! the spot, clients that carry a token and TLS settings, raw gRPC calls
//! for malformed requests, a child process in child mode fed by hand, and
//! a strict reading of the Prometheus text format.
//!
//! Nothing secret is committed: every key is generated (rcgen) into a
//! temporary directory that the test owns.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drover_common::net::{self, AuthChannel, ClientOptions};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::workers_client::WorkersClient;
use drover_common::pb::{self, master_message, worker_message};
use tonic::Code;
use tonic::codegen::{Bytes, Service, http};
use tonic::transport::Channel;

use crate::bins::bin;
use crate::grpc::block_on;

/// Certificates and keys for one test, in a temporary directory: a CA, a
/// server certificate it signed for `localhost` and `127.0.0.1`, a client
/// certificate it signed (for mutual TLS), and a second, untrusted CA with
/// a server and a client certificate of its own.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// One certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

fn leaf(
    names: &[&str],
    client: bool,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> Result<Issued, rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("drover"),
    );
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn authority(name: &str) -> Result<(String, rcgen::Issuer<'static, rcgen::KeyPair>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), rcgen::Issuer::new(params, key)))
}

impl Pki {
    /// Makes every certificate.
    ///
    /// # Panics
    ///
    /// When a certificate cannot be made or written.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("drover-pki-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let make = || -> Result<Vec<(&'static str, String)>, rcgen::Error> {
            let (ca, issuer) = authority("drover test CA")?;
            let server = leaf(&["localhost", "127.0.0.1"], false, &issuer)?;
            let client = leaf(&["drover-worker"], true, &issuer)?;
            let (rogue_ca, rogue) = authority("an untrusted CA")?;
            let rogue_server = leaf(&["localhost", "127.0.0.1"], false, &rogue)?;
            let rogue_client = leaf(&["impostor"], true, &rogue)?;
            Ok(vec![
                ("ca.pem", ca),
                ("server.pem", server.cert),
                ("server.key", server.key),
                ("client.pem", client.cert),
                ("client.key", client.key),
                ("rogue-ca.pem", rogue_ca),
                ("rogue-server.pem", rogue_server.cert),
                ("rogue-server.key", rogue_server.key),
                ("rogue-client.pem", rogue_client.cert),
                ("rogue-client.key", rogue_client.key),
            ])
        };
        for (name, pem) in make().unwrap_or_else(|e| panic!("cannot make certificates: {e}")) {
            std::fs::write(dir.path().join(name), pem)
                .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
        }
        Pki { dir }
    }

    /// The path of one of the files: `ca.pem`, `server.pem`, `server.key`,
    /// `client.pem`, `client.key`, `rogue-ca.pem`, `rogue-server.pem`,
    /// `rogue-server.key`, `rogue-client.pem`, `rogue-client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(p.is_file(), "no such test file: {name}");
        p
    }

    /// The path of one of the files, as a string for a command line.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes `contents` to a new file in the directory (a token file) and
    /// returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
        p.display().to_string()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A free loopback port, for a daemon's `--metrics-listen` (the port is
/// released before the daemon binds it; another process could take it in
/// between, which on a test machine does not happen).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

/// Client options: the CA to trust (for https), a client certificate, a
/// token.
pub fn options(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    token: Option<&str>,
) -> ClientOptions {
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    ClientOptions {
        ca: ca.map(read),
        identity: identity.map(|(c, k)| (read(c), read(k))),
        token: token
            .map(|t| drover_common::auth::Token::new(t, "test").expect("a valid test token")),
    }
}

/// A `Queue` client that connects on its first call, so that a refused
/// connection shows as that call's status.
pub fn queue(url: &str, options: &ClientOptions) -> QueueClient<AuthChannel> {
    let channel = crate::grpc::runtime()
        .block_on(async { net::connect_lazy_with(url, options) })
        .unwrap_or_else(|e| panic!("{e}"));
    QueueClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES)
}

/// The master's stats through a client with `options`.
///
/// # Panics
///
/// When the call fails.
pub fn stats(url: &str, options: &ClientOptions) -> pb::StatsResponse {
    block_on(queue(url, options).stats(pb::StatsRequest {}))
        .unwrap_or_else(|e| panic!("Stats on {url} failed: {e:?}"))
        .into_inner()
}

/// Opens a `Workers.Connect` session with a hello, as a worker would, and
/// returns the status it ends with: OK once the master welcomes it.
pub fn connect_worker(url: &str, options: &ClientOptions) -> Result<(), tonic::Status> {
    block_on(async {
        let channel = net::connect_lazy_with(url, options).map_err(tonic::Status::unavailable)?;
        let mut client = WorkersClient::new(channel);
        let hello = pb::WorkerMessage {
            msg: Some(worker_message::Msg::Hello(pb::Hello {
                protocol: drover_common::PROTOCOL_VERSION,
                name: "handmade".into(),
                host: "test".into(),
                cpu_slots: 1,
                io_slots: 1,
                version: drover_common::VERSION.into(),
                pid: std::process::id(),
                ..Default::default()
            })),
        };
        // The sender is held until the answer is read: the stream stays
        // open, as a worker's does.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello).await.expect("the channel is open");
        let outbound = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = client.connect(outbound).await?.into_inner();
        let first = inbound.message().await;
        drop(tx);
        match first? {
            Some(pb::MasterMessage {
                msg: Some(master_message::Msg::Welcome(_)),
            }) => Ok(()),
            other => Err(tonic::Status::internal(format!("no welcome: {other:?}"))),
        }
    })
}

/// Fetches `http://127.0.0.1:{port}/metrics`, waiting up to 10 s for the
/// daemon to serve it.
///
/// # Panics
///
/// When nothing answers in time.
pub fn scrape(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    crate::wait::wait_for(
        Duration::from_secs(10),
        &format!("metrics on {addr}"),
        || block_on(drover_common::metrics::scrape(addr)).ok(),
    )
}

/// A scrape, checked line by line and parsed.
pub struct Metrics {
    /// The parsed samples.
    pub scrape: prometheus_parse::Scrape,
    /// The text.
    pub text: String,
}

impl Metrics {
    /// Checks `text` strictly ([`check_exposition`]) and parses it with
    /// prometheus-parse.
    ///
    /// # Panics
    ///
    /// When the text breaks the format, with the reason and the text.
    pub fn parse(text: String) -> Metrics {
        if let Err(e) = check_exposition(&text) {
            panic!("the metrics are not valid Prometheus text: {e}\n{text}");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("prometheus-parse refused the metrics: {e}\n{text}"));
        Metrics { scrape, text }
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// The value of a counter or gauge sample; 0 when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).map(|s| &s.value) {
            Some(prometheus_parse::Value::Counter(v))
            | Some(prometheus_parse::Value::Gauge(v))
            | Some(prometheus_parse::Value::Untyped(v)) => *v,
            Some(other) => panic!("{name} is not a single value: {other:?}"),
            None => 0.0,
        }
    }

    /// The number of observations of a histogram (its `+Inf` bucket).
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).map(|s| &s.value) {
            Some(prometheus_parse::Value::Histogram(buckets)) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
            None => panic!("no histogram {name} {labels:?}\n{}", self.text),
        }
    }
}

/// Checks the Prometheus text format (0.0.4) more strictly than
/// prometheus-parse, which skips what it cannot read: every line is a
/// comment or a sample; names and labels are well formed; every sample
/// belongs to a family declared by a `# TYPE` line before it, once; values
/// are numbers; histogram buckets rise, end at `+Inf`, and agree with
/// `_count`.
pub fn check_exposition(text: &str) -> Result<(), String> {
    use std::collections::HashMap;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: HashMap<String, String> = HashMap::new();
    // Per histogram series (name + labels without le): last bucket count,
    // whether +Inf was seen and its count.
    let mut buckets: HashMap<String, (f64, Option<f64>)> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !name_ok(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("a second TYPE line for the family".into()));
                    }
                }
                (Some("HELP"), Some(name), Some(_)) if name_ok(name) => {}
                _ => return Err(at("a comment that is neither HELP nor TYPE".into())),
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| at(format!("value {v:?} is not a number")))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("labels not closed".into()))?;
                (name, parse_labels(body).map_err(&at)?)
            }
            None => (series, Vec::new()),
        };
        if !name_ok(name) {
            return Err(at("bad metric name".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| at(format!("no TYPE line for {family} before its samples")))?;
        if kind == "counter" && value < 0.0 {
            return Err(at("a negative counter".into()));
        }
        if kind == "histogram" {
            let key_of = |labels: &[(String, String)]| {
                let mut l: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                l.sort();
                format!("{family}{{{}}}", l.join(","))
            };
            let key = key_of(&labels);
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| at("a bucket without le".into()))?;
                let entry = buckets.entry(key).or_insert((0.0, None));
                if value < entry.0 {
                    return Err(at("histogram buckets are not cumulative".into()));
                }
                entry.0 = value;
                if le.1 == "+Inf" {
                    entry.1 = Some(value);
                }
            } else if name.ends_with("_count") {
                counts.insert(key, value);
            }
        }
    }
    for (key, (_, inf)) in &buckets {
        let inf = inf.ok_or_else(|| format!("{key} has no +Inf bucket"))?;
        match counts.get(key) {
            Some(c) if *c == inf => {}
            other => return Err(format!("{key}: +Inf bucket {inf}, _count {other:?}")),
        }
    }
    Ok(())
}

/// Parses `a="x",b="y"` with the format's escapes.
fn parse_labels(body: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next() != Some('"') {
            return Err(format!("label {name} is not quoted"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in label {name}")),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(format!("label {name} is not closed")),
            }
        }
        out.push((name, value));
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("{c:?} after label value")),
        }
    }
    Ok(out)
}

/// A small deterministic random generator (xorshift64*), so that a failing
/// run of a randomized test can be repeated from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` in 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Fewer than `max` random bytes.
    pub fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A gRPC message frame: a compression flag, a declared length and a
/// payload (which may be shorter or longer than declared).
pub fn grpc_frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the master answered to a raw call.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The HTTP status.
    pub http: u16,
    /// The gRPC status (from the headers or the trailers), if any.
    pub code: Option<Code>,
    /// Its message.
    pub message: String,
}

/// Sends `body` as the whole request body of a gRPC call to `path` on
/// `channel`, with `token` as a bearer token, and reads the whole answer.
pub async fn raw_call(
    mut channel: Channel,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<RawReply, String> {
    use http_body_util::BodyExt;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| format!("channel not ready: {e}"))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| format!("transport error: {}", net::source_chain(&e)))?;
    let (parts, body) = response.into_parts();
    let mut status = tonic::Status::from_header_map(&parts.headers);
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("the answer's body broke: {e}"))?;
    if status.is_none()
        && let Some(trailers) = collected.trailers()
    {
        status = tonic::Status::from_header_map(trailers);
    }
    Ok(RawReply {
        http: parts.status.as_u16(),
        code: status.as_ref().map(|s| s.code()),
        message: status.map(|s| s.message().to_string()).unwrap_or_default(),
    })
}

/// A process of `drover-worker` in child mode, fed frames by hand. It is
/// killed and reaped on drop.
pub struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl ChildProc {
    /// Starts `drover-worker __drover_child`.
    pub fn start() -> ChildProc {
        let mut child = Command::new(bin("drover-worker"))
            .arg("__drover_child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a child process: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let (tx, frames) = mpsc::channel();
        // Frames are read on a thread, so that a wait can have a deadline.
        std::thread::spawn(move || {
            loop {
                let mut len = [0u8; 4];
                if stdout.read_exact(&mut len).is_err() {
                    return;
                }
                let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
                if stdout.read_exact(&mut buf).is_err() || tx.send(buf).is_err() {
                    return;
                }
            }
        });
        ChildProc {
            child,
            stdin,
            frames,
        }
    }

    /// Writes raw bytes to its stdin; false once the pipe is closed.
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        match &mut self.stdin {
            Some(s) => s.write_all(bytes).and_then(|()| s.flush()).is_ok(),
            None => false,
        }
    }

    /// Closes its stdin (a clean end of input).
    pub fn close(&mut self) {
        self.stdin = None;
    }

    /// The next response frame's bytes, if one comes within `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
