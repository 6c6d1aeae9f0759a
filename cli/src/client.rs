//! The client side of the `Queue` service: submitting, waiting, watching,
//! cancelling. The commands and the demo share it.
//!
//! Every call is sent to the master the command talks to now, and goes on
//! to the next of several masters as [`crate::masters`] describes. Submits
//! (named by a request id), reads of results and watches are also made
//! again, with backoff, while no master answers, for up to
//! [`RECONNECT_FOR`]: a restart or a failover does not end the command.

use std::time::Duration;

use drover_common::net::{AuthChannel, ClientOptions};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{self, JobState};
use drover_common::{net, util};
use futures::StreamExt;

use crate::masters::{Masters, Resend, transient};

/// How long a command keeps trying to reach a master that went away (a
/// restart, a failover) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Moves a call that failed because its master went away to the next
/// master, backs off after each full round of them, and says when to give
/// up: after [`RECONNECT_FOR`] without progress.
struct Reconnect {
    delay: Duration,
    since: Option<tokio::time::Instant>,
    /// The masters tried since the last backoff.
    tried: usize,
}

impl Reconnect {
    fn new() -> Reconnect {
        Reconnect {
            delay: Duration::from_millis(100),
            since: None,
            tried: 0,
        }
    }

    /// Moves on from the master `at`, whose call failed with `status`, and
    /// waits before the next try when every master has been tried; or
    /// returns `status` as the error when it is not transient or no master
    /// answered for too long.
    async fn after(
        &mut self,
        masters: &Masters,
        at: usize,
        status: tonic::Status,
    ) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        if !transient(&status) || since.elapsed() > RECONNECT_FOR {
            return Err(status_error(status));
        }
        let next = masters.move_on(at);
        self.tried += 1;
        if self.tried < masters.len() {
            // Said in the first round only: a long wait is said once.
            if self.delay == Duration::from_millis(100) {
                eprintln!(
                    "drover: the master at {} is unavailable ({}); trying {}",
                    masters.url(at),
                    status.message(),
                    masters.url(next)
                );
            }
            return Ok(());
        }
        self.tried = 0;
        if self.delay == Duration::from_millis(100) {
            eprintln!(
                "drover: lost the master ({}); reconnecting",
                status.message()
            );
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        Ok(())
    }

    /// Notes progress: the next loss starts a fresh wait.
    fn reset(&mut self) {
        self.delay = Duration::from_millis(100);
        self.since = None;
        self.tried = 0;
    }
}

/// A connected client.
#[derive(Clone)]
pub(crate) struct Client {
    masters: Masters,
}

/// Options shared by every job of a submit.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobOptions {
    pub(crate) priority: i32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) limits: Vec<pb::JobLimit>,
}

/// Turns a gRPC status into a one-line error for a person.
pub(crate) fn status_error(s: tonic::Status) -> anyhow::Error {
    let code = match s.code() {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::ResourceExhausted => "limit reached",
        tonic::Code::Unavailable => "master unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::FailedPrecondition => "failed precondition",
        _ => "error",
    };
    anyhow::anyhow!("{code}: {}", s.message())
}

/// A `Queue` client on `channel` that sends and accepts the largest
/// messages drover allows.
fn queue(channel: AuthChannel) -> QueueClient<AuthChannel> {
    QueueClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES)
}

impl Client {
    /// Connects to the first of the masters at `urls` that accepts a
    /// connection, with the TLS and token `options` ask for.
    pub(crate) async fn connect(
        urls: &[String],
        options: &ClientOptions,
    ) -> anyhow::Result<Client> {
        Ok(Client {
            masters: Masters::connect(urls, options).await?,
        })
    }

    /// The master calls go to now (its index among the masters), and a
    /// `Queue` client for it.
    fn queue(&self) -> (usize, QueueClient<AuthChannel>) {
        let (at, channel) = self.masters.current();
        (at, queue(channel))
    }

