//! Faults a user will meet: a worker killed with `kill -9` mid-map, a child
//! process that dies or runs past its timeout, cancellation of queued and
//! running jobs, and a worker drained with SIGTERM mid-map.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drover_tests::slow::{SLOW_PRIME, busy_child};
use drover_tests::sys::{self, is_gone};
use drover_tests::{Cancelled, JobLine, Master, Submitted, Worker, wait_for, wait_until};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// The jobs shown as running, with the worker that runs them.
#[track_caller]
fn running_jobs(master: &Master) -> Vec<JobLine> {
    master.cli(&["jobs", "--state", "running"]).success().jobs()
}

/// Waits until the worker's pool has `n` live children, none of them in
/// `old`, and returns the new pids.
fn pool_replaced(master: &Master, worker: &Worker, n: usize, old: &[u32]) -> Vec<u32> {
    wait_for(
        Duration::from_secs(10),
        "the pool to be back to full size with new children",
        || {
            let status = master.status();
            let pids = status.worker(worker.name())?.child_pids.clone();
            (pids.len() == n && pids.iter().all(|p| !old.contains(p) && sys::is_alive(*p)))
                .then_some(pids)
        },
    )
}

#[test]
fn kill_9_of_a_worker_mid_map_loses_no_result() {
    let master = Master::start(&[]);
    let opts = ["--processes", "1", "--io-slots", "4", "--prefetch", "0"];
    let victim = Worker::start(&master.url(), &[&opts[..], &["--name", "victim"]].concat());
    let survivor = Worker::start(
        &master.url(),
        &[&opts[..], &["--name", "survivor"]].concat(),
    );

    let mut args = vec!["map", "sleep"];
    args.extend(["300"; 40]);
    let map = master.cli_spawn(&args);
    wait_until(MINUTE, "the map to be in progress on both workers", || {
        let st = master.stats();
        let holds = |name: &str| st.workers.iter().any(|w| w.name == name && w.running > 0);
        st.succeeded >= 4 && holds("victim") && holds("survivor")
    });
    let lost: Vec<String> = running_jobs(&master)
        .into_iter()
        .filter(|j| j.worker() == "victim")
        .map(|j| j.job_id)
        .collect();
    assert!(
        !lost.is_empty(),
        "the master shows no job running on the victim"
    );
    let status = victim.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    let jobs = map.wait(MINUTE).success().jobs();
    let indexes: Vec<u32> = jobs.iter().map(|j| j.index).collect();
    assert_eq!(
        indexes,
        (0..40).collect::<Vec<_>>(),
        "every result once, in order"
    );
    let mut retried = 0;
    for j in &jobs {
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, Value::from(300), "{j:?}");
        match j.attempts {
            1 => assert!(j.attempt_errors.is_empty(), "{j:?}"),
            2 => {
                retried += 1;
                assert_eq!(
                    j.worker(),
                    survivor.name(),
                    "a lost job ran again on the survivor: {j:?}"
                );
                assert_eq!(
                    j.attempt_errors.len(),
                    1,
                    "the lost attempt is recorded: {j:?}"
                );
            }
            _ => panic!("a job ran more than twice: {j:?}"),
        }
    }
    // The jobs the victim was running when it died ran again elsewhere
    // (one may have finished in the instant between the listing and the
    // kill; then it shows the victim and one attempt).
    let mut rerun = 0;
    for id in &lost {
        let j = jobs
            .iter()
            .find(|j| &j.job_id == id)
            .expect("a lost job is in the map");
        if j.attempts == 2 {
            rerun += 1;
        } else {
            assert_eq!((j.attempts, j.worker()), (1, "victim"), "{j:?}");
        }
    }
    assert!(
        rerun >= 1,
        "none of the victim's running jobs {lost:?} ran again"
    );
    assert!(retried >= rerun);

    wait_until(
        Duration::from_secs(10),
        "the victim to leave the worker list",
        || master.stats().workers.iter().all(|w| w.name != "victim"),
    );
    let status = master.status();
    assert!(
        status.retried >= retried,
        "status counts {} retries, the jobs show {retried}",
        status.retried
    );
    assert_eq!(status.succeeded, 40);
}

