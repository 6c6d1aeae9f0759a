//! The client side of the `Queue` service: submitting, waiting, watching,
//! cancelling. The commands and the demo share it.

use std::time::Duration;

use drover_common::net::{AuthChannel, ClientOptions};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{self, JobState};
use drover_common::{net, util};
use futures::StreamExt;

/// How long a command keeps trying to reach a master that went away (a
/// restart, a failover) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Whether a failed call may succeed if made again: the master went away
/// or the connection broke, as opposed to an answer that will not change.
fn transient(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => true,
        // A connection cut mid-stream surfaces as an h2 error.
        tonic::Code::Internal => s.message().contains("h2 protocol error"),
        _ => false,
    }
}

/// Backs off between attempts to reach a master that went away, and says
/// when to give up: after [`RECONNECT_FOR`] without progress.
struct Reconnect {
    delay: Duration,
    since: Option<tokio::time::Instant>,
}

impl Reconnect {
    fn new() -> Reconnect {
        Reconnect {
            delay: Duration::from_millis(100),
            since: None,
        }
    }

    /// Waits before the next try after `status`, or returns it as the error
    /// when it is not transient or the master stayed away too long.
    async fn after(&mut self, status: tonic::Status) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        if !transient(&status) || since.elapsed() > RECONNECT_FOR {
            return Err(status_error(status));
        }
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
    }
}

/// A connected client.
#[derive(Clone)]
pub(crate) struct Client {
    queue: QueueClient<AuthChannel>,
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

impl Client {
    /// Connects to the master at `url`, with the TLS and token `options`
    /// ask for.
    pub(crate) async fn connect(url: &str, options: &ClientOptions) -> anyhow::Result<Client> {
        let channel = net::connect_with(url, options)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Client {
            queue: QueueClient::new(channel)
                .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(net::MAX_MESSAGE_BYTES),
        })
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
        // Named, so that a submit sent again after a broken connection or a
        // master restart gets the batch the first one made.
        let req = pb::SubmitRequest {
            jobs,
            request_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        };
        let mut reconnect = Reconnect::new();
        loop {
            match self.queue.clone().submit(req.clone()).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => reconnect.after(status).await?,
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
            let page = match self.queue.clone().get(req.clone()).await {
                Ok(page) => page.into_inner(),
                // A read is safe to make again.
                Err(status) => {
                    reconnect.after(status).await?;
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
            let mut stream = match self.queue.clone().watch(req).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    reconnect.after(status).await?;
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
                        reconnect.after(status).await?;
                        break;
                    }
                    None => {
                        let seen = if ordered { next } else { count };
                        if total.is_some_and(|t| seen >= t) {
                            return Ok(());
                        }
                        // Ended before every job came: the master went away.
                        let cut = tonic::Status::unavailable("the watch ended early");
                        reconnect.after(cut).await?;
                        break;
                    }
                }
            }
        }
    }

    /// Cancels a job or a batch.
    pub(crate) async fn cancel(&self, id: &str) -> anyhow::Result<pb::CancelResponse> {
        let resp = self
            .queue
            .clone()
            .cancel(pb::CancelRequest {
                job_ids: vec![id.to_string()],
                batch_id: String::new(),
            })
            .await
            .map_err(status_error)?;
        Ok(resp.into_inner())
    }

    /// Queues failed jobs again: one job, a batch, or every failed job.
    pub(crate) async fn retry(&self, id: Option<String>, all_failed: bool) -> anyhow::Result<u32> {
        let resp = self
            .queue
            .clone()
            .retry(pb::RetryRequest {
                job_ids: id.into_iter().collect(),
                batch_id: String::new(),
                all_failed,
            })
            .await
            .map_err(status_error)?;
        Ok(resp.into_inner().retried)
    }

    /// Queue depth, workers and throughput.
    pub(crate) async fn stats(&self) -> anyhow::Result<pb::StatsResponse> {
        let resp = self
            .queue
            .clone()
            .stats(pb::StatsRequest {})
            .await
            .map_err(status_error)?;
        Ok(resp.into_inner())
    }

    /// Jobs in a state.
    pub(crate) async fn list(
        &self,
        state: JobState,
        batch: Option<String>,
        limit: u32,
    ) -> anyhow::Result<pb::ListJobsResponse> {
        let resp = self
            .queue
            .clone()
            .list_jobs(pb::ListJobsRequest {
                state: state as i32,
                limit,
                batch_id: batch.unwrap_or_default(),
            })
            .await
            .map_err(status_error)?;
        Ok(resp.into_inner())
    }
}

impl Client {
    /// The concurrency limits held or waited for (or only `name`).
    pub(crate) async fn limits(&self, name: String) -> anyhow::Result<pb::LimitsResponse> {
        let resp = self
            .queue
            .clone()
            .limits(pb::LimitsRequest { name })
            .await
            .map_err(status_error)?;
        Ok(resp.into_inner())
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
