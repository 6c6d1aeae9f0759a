//! Who may see the dashboard and act through it: the rules of the `Queue`
//! service, for a browser.
//!
//! - With a client token (`--client-token`), every page, event stream and
//!   action needs it: from a browser through the login form, which sets an
//!   `HttpOnly`, `SameSite=Strict` cookie (`Secure` over TLS) holding a
//!   random key made when the master started, never the token itself; from
//!   a script as `Authorization: Bearer <token>`. Both are compared in
//!   constant time. A wrong token is refused and sees no data.
//! - Without one, the dashboard is as open as the `Queue` service; the
//!   master refuses to listen off loopback that way unless `--insecure`.
//!   An open dashboard on loopback answers only requests whose `Host` is an
//!   IP address or `localhost`, so a web page cannot reach it through DNS
//!   rebinding.
//! - Nothing changes on a GET. Every POST must come from the dashboard's
//!   own origin (`Origin`, else `Sec-Fetch-Site`), and a POST from a form
//!   carries the CSRF token the page was rendered with (a random key made
//!   at start; a script using the `Authorization` header needs none).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Axum};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drover_common::auth::{Token, ct_eq};
use drover_common::net::ServerTls;

use super::{Dash, Refused, field, pages, pairs, plain};

/// The cookie a login sets.
const COOKIE: &str = "drover_dashboard";

/// Form bodies larger than this are refused: an action names one id.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The access rules of one dashboard.
pub(crate) struct Access {
    /// The client token; `None`: the dashboard is open.
    token: Option<Token>,
    /// What the login cookie holds: random, made at start.
    session: String,
    /// What forms carry against cross-site requests: random, made at start.
    csrf: String,
    /// Served over TLS: cookies are `Secure` and origins `https://`.
    tls: bool,
    /// Answer only `Host`s that are IP addresses or `localhost` (an open
    /// dashboard on loopback).
    check_host: bool,
}

/// 32 random bytes in hex.
fn random_key() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Access {
    pub(crate) fn new(token: Option<Token>, tls: bool, addr: SocketAddr) -> Access {
        Access {
            check_host: token.is_none() && addr.ip().is_loopback(),
            token,
            session: random_key(),
            csrf: random_key(),
            tls,
        }
    }

    /// Whether a token is needed (the pages then offer a logout).
    pub(crate) fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token forms carry.
    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether the request shows the client token in its `Authorization`
    /// header.
    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| token.matches(t.trim().as_bytes()))
    }

    /// Whether the request carries the login cookie.
    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && ct_eq(value.as_bytes(), self.session.as_bytes()))
    }

    /// Whether the request may see and do what the client token allows.
    fn allowed(&self, headers: &HeaderMap) -> bool {
        self.token.is_none() || self.cookie_ok(headers) || self.bearer_ok(headers)
    }

    /// A `Host` an open loopback dashboard answers: an IP address or
    /// `localhost`, with any port.
    fn host_ok(&self, headers: &HeaderMap) -> bool {
        if !self.check_host {
            return true;
        }
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => {
                return v6
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(n, _)| n),
        };
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
    }

    /// Whether a POST comes from the dashboard's own pages: its `Origin`
    /// is this dashboard's, or, without one, the browser says it is not
    /// cross-site.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        let text = |h| {
            headers
                .get(h)
                .and_then(|v: &header::HeaderValue| v.to_str().ok())
        };
        match text(header::ORIGIN) {
            Some(origin) => {
                let scheme = if self.tls { "https" } else { "http" };
                text(header::HOST).is_some_and(|host| origin == format!("{scheme}://{host}"))
            }
            None => text(header::HeaderName::from_static("sec-fetch-site"))
                .is_none_or(|s| s == "same-origin" || s == "none"),
        }
    }

    /// The fields of an action's form, once its CSRF token is checked (a
    /// request with the token in its `Authorization` header needs none).
    pub(crate) fn form(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Vec<(String, String)>, Refused> {
        let form = parse_form(body)?;
        let shown = field(&form, "csrf").unwrap_or("");
        if !self.bearer_ok(headers) && !ct_eq(shown.as_bytes(), self.csrf.as_bytes()) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "csrf: missing or wrong; send actions from the dashboard's pages, or with \
                 `Authorization: Bearer <client token>`"
                    .into(),
            ));
        }
        Ok(form)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }
}

fn parse_form(body: &Bytes) -> Result<Vec<(String, String)>, Refused> {
    if body.len() > MAX_FORM_BYTES {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the form is {} bytes, over the limit of {MAX_FORM_BYTES}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Refused(StatusCode::BAD_REQUEST, "the form is not UTF-8".into()))?;
    Ok(pairs(text))
}

/// The check in front of every route.
pub(crate) async fn check(Axum(dash): Axum<Arc<Dash>>, request: Request, next: Next) -> Response {
    let access = &dash.access;
    let headers = request.headers();
    if !access.host_ok(headers) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers only requests to an IP address or localhost \
             (open dashboards are protected from DNS rebinding); give the master a \
             --client-token to serve it under a host name",
        );
    }
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && !access.same_origin(headers)
    {
        return plain(
            StatusCode::FORBIDDEN,
            "cross-site request refused: actions are accepted only from the dashboard's own pages",
        );
    }
    let path = request.uri().path();
    let public = path == "/login" || path.starts_with("/assets/");
    if public || access.allowed(headers) {
        return next.run(request).await;
    }
    let page = request.method() == Method::GET
        && !path.starts_with("/api/")
        && path != "/events"
        && !headers.contains_key("x-drover-fragment");
    if page {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    }
    let why = if headers.contains_key(header::AUTHORIZATION) {
        "wrong token: it is not this master's client token"
    } else {
        "this dashboard needs the client token: log in at /login, or send \
         `Authorization: Bearer <token>`"
    };
    plain(StatusCode::UNAUTHORIZED, why)
}

/// The login form.
pub(crate) async fn login_page() -> Response {
    html(StatusCode::OK, pages::login(None))
}

/// Checks the token a login form sent; sets the cookie if it is right.
pub(crate) async fn login(Axum(dash): Axum<Arc<Dash>>, body: Bytes) -> Response {
    let access = &dash.access;
    let Some(token) = &access.token else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    };
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let shown = field(&form, "token").unwrap_or("");
    if !token.matches(shown.as_bytes()) {
        let why = "wrong token: it is not this master's client token";
        return html(StatusCode::UNAUTHORIZED, pages::login(Some(why)));
    }
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/")
        .header(
            header::SET_COOKIE,
            access.cookie(&access.session, 7 * 24 * 3600),
        )
        .body(Body::empty())
        .unwrap_or_default()
}

/// Forgets the login cookie.
pub(crate) async fn logout(
    Axum(dash): Axum<Arc<Dash>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = dash.access.form(&headers, &body) {
        return r.into_response();
    }
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/login")
        .header(header::SET_COOKIE, dash.access.cookie("", 0))
        .body(Body::empty())
        .unwrap_or_default()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The TLS side of the dashboard, from the master's certificate and key.
/// Browsers are not asked for a client certificate: the token is the
/// dashboard's credential.
pub(crate) fn tls_acceptor(tls: &ServerTls) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| anyhow::anyhow!("--tls-key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("the dashboard cannot use --tls-cert and --tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