#[test]
fn a_child_killed_mid_job_is_replaced_and_its_job_retried() {
    let master = Master::start(&[]);
    let worker = Worker::start(&master.url(), &["--processes", "1"]);
    let submitted: Submitted = master.cli(&["submit", "prime", SLOW_PRIME]).success().one();
    let id = &submitted.job_ids[0];

    let child = busy_child(&master, &worker, id);
    sys::sigkill(child);

    let out = master
        .cli(&["get", id, "--wait", "--timeout", "170s"])
        .success();
    let job = &out.jobs()[0];
    assert_eq!(job.state, "succeeded", "{}", job.error());
    assert_eq!(job.attempts, 2, "the crash counts as an attempt");
    assert_eq!(job.attempt_errors.len(), 1, "{:?}", job.attempt_errors);
    assert_eq!(job.result, Value::Bool(true), "{job:?}");

    pool_replaced(&master, &worker, 1, &[child]);
    let status = master.status();
    let w = status
        .worker(worker.name())
        .expect("the worker is still connected");
    assert!(w.children_restarted >= 1, "{w:?}");
    assert!(is_gone(child), "the killed child {child} was not reaped");
}

#[test]
fn a_job_past_its_timeout_fails_after_max_attempts_and_the_pool_stays_full() {
    let master = Master::start(&[]);
    let worker = Worker::start(&master.url(), &["--processes", "2"]);
    let before = master
        .status()
        .worker(worker.name())
        .expect("registered")
        .child_pids
        .clone();
    let args = [
        "submit",
        "prime",
        SLOW_PRIME,
        "--timeout",
        "50ms",
        "--max-attempts",
        "2",
    ];
    let submitted: Submitted = master.cli(&args).success().one();
    let id = &submitted.job_ids[0];

    let out = master.cli(&["get", id, "--wait", "--timeout", "60s"]);
    assert!(
        !out.status.success(),
        "`get` of a failed job exits non-zero\n{out}"
    );
    let job = &out.jobs()[0];
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(job.attempts, 2, "{job:?}");
    assert_eq!(job.result, Value::Null, "{job:?}");
    let error = job.error().to_lowercase();
    assert!(
        error.contains("timeout") || error.contains("timed out"),
        "the error {error:?} does not say timeout"
    );
    assert_eq!(job.attempt_errors.len(), 2, "{job:?}");

    // Each timeout killed a child; the pool is back to two live ones.
    let after = wait_for(
        Duration::from_secs(10),
        "the pool to be back to 2 children",
        || {
            let status = master.status();
            let w = status.worker(worker.name())?;
            let pids = w.child_pids.clone();
            (pids.len() == 2 && pids.iter().all(|p| sys::is_alive(*p)) && w.children_restarted >= 2)
                .then_some(pids)
        },
    );
    assert_ne!(before, after, "no child was replaced");
    for p in before.iter().filter(|p| !after.contains(p)) {
        wait_until(
            Duration::from_secs(1),
            "the timed-out child to be reaped",
            || is_gone(*p),
        );
    }
}

#[test]
fn cancel_of_a_queued_batch_cancels_every_job() {
    let master = Master::start(&[]);
    // No worker: the jobs stay queued.
    let submitted: Submitted = master.cli(&["submit", "fib", "10..15"]).success().one();
    assert_eq!(submitted.job_ids.len(), 5);
    let cancelled: Cancelled = master.cli(&["cancel", &submitted.batch_id]).success().one();
    assert_eq!((cancelled.cancelled, cancelled.already_finished), (5, 0));
    let again: Cancelled = master.cli(&["cancel", &submitted.batch_id]).success().one();
    assert_eq!(
        again.cancelled, 0,
        "a second cancel cancels nothing: {again:?}"
    );

    // A worker that connects later runs other jobs but none of these.
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let applied = master.cli(&["apply", "fib", "20"]).success().jobs();
    assert_eq!(applied[0].result, Value::from("6765"));
    let out = master.cli(&["get", &submitted.batch_id]);
    let jobs = out.jobs();
    assert_eq!(jobs.len(), 5, "{out}");
    for j in &jobs {
        assert_eq!(j.state, "cancelled", "{j:?}");
        assert_eq!(j.attempts, 0, "a cancelled queued job never ran: {j:?}");
        assert_eq!(j.result, Value::Null, "{j:?}");
    }
    assert!(
        !out.status.success(),
        "`get` of cancelled jobs exits non-zero\n{out}"
    );
    assert_eq!(master.status().cancelled, 5);
}

