//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` URL parameters,
//! and a rustls connector (the ring provider, as the rest of drover) for
//! tokio-postgres.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and refuses
//! a parameter it does not know, so [`parse`] takes both parameters off the
//! URL before it hands the rest over. What each mode does:
//!
//! - `disable`: plain text.
//! - `prefer` (the default, as libpq's): TLS if the server offers it, plain
//!   text if it does not. The certificate is checked only against an
//!   `sslrootcert` given (then as `verify-ca`). Without one, a handshake
//!   that fails is tried again in plain text, as libpq does, so a server
//!   whose TLS drover cannot speak works as it did before drover had TLS.
//! - `require`: TLS or no connection. As in libpq, the certificate is
//!   checked only against an `sslrootcert` given (then as `verify-ca`):
//!   without one the session is encrypted against eavesdroppers but not
//!   protected from an impostor. Managed services often document
//!   `require` with certificates no public CA signed; use `verify-full`
//!   with their CA where one is published.
//! - `verify-ca`: TLS, the certificate signed by a CA in `sslrootcert`.
//! - `verify-full`: and it names the host of the URL.
//!
//! `sslrootcert` is a PEM file of one or more CA certificates, or `system`
//! (as libpq 16): the system's bundle (`$SSL_CERT_FILE`, else the usual
//! paths of Debian, Red Hat and Alpine), which only `verify-full` may use,
//! since anyone can have a public CA sign a certificate for a name of
//! their own; `system` without an `sslmode` means `verify-full`. Unlike
//! libpq, `verify-ca` and `verify-full` need an `sslrootcert`: drover does
//! not read `~/.postgresql/root.crt`. Client certificates (`sslcert`,
//! `sslkey`) are not supported, nor channel binding (SCRAM works without
//! it, the server's certificate checked as above).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Connection, Socket};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`, as drover understands it (the module's header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS if the server offers it.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, the certificate's chain checked.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA certificates that sign the server's come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file (`sslrootcert=PATH`).
    File(PathBuf),
    /// The system's bundle (`sslrootcert=system`).
    System,
}

/// The TLS settings of a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// `sslmode`, `prefer` when the URL has none (`verify-full` with
    /// `sslrootcert=system`).
    pub mode: SslMode,
    /// `sslrootcert`, if given.
    pub root: Option<RootCert>,
}

/// The system bundles `sslrootcert=system` tries, after `$SSL_CERT_FILE`.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Where the host of a PostgreSQL URL starts: after the last `@` of the
/// authority, which ends at the path's `/` (a `/` of a password is
/// percent-encoded, as libpq asks), or without a path at the first `?`;
/// an `@` in the query (`application_name=me@host`) is not the user
/// info's.
pub(crate) fn host_start(url: &str) -> usize {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let end = rest
        .find('/')
        .or_else(|| rest.find('?'))
        .unwrap_or(rest.len());
    rest[..end]
        .rfind('@')
        .map_or(after_scheme, |i| after_scheme + i + 1)
}

/// Splits a PostgreSQL URL into what tokio-postgres reads (with its
/// `sslmode` set to match) and the TLS settings; the error names the
/// parameter and what is wrong with it, not the URL.
pub fn parse(url: &str) -> anyhow::Result<(tokio_postgres::Config, Tls)> {
    // The query starts at the first `?` after the user info, which may hold
    // a `?` of its own.
    let host_at = host_start(url);
    let (base, query) = match url[host_at..].find('?') {
        Some(q) => (&url[..host_at + q], &url[host_at + q + 1..]),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| anyhow::anyhow!("{key}={value}: not UTF-8 once decoded"))
        };
        match key {
            "sslmode" => {
                mode = Some(match decoded()?.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    "allow" => anyhow::bail!(
                        "sslmode=allow is not supported: use prefer (TLS when the server offers it) or disable"
                    ),
                    other => anyhow::bail!(
                        "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                    ),
                });
            }
            "sslrootcert" => {
                let path = decoded()?;
                anyhow::ensure!(
                    !path.is_empty(),
                    "sslrootcert is empty: give a PEM file of CA certificates, or system"
                );
                root = Some(if path == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(path))
                });
            }
            "sslcert" | "sslkey" | "sslpassword" => anyhow::bail!(
                "{key}: client certificates are not supported; authenticate with a password (SCRAM) over sslmode=verify-full"
            ),
            _ => kept.push(pair),
        }
    }
    let mode = match (mode, &root) {
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
        (Some(mode), _) => mode,
    };
    if root == Some(RootCert::System) && mode != SslMode::VerifyFull {
        anyhow::bail!(
            "sslrootcert=system needs sslmode=verify-full (not {}): a public CA signs certificates for anyone's names, so only the host name tells the server from another",
            mode.name()
        );
    }
    if root.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        anyhow::bail!(
            "sslmode={} needs sslrootcert: a PEM file of the CA certificates that sign the server's, or system for the system's",
            mode.name()
        );
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        // "invalid connection string" alone: the reason is in its source.
        let cause = std::error::Error::source(&e).map_or_else(String::new, |s| format!(": {s}"));
        anyhow::anyhow!("{e}{cause}")
    })?;
    config.ssl_mode(match mode {
        SslMode::Disable => DriverMode::Disable,
        SslMode::Prefer => DriverMode::Prefer,
        _ => DriverMode::Require,
    });
    Ok((config, Tls { mode, root }))
}

