//! The `Workers` service: one bidirectional stream per worker session.

use std::time::Duration;

use drover_common::ids::{JobId, SessionId};
use drover_common::pb::workers_server::Workers;
use drover_common::pb::{self, master_message, worker_message};
use drover_common::{Error, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::committer::{self};

/// The most module prefixes a worker's hello may list.
const MAX_PYTHON_MODULES: usize = 256;
/// The longest module prefix, in bytes.
const MAX_PYTHON_MODULE_BYTES: usize = 256;

use super::{BoxStream, Master};

#[tonic::async_trait]
impl Workers for Master {
    type ConnectStream = BoxStream<pb::MasterMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(worker_message::Msg::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "msg: the first message must be a hello",
                ));
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "worker speaks protocol {}, this master speaks {PROTOCOL_VERSION}",
                hello.protocol
            ))
            .into());
        }
        if hello.python_modules.len() > MAX_PYTHON_MODULES {
            return Err(Status::invalid_argument(format!(
                "hello.python_modules: {} prefixes, over the limit of {MAX_PYTHON_MODULES}",
                hello.python_modules.len()
            )));
        }
        if let Some(m) = hello
            .python_modules
            .iter()
            .find(|m| m.len() > MAX_PYTHON_MODULE_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "hello.python_modules: a prefix of {} bytes, over the limit of {MAX_PYTHON_MODULE_BYTES}",
                m.len()
            )));
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the master is shutting down".into()).into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = self.inner.config.lease;
        let welcome = |sid: SessionId| pb::MasterMessage {
            msg: Some(master_message::Msg::Welcome(pb::Welcome {
                worker_id: sid.to_string(),
                lease_ms: lease.as_millis() as u64,
                heartbeat_ms: (lease / 4).as_millis().max(10) as u64,
            })),
        };
        let session = {
            let mut st = self.inner.state.lock();
            let sid = st.add_session(&hello, tx.clone());
            let _ = tx.send((None, welcome(sid)));
            sid
        };
        // Only the state keeps a sender: when the session ends there, the
        // outbound stream ends and the worker sees it.
        drop(tx);
        tracing::info!(
            worker = %hello.name, host = %hello.host,
            session = session.get(), cpu_slots = hello.cpu_slots, io_slots = hello.io_slots,
            python_slots = hello.python_slots, python_modules = ?hello.python_modules,
            "worker connected"
        );
        let master = self.clone();
        self.inner.tasks.spawn(async move {
            let reason = loop {
                let msg = tokio::select! {
                    biased;
                    // The master stops: its session's jobs are left as they
                    // are, so the next start queues them again without
                    // counting the attempt (a clean stop costs no attempt,
                    // like a crash).
                    _ = master.inner.shutdown.cancelled() => return,
                    m = inbound.message() => m,
                };
                match msg {
                    Ok(Some(m)) => {
                        if !master.handle(session, m) {
                            break "session already ended".to_string();
                        }
                    }
                    Ok(None) => break "stream closed".to_string(),
                    Err(status) => break format!("stream error: {}", status.message()),
                }
            };
            // A stop ends every worker's stream, and the worker's side may
            // close before this task sees the stop: that end is the stop's,
            // and it costs the session's jobs no attempt either (a_clean_stop_
            // of_the_master_costs_running_jobs_no_attempt failed now and then).
            if master.inner.shutdown.is_cancelled() {
                return;
            }
            let (_, out) = master.inner.state.lock().end_session(session, &reason);
            master.send(out);
        });
        let shutdown = self.inner.shutdown.clone().cancelled_owned();
        let committed = self.inner.committed.clone();
        let worker_name = hello.name.clone();
        // Each message waits for the commit of the change it announces;
        // commits finish in order, so the stream keeps its order.
        let stream = futures::StreamExt::take_until(UnboundedReceiverStream::new(rx), shutdown)
            .then(move |(ticket, msg)| {
                let committed = committed.clone();
                async move {
                    match (ticket, committed) {
                        (Some(t), Some(mut rx)) => committer::wait_for(&mut rx, t)
                            .await
                            .map(|()| msg)
                            .map_err(Status::from),
                        _ => Ok(msg),
                    }
                }
            })
            .map(move |msg| {
                if let Ok(m) = &msg {
                    crate::trace::assigned(&worker_name, m);
                }
                msg
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Master {
    /// Handles one message of a session; false when the session is gone.
    fn handle(&self, session: SessionId, msg: pb::WorkerMessage) -> bool {
        let mut st = self.inner.state.lock();
        if !st.touch(session) {
            // The lease expired while the worker was silent. End the stream
            // so it reconnects with a fresh session; it sends again there
            // the results we never acknowledged, where late ones are
            // dropped and counted.
            return false;
        }
        let out = match msg.msg {
            Some(worker_message::Msg::Credit(c)) => st.grant_credit(session, &c),
            Some(worker_message::Msg::Results(r)) => {
                crate::trace::results(&st, session, &r.results);
                st.record_results(session, r.seq, r.results)
            }
            Some(worker_message::Msg::Pool(p)) => {
                st.set_pool(session, p);
                return true;
            }
            Some(worker_message::Msg::Returned(r)) => {
                // A malformed id names no job this session holds.
                let ids: Vec<JobId> = r
                    .job_ids
                    .iter()
                    .filter_map(|raw| JobId::parse("job_ids", raw).ok())
                    .collect();
                st.return_jobs(session, &ids)
            }
            Some(worker_message::Msg::Draining(_)) => {
                st.set_draining(session);
                return true;
            }
            Some(worker_message::Msg::Heartbeat(_))
            | Some(worker_message::Msg::Hello(_))
            | None => {
                return true;
            }
        };
        drop(st);
        self.send(out);
        true
    }
}