#[test]
fn cancel_of_a_running_job_kills_its_child_within_a_second() {
    let master = Master::start(&[]);
    let worker = Worker::start(&master.url(), &["--processes", "1"]);
    let submitted: Submitted = master.cli(&["submit", "prime", SLOW_PRIME]).success().one();
    let id = &submitted.job_ids[0];
    let child = busy_child(&master, &worker, id);
    // Stopped, the child cannot finish the job before the cancel reaches
    // it, however slow the machine; the worker's SIGKILL ends it all the
    // same.
    sys::sigstop(child);

    let cancelled: Cancelled = master.cli(&["cancel", id]).success().one();
    let cancelled_at = Instant::now();
    assert_eq!((cancelled.cancelled, cancelled.already_finished), (1, 0));
    wait_until(
        Duration::from_secs(1),
        "the cancelled job's child to be gone",
        || is_gone(child),
    );
    eprintln!(
        "child gone {:?} after the cancel returned",
        cancelled_at.elapsed()
    );

    let job = master.job(id);
    assert_eq!(job.state, "cancelled", "{job:?}");
    assert_eq!(job.result, Value::Null, "{job:?}");
    pool_replaced(&master, &worker, 1, &[child]);
    // The new child works.
    let applied = master.cli(&["apply", "fib", "20"]).success().jobs();
    assert_eq!(applied[0].result, Value::from("6765"));
}

#[test]
fn sigterm_mid_map_drains_the_worker_and_loses_nothing() {
    let master = Master::start(&[]);
    let opts = ["--processes", "1", "--io-slots", "4", "--prefetch", "0"];
    let draining = Worker::start(
        &master.url(),
        &[&opts[..], &["--name", "draining", "--grace", "20s"]].concat(),
    );
    let _other = Worker::start(&master.url(), &[&opts[..], &["--name", "other"]].concat());

    let mut args = vec!["map", "sleep"];
    args.extend(["400"; 32]);
    let map = master.cli_spawn(&args);
    wait_until(
        MINUTE,
        "the map to be in progress on the worker to drain",
        || {
            let st = master.stats();
            st.succeeded >= 4
                && st
                    .workers
                    .iter()
                    .any(|w| w.name == "draining" && w.running > 0)
        },
    );
    let running: HashSet<String> = running_jobs(&master)
        .into_iter()
        .filter(|j| j.worker() == "draining")
        .map(|j| j.job_id)
        .collect();
    assert!(
        !running.is_empty(),
        "the master shows no job running on the worker to drain"
    );
    let children = draining
        .info()
        .expect("the worker to drain is listed")
        .child_pids;
    draining.sigterm();
    let status = draining.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "the drained worker's exit status: {status}"
    );
    // It stopped its pool too: no child process outlives it.
    for pid in children {
        wait_until(
            Duration::from_secs(2),
            "the drained worker's children to be dead",
            || !sys::is_alive(pid),
        );
    }

    let jobs = map.wait(MINUTE).success().jobs();
    let indexes: Vec<u32> = jobs.iter().map(|j| j.index).collect();
    assert_eq!(
        indexes,
        (0..32).collect::<Vec<_>>(),
        "every result once, in order"
    );
    for j in &jobs {
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, Value::from(400), "{j:?}");
        assert!(
            j.attempt_errors.is_empty(),
            "a drain is no failed attempt: {j:?}"
        );
        if running.contains(&j.job_id) {
            assert_eq!(
                (j.worker(), j.attempts),
                ("draining", 1),
                "a job running at SIGTERM finished on the draining worker: {j:?}"
            );
        }
    }
    assert_eq!(master.status().succeeded, 32);
}
