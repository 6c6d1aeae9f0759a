//! The master's side of a job's log: a `job` span carrying its id, kind,
//! attempt and worker (the same fields as the worker's span), with an event
//! when the job is assigned and when its result comes back, so that
//! `grep <job id>` follows a job across the master's and the worker's logs.
//!
//! These are debug events (`RUST_LOG=drover_master::trace=debug`): when
//! they are off, each function costs one check per message, not per job.

use drover_common::ids::{JobId, SessionId};
use drover_common::job::kind_name;
use drover_common::pb::{self, job_result, master_message};
use tracing::Level;

use crate::state::State;

/// Whether job events are logged.
fn on() -> bool {
    tracing::enabled!(Level::DEBUG)
}

/// Logs each job of an assignment sent to `worker`.
pub fn assigned(worker: &str, msg: &pb::MasterMessage) {
    if !on() {
        return;
    }
    if let Some(master_message::Msg::Assign(a)) = &msg.msg {
        for j in &a.jobs {
            let span = tracing::debug_span!(
                "job", id = %j.job_id, kind = kind_name(j.kind), attempt = j.attempt, worker = %worker
            );
            span.in_scope(|| tracing::debug!(priority = j.priority, "assigned"));
        }
    }
}

/// Logs each result a session sent, before the state records it.
pub fn results(st: &State, session: SessionId, results: &[pb::JobResult]) {
    if !on() {
        return;
    }
    let worker = st.sessions.get(&session).map_or("?", |s| s.name.as_ref());
    for r in results {
        let kind = JobId::parse("job_id", &r.job_id)
            .ok()
            .and_then(|id| st.job(&id))
            .map_or("unknown", |j| kind_name(j.kind as i32));
        let span = tracing::debug_span!(
            "job", id = %r.job_id, kind, attempt = r.attempt, worker = %worker
        );
        span.in_scope(|| match &r.outcome {
            Some(job_result::Outcome::Output(_)) => {
                tracing::debug!(run_us = r.run_us, "result: succeeded")
            }
            Some(job_result::Outcome::Failure(f)) => {
                tracing::debug!(reason = %f.reason, retryable = f.retryable, "result: failed")
            }
            None => tracing::debug!("result: empty"),
        });
    }
}
