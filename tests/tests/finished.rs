//! Finished work out of the master's memory: with the redb store a batch
//! whose jobs are all finished leaves memory once committed, and its jobs
//! are read back from the store by `get`, `watch`, `jobs`, `retry`,
//! `cancel` and by submits that name them again (idempotency key, request
//! id), before and after a `kill -9`; a restart reads only what is
//! unfinished. With the memory store, `--keep-finished` bounds what is
//! kept, and an evicted id says "evicted". And the master's memory after
//! millions of finished jobs stays bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_common::pb::{self, JobKind};
use drover_tests::grpc::{block_on, job};
use drover_tests::{JobLine, Master, Submitted, Worker, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

/// Starts a master with the redb store in `dir`.
fn master_on(dir: &Path, extra: &[&str]) -> Master {
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["--data-dir", dir, "--store", "redb"];
    args.extend_from_slice(extra);
    Master::start(&args)
}

/// F(n), for small n.
fn fib(n: u32) -> String {
    let (mut a, mut b) = (0u128, 1u128);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a.to_string()
}

/// Checks `jobs` are the fib jobs of 20..30 of one batch, each once, with
/// its result.
#[track_caller]
fn assert_fibs(what: &str, jobs: &[JobLine]) {
    assert_eq!(jobs.len(), 10, "{what}: {jobs:?}");
    let mut seen: Vec<u32> = jobs.iter().map(|j| j.index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "{what}: each job once");
    for j in jobs {
        let n = 20 + j.index;
        assert_eq!(j.arg, n.to_string(), "{what}: {j:?}");
        assert_eq!(j.state, "succeeded", "{what}: {j:?}");
        assert_eq!(j.result.as_str(), Some(fib(n).as_str()), "{what}: {j:?}");
    }
}

/// Submits through gRPC with a request id; returns the batch id.
fn submit_with_request_id(master: &Master, request_id: &str, n: u32) -> String {
    let mut client = master.queue();
    block_on(client.submit(pb::SubmitRequest {
        jobs: vec![job(JobKind::Fib, n)],
        request_id: request_id.into(),
        ..Default::default()
    }))
    .expect("submit")
    .into_inner()
    .batch_id
}

#[test]
fn finished_work_is_read_from_the_store_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), &[]);
    let worker = Worker::start(&master.url(), &["--processes", "2"]);
    let mapped = master.cli(&["map", "fib", "20..30"]).success().jobs();
    assert_fibs("map", &mapped);
    let batch = mapped[0].batch_id.clone();
    let keyed: Submitted = master
        .cli(&["submit", "fib", "40", "--idempotency-key", "order-1"])
        .success()
        .one();
    let requested = submit_with_request_id(&master, "request-1", 41);
    let failing: Submitted = master
        .cli(&[
            "submit",
            "sleep",
            "20000",
            "--timeout",
            "100ms",
            "--max-attempts",
            "1",
        ])
        .success()
        .one();
    for id in [&keyed.batch_id, &requested] {
        master
            .cli(&["get", id, "--wait", "--timeout", "60s"])
            .success();
    }
    wait_for(MINUTE, "the timed-out job to fail", || {
        (master.job(&failing.job_ids[0]).state == "failed").then_some(())
    });

    // Everything is finished: the master may hold none of it in memory.
    // What a user reads is the same before and after a kill -9 (the
    // restarted master reads only unfinished batches at start).
    let check = |master: &Master, when: &str| {
        assert_fibs(
            &format!("get {when}"),
            &master.cli(&["get", &batch]).success().jobs(),
        );
        assert_fibs(
            &format!("watch {when}"),
            &master.cli(&["watch", &batch]).success().jobs(),
        );
        let ordered = master.cli(&["watch", &batch, "--ordered"]).success().jobs();
        assert_fibs(&format!("ordered watch {when}"), &ordered);
        assert!(
            ordered
                .iter()
                .enumerate()
                .all(|(i, j)| j.index as usize == i),
            "{when}: an ordered watch is in order: {ordered:?}"
        );
        assert_fibs(
            &format!("jobs --batch {when}"),
            &master
                .cli(&["jobs", "--batch", &batch, "--state", "all"])
                .success()
                .jobs(),
        );
        let succeeded = master
            .cli(&["jobs", "--state", "succeeded"])
            .success()
            .jobs();
        assert_eq!(succeeded.len(), 12, "{when}: {succeeded:?}");
        // One job read alone, by its id.
        let one = master.job(&mapped[3].job_id);
        assert_eq!(one.result.as_str(), Some(fib(23).as_str()), "{when}");

        // The same key and the same request id get the finished work back,
        // nothing is queued again.
        let again: Submitted = master
            .cli(&["submit", "fib", "40", "--idempotency-key", "order-1"])
            .success()
            .one();
        assert_eq!(
            again.job_ids, keyed.job_ids,
            "{when}: the key names its job"
        );
        let done = master.job(&keyed.job_ids[0]);
        assert_eq!(done.result.as_str(), Some(fib(40).as_str()), "{when}");
        assert_eq!(
            submit_with_request_id(master, "request-1", 41),
            requested,
            "{when}: the request id names its batch"
        );
        // Cancelling finished work changes nothing.
        let cancelled = master.cli(&["cancel", &batch]).success().json();
        assert_eq!(cancelled[0]["cancelled"], 0, "{when}: {cancelled:?}");

        let status = master.status();
        assert_eq!(
            (
                status.queued,
                status.running,
                status.succeeded,
                status.failed
            ),
            (0, 0, 12, 1),
            "{when}: {status:?}"
        );
        let failed = master.job(&failing.job_ids[0]);
        assert_eq!(failed.state, "failed", "{when}: {failed:?}");
    };
    check(&master, "before the restart");
    master.kill9();
    drop(master);
    let master = master_on(dir.path(), &[]);
    check(&master, "after the restart");

    // A failed job whose batch closed is retried: its batch comes back
    // into memory, and it runs (and fails) again.
    let failed_id = &failing.job_ids[0];
    let retried = master.cli(&["retry", failed_id]).success().json();
    assert_eq!(retried[0]["retried"], 1, "{retried:?}");
    drop(worker);
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let again = wait_for(MINUTE, "the retried job to fail again", || {
        let j = master.job(failed_id);
        (j.state == "failed" && j.attempts == 2).then_some(j)
    });
    assert_eq!(again.attempt_errors.len(), 2, "{again:?}");
    assert_eq!(master.status().failed, 1);
}