    /// Submits one batch of jobs of one kind.
    ///
    /// `first` is the position of `args[0]` among all the jobs of the
    /// command, which may submit them in several batches: each job's
    /// idempotency key is derived from its position in the whole command,
    /// so that a key names one job however the command is split.
    pub(crate) async fn submit(
        &self,
        kind: pb::JobKind,
        args: Vec<String>,
        first: usize,
        opts: &JobOptions,
    ) -> anyhow::Result<pb::SubmitResponse> {
        let timeout_ms = opts.timeout.map_or(0, |d| d.as_millis().max(1) as u64);
        let jobs = args
            .into_iter()
            .enumerate()
            .map(|(i, arg)| pb::JobSpec {
                kind: kind as i32,
                arg,
                priority: opts.priority,
                timeout_ms,
                max_attempts: opts.max_attempts,
                idempotency_key: opts
                    .idempotency_key
                    .as_deref()
                    .map_or_else(String::new, |k| job_key(k, first + i)),
                limits: opts.limits.clone(),
            })
            .collect();
        // Named once, so that a submit sent again after a broken
        // connection, a master restart or to the next master gets the batch
        // the first one made.
        let req = pb::SubmitRequest {
            jobs,
            request_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        };
        let mut reconnect = Reconnect::new();
        loop {
            let (at, mut queue) = self.queue();
            match queue.submit(req.clone()).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => reconnect.after(&self.masters, at, status).await?,
            }
        }
    }

    /// Reads jobs (an id or a batch id), waiting if asked.
    pub(crate) async fn get(
        &self,
        ids: Vec<String>,
        batch: Option<String>,
        wait: bool,
        timeout: Option<Duration>,
    ) -> anyhow::Result<pb::GetResponse> {
        let mut req = pb::GetRequest {
            job_ids: ids,
            batch_id: batch.unwrap_or_default(),
            wait,
            timeout_ms: timeout.map_or(0, |d| d.as_millis().max(1) as u64),
            page_token: String::new(),
        };
        // Every page, in order: the master bounds each reply in bytes.
        let mut whole = pb::GetResponse::default();
        let mut reconnect = Reconnect::new();
        loop {
            let (at, mut queue) = self.queue();
            let page = match queue.get(req.clone()).await {
                Ok(page) => page.into_inner(),
                // A read is safe to make again.
                Err(status) => {
                    reconnect.after(&self.masters, at, status).await?;
                    continue;
                }
            };
            reconnect.reset();
            whole.jobs.extend(page.jobs);
            whole.complete = page.complete;
            if page.next_page_token.is_empty() {
                return Ok(whole);
            }
            // The first page waited; the rest are read as they are.
            req.wait = false;
            req.page_token = page.next_page_token;
        }
    }

    /// Streams a batch's results; `on_jobs` sees each message's jobs with
    /// the batch's done and total counts.
    pub(crate) async fn watch(
        &self,
        batch: &str,
        ordered: bool,
        mut on_jobs: impl FnMut(&[pb::JobInfo], u32, u32),
    ) -> anyhow::Result<()> {
        // What was received, so that a watch cut by a master restart
        // resumes where it was: nothing repeated, nothing skipped.
        let mut next = 0u32;
        let mut received: Vec<u8> = Vec::new();
        let mut count = 0u32;
        let mut total = None;
        let mut reconnect = Reconnect::new();
        loop {
            let req = pb::WatchRequest {
                batch_id: batch.to_string(),
                ordered,
                resume_from: next,
                received: if ordered {
                    Vec::new()
                } else {
                    received.clone()
                },
            };
            let (at, mut queue) = self.queue();
            let mut stream = match queue.watch(req).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    reconnect.after(&self.masters, at, status).await?;
                    continue;
                }
            };
            loop {
                match stream.next().await {
                    Some(Ok(msg)) => {
                        reconnect.reset();
                        total = Some(msg.total);
                        count += msg.jobs.len() as u32;
                        // Jobs come numbered by their place in the batch;
                        // an ordered watch sends them in that order.
                        next += if ordered { msg.jobs.len() as u32 } else { 0 };
                        for j in &msg.jobs {
                            let (byte, bit) = (j.index as usize / 8, j.index % 8);
                            if received.len() <= byte {
                                received.resize(byte + 1, 0);
                            }
                            received[byte] |= 1 << bit;
                        }
                        on_jobs(&msg.jobs, msg.done, msg.total);
                    }
                    Some(Err(status)) => {
                        reconnect.after(&self.masters, at, status).await?;
                        break;
                    }
                    None => {
                        let seen = if ordered { next } else { count };
                        if total.is_some_and(|t| seen >= t) {
                            return Ok(());
                        }
                        // Ended before every job came: the master went away.
                        let cut = tonic::Status::unavailable("the watch ended early");
                        reconnect.after(&self.masters, at, cut).await?;
                        break;
                    }
                }
            }
        }
    }

    /// Makes a unary call on the current master, and on the next ones
    /// while `resend` allows ([`Masters::call`]).
    async fn unary<T, F, Fut>(&self, resend: Resend, call: F) -> anyhow::Result<T>
    where
        F: Fn(QueueClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.masters
            .call(resend, |channel| call(queue(channel)))
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
    }

    /// Cancels a job or a batch. Safe to send twice: a job cancelled
    /// already is counted as finished the second time, and stays
    /// cancelled.
    pub(crate) async fn cancel(&self, id: &str) -> anyhow::Result<pb::CancelResponse> {
        let req = pb::CancelRequest {
            job_ids: vec![id.to_string()],
            batch_id: String::new(),
        };
        self.unary(Resend::Safe, |mut q| {
            let req = req.clone();
            async move { q.cancel(req).await }
        })
        .await
    }

    /// Queues failed jobs again: one job, a batch, or every failed job.
    /// Sent to another master only when none applied it: a retried job is
    /// queued, not failed, so a second retry passes it by, unless it failed
    /// again in between, when it would get its attempts twice.
    pub(crate) async fn retry(&self, id: Option<String>, all_failed: bool) -> anyhow::Result<u32> {
        let req = pb::RetryRequest {
            job_ids: id.into_iter().collect(),
            batch_id: String::new(),
            all_failed,
        };
        let resp = self
            .unary(Resend::Unapplied, |mut q| {
                let req = req.clone();
                async move { q.retry(req).await }
            })
            .await?;
        Ok(resp.retried)
    }

    /// Queue depth, workers and throughput.
    pub(crate) async fn stats(&self) -> anyhow::Result<pb::StatsResponse> {
        self.unary(Resend::Safe, |mut q| async move {
            q.stats(pb::StatsRequest {}).await
        })
        .await
    }

    /// Jobs in a state (or of a batch), oldest first, handed to `each` as
    /// pages of them arrive: the master's pages are followed until `limit`
    /// jobs (0: 1000) were handed or there are no more. Returns whether
    /// more jobs matched than were handed.
    pub(crate) async fn list(
        &self,
        state: JobState,
        batch: Option<String>,
        limit: u32,
        mut each: impl FnMut(pb::JobInfo),
    ) -> anyhow::Result<bool> {
        let mut left = if limit == 0 { 1000 } else { limit };
        let mut req = pb::ListJobsRequest {
            state: state as i32,
            limit: left,
            batch_id: batch.unwrap_or_default(),
            page_token: String::new(),
        };
        loop {
            let resp = self
                .unary(Resend::Safe, |mut q| {
                    let req = req.clone();
                    async move { q.list_jobs(req).await }
                })
                .await?;
            let more = !resp.next_page_token.is_empty();
            anyhow::ensure!(
                !(more && resp.jobs.is_empty()),
                "the master sent an empty page of jobs that says more follow"
            );
            let shown = resp.jobs.len().min(left as usize);
            resp.jobs.into_iter().take(shown).for_each(&mut each);
            left -= shown as u32;
            // A master from before pages sends no token, and says
            // `truncated` when its one answer stopped at the limit.
            if left == 0 || !more {
                return Ok(resp.truncated);
            }
            req.limit = left;
            req.page_token = resp.next_page_token;
        }
    }

    /// The concurrency limits held or waited for (or only `name`).
    pub(crate) async fn limits(&self, name: String) -> anyhow::Result<pb::LimitsResponse> {
        let req = pb::LimitsRequest { name };
        self.unary(Resend::Safe, |mut q| {
            let req = req.clone();
            async move { q.limits(req).await }
        })
        .await
    }
}

/// The idempotency key of the job at position `i` of a command given the
/// key `key`: the key itself for the first job (so that a one-job submit is
/// named by exactly the key it was given), then `key#i`.
fn job_key(key: &str, i: usize) -> String {
    if i == 0 {
        key.to_string()
    } else {
        format!("{key}#{i}")
    }
}

/// Expands the CLI's job arguments (values and ranges).
pub(crate) fn expand(args: &[String]) -> anyhow::Result<Vec<String>> {
    util::expand_args(args, 1_000_000).map_err(anyhow::Error::msg)
}

/// Whether a job ended badly: FAILED or CANCELLED. A queued or running
/// job has not ended at all.
pub(crate) fn ended_badly(job: &pb::JobInfo) -> bool {
    job.state == JobState::Failed as i32 || job.state == JobState::Cancelled as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_each_position_once() {
        assert_eq!(job_key("k", 0), "k");
        assert_eq!(job_key("k", 1), "k#1");
        assert_eq!(job_key("k", 50_000), "k#50000");
        let keys: std::collections::HashSet<String> = (0..1000).map(|i| job_key("k", i)).collect();
        assert_eq!(keys.len(), 1000);
    }
}