/// Connects as `config` says, over TLS as `tls` says; `shown` is the URL
/// without its password, for the error, which gives the server's reason
/// and, for a TLS failure, the parameters that asked for it.
pub async fn connect(
    config: &mut tokio_postgres::Config,
    tls: &Tls,
    shown: &str,
) -> anyhow::Result<(Client, Connection<Socket, TlsStream>)> {
    let failed = Arc::new(AtomicBool::new(false));
    let connector = Connector {
        config: client_config(tls)?,
        failed: failed.clone(),
    };
    let result = config.connect(connector.clone()).await;
    let e = match result {
        Ok(connected) => return Ok(connected),
        Err(e) => e,
    };
    let said = describe(&e);
    let tls_failed = failed.load(Ordering::Relaxed);
    if tls_failed && tls.fallback() {
        tracing::warn!(url = shown, error = %said, "the TLS handshake with PostgreSQL failed; trying without TLS (sslmode=prefer)");
        config.ssl_mode(DriverMode::Disable);
        return config.connect(connector).await.map_err(|plain| {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {shown}: {} (sslmode=prefer: tried without TLS after the TLS handshake failed: {said})",
                describe(&plain)
            )
        });
    }
    let hint = if tls_failed || e.to_string().contains("TLS") {
        tls.hint()
    } else if tls.mode == SslMode::Disable && said.contains("no encryption") {
        // pg_hba.conf has only hostssl lines for this client.
        " (sslmode=disable: the server takes this connection only over TLS)".into()
    } else {
        String::new()
    };
    Err(anyhow::anyhow!(
        "cannot connect to PostgreSQL at {shown}: {said}{hint}"
    ))
}

/// The driver's message and its source's, which holds the server's
/// message ("db error" alone says nothing) or the TLS error.
fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

impl Tls {
    /// Whether a failed handshake is tried again in plain text (prefer,
    /// with no CA given that would make a failure mean something).
    fn fallback(&self) -> bool {
        self.mode == SslMode::Prefer && self.root.is_none()
    }

    /// What the TLS settings were, for an error.
    fn hint(&self) -> String {
        let checked = match (&self.root, self.mode) {
            (None, SslMode::Require) => {
                return " (sslmode=require; sslmode=prefer or disable connects without TLS)".into();
            }
            (None, mode) => return format!(" (sslmode={})", mode.name()),
            (Some(RootCert::File(path)), _) => format!("sslrootcert={}", path.display()),
            (Some(RootCert::System), _) => "the system's CAs (sslrootcert=system)".into(),
        };
        let name = if self.mode == SslMode::VerifyFull {
            " and the host name"
        } else {
            ""
        };
        format!(
            " (sslmode={}: the certificate checked against {checked}{name})",
            self.mode.name()
        )
    }
}

