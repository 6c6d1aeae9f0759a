//! The worker's session with the master: one `Workers.Connect` stream at a
//! time, opened again with backoff whenever it ends.
//!
//! Given several masters (`--master a,b,c`: the masters of one database,
//! one of them the leader), a session that ends or cannot open (refused,
//! a standby's UNAVAILABLE, a master gone) is opened on the next master at
//! once, wrapping around; the backoff is waited after each full round
//! (at most `STANDBY_RETRY`, 100 ms, when a standby answered in it, for
//! the first `STANDBY_PATIENCE`, 10 s: a leader is elected within a
//! lease). A session a master welcomed starts a new round.
//! The engine sends its unacknowledged results on whichever session opens,
//! as on any new session.
//!
//! The session task only moves messages: what it receives goes to the
//! engine as [`SessionEvent`]s, and the engine sends through the
//! [`Outbox`] it is handed on each connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drover_common::net::{self, ClientOptions};
use drover_common::pb::workers_client::WorkersClient;
use drover_common::pb::{self, master_message, worker_message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;

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

/// The masters a worker may work for, in the order given, and the one its
/// session is with; shared by the session and the jobs' Coord proxy, which
/// follows it.
#[derive(Debug, Clone)]
pub struct Masters {
    /// Their URLs (`https://` for TLS); never empty.
    urls: Arc<[String]>,
    /// The index in `urls` of the master that last welcomed a session (the
    /// first one until then).
    current: Arc<AtomicUsize>,
}

impl Masters {
    /// The masters at `urls`, in that order.
    ///
    /// # Panics
    ///
    /// When `urls` is empty: the flag's parser refuses that.
    pub fn new(urls: Vec<String>) -> Masters {
        assert!(!urls.is_empty(), "a worker needs a master");
        Masters {
            urls: urls.into(),
            current: Arc::default(),
        }
    }

    /// Their URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The index of the master that last welcomed a session.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The URL of the master that last welcomed a session.
    pub fn current_url(&self) -> &str {
        &self.urls[self.current()]
    }

    /// Notes that the master `i` in the list welcomed a session.
    pub(crate) fn welcomed_by(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }
}

/// How to reach the masters.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Who they are, and which one the session is with.
    pub masters: Masters,
    /// The CA, client certificate and token to connect with (to every
    /// master alike).
    pub options: ClientOptions,
}

