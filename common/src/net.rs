//! The one place that tunes gRPC endpoints and servers: every channel and
//! server in drover is built here, so nodelay, keepalive and message sizes
//! agree on both ends.

use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Server};

/// The largest gRPC message drover sends or accepts by default: a submit of
/// the maximum batch, or a result holding F(10^7) (2.1 million digits).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

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

/// Connects to the master at `url`, naming it in the error.
pub async fn connect(url: &str) -> Result<Channel, String> {
    let ep = endpoint(url).map_err(|e| format!("bad master URL {url:?}: {e}"))?;
    ep.connect()
        .await
        .map_err(|e| format!("cannot reach the master at {url}: {}", source_chain(&e)))
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
