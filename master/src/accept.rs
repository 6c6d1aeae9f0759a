//! Accepting connections. With TLS, each new connection's first byte says
//! what the client speaks: a TLS handshake goes on to the gRPC server, and
//! a plain-text HTTP/2 client (an `http://` URL pointed at a TLS master)
//! gets a gRPC answer of its own, UNAVAILABLE with a message saying to
//! dial `https://`, instead of a broken pipe it cannot explain.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a new connection may stay silent before it is dropped.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a plain-text client is told.
const PLAINTEXT_REFUSAL: &str =
    "this master speaks TLS: dial it with an https:// URL and --ca (the CA of its certificate)";

/// The connections of `listener` for the gRPC server, until `shutdown`.
/// With `tls`, only those that begin a TLS handshake are passed on.
pub fn incoming(
    listener: TcpListener,
    tls: bool,
    shutdown: CancellationToken,
) -> impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            if !tls {
                if tx.send(Ok(stream)).await.is_err() {
                    return;
                }
                continue;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                let peeked =
                    tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await;
                match peeked {
                    Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Ok(1)) if first[0] == b'P' => refuse_plaintext(stream).await,
                    // Silent, closed, or something else: drop it.
                    _ => {}
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Answers every call of a plain-text HTTP/2 client with UNAVAILABLE.
async fn refuse_plaintext(stream: TcpStream) {
    let service = hyper::service::service_fn(|_request| async {
        let mut response = http::Response::new(http_body_util::Empty::<Bytes>::new());
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        let _ = tonic::Status::unavailable(PLAINTEXT_REFUSAL).add_header(headers);
        Ok::<_, Infallible>(response)
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(16)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    // A client that keeps the connection open is let go after a while.
    let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
}
