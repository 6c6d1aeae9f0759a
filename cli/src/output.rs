//! How jobs and figures are shown: one text line per job for people, one
//! JSON document or JSON line per result for scripts.

use drover_common::job::kind_name;
use drover_common::pb::{self, JobState, job_output};
use serde_json::{Value, json};

/// The output format chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

pub(crate) use drover_common::job::{parse_state, state_name};

/// The result of a job as text: F(n), True/False, or the time slept.
pub(crate) fn result_text(job: &pb::JobInfo) -> String {
    match job.output.as_ref().and_then(|o| o.value.as_ref()) {
        Some(job_output::Value::Fib(v)) => v.clone(),
        Some(job_output::Value::Prime(p)) => if p.is_prime { "True" } else { "False" }.to_string(),
        Some(job_output::Value::SleptMs(ms)) => format!("slept {ms}ms"),
        Some(job_output::Value::Json(v)) => v.clone(),
        None => match JobState::try_from(job.state) {
            Ok(JobState::Failed) => format!("FAILED: {}", job.error),
            Ok(JobState::Cancelled) => "CANCELLED".into(),
            _ => state_name(job.state).to_uppercase(),
        },
    }
}

/// A job as one JSON object.
pub(crate) fn job_json(job: &pb::JobInfo) -> Value {
    let (result, certainty) = match job.output.as_ref().and_then(|o| o.value.as_ref()) {
        Some(job_output::Value::Fib(v)) => (json!(v), None),
        Some(job_output::Value::Prime(p)) => (
            json!(p.is_prime),
            Some(match pb::Certainty::try_from(p.certainty) {
                Ok(pb::Certainty::Proven) => "proven",
                Ok(pb::Certainty::Probable) => "probable",
                _ => "unknown",
            }),
        ),
        Some(job_output::Value::SleptMs(ms)) => (json!(ms), None),
        // A python result is JSON already; text that is not (an old or
        // odd worker) is shown as a string.
        Some(job_output::Value::Json(v)) => {
            (serde_json::from_str(v).unwrap_or_else(|_| json!(v)), None)
        }
        None => (Value::Null, None),
    };
    let mut v = json!({
        "job_id": job.job_id,
        "batch_id": job.batch_id,
        "index": job.index,
        "kind": kind_name(job.kind),
        "arg": job.arg,
        "state": state_name(job.state),
        "attempts": job.attempts,
        "counted_attempts": job.counted_attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "worker": job.worker,
        "run_us": job.run_us,
        "result": result,
        "error": if job.error.is_empty() { Value::Null } else { json!(job.error) },
        "attempt_errors": job.attempt_errors,
        "started_at_ms": job.started_at_ms,
        "finished_at_ms": job.finished_at_ms,
    });
    if let Some(c) = certainty {
        v["certainty"] = json!(c);
    }
    if !job.limits.is_empty() {
        v["limits"] = job
            .limits
            .iter()
            .map(|l| (l.name.clone(), json!(l.permits)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    v
}

/// `Limits` as JSON: each limit's holders and waiters.
pub(crate) fn limits_json(r: &pb::LimitsResponse) -> Value {
    json!({
        "limits": r.limits.iter().map(|l| json!({
            "name": l.name,
            "holders": l.holders.iter().map(|h| json!({
                "job_id": h.job_id,
                "worker": h.worker,
            })).collect::<Vec<_>>(),
            "waiters": l.waiters,
        })).collect::<Vec<_>>(),
    })
}

/// `Limits` for people: a line per limit, then its holders.
pub(crate) fn limits_text(r: &pb::LimitsResponse) -> String {
    if r.limits.is_empty() {
        return "no limit is held or waited for\n".into();
    }
    let mut out = String::new();
    for l in &r.limits {
        out.push_str(&format!(
            "{}: {} holding, {} waiting\n",
            l.name,
            l.holders.len(),
            l.waiters
        ));
        for h in &l.holders {
            let worker = if h.worker.is_empty() {
                "(queued)"
            } else {
                &h.worker
            };
            out.push_str(&format!("  {}\t{}\n", h.job_id, worker));
        }
    }
    out
}

/// Prints one job.
pub(crate) fn print_job(format: Format, job: &pb::JobInfo) {
    match format {
        Format::Json => println!("{}", job_json(job)),
        Format::Text => println!("{}\t{}", job.arg, result_text(job)),
    }
}

/// `Stats` as JSON.
pub(crate) fn stats_json(s: &pb::StatsResponse) -> Value {
    json!({
        "version": s.version,
        "uptime_s": s.uptime_s,
        "queued": s.queued,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "jobs_per_s": s.jobs_per_s,
        "late_results_dropped": s.late_results_dropped,
        "retried": s.retried,
        "waiting_for_capability": s.waiting_for_capability,
        "missing_modules": s.missing_modules,
        "leader_epoch": s.leader_epoch,
        "leader_address": s.leader_address,
        "workers": s.workers.iter().map(|w| json!({
            "worker_id": w.worker_id,
            "name": w.name,
            "host": w.host,
            "pid": w.pid,
            "version": w.version,
            "cpu_slots": w.cpu_slots,
            "io_slots": w.io_slots,
            "running": w.running,
            "completed": w.completed,
            "child_pids": w.child_pids,
            "children_restarted": w.children_restarted,
            "draining": w.draining,
            "connected_s": w.connected_s,
            "kinds": w.kinds.iter().map(|&k| kind_name(k)).collect::<Vec<_>>(),
            "python_slots": w.python_slots,
            "python_modules": w.python_modules,
        })).collect::<Vec<_>>(),
    })
}

/// `Stats` as a few lines for a person.
pub(crate) fn stats_text(s: &pb::StatsResponse) -> String {
    let mut out = format!(
        "master {} up {}s\njobs: {} queued, {} running, {} succeeded, {} failed, {} cancelled; {:.1} jobs/s (last 10 s); {} retried, {} late results dropped\n",
        s.version,
        s.uptime_s,
        s.queued,
        s.running,
        s.succeeded,
        s.failed,
        s.cancelled,
        s.jobs_per_s,
        s.retried,
        s.late_results_dropped
    );
    if s.leader_epoch > 0 {
        out.push_str(&format!(
            "leader: this master ({}), elected at epoch {} on its PostgreSQL store\n",
            s.leader_address, s.leader_epoch
        ));
    }
    out.push_str(&format!("workers: {}\n", s.workers.len()));
    if !s.workers.is_empty() {
        out.push_str(&format!(
            "  {:<24} {:<20} {:>5} {:>6} {:>8} {:>10} {:>9}\n",
            "NAME", "HOST", "CPU", "IO", "RUNNING", "COMPLETED", "RESTARTS"
        ));
        for w in &s.workers {
            out.push_str(&format!(
                "  {:<24} {:<20} {:>5} {:>6} {:>8} {:>10} {:>9}{}\n",
                w.name,
                w.host,
                w.cpu_slots,
                w.io_slots,
                w.running,
                w.completed,
                w.children_restarted,
                if w.draining { "  (draining)" } else { "" }
            ));
            out.push_str(&format!("    runs: {}\n", capabilities(w)));
        }
    }
    if s.waiting_for_capability > 0 {
        out.push_str(&format!(
            "waiting for a capability no worker offers: {} jobs (python modules: {})\n",
            s.waiting_for_capability,
            s.missing_modules.join(", ")
        ));
    }
    out
}

/// What a worker runs, for `drover status`: its kinds, and for Python its
/// processes and allowed modules.
fn capabilities(w: &pb::WorkerInfo) -> String {
    if w.kinds.is_empty() {
        // A worker older than the python kind runs the built-in ones.
        return "fib, prime, sleep".into();
    }
    w.kinds
        .iter()
        .map(|&k| {
            if k == pb::JobKind::Python as i32 {
                format!(
                    "python ({} processes; modules {})",
                    w.python_slots,
                    w.python_modules.join(",")
                )
            } else {
                kind_name(k).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_each_workers_capabilities_and_what_waits_for_one() {
        let python = pb::WorkerInfo {
            name: "py".into(),
            kinds: vec![
                pb::JobKind::Fib as i32,
                pb::JobKind::Prime as i32,
                pb::JobKind::Sleep as i32,
                pb::JobKind::Python as i32,
            ],
            python_modules: vec!["app".into(), "lib.jobs".into()],
            python_slots: 3,
            ..Default::default()
        };
        let old = pb::WorkerInfo {
            name: "old".into(),
            ..Default::default()
        };
        let stats = pb::StatsResponse {
            workers: vec![old, python],
            waiting_for_capability: 2,
            missing_modules: vec!["other".into()],
            ..Default::default()
        };
        let text = stats_text(&stats);
        assert!(
            text.contains(
                "    runs: fib, prime, sleep, python (3 processes; modules app,lib.jobs)\n"
            ),
            "{text}"
        );
        assert!(text.contains("    runs: fib, prime, sleep\n"), "{text}");
        assert!(
            text.contains(
                "waiting for a capability no worker offers: 2 jobs (python modules: other)\n"
            ),
            "{text}"
        );
        let json = stats_json(&stats);
        assert_eq!(json["waiting_for_capability"], 2);
        assert_eq!(json["workers"][1]["kinds"][3], "python");
        assert_eq!(json["workers"][1]["python_modules"][1], "lib.jobs");
    }
}