#[test]
fn the_memory_store_evicts_the_oldest_finished_batches_past_its_bound() {
    let master = Master::start(&["--store", "memory", "--keep-finished", "10"]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let mut batches = Vec::new();
    for _ in 0..3 {
        let jobs = master.cli(&["map", "fib", "20..30"]).success().jobs();
        assert_fibs("map", &jobs);
        batches.push((jobs[0].batch_id.clone(), jobs[0].job_id.clone()));
    }
    // At most 10 finished jobs kept: the two older batches go, the newest
    // stays readable.
    for (batch, job_id) in &batches[..2] {
        let out = wait_for(MINUTE, "an old batch to be evicted", || {
            let out = master.cli(&["get", batch]);
            (!out.status.success()).then_some(out)
        });
        assert!(out.stderr.contains("not found"), "{out}");
        assert!(out.stderr.contains("evicted"), "{out}");
        assert!(out.stderr.contains("--keep-finished"), "{out}");
        assert!(
            out.stderr.contains(&format!("job or batch {batch}")),
            "a batch id is not called a job's: {out}"
        );
        let out = master.cli(&["get", job_id]);
        assert!(out.stderr.contains("evicted"), "{out}");
    }
    assert_fibs(
        "newest batch",
        &master.cli(&["get", &batches[2].0]).success().jobs(),
    );
    // Neither expired nor evicted: never seen.
    let never = "01900000-0000-7000-8000-000000000000";
    let out = master.cli(&["get", never]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("not known"), "{out}");
}

/// Whether `get ID` fails saying the batch was purged over the byte budget.
fn purged(master: &Master, id: &str) -> Option<String> {
    let out = master.cli(&["get", id]);
    (!out.status.success()
        && out.stderr.contains("not found")
        && out.stderr.contains("was purged")
        && out.stderr.contains("--retention-bytes"))
    .then(|| out.stderr.clone())
}

/// Maps ten `fib` jobs of about 2,100 digits each (about 21 KB of
/// results); returns the batch id.
fn map_big_fibs(master: &Master) -> String {
    let jobs = master.cli(&["map", "fib", "10000..10010"]).success().jobs();
    assert_eq!(jobs.len(), 10, "{jobs:?}");
    jobs[0].batch_id.clone()
}

#[test]
fn finished_batches_over_the_byte_budget_are_purged_oldest_first_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two batches of about 22 KB, not three.
    let budget = ["--retention-bytes", "50KB"];
    let master = master_on(dir.path(), &budget);
    let port = master.addr().port();
    let worker = Worker::start(&master.url(), &["--processes", "2"]);
    let batches: Vec<String> = (0..5).map(|_| map_big_fibs(&master)).collect();
    for old in &batches[..3] {
        let said = wait_for(MINUTE, "an old batch to be purged over the budget", || {
            purged(&master, old)
        });
        assert!(said.contains(old.as_str()), "{said}");
    }
    let kept = |master: &Master, batch: &str, when: &str| {
        let jobs = master.cli(&["get", batch]).success().jobs();
        assert_eq!(jobs.len(), 10, "{when}: {jobs:?}");
        assert!(
            jobs.iter().all(
                |j| j.state == "succeeded" && j.result.as_str().is_some_and(|r| r.len() > 2000)
            ),
            "{when}: {jobs:?}"
        );
    };
    kept(
        &master,
        &batches[3],
        "the newest but one, before the restart",
    );
    kept(&master, &batches[4], "the newest, before the restart");

    // After a kill -9 the store still knows what it holds and what it
    // purged: the old batches still say purged, and new work pushes the
    // older of the kept ones out.
    master.kill9();
    drop(master);
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(&budget);
    let master = master_on(dir.path(), &args);
    assert!(
        purged(&master, &batches[0]).is_some(),
        "purged before the restart"
    );
    kept(&master, &batches[4], "the newest, after the restart");
    drop(worker);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let newer: Vec<String> = (0..2).map(|_| map_big_fibs(&master)).collect();
    for old in &batches[3..] {
        wait_for(
            MINUTE,
            "a batch kept before the restart to be purged",
            || purged(&master, old),
        );
    }
    for b in &newer {
        kept(&master, b, "new after the restart");
    }
}