/// The rustls settings for `tls`, its CA file read now, so that a file
/// replaced (a rotated CA) is read again at the next connection.
fn client_config(tls: &Tls) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let roots = match &tls.root {
        None => None,
        Some(RootCert::File(path)) => Some(read_roots(path, "sslrootcert")?),
        Some(RootCert::System) => Some(system_roots()?),
    };
    let verifier = match roots {
        // Nothing given to check against: require and prefer encrypt
        // without checking, as libpq's do.
        None => Verifier {
            chain: None,
            host: false,
            provider: provider.clone(),
        },
        Some(roots) => Verifier {
            chain: Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| anyhow::anyhow!("sslrootcert: {e}"))?,
            ),
            host: tls.mode == SslMode::VerifyFull,
            provider: provider.clone(),
        },
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17's direct TLS (sslnegotiation=direct) requires it; older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates in a PEM file; `what` names the parameter.
fn read_roots(path: &Path, what: &str) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{what}={}: cannot read it: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            anyhow::anyhow!("{what}={}: not a PEM certificate file: {e}", path.display())
        })?;
        roots.add(cert).map_err(|e| {
            anyhow::anyhow!(
                "{what}={}: a certificate in it is not a CA's: {e}",
                path.display()
            )
        })?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{what}={}: no certificate in it (a PEM file of CA certificates is expected)",
        path.display()
    );
    Ok(roots)
}

/// The system's CA bundle, for `sslrootcert=system`.
fn system_roots() -> anyhow::Result<RootCertStore> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        return read_roots(Path::new(&file), "sslrootcert=system: SSL_CERT_FILE");
    }
    let found = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    let path = found.ok_or_else(|| {
        anyhow::anyhow!(
            "sslrootcert=system: no CA bundle on this system (looked for SSL_CERT_FILE and {}); install one (ca-certificates), or give sslrootcert=FILE",
            SYSTEM_BUNDLES.join(", ")
        )
    })?;
    read_roots(path, "sslrootcert=system: the bundle")
}

/// Checks the server's certificate as the mode says: not at all without a
/// CA, the chain with one, and the host name too for verify-full.
#[derive(Debug)]
struct Verifier {
    /// The chain's check against the CAs given; `None`: nothing checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host (verify-full).
    host: bool,
    /// The handshake's signatures are checked whatever the mode: without
    /// that, not even a passive eavesdropper would be kept out.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name last, after the chain: a name error means
        // the chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres's TLS connector over tokio-rustls.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// Set when a handshake fails, for prefer's retry in plain text (the
    /// driver's error does not say which step failed).
    failed: Arc<AtomicBool>,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = HostConnector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<HostConnector> {
        // A Unix socket has no host name (""), and needs none: PostgreSQL
        // answers its TLS request no, before any handshake. A bad name
        // fails the handshake, if there is one.
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can check: {e}"),
            )
        });
        Ok(HostConnector {
            connector: self.clone(),
            name,
        })
    }
}

/// The connector for one host.
pub struct HostConnector {
    connector: Connector,
    /// The name the certificate must have, or why there is none.
    name: io::Result<ServerName<'static>>,
}

impl<S> TlsConnect<S> for HostConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<TlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.connector.config.clone());
            let result = match self.name {
                Ok(name) => tls.connect(name, stream).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                self.connector.failed.store(true, Ordering::Relaxed);
            }
            result.map(|s| TlsStream(Box::new(s)))
        })
    }
}

