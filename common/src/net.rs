//! The one place that tunes gRPC endpoints and servers: every channel and
//! server in drover is built here, so nodelay, keepalive, message sizes and
//! TLS agree on both ends.
//!
//! A client reaches the master through [`connect_with`]: the URL's scheme
//! says whether it speaks TLS (`https://` needs the CA that signed the
//! master's certificate, `--ca`), and the [`AttachToken`] interceptor sends
//! its token with every call. A server is built by [`server_with`], with
//! TLS when the master has a certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};

use crate::auth::{AttachToken, Token};

/// The largest gRPC message drover sends or accepts by default: a submit of
/// the maximum batch, or a result holding F(10^7) (2.1 million digits).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long a TLS handshake may take before the master drops the
/// connection: a client that opens connections and stalls ties up nothing.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel that sends the client's token with every call.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// Builds a tuned endpoint for `url`.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024)))
}

/// Connects to the master at `url` in plain text, with no token, naming it
/// in the error.
pub async fn connect(url: &str) -> Result<Channel, String> {
    let ep = endpoint(url).map_err(|e| format!("bad master URL {url:?}: {e}"))?;
    ep.connect()
        .await
        .map_err(|e| format!("cannot reach the master at {url}: {}", source_chain(&e)))
}

/// How a client reaches the master: the TLS material it trusts and shows,
/// and its token.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// PEM of the CA certificates that sign the master's certificate;
    /// required for `https://` URLs.
    pub ca: Option<Vec<u8>>,
    /// PEM of this client's certificate and private key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<Token>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token)
            .finish()
    }
}

/// Builds a tuned endpoint for `url` with the TLS `options` ask for.
pub fn endpoint_with(url: &str, options: &ClientOptions) -> Result<Endpoint, String> {
    let ep = endpoint(url).map_err(|e| format!("bad master URL {url:?}: {e}"))?;
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    match (&options.ca, https) {
        (None, true) => Err(format!(
            "{url} is https: give the CA certificate that signed the master's certificate \
             with --ca (DROVER_CA)"
        )),
        (Some(_), false) => Err(format!(
            "--ca is given, so TLS is meant, but {url} is not an https:// URL"
        )),
        (None, false) if options.identity.is_some() => Err(format!(
            "--tls-cert is given, so TLS is meant, but {url} is not an https:// URL"
        )),
        (None, false) => Ok(ep),
        (Some(ca), true) => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .timeout(TLS_HANDSHAKE_TIMEOUT);
            if let Some((cert, key)) = &options.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            ep.tls_config(tls)
                .map_err(|e| format!("bad TLS settings for {url}: {}", source_chain(&e)))
        }
    }
}

/// Connects to the master at `url`: with TLS for `https://`, and sending
/// the token of `options` with every call.
pub async fn connect_with(url: &str, options: &ClientOptions) -> Result<AuthChannel, String> {
    let ep = endpoint_with(url, options)?;
    let channel = ep
        .connect()
        .await
        .map_err(|e| format!("cannot reach the master at {url}: {}", source_chain(&e)))?;
    Ok(InterceptedService::new(
        channel,
        AttachToken::new(options.token.as_ref()),
    ))
}

/// A channel to `url` that connects on its first call (for a client that
/// must see the gRPC status of a refused connection).
pub fn connect_lazy_with(url: &str, options: &ClientOptions) -> Result<AuthChannel, String> {
    let channel = endpoint_with(url, options)?.connect_lazy();
    Ok(InterceptedService::new(
        channel,
        AttachToken::new(options.token.as_ref()),
    ))
}

/// Splits a `--master` value (or `DROVER_MASTER`) into the masters' URLs:
/// comma-separated, each trimmed, in the order given. One URL is the usual
/// case; several are the masters of one database, tried in turn. An empty
/// element is refused, naming the flag.
pub fn master_urls(value: &str) -> Result<Vec<String>, String> {
    value
        .split(',')
        .map(|url| match url.trim() {
            "" => Err(format!("--master: empty address in '{value}'")),
            url => Ok(url.to_string()),
        })
        .collect()
}

