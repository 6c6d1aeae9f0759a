//! Accounting: every job a user submits is one job, and every attempt of it
//! is counted once, whatever happens between the submit and its end: a map
//! split over several submits, a dead letter revived and a master restarted,
//! a drain and a restart, a stale result, a result sent again on a new
//! session.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use drover_tests::fake_worker::{FakeWorker, failure};
use drover_tests::reference::is_prime;
use drover_tests::slow::{SLOW_PRIME, busy_child};
use drover_tests::{JobLine, Master, Submitted, Worker, sys, wait_for, wait_until};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// Starts a master with a redb store in `dir`, which a master started again
/// on the same directory finds.
fn master_on(dir: &Path, extra: &[&str]) -> Master {
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["--data-dir", dir, "--store", "redb"];
    args.extend_from_slice(extra);
    Master::start(&args)
}

/// Asserts that `job` found [`SLOW_PRIME`] prime.
#[track_caller]
fn assert_slow_prime(job: &JobLine) {
    assert_eq!(job.state, "succeeded", "{job:?}");
    assert_eq!(job.result, Value::Bool(true), "{job:?}");
}

/// `map` with an idempotency key splits a long list over several submits;
/// each job's key is its position in the whole map, so every row is its own
/// job and the same command run again returns the same jobs. (Each submit
/// numbered its keys from 0, so the second chunk got the first chunk's jobs
/// back.)
#[test]
fn a_keyed_map_over_several_submits_is_one_job_per_argument() {
    const N: usize = 3_500;
    let master = Master::start(&["--max-batch-jobs", "1000"]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let range = format!("0..{N}");
    let map = [
        "map",
        "prime",
        &range,
        "--idempotency-key",
        "primes",
        "--jobs-per-submit",
        "1000",
        "--no-progress",
    ];

    let first = master.cli(&map).success().jobs();
    assert_eq!(first.len(), N, "one row per argument");
    let ids: HashSet<&str> = first.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids.len(), N, "rows of different arguments share a job");
    for (n, j) in first.iter().enumerate() {
        assert_eq!(j.arg, n.to_string(), "row {n} is another argument's job");
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, Value::from(is_prime(n as u64)), "{j:?}");
    }
    let status = master.status();
    assert_eq!(
        (status.succeeded, status.queued, status.running),
        (N as u64, 0, 0),
        "the master holds other jobs than the map's"
    );

    // The same command again: the same jobs, nothing new submitted.
    let again = master.cli(&map).success().jobs();
    let first_ids: Vec<&str> = first.iter().map(|j| j.job_id.as_str()).collect();
    let again_ids: Vec<&str> = again.iter().map(|j| j.job_id.as_str()).collect();
    assert!(
        first_ids == again_ids,
        "the same map run again returned other jobs"
    );
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.result, b.result, "{a:?} {b:?}");
    }
    // A submit of the start of the list under the same key names the same
    // jobs: a key is a position in the command, however it is sent.
    let submitted: Submitted = master
        .cli(&["submit", "prime", "0..1000", "--idempotency-key", "primes"])
        .success()
        .one();
    assert!(
        submitted
            .job_ids
            .iter()
            .map(String::as_str)
            .eq(first_ids[..1000].iter().copied()),
        "a keyed submit of the same arguments returned other jobs"
    );
    assert_eq!(master.status().succeeded, N as u64, "new jobs were made");
}

/// A dead letter queued again by `drover retry` stays queued through a
/// master restart. Recovery read the assignment of its first attempt as a
/// current one and failed it ("the master restarted while the job ran")
/// though it never ran again.
#[test]
fn a_retried_dead_letter_survives_a_master_restart_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), &[]);
    let worker = Worker::start(&master.url(), &["--processes", "1", "--name", "w"]);
    let submitted: Submitted = master
        .cli(&["submit", "prime", SLOW_PRIME, "--max-attempts", "1"])
        .success()
        .one();
    let id = &submitted.job_ids[0];

    // Its only attempt dies with its process: a dead letter.
    sys::sigkill(busy_child(&master, &worker, id));
    let failed = wait_for(MINUTE, "the job to fail", || {
        let j = master.job(id);
        (j.state == "failed").then_some(j)
    });
    assert_eq!(failed.attempts, 1, "{failed:?}");
    // No worker from here on: the retried job waits in the queue.
    worker.sigterm();
    let status = worker.wait_exit(MINUTE);
    assert_eq!(
        status.code(),
        Some(0),
        "the drained worker's exit: {status}"
    );
    drop(worker);

    let retried = master.cli(&["retry", id]).success().json();
    assert_eq!(retried[0]["retried"], 1);
    let queued = master.job(id);
    assert_eq!(queued.state, "queued", "{queued:?}");
    assert_eq!(queued.attempt_errors.len(), 1, "{queued:?}");

    master.kill9();
    drop(master);
    let master = master_on(dir.path(), &[]);
    let after = master.job(id);
    assert_eq!(
        (after.state.as_str(), &after.attempt_errors),
        ("queued", &queued.attempt_errors),
        "the restart changed a job that was waiting in the queue: {after:?}"
    );

    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let done = master
        .cli(&["get", id, "--wait", "--timeout", "170s"])
        .success()
        .jobs()
        .remove(0);
    assert_slow_prime(&done);
    assert_eq!(
        done.attempt_errors, queued.attempt_errors,
        "only the first run failed"
    );
}