/// A TLS session with the server (boxed: rustls's state is large).
pub struct TlsStream<S = Socket>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point needs the hash named by the certificate's
        // signature algorithm, which needs an X.509 parser: without it the
        // client says it does not bind, which every server accepts.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_tests::pg::Postgres;
    use drover_tests::security::Pki;
    use std::time::Duration;

    fn tls_of(url: &str) -> Tls {
        parse(url).unwrap().1
    }

    fn refusal(url: &str) -> String {
        parse(url).unwrap_err().to_string()
    }

    #[test]
    fn the_modes_are_libpqs_and_prefer_is_the_default() {
        let base = "postgres://u:pw@h:5432/db";
        assert_eq!(
            tls_of(base),
            Tls {
                mode: SslMode::Prefer,
                root: None
            }
        );
        for (name, mode, driver) in [
            ("disable", SslMode::Disable, DriverMode::Disable),
            ("prefer", SslMode::Prefer, DriverMode::Prefer),
            ("require", SslMode::Require, DriverMode::Require),
            ("verify-ca", SslMode::VerifyCa, DriverMode::Require),
            ("verify-full", SslMode::VerifyFull, DriverMode::Require),
        ] {
            let (config, tls) = parse(&format!(
                "{base}?sslmode={name}&sslrootcert=%2Fetc%2Fca%20x.pem"
            ))
            .unwrap();
            assert_eq!(tls.mode, mode);
            assert_eq!(tls.root, Some(RootCert::File("/etc/ca x.pem".into())));
            assert_eq!(config.get_ssl_mode(), driver, "{name}");
        }
    }

    #[test]
    fn the_rest_of_the_url_reaches_the_driver() {
        let (config, tls) = parse(
            "postgres://u:p?w@h:5432/db?application_name=x&sslrootcert=/ca.pem&connect_timeout=3&sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));
        assert_eq!(config.get_dbname(), Some("db"));
        // An `@` in the query leaves the mode where it is.
        for url in [
            "postgres://u:pw@h/db?sslmode=require&application_name=me@host",
            "postgres://u:pw@h?sslmode=require&application_name=me@host",
        ] {
            let (config, tls) = parse(url).unwrap();
            assert_eq!(tls.mode, SslMode::Require, "{url}");
            assert_eq!(config.get_application_name(), Some("me@host"), "{url}");
            assert_eq!(config.get_password(), Some(&b"pw"[..]), "{url}");
        }
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let tls = tls_of("postgres://h/db?sslrootcert=system");
        assert_eq!(
            (tls.mode, tls.root),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        let said = refusal("postgres://h/db?sslrootcert=system&sslmode=require");
        assert!(
            said.contains("sslrootcert=system needs sslmode=verify-full"),
            "{said}"
        );
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (url, expected) in [
            (
                "postgres://h/db?sslmode=bogus",
                "sslmode=bogus: expected disable, prefer",
            ),
            (
                "postgres://h/db?sslmode=allow",
                "sslmode=allow is not supported",
            ),
            (
                "postgres://h/db?sslmode=verify-ca",
                "sslmode=verify-ca needs sslrootcert",
            ),
            (
                "postgres://h/db?sslmode=verify-full",
                "sslmode=verify-full needs sslrootcert",
            ),
            ("postgres://h/db?sslrootcert=", "sslrootcert is empty"),
            (
                "postgres://h/db?sslcert=/c.pem",
                "sslcert: client certificates are not supported",
            ),
            (
                "postgres://h/db?bogus=1",
                "invalid connection string: unknown option `bogus`",
            ),
        ] {
            let said = refusal(url);
            assert!(said.contains(expected), "{url}: {said}");
        }
        // The flag's check is the same, and hides the password.
        let said = crate::parse_store("postgres://u:hunter2@h/db?sslmode=nope&password=hunter2")
            .unwrap_err();
        assert!(
            said.contains("sslmode=nope") && !said.contains("hunter2"),
            "{said}"
        );
        assert!(
            crate::parse_store("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem").is_ok()
        );
        // So does the master's start (clap's own message would show it).
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            master: crate::MasterArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "drover-master",
            "--store",
            "postgres://u:hunter2@h/db?sslmode=nope",
        ])
        .unwrap();
        let said = format!("{:#}", cli.master.config().unwrap_err());
        assert!(
            said.starts_with("--store: ")
                && said.contains("sslmode=nope")
                && !said.contains("hunter2"),
            "{said}"
        );
    }

    #[test]
    fn an_unreadable_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let said = client_config(&Tls {
            mode: SslMode::VerifyFull,
            root: Some(RootCert::File(missing.clone())),
        })
        .unwrap_err()
        .to_string();
        assert!(
            said.starts_with(&format!(
                "sslrootcert={}: cannot read it",
                missing.display()
            )),
            "{said}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let said = client_config(&Tls {
            mode: SslMode::VerifyCa,
            root: Some(RootCert::File(empty)),
        })
        .unwrap_err()
        .to_string();
        assert!(said.contains("no certificate in it"), "{said}");
    }

    /// A Unix socket's connection asks for a connector with no host name:
    /// that must not fail, or a URL with a socket directory would.
    #[test]
    fn a_connector_without_a_host_name_is_made() {
        let tls = parse("postgres://%2Frun%2Fpostgresql/db").unwrap().1;
        let mut connector = Connector {
            config: client_config(&tls).unwrap(),
            failed: Arc::default(),
        };
        assert!(
            MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut connector, "").is_ok()
        );
    }

    /// Whether the session of `client` is encrypted, by the server's account.
    async fn encrypted(client: &Client) -> bool {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn refused(url: &str) -> String {
        match crate::pg::connect(url, "test").await {
            Ok(_) => panic!("{url} connected"),
            Err(e) => e.to_string(),
        }
    }

    /// On a server that takes only TLS: verify-full connects, encrypted;
    /// verify-ca checks the chain and not the name, verify-full both; a CA
    /// that did not sign the certificate is refused, naming the file;
    /// require and the default encrypt without a CA; SCRAM works over TLS;
    /// plain text is refused with the server's reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_modes_on_a_server_that_takes_only_tls() {
        let pki = Pki::new();
        let hba = "hostssl all postgres 127.0.0.1/32 trust\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n";
        let pg = Postgres::start_tls(&pki, hba);
        let ca = pki.arg("ca.pem");
        let url = pg.url();

        let full = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
        assert!(encrypted(&crate::pg::connect(&full, "test").await.unwrap()).await);
        for plain_url in [url.clone(), format!("{url}?sslmode=require")] {
            let client = crate::pg::connect(&plain_url, "test").await.unwrap();
            assert!(encrypted(&client).await, "{plain_url}");
        }

        // Another name for the same address: the chain is good, the name not.
        let port = pg.port();
        let elsewhere =
            format!("postgres://postgres@db.invalid:{port}/postgres?hostaddr=127.0.0.1");
        let ca_only = format!("{elsewhere}&sslmode=verify-ca&sslrootcert={ca}");
        assert!(encrypted(&crate::pg::connect(&ca_only, "test").await.unwrap()).await);
        let said = refused(&format!("{elsewhere}&sslmode=verify-full&sslrootcert={ca}")).await;
        assert!(
            said.contains("not valid for name") && said.contains("sslmode=verify-full"),
            "{said}"
        );

        let rogue = pki.arg("rogue-ca.pem");
        for mode in ["verify-full", "verify-ca", "require"] {
            let said = refused(&format!("{url}?sslmode={mode}&sslrootcert={rogue}")).await;
            assert!(
                said.contains("error performing TLS handshake")
                    && said.contains("UnknownIssuer")
                    && said.contains(&format!("sslrootcert={rogue}")),
                "{mode}: {said}"
            );
        }

        let said = refused(&format!("{url}?sslmode=disable")).await;
        assert!(
            said.contains("no pg_hba.conf entry") && said.contains("no encryption"),
            "{said}"
        );
        assert!(
            said.contains("(sslmode=disable: the server takes this connection only over TLS)"),
            "{said}"
        );

        pg.psql("CREATE ROLE scram LOGIN PASSWORD 'pa ss'");
        let scram = format!(
            "postgres://scram:pa%20ss@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
        );
        assert!(encrypted(&crate::pg::connect(&scram, "test").await.unwrap()).await);
        let said = refused(&scram.replace("pa%20ss", "wrong")).await;
        assert!(
            said.contains("password authentication failed") && !said.contains("wrong"),
            "{said}"
        );
    }

    /// A server whose TLS drover cannot speak (TLS 1.1 at most): the
    /// default (prefer) goes on in plain text, as libpq does; require is
    /// refused with the handshake's error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefer_falls_back_to_plain_text_when_the_handshake_fails() {
        let pki = Pki::new();
        let pg = Postgres::start_tls(&pki, "host all all 127.0.0.1/32 trust\n");
        pg.psql("ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1'");
        pg.psql("ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.1'");
        pg.psql("SELECT pg_reload_conf()");
        let url = pg.url();
        // The reload is asynchronous: until it is in force, TLS works.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let said = loop {
            let Ok(_) = crate::pg::connect(&format!("{url}?sslmode=require"), "test").await else {
                break refused(&format!("{url}?sslmode=require")).await;
            };
            assert!(
                std::time::Instant::now() < deadline,
                "the server still speaks TLS 1.2: {}",
                pg.log()
            );
            tokio::time::sleep(drover_tests::wait::POLL).await;
        };
        assert!(said.contains("error performing TLS handshake"), "{said}");
        let client = crate::pg::connect(&url, "test").await.unwrap();
        assert!(!encrypted(&client).await);
    }

    /// A server without TLS: the default (prefer) connects in plain text, as
    /// before drover had TLS; require is refused, saying why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_without_tls_takes_prefer_and_refuses_require() {
        let pg = Postgres::start();
        let client = crate::pg::connect(&pg.url(), "test").await.unwrap();
        assert!(!encrypted(&client).await);
        let said = refused(&format!("{}?sslmode=require", pg.url())).await;
        assert!(
            said.contains("server does not support TLS")
                && said
                    .contains("(sslmode=require; sslmode=prefer or disable connects without TLS)"),
            "{said}"
        );
    }
}
