//! The gRPC services: `Queue` for clients and `Workers` for worker sessions.
//!
//! Each handler locks the [`State`], changes it, releases the lock, and only
//! then sends what the change produced: no lock is held across an await.

//!
//! - `queue`: the `Queue` service (clients), with paged and byte-bounded
//!   replies.
//! - `workers`: the `Workers` service (one stream per worker session).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_common::ids::{BatchId, JobId};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::Config;
use crate::committer::{self, CommitState};
use crate::limits::Guards;
use crate::state::{Outgoing, State};
use crate::store::Store;

mod queue;
mod workers;

/// The master's services, sharing one queue.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    config: Config,
    /// Ends every long-lived stream when the master shuts down.
    shutdown: CancellationToken,
    /// What the committer has written; `None` with a store that keeps nothing.
    committed: Option<watch::Receiver<CommitState>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every task the master spawns (sessions, watches, timers, wake-ups),
    /// waited for on shutdown.
    tasks: TaskTracker,
    /// The queue and watch limits, and what was refused.
    guards: Arc<Guards>,
}

impl Master {
    /// Creates the services over what `store` holds, recovering its jobs,
    /// and starts the committer if the store is durable.
    pub fn open(
        config: Config,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let durable = store.is_durable();
        let mut state = State::new(crate::state::Settings {
            limits: config.limits,
            default_max_attempts: config.default_max_attempts,
            retry: config.retry,
            retention_ms: config.retention.as_millis() as u64,
            durable,
        });
        if durable {
            // Finished work leaves memory and is read back from the store.
            state.set_archive(store.clone());
        } else {
            state.set_keep_finished(config.keep_finished);
        }
        if let Some(bytes) = config.retention_bytes {
            state.set_retention_bytes(bytes, store.budget_purged_upto_ms()?);
        }
        let started = std::time::Instant::now();
        let mut report = crate::state::RecoveryReport::default();
        let created_at = store.load(&mut |item| state.recover_item(item, &mut report))?;
        state.set_created_at(created_at);
        state.set_next_seq(store.next_seq()?);
        let _ = state.committed(0, store.closed_counts()?);
        state.finish_recovery(&mut report);
        if report.queued + report.requeued + report.finished > 0 {
            tracing::info!(
                queued = report.queued,
                requeued = report.requeued,
                finished = report.finished,
                batches = report.batches,
                ms = started.elapsed().as_millis() as u64,
                "recovered the queue"
            );
        }
        let (kick_tx, kick_rx) = std::sync::mpsc::channel();
        state.set_kick(kick_tx);
        let state = Arc::new(Mutex::new(state));
        let (committed, committer) = if durable {
            let (tx, rx) = watch::channel(CommitState::default());
            let handle = committer::start(state.clone(), store, kick_rx, tx, shutdown.clone());
            // Recovery may have changed jobs (running ones queued again).
            state.lock().nudge();
            (Some(rx), Some(handle))
        } else {
            (None, None)
        };
        let guards = Arc::new(Guards::new(
            config.max_queued,
            config.max_watches_per_client,
        ));
        Ok(Master {
            inner: Arc::new(Inner {
                guards,
                state,
                config,
                shutdown,
                committed,
                committer: Mutex::new(committer),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Why the store failed, if a commit did: the master then stops, and
    /// nothing after that commit was acknowledged.
    pub fn store_failure(&self) -> Option<Arc<str>> {
        self.inner
            .committed
            .as_ref()
            .and_then(|rx| rx.borrow().failed.clone())
    }

    /// Waits for the committer to write what is left (after shutdown).
    pub fn join_committer(&self) {
        if let Some(handle) = self.inner.committer.lock().take() {
            let _ = handle.join();
        }
    }

    /// The queue (for the metrics).
    pub(crate) fn state(&self) -> &Mutex<State> {
        &self.inner.state
    }

    /// What the master was started with (with its epoch once elected).
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The queue and watch limits, and what was refused.
    pub fn guards(&self) -> &Arc<Guards> {
        &self.inner.guards
    }

    /// The tasks the master spawned, to wait for on shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Acts on what a change produced, once the lock is released: queues
    /// each message on its session's stream (which holds it back until its
    /// commit is done) and wakes the batches' waiters, at once or, with a
    /// durable store, once the commit is done.
    fn send(&self, out: Outgoing) {
        for (outbox, msg) in out.messages {
            // A closed outbox means the session is ending; its jobs are
            // handled when it ends.
            let _ = outbox.send((out.ticket, msg));
        }
        if out.notify.is_empty() {
            return;
        }
        match (out.ticket, &self.inner.committed) {
            (Some(ticket), Some(committed)) => {
                let mut committed = committed.clone();
                let notify = out.notify;
                self.inner.tasks.spawn(async move {
                    if committer::wait_for(&mut committed, ticket).await.is_ok() {
                        for n in notify {
                            n.send_modify(|v| *v += 1);
                        }
                    }
                });
            }
            _ => {
                for n in out.notify {
                    n.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// Runs a read-only `query` on the state and waits until what it saw
    /// is committed, as `Get` and `ListJobs` do: the dashboard's reads that
    /// the `Queue` service has no call for (state/dashboard_queries.rs).
    pub(crate) async fn read<T>(&self, query: impl FnOnce(&State) -> T) -> Result<T, Status> {
        let (value, ticket) = {
            let st = self.inner.state.lock();
            (query(&st), st.ticket())
        };
        self.settle(ticket).await?;
        Ok(value)
    }

    /// Waits until a change is durable.
    async fn settle(&self, ticket: Option<u64>) -> Result<(), Status> {
        match (ticket, &self.inner.committed) {
            (Some(t), Some(rx)) => Ok(committer::wait_for(&mut rx.clone(), t).await?),
            _ => Ok(()),
        }
    }

    /// Runs the timers until shutdown: ends the sessions of workers not
    /// heard from within the lease (their jobs go back to the queue),
    /// releases retried jobs whose backoff is over, and purges jobs past
    /// the retention period.
    pub async fn run_timers(self) {
        let lease = self.inner.config.lease;
        let retention = self.inner.config.retention;
        let purge_every =
            (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut last_reap = Instant::now();
        let mut last_purge = Instant::now();
        let archive = self.inner.state.lock().archive().cloned();
        let budget = self.inner.config.retention_bytes;
        let mut last_budget = Instant::now();
        // The commit that deletes the closed batches last purged: the store
        // is not asked again before it is written.
        let mut purging: Option<u64> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            let purge_now = last_purge.elapsed() >= purge_every;
            let committed = self
                .inner
                .committed
                .as_ref()
                .map_or(0, |c| c.borrow().committed);
            // Closed batches past retention, read from the store's index
            // outside the lock.
            let expired = match &archive {
                Some(store) if purge_now && purging.is_none_or(|t| committed >= t) => {
                    let cutoff =
                        crate::store::now_ms().saturating_sub(retention.as_millis() as u64);
                    store.closed_before(cutoff, 10_000).unwrap_or_else(|e| {
                        tracing::warn!(error = %format!("{e:#}"), "reading expired batches failed");
                        Vec::new()
                    })
                }
                _ => Vec::new(),
            };
            // Over the byte budget: the oldest closed batches, enough to
            // bring it under, once a second.
            let over_budget = match (&archive, budget) {
                (Some(store), Some(budget))
                    if expired.is_empty()
                        && last_budget.elapsed() >= Duration::from_secs(1)
                        && purging.is_none_or(|t| committed >= t) =>
                {
                    last_budget = Instant::now();
                    let over = |store: &Arc<dyn crate::store::Store>| {
                        let held = store.closed_bytes()?;
                        if held <= budget {
                            return Ok(Vec::new());
                        }
                        store.oldest_closed(held - budget, 10_000)
                    };
                    over(store).unwrap_or_else(|e: anyhow::Error| {
                        tracing::warn!(error = %format!("{e:#}"), "reading the closed batches over --retention-bytes failed");
                        Vec::new()
                    })
                }
                _ => Vec::new(),
            };
            let mut st = self.inner.state.lock();
            if !expired.is_empty() {
                purging = st.purge_closed(&expired, false);
                tracing::info!(
                    batches = expired.len(),
                    "purging closed batches past the retention period"
                );
            }
            if !over_budget.is_empty() {
                purging = st.purge_closed(&over_budget, true);
                tracing::info!(
                    batches = over_budget.len(),
                    "purging the oldest closed batches over --retention-bytes"
                );
            }
            let evicted = st.evict_over_bound();
            if evicted > 0 {
                tracing::debug!(
                    jobs = evicted,
                    "evicted finished jobs over --keep-finished or --retention-bytes"
                );
            }
            let out = st.promote_due();
            if last_reap.elapsed() >= (lease / 4).max(Duration::from_millis(50)) {
                last_reap = Instant::now();
                for sid in st.expired_sessions(lease) {
                    tracing::warn!(
                        session = sid.get(),
                        lease_ms = lease.as_millis() as u64,
                        "lease expired"
                    );
                    let (_, out) = st.end_session(sid, "lease expired");
                    self.send(out);
                }
            }
            if purge_now {
                last_purge = Instant::now();
                let n = st.purge_expired();
                if n > 0 {
                    tracing::info!(jobs = n, "purged finished jobs past the retention period");
                }
            }
            drop(st);
            self.send(out);
        }
    }

    /// The error for job `id` named by a listing (a batch's jobs) but held
    /// neither in memory nor in the store: its record went with its own
    /// batch (purged, expired or evicted) while the batch listed kept it
    /// (it named the job again by idempotency key), or the listing's own
    /// batch went while it was being read. NOT_FOUND, saying why
    /// the job is gone, so a reader is not handed a short listing as whole.
    fn job_gone(&self, id: JobId) -> Status {
        let why = Status::from(self.inner.state.lock().job_not_found(id));
        Status::not_found(format!(
            "a job of this listing is no longer kept (its own batch went: one that named it again by idempotency key outlived it, or it went while being read): {}",
            why.message()
        ))
    }

    fn batches_of(&self, ids: &[JobId]) -> Vec<tokio::sync::watch::Receiver<u64>> {
        let st = self.inner.state.lock();
        let batches: HashSet<BatchId> = ids
            .iter()
            .filter_map(|id| st.job(id).map(|j| j.batch))
            .collect();
        batches.iter().filter_map(|b| st.subscribe(b)).collect()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