/// Keeps a session open until `stop` is cancelled. Once `closing` is
/// cancelled (the worker has drained and closed its half of the stream),
/// the end of the session is expected and no new one is opened. Every
/// message each way is shown to `metrics`.
pub async fn maintain(
    dial: Dial,
    hello: pb::Hello,
    events: mpsc::UnboundedSender<SessionEvent>,
    stop: CancellationToken,
    closing: CancellationToken,
    metrics: Arc<WorkerMetrics>,
) {
    let masters = dial.masters.urls().len();
    let mut backoff = Duration::from_millis(100);
    // The master tried next: the one the session was last with (the first
    // at start), then on around the list.
    let mut next = dial.masters.current();
    // The masters tried since the last backoff, and whether a standby
    // answered one of them.
    let mut tried = 0;
    let mut standby_seen = false;
    // Since when the rounds have met standbys and no leader.
    let mut standby_since: Option<tokio::time::Instant> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let at = next;
        let url = dial.masters.urls()[at].as_str();
        let connected_at = tokio::time::Instant::now();
        let Ended {
            reason,
            standby,
            welcomed,
        } = tokio::select! {
            r = one_session(&dial, at, &hello, &events, &metrics) => r,
            _ = stop.cancelled() => return,
        };
        standby_seen |= standby;
        metrics.connected(false);
        if closing.is_cancelled() {
            tracing::info!(master = %url, "session closed after draining");
            let _ = events.send(SessionEvent::Disconnected { reason });
            return;
        }
        tracing::warn!(master = %url, %reason, "session with the master ended");
        let _ = events.send(SessionEvent::Disconnected { reason });
        // A session that lived a while resets the backoff and starts a new
        // round: the master was there, so it is worth trying again soon.
        if connected_at.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        // A master that welcomed the session was there: the round starts
        // again with the next one, at once (the master killed under a
        // session of a second is replaced by a standby now leading).
        if welcomed {
            tried = 0;
            standby_since = None;
        }
        next = (at + 1) % masters;
        tried += 1;
        if tried < masters {
            // Another master may lead now: it is tried at once.
            continue;
        }
        tried = 0;
        // A standby answered: a leader is elected within a lease, so the
        // round is tried again soon, however long the backoff has grown;
        // but not for ever (the database may be down), only for the
        // first STANDBY_PATIENCE of it.
        let soon = std::mem::take(&mut standby_seen)
            && standby_since
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                < STANDBY_PATIENCE;
        let wait = match soon {
            true => backoff.min(STANDBY_RETRY),
            false => backoff,
        };
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (wait.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(wait + jitter) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The longest wait between rounds while a standby answers: what a
/// failover costs a worker beyond the election.
const STANDBY_RETRY: Duration = Duration::from_millis(100);

/// How long rounds that meet standbys and no leader are tried again every
/// [`STANDBY_RETRY`]: longer than an election takes with any sensible
/// lease; after it, the backoff's own waits (a database down for minutes
/// is not asked ten times a second by every worker).
const STANDBY_PATIENCE: Duration = Duration::from_secs(10);

/// How a session ended.
struct Ended {
    /// Why, for the log and the engine.
    reason: String,
    /// The master was a standby (it said so: [`net::from_standby`]).
    standby: bool,
    /// The master welcomed the session before it ended.
    welcomed: bool,
}

impl From<String> for Ended {
    fn from(reason: String) -> Ended {
        Ended {
            reason,
            standby: false,
            welcomed: false,
        }
    }
}

impl From<&str> for Ended {
    fn from(reason: &str) -> Ended {
        reason.to_string().into()
    }
}

/// Why the master refused a session, for the log: an auth refusal says
/// which flag to look at.
fn refused(status: &tonic::Status) -> Ended {
    let reason = match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => format!(
            "master refused the session ({:?}): {} (check this worker's --token and TLS flags)",
            status.code(),
            status.message()
        ),
        _ => format!("master refused the session: {}", status.message()),
    };
    Ended {
        reason,
        standby: net::from_standby(status),
        welcomed: false,
    }
}

/// Opens a session with the master `at` in the list and runs it until it
/// ends; returns why it ended.
async fn one_session(
    dial: &Dial,
    at: usize,
    hello: &pb::Hello,
    events: &mpsc::UnboundedSender<SessionEvent>,
    metrics: &Arc<WorkerMetrics>,
) -> Ended {
    let url = dial.masters.urls()[at].as_str();
    let channel = match net::connect_with(url, &dial.options).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut client = WorkersClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(pb::WorkerMessage {
        msg: Some(worker_message::Msg::Hello(hello.clone())),
    });
    let tap = metrics.clone();
    let outgoing = UnboundedReceiverStream::new(rx).map(move |m| {
        tap.outgoing(&m);
        m
    });
    let mut inbound = match client.connect(outgoing).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(&status),
    };
    let welcome = match inbound.message().await {
        Ok(Some(pb::MasterMessage {
            msg: Some(master_message::Msg::Welcome(w)),
        })) => w,
        Ok(_) => return "master sent no welcome".into(),
        Err(status) => return refused(&status),
    };
    metrics.connected(true);
    dial.masters.welcomed_by(at);
    tracing::info!(master = %url, worker_id = %welcome.worker_id, "connected to the master");
    // The engine holds the only sender from here on: when it drops it (at
    // the end of a drain) our half of the stream closes cleanly.
    let _ = events.send(SessionEvent::Connected {
        outbox: tx,
        worker_id: welcome.worker_id.clone(),
        heartbeat: Duration::from_millis(welcome.heartbeat_ms.max(10)),
    });
    let reason = loop {
        match inbound.message().await {
            Ok(Some(pb::MasterMessage { msg: Some(m) })) => {
                metrics.incoming(&m);
                let _ = events.send(SessionEvent::Message(m));
            }
            Ok(Some(_)) => {}
            Ok(None) => break "master closed the stream".to_string(),
            Err(status) => break format!("stream error: {}", status.message()),
        }
    };
    Ended {
        reason,
        standby: false,
        welcomed: true,
    }
}