/// The metadata key of the UNAVAILABLE a standby master answers every
/// `Queue`, `Workers` and `Coord` call with; its value names the leader
/// (empty while there is none). It tells a client that the call was not
/// applied, so that even a call unsafe to send twice may go on to the next
/// master: a bare UNAVAILABLE does not (a master shutting down answers it
/// after applying a change).
pub const STANDBY_METADATA: &str = "drover-standby";

/// Whether a standby master answered the call ([`STANDBY_METADATA`]).
pub fn from_standby(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().contains_key(STANDBY_METADATA)
}

/// Whether the call failed to open a connection, so no master saw it:
/// tonic's own mark of a failed connect is a [`tonic::ConnectError`] in the
/// status's source chain (a word like "connection" in a message is no
/// proof: a connection reset in flight says it too).
pub fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The flags a client (the worker, the CLI) reaches the master with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// The token to present to the master (a client token for the CLI, a
    /// worker token for a worker). Prefer --token-file or the variable: a
    /// flag shows in the process list.
    #[arg(long, env = "DROVER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[arg(long, env = "DROVER_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the master's certificate;
    /// needed for an https:// master URL.
    #[arg(long, env = "DROVER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a master that asks for mutual
    /// TLS (its --client-ca).
    #[arg(long, env = "DROVER_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "DROVER_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl ClientArgs {
    /// Reads the files the flags name and checks that they fit together.
    pub fn options(&self) -> Result<ClientOptions, String> {
        let token =
            Token::from_sources(self.token.as_deref(), self.token_file.as_deref(), "--token")?;
        let ca = self
            .ca
            .as_deref()
            .map(|p| read_pem(p, "--ca"))
            .transpose()?;
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((read_pem(c, "--tls-cert")?, read_pem(k, "--tls-key")?)),
            (None, None) => None,
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        };
        Ok(ClientOptions {
            ca,
            identity,
            token,
        })
    }
}

/// Reads a PEM file, naming its flag in the error.
pub fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{flag}: {} is not a PEM file (no -----BEGIN line)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The master's TLS material.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM of the master's certificate chain.
    pub cert: Vec<u8>,
    /// PEM of its private key.
    pub key: Vec<u8>,
    /// PEM of the CA that signs client certificates. When set, a client
    /// that shows a certificate must show one this CA signed; whether a
    /// certificate is required is the services' decision (the master asks
    /// it of workers).
    pub client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// A tuned server builder.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
}

/// A tuned server builder with TLS (when `tls` is given) and at most
/// `max_concurrent_streams` streams open on each connection.
pub fn server_with(tls: Option<&ServerTls>, max_concurrent_streams: u32) -> Result<Server, String> {
    let server = server().max_concurrent_streams(Some(max_concurrent_streams));
    let Some(tls) = tls else {
        return Ok(server);
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    server
        .tls_config(config)
        .map_err(|e| format!("bad TLS certificate or key: {}", source_chain(&e)))
}

/// Prints an error and its sources on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_and_the_ca_must_agree() {
        let none = ClientOptions::default();
        assert!(endpoint_with("http://127.0.0.1:1", &none).is_ok());
        let e = endpoint_with("https://127.0.0.1:1", &none).unwrap_err();
        assert!(e.contains("--ca"), "{e}");
        let with_ca = ClientOptions {
            ca: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            ..ClientOptions::default()
        };
        let e = endpoint_with("http://127.0.0.1:1", &with_ca).unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn masters_are_split_on_commas_and_trimmed() {
        assert_eq!(master_urls("http://a:1").unwrap(), ["http://a:1"]);
        assert_eq!(
            master_urls(" http://a:1 , http://b:2,http://c:3").unwrap(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        for bad in ["a,,b", "a,", ",a", "", " "] {
            assert_eq!(
                master_urls(bad).unwrap_err(),
                format!("--master: empty address in '{bad}'")
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let opts = ClientOptions {
            identity: Some((b"cert".to_vec(), b"SECRET KEY".to_vec())),
            token: Some(Token::new("s3cret", "t").unwrap()),
            ..ClientOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