/// A batch that named another batch's job again by idempotency key, kept
/// while that other batch was purged over the byte budget (and the job's
/// record with it), says so when read. `get` printed nothing and exited 0,
/// and `watch` reconnected for ever, waiting for a job that was gone.
#[test]
fn a_batch_naming_a_purged_job_by_key_says_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), &["--retention-bytes", "50KB"]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let keyed = ["submit", "fib", "10000", "--idempotency-key", "K"];
    let first: Submitted = master.cli(&keyed).success().one();
    master.cli(&["get", &first.batch_id, "--wait"]).success();
    let big = map_big_fibs(&master);
    // The same key again: a new batch naming the finished job.
    let again: Submitted = master.cli(&keyed).success().one();
    assert_ne!(again.batch_id, first.batch_id);
    assert_eq!(again.job_ids, first.job_ids, "the key names the same job");
    let before = master.cli(&["get", &again.batch_id]).success().jobs();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        before[0].result.as_str().is_some_and(|r| r.len() > 2000),
        "{before:?}"
    );
    // Two more big batches: the oldest two (the keyed job's own batch and
    // the first big one) go over the budget; the second keyed batch is
    // newer and stays.
    map_big_fibs(&master);
    map_big_fibs(&master);
    for old in [&first.batch_id, &big] {
        wait_for(MINUTE, "an old batch to be purged over the budget", || {
            purged(&master, old)
        });
    }
    let out = master.cli(&["get", &again.batch_id]);
    assert!(
        !out.status.success(),
        "a short listing given as whole: {out}"
    );
    assert!(
        out.stderr.contains("no longer kept")
            && out.stderr.contains("was purged")
            && out.stderr.contains(&first.job_ids[0]),
        "{out}"
    );
    let out = master.cli_spawn(&["watch", &again.batch_id]).wait(MINUTE);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("no longer kept"), "{out}");
}

