//! The master's limits, each refusing with RESOURCE_EXHAUSTED and a
//! message naming its flag, and the counts of what they and the token
//! check refused (for the metrics).
//!
//! - `--max-message-bytes`: tonic refuses a larger message with
//!   OUT_OF_RANGE; [`MessageSizeLayer`] turns that answer into
//!   RESOURCE_EXHAUSTED naming the flag.
//! - `--max-batch-jobs`: checked by the state at submit.
//! - `--max-queued`: [`Guards::check_queue_room`], back-pressure at submit.
//! - `--max-concurrent-streams`: HTTP/2's own limit, set on the server.
//! - `--max-watches-per-client`: [`Guards::watch_slot`], per client IP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use drover_common::Error;
use drover_common::metrics::{Exposition, Kind};
use parking_lot::Mutex;
use tonic::Status;
use tonic::codegen::http;

/// What a refusal was for, as the metrics label it.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Refusal {
    /// A message over `--max-message-bytes`.
    MessageSize,
    /// A submit that would pass `--max-queued`.
    Queued,
    /// A watch over `--max-watches-per-client`.
    Watches,
    /// A call with no token or a wrong one (UNAUTHENTICATED).
    Unauthenticated,
    /// A token of the wrong role (PERMISSION_DENIED).
    PermissionDenied,
}

const REFUSALS: [(Refusal, &str); 5] = [
    (Refusal::MessageSize, "max_message_bytes"),
    (Refusal::Queued, "max_queued"),
    (Refusal::Watches, "max_watches_per_client"),
    (Refusal::Unauthenticated, "unauthenticated"),
    (Refusal::PermissionDenied, "permission_denied"),
];

/// The limits the services check, and what they refused.
#[derive(Debug)]
pub struct Guards {
    /// The most jobs queued at once.
    max_queued: u64,
    /// The most open watch streams per client address.
    max_watches: u32,
    /// Open watch streams per client address.
    watches: Mutex<HashMap<IpAddr, u32>>,
    refused: [AtomicU64; 5],
    /// When the master started, for its uptime.
    pub started: Instant,
}

impl Guards {
    /// Guards with these limits.
    pub fn new(max_queued: u64, max_watches: u32) -> Guards {
        Guards {
            max_queued,
            max_watches,
            watches: Mutex::new(HashMap::new()),
            refused: Default::default(),
            started: Instant::now(),
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses a submit of `adding` jobs when `queued` are waiting and the
    /// total would pass `--max-queued`: the client should wait and retry.
    pub fn check_queue_room(&self, queued: u64, adding: usize) -> Result<(), Error> {
        if queued.saturating_add(adding as u64) > self.max_queued {
            self.refused(Refusal::Queued);
            return Err(Error::ResourceExhausted(format!(
                "jobs: the queue holds {queued} jobs and this batch adds {adding}, over the limit \
                 of {} queued jobs (master flag --max-queued); retry once workers catch up",
                self.max_queued
            )));
        }
        Ok(())
    }

    /// Takes one of the watch streams a client (its IP address) may have
    /// open; the slot is given back when dropped.
    pub fn watch_slot(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<WatchSlot, Error> {
        let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        let mut watches = self.watches.lock();
        let open = watches.entry(ip).or_insert(0);
        if *open >= self.max_watches {
            let open = *open;
            drop(watches);
            self.refused(Refusal::Watches);
            return Err(Error::ResourceExhausted(format!(
                "watch: {ip} has {open} watch streams open, the limit per client \
                 (master flag --max-watches-per-client)"
            )));
        }
        *open += 1;
        Ok(WatchSlot {
            guards: self.clone(),
            ip,
        })
    }

    /// Watch streams open now, all clients.
    pub fn watches_open(&self) -> u64 {
        self.watches.lock().values().map(|&n| u64::from(n)).sum()
    }

    /// Writes the refusal counters and the open watches.
    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "drover_requests_refused_total",
            Kind::Counter,
            "Requests refused, by the limit or check that refused them.",
        );
        for (why, label) in REFUSALS {
            let n = self.refused[why as usize].load(Ordering::Relaxed);
            e.sample(
                "drover_requests_refused_total",
                &[("reason", label)],
                n as f64,
            );
        }
        e.single(
            "drover_watch_streams",
            Kind::Gauge,
            "Watch streams open.",
            self.watches_open() as f64,
        );
    }
}

/// One open watch stream of a client; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchSlot {
    guards: Arc<Guards>,
    ip: IpAddr,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.guards.watches.lock();
        if let Some(n) = watches.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                watches.remove(&self.ip);
            }
        }
    }
}

/// Turns tonic's OUT_OF_RANGE answer to an oversized request message into
/// RESOURCE_EXHAUSTED naming `--max-message-bytes`.
#[derive(Debug, Clone)]
pub struct MessageSizeLayer {
    limit: usize,
    guards: Arc<Guards>,
}

impl MessageSizeLayer {
    /// The layer for a master whose limit is `limit` bytes.
    pub fn new(limit: usize, guards: Arc<Guards>) -> Self {
        MessageSizeLayer { limit, guards }
    }
}

impl<S> tower::Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`MessageSizeLayer`].
#[derive(Debug, Clone)]
pub struct MessageSize<S> {
    inner: S,
    layer: MessageSizeLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for MessageSize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut response = fut.await?;
            rewrite_oversize(response.headers_mut(), &layer);
            Ok(response)
        })
    }
}

/// The words of tonic's error for a message over the decoding limit.
const TOO_LARGE: &str = "decoded message length too large";

fn rewrite_oversize(headers: &mut http::HeaderMap, layer: &MessageSizeLayer) {
    // OUT_OF_RANGE is 11; tonic sends an early error in the headers.
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if !status.message().contains(TOO_LARGE) {
        return;
    }
    // "... found {len} bytes, the limit is ..."
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?");
    layer.guards.refused(Refusal::MessageSize);
    let refused = Status::resource_exhausted(format!(
        "the request message has {found} bytes, over the limit of {} bytes \
         (master flag --max-message-bytes)",
        layer.limit
    ));
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    let _ = refused.add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_slots_are_counted_per_address_and_given_back() {
        let guards = Arc::new(Guards::new(10, 2));
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let a2: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let s1 = guards.watch_slot(Some(a)).unwrap();
        let _s2 = guards.watch_slot(Some(a2)).unwrap();
        let e = guards.watch_slot(Some(a)).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)));
        assert!(e.to_string().contains("--max-watches-per-client"), "{e}");
        let _s3 = guards.watch_slot(Some(b)).unwrap();
        assert_eq!(guards.watches_open(), 3);
        drop(s1);
        let _s4 = guards.watch_slot(Some(a)).unwrap();
    }

    #[test]
    fn the_queue_limit_names_its_flag() {
        let guards = Guards::new(10, 2);
        assert!(guards.check_queue_room(5, 5).is_ok());
        let e = guards.check_queue_room(5, 6).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)));
        assert!(e.to_string().contains("--max-queued"), "{e}");
    }

    #[test]
    fn oversize_answers_become_resource_exhausted() {
        let layer = MessageSizeLayer::new(100, Arc::new(Guards::new(1, 1)));
        let mut headers = http::HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 150 bytes, the limit is: 100 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite_oversize(&mut headers, &layer);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("150 bytes"), "{status:?}");
        assert!(
            status.message().contains("--max-message-bytes"),
            "{status:?}"
        );
        // Other answers pass unchanged.
        let mut headers = http::HeaderMap::new();
        Status::out_of_range("other")
            .add_header(&mut headers)
            .unwrap();
        rewrite_oversize(&mut headers, &layer);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
    }
}
