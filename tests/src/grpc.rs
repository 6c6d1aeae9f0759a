//! Direct gRPC calls to the master, for what the CLI does not expose (a
//! malformed request) and for dense polling (`Stats` without starting a
//! process each time).
//!
//! The tests are plain synchronous `#[test]`s; one multi-threaded tokio
//! runtime, shared by every test of the process, drives the connections
//! while a test thread blocks on a call with [`block_on`].

use std::future::Future;
use std::sync::OnceLock;

use drover_common::pb::coord_client::CoordClient;
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{StatsRequest, StatsResponse};
use tonic::transport::Channel;

/// The runtime shared by the tests of this process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime")
    })
}

/// Runs `fut` to completion on the shared runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

/// Starts `fut` on the shared runtime, for work that goes on while the test
/// thread does something else (a `Watch` stream being read).
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(fut)
}

/// A `Queue` client for the master at `url`, on a new connection, that
/// accepts results as large as F(10^7).
///
/// # Panics
///
/// When the master cannot be reached.
pub fn queue_client(url: &str) -> QueueClient<Channel> {
    let channel = block_on(drover_common::net::connect(url)).unwrap_or_else(|e| panic!("{e}"));
    QueueClient::new(channel)
        .max_decoding_message_size(drover_common::net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(drover_common::net::MAX_MESSAGE_BYTES)
}

/// A `Coord` client for the master at `url`, on a new connection.
///
/// # Panics
///
/// When the master cannot be reached.
pub fn coord_client(url: &str) -> CoordClient<Channel> {
    let channel = block_on(drover_common::net::connect(url)).unwrap_or_else(|e| panic!("{e}"));
    CoordClient::new(channel)
}

/// The master's stats.
///
/// # Panics
///
/// When the call fails.
pub fn stats(url: &str) -> StatsResponse {
    // One connection per thread and master: polling opens no new one.
    thread_local! {
        static CLIENTS: std::cell::RefCell<Vec<(String, QueueClient<Channel>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut client = CLIENTS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, client)) = c.iter().find(|(u, _)| u == url) {
            return client.clone();
        }
        let client = queue_client(url);
        c.push((url.to_string(), client.clone()));
        client
    });
    block_on(client.stats(StatsRequest {}))
        .unwrap_or_else(|e| panic!("Stats on {url} failed: {e}"))
        .into_inner()
}

/// A job spec of `kind` with argument `arg` and default options.
pub fn job(kind: drover_common::pb::JobKind, arg: impl ToString) -> drover_common::pb::JobSpec {
    drover_common::pb::JobSpec {
        kind: kind as i32,
        arg: arg.to_string(),
        ..Default::default()
    }
}