/// VmRSS of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a VmRSS line");
    kib / 1024.0
}

/// The master's memory after a million finished tiny jobs on redb stays
/// under a bound and stops growing with the history: what it holds at the
/// end is within a few MiB of what it held halfway. Again after a kill -9
/// and restart, which is quick: it reads only what is unfinished.
/// `DROVER_TEST_FINISHED_JOBS` sets how many jobs (default 1,000,000, about
/// two minutes with debug binaries; the bench's `master_rss_mb_5m_finished`
/// runs five million on release binaries).
#[test]
fn memory_stays_bounded_after_a_million_finished_jobs() {
    const BOUND_MIB: f64 = 300.0;
    const GROWTH_MIB: f64 = 40.0;
    let total: u64 = std::env::var("DROVER_TEST_FINISHED_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), &[]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let started = Instant::now();
    // Submits of 50,000 `sleep 0` jobs, at most two ahead of the workers:
    // what is unfinished stays about the same while the history grows.
    let per_submit = 50_000u64;
    let mut client = master.queue();
    let mut submitted = 0u64;
    let mut halfway = None;
    let finished = |master: &Master| {
        let s = master.stats();
        s.succeeded + s.failed + s.cancelled
    };
    while submitted < total {
        let done = finished(&master);
        if halfway.is_none() && done >= total / 2 {
            halfway = Some(rss_mib(master.pid()));
        }
        if submitted - done >= 2 * per_submit {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let n = per_submit.min(total - submitted);
        let jobs = (0..n).map(|_| job(JobKind::Sleep, 0)).collect();
        block_on(client.submit(pb::SubmitRequest {
            jobs,
            ..Default::default()
        }))
        .expect("submit");
        submitted += n;
    }
    wait_for(Duration::from_secs(1800), "every job to finish", || {
        let done = finished(&master);
        if halfway.is_none() && done >= total / 2 {
            halfway = Some(rss_mib(master.pid()));
        }
        (master.stats().succeeded == total).then_some(())
    });
    let ran = started.elapsed();
    let rss = rss_mib(master.pid());
    let halfway = halfway.expect("measured halfway");
    eprintln!(
        "{total} jobs finished in {ran:?}; master RSS {rss:.0} MiB, {halfway:.0} MiB halfway"
    );
    assert!(
        rss <= BOUND_MIB,
        "the master holds {rss:.0} MiB after {total} finished jobs, over {BOUND_MIB} MiB"
    );
    assert!(
        rss - halfway <= GROWTH_MIB,
        "the master grew from {halfway:.0} MiB halfway to {rss:.0} MiB: its memory grows with the history"
    );

    let port = master.addr().port();
    master.kill9();
    drop(master);
    let restarted = Instant::now();
    // On the same port: the worker reconnects and sends again the results
    // that were not committed at the kill.
    let listen = format!("127.0.0.1:{port}");
    let master = master_on(dir.path(), &["--listen", &listen]);
    let status = master.stats();
    let recovery = restarted.elapsed();
    // Results not yet committed at the kill are sent again by the worker.
    wait_for(MINUTE, "every finished job to be counted again", || {
        (master.stats().succeeded == total).then_some(())
    });
    let rss = rss_mib(master.pid());
    eprintln!("restarted in {recovery:?} ({status:?}); master RSS {rss:.0} MiB");
    assert!(
        rss <= BOUND_MIB,
        "the restarted master holds {rss:.0} MiB, over {BOUND_MIB} MiB"
    );
    assert!(
        recovery < Duration::from_secs(20),
        "the restart took {recovery:?}: it reads what is unfinished, not the history"
    );
}
