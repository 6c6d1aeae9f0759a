//! The worker's session with the master: one `Workers.Connect` stream at a
//! time, opened again with backoff whenever it ends.
//!
//! The session task only moves messages: what it receives goes to the
//! engine as [`SessionEvent`]s, and the engine sends through the
//! [`Outbox`] it is handed on each connect.

use std::time::Duration;

use drover_common::net;
use drover_common::pb::workers_client::WorkersClient;
use drover_common::pb::{self, master_message, worker_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

/// Where the engine sends messages for the current session.
pub type Outbox = mpsc::UnboundedSender<pb::WorkerMessage>;

/// What the session reports to the engine.
#[derive(Debug)]
pub enum SessionEvent {
    /// A new session is open.
    Connected {
        /// Sends on this session.
        outbox: Outbox,
        /// The master's name for this session.
        worker_id: String,
        /// How often to send a heartbeat.
        heartbeat: Duration,
    },
    /// A message from the master.
    Message(master_message::Msg),
    /// The session ended; a new one is being opened.
    Disconnected {
        /// Why, for the log.
        reason: String,
    },
}

/// Keeps a session open until `stop` is cancelled. Once `closing` is
/// cancelled (the worker has drained and closed its half of the stream),
/// the end of the session is expected and no new one is opened.
pub async fn maintain(
    url: String,
    hello: pb::Hello,
    events: mpsc::UnboundedSender<SessionEvent>,
    stop: CancellationToken,
    closing: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let connected_at = tokio::time::Instant::now();
        let reason = tokio::select! {
            r = one_session(&url, &hello, &events) => r,
            _ = stop.cancelled() => return,
        };
        if closing.is_cancelled() {
            tracing::info!(master = %url, "session closed after draining");
            let _ = events.send(SessionEvent::Disconnected { reason });
            return;
        }
        tracing::warn!(master = %url, %reason, "session with the master ended");
        let _ = events.send(SessionEvent::Disconnected { reason });
        // A session that lived a while resets the backoff: the master was
        // there, so it is worth trying again soon.
        if connected_at.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn one_session(
    url: &str,
    hello: &pb::Hello,
    events: &mpsc::UnboundedSender<SessionEvent>,
) -> String {
    let channel = match net::connect(url).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut client = WorkersClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(pb::WorkerMessage {
        msg: Some(worker_message::Msg::Hello(hello.clone())),
    });
    let mut inbound = match client.connect(UnboundedReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return format!("master refused the session: {}", status.message()),
    };
    let welcome = match inbound.message().await {
        Ok(Some(pb::MasterMessage {
            msg: Some(master_message::Msg::Welcome(w)),
        })) => w,
        Ok(_) => return "master sent no welcome".into(),
        Err(status) => return format!("master refused the session: {}", status.message()),
    };
    tracing::info!(master = %url, worker_id = %welcome.worker_id, "connected to the master");
    // The engine holds the only sender from here on: when it drops it (at
    // the end of a drain) our half of the stream closes cleanly.
    let _ = events.send(SessionEvent::Connected {
        outbox: tx,
        worker_id: welcome.worker_id.clone(),
        heartbeat: Duration::from_millis(welcome.heartbeat_ms.max(10)),
    });
    loop {
        match inbound.message().await {
            Ok(Some(pb::MasterMessage { msg: Some(m) })) => {
                let _ = events.send(SessionEvent::Message(m));
            }
            Ok(Some(_)) => {}
            Ok(None) => return "master closed the stream".into(),
            Err(status) => return format!("stream error: {}", status.message()),
        }
    }
}
