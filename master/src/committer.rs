//! The group committer: one thread that writes every change made since its
//! last commit in one durable transaction, then says which commit is done.
//!
//! A change made under the state's lock gets a ticket, the number of the
//! commit that will hold it. Replies to clients and messages to workers
//! wait for their ticket, so nobody is told of a change a crash could undo;
//! many requests share each fsync, so durability costs little throughput.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use drover_common::Error;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::State;
use crate::store::Store;

/// What the committer has done.
#[derive(Debug, Clone, Default)]
pub struct CommitState {
    /// The number of the last commit written.
    pub committed: u64,
    /// Set when a write failed: nothing after it is ever acknowledged.
    pub failed: Option<Arc<str>>,
}

/// Waits until the commit numbered `ticket` is written.
pub async fn wait_for(rx: &mut watch::Receiver<CommitState>, ticket: u64) -> Result<(), Error> {
    let state = rx
        .wait_for(|s| s.committed >= ticket || s.failed.is_some())
        .await
        .map_err(|_| Error::Unavailable("the master is shutting down".into()))?;
    if state.committed >= ticket {
        Ok(())
    } else {
        // Unavailable: this master stops, and the change was not saved, so
        // a client may send it again, to this master restarted or to
        // another (a standby taking over).
        Err(Error::Unavailable(format!(
            "the store failed, so the change was not saved and this master is stopping: {}",
            state.failed.as_deref().unwrap_or("unknown error")
        )))
    }
}

/// Starts the committer thread. It stops after `shutdown`, once it has
/// written what was left; if a write fails it records the failure and
/// cancels `shutdown`, since a master that cannot save must not go on.
pub fn start(
    state: Arc<Mutex<State>>,
    store: Arc<dyn Store>,
    kicks: Receiver<()>,
    done: watch::Sender<CommitState>,
    shutdown: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("drover-committer".into())
        .spawn(move || {
            loop {
                let stopping = match kicks.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) => false,
                    Err(RecvTimeoutError::Timeout) => shutdown.is_cancelled(),
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                while kicks.try_recv().is_ok() {}
                let taking = std::time::Instant::now();
                let taken = state.lock().take_changes();
                if let Some((number, changes)) = taken {
                    let started = std::time::Instant::now();
                    let take_us = (started - taking).as_micros() as u64;
                    let jobs = changes.jobs.len();
                    let result = if changes.is_empty() {
                        Ok(())
                    } else {
                        store.write(changes)
                    };
                    match result {
                        Ok(()) => {
                            let us = started.elapsed().as_micros() as u64;
                            done.send_modify(|s| s.committed = number);
                            // What this commit closed leaves memory now.
                            let evicting = std::time::Instant::now();
                            match store.closed_counts() {
                                Ok(counts) => {
                                    let evicted = state.lock().committed(number, counts);
                                    // Freed after the lock is let go.
                                    drop(evicted);
                                }
                                Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading the closed counts failed"),
                            }
                            // Under the lock: taking the changes, and taking
                            // out what the commit closed (bench/README.md).
                            let evict_us = evicting.elapsed().as_micros() as u64;
                            tracing::trace!(number, jobs, take_us, us, evict_us, "committed");
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "store write failed; stopping the master");
                            done.send_modify(|s| s.failed = Some(Arc::from(format!("{e:#}"))));
                            shutdown.cancel();
                            return;
                        }
                    }
                }
                if stopping {
                    return;
                }
            }
        })
        .expect("the committer thread starts")
}