/// Jobs a draining worker hands back without starting them are queued, and
/// stay so through a master restart. Recovery took them for running (their
/// assignment was logged, their return took the attempt back) and, with
/// `--max-attempts 1`, failed them without their having run.
#[test]
fn jobs_a_draining_worker_returned_survive_a_master_restart() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), &[]);
    let draining = Worker::start(
        &master.url(),
        &["--processes", "1", "--grace", "170s", "--name", "draining"],
    );
    let mut args = vec!["submit", "prime"];
    args.extend([SLOW_PRIME; 6]);
    args.extend(["--max-attempts", "1"]);
    let submitted: Submitted = master.cli(&args).success().one();

    // One job runs in its process, at least one more waits on the worker.
    wait_until(MINUTE, "the worker to hold more jobs than it runs", || {
        master
            .status()
            .worker("draining")
            .is_some_and(|w| w.running >= 2)
    });
    draining.sigterm();
    let status = draining.wait_exit(Duration::from_secs(180));
    assert_eq!(
        status.code(),
        Some(0),
        "the drained worker's exit: {status}"
    );
    drop(draining);
    let before = master.cli(&["get", &submitted.batch_id]).jobs();
    let finished = before.iter().filter(|j| j.state == "succeeded").count();
    assert!(finished >= 1, "the running job did not finish: {before:?}");
    for j in &before {
        assert!(
            j.state == "succeeded" || j.state == "queued",
            "after the drain: {j:?}"
        );
    }

    master.kill9();
    drop(master);
    let master = master_on(dir.path(), &[]);
    for j in master.cli(&["get", &submitted.batch_id]).jobs() {
        assert_ne!(j.state, "failed", "the restart failed a job: {j:?}");
    }
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let done = master
        .cli(&["get", &submitted.batch_id, "--wait", "--timeout", "170s"])
        .success()
        .jobs();
    assert_eq!(done.len(), 6);
    for j in &done {
        assert_slow_prime(j);
    }
}

/// A stale result (for an attempt that is over) does not make the master
/// forget that the session runs the current attempt. It took the job out of
/// the session's held set, so when the session ended the job stayed RUNNING
/// for ever.
#[test]
fn a_stale_result_does_not_strand_the_current_attempt() {
    let master = Master::start(&["--retry-base", "0ms"]);
    let submitted: Submitted = master
        .cli(&["submit", "fib", "20", "--max-attempts", "5"])
        .success()
        .one();
    let id = &submitted.job_ids[0];

    let mut fake = FakeWorker::connect(&master.url(), "fake");
    fake.credit(1);
    let first = fake.assigned();
    assert_eq!(first.len(), 1);
    assert_eq!((&first[0].job_id, first[0].attempt), (id, 1));
    fake.results(1, vec![failure(&first[0], "flaky", true)]);
    // Retried at once (--retry-base 0ms), on the same session.
    fake.credit(1);
    let second = fake.assigned();
    assert_eq!(second.len(), 1);
    assert_eq!((&second[0].job_id, second[0].attempt), (id, 2));
    // The first attempt's result once more, as a late duplicate.
    fake.results(2, vec![failure(&first[0], "flaky", true)]);
    fake.wait_ack(2);
    let running = master.job(id);
    assert_eq!(
        (running.state.as_str(), running.attempts, running.worker()),
        ("running", 2, "fake"),
        "{running:?}"
    );
    assert!(master.stats().late_results_dropped >= 1);

    // The session ends with attempt 2 unfinished: the job goes back to the
    // queue, and a real worker runs it.
    fake.close();
    wait_until(
        Duration::from_secs(10),
        "the job, left RUNNING by the session that ended, to be queued again",
        || master.job(id).state == "queued",
    );
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let done = master
        .cli(&["get", id, "--wait", "--timeout", "60s"])
        .success()
        .jobs()
        .remove(0);
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.result, Value::from("6765"), "{done:?}");
}

/// A worker sends its unacknowledged results again on its next session; the
/// master applies a result once however often it arrives. A failure sent
/// again was counted as a second failed attempt (two attempt errors, two
/// retries) for one attempt that failed once.
#[test]
fn a_failure_sent_again_on_a_new_session_counts_once() {
    let master = Master::start(&[]);
    let submitted: Submitted = master
        .cli(&["submit", "fib", "20", "--max-attempts", "5"])
        .success()
        .one();
    let id = &submitted.job_ids[0];

    let mut fake = FakeWorker::connect(&master.url(), "fake");
    fake.credit(1);
    let job = fake.assigned().remove(0);
    assert_eq!((&job.job_id, job.attempt), (id, 1));
    let results = vec![failure(
        &job,
        "child process 1 killed by signal 9 while running the job",
        true,
    )];
    fake.results(1, results.clone());
    // The session ends before the worker reads the acknowledgement.
    fake.close();
    let failed_once = master.job(id);
    assert_eq!(failed_once.attempt_errors.len(), 1, "{failed_once:?}");
    assert_eq!(master.status().retried, 1);

    // The worker comes back and sends what it has no acknowledgement for.
    let mut again = FakeWorker::connect(&master.url(), "fake");
    again.results(1, results);
    again.wait_ack(1);
    let job = master.job(id);
    assert_eq!(
        job.attempt_errors.len(),
        1,
        "one failed attempt is recorded twice: {job:?}"
    );
    assert_eq!(
        master.status().retried,
        1,
        "one failed attempt, retried twice"
    );
    again.close();

    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let done = master
        .cli(&["get", id, "--wait", "--timeout", "60s"])
        .success()
        .jobs()
        .remove(0);
    assert_eq!(done.result, Value::from("6765"), "{done:?}");
    assert_eq!(
        (done.attempts, done.attempt_errors.len()),
        (2, 1),
        "{done:?}"
    );
}
