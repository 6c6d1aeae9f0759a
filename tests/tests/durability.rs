//! The durable master: a master killed with `kill -9` and started again on
//! its data directory loses nothing it acknowledged; retries wait out their
//! backoff and end in dead letters that `drover retry` revives; a worker cut
//! off past its lease has its jobs run elsewhere and its late results
//! dropped; idempotency keys survive restarts; results expire; a data
//! directory that is corrupt, locked or from a newer drover is refused.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_common::pb::{self, JobKind};
use drover_tests::grpc::{block_on, job};
use drover_tests::slow::{MEDIUM_PRIME, SLOW_PRIME, busy_child};
use drover_tests::sys;
use drover_tests::{JobLine, Master, Submitted, Worker, wait_for, wait_until};

const MINUTE: Duration = Duration::from_secs(60);

/// Starts a master on `dir`, on `port` (0 for any).
fn master_on(dir: &Path, port: u16, extra: &[&str]) -> Master {
    let listen = format!("127.0.0.1:{port}");
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["--listen", &listen, "--data-dir", dir, "--store", "redb"];
    args.extend_from_slice(extra);
    Master::start(&args)
}

fn jobs_by_id(jobs: Vec<JobLine>) -> HashMap<String, JobLine> {
    let n = jobs.len();
    let map: HashMap<String, JobLine> = jobs.into_iter().map(|j| (j.job_id.clone(), j)).collect();
    assert_eq!(map.len(), n, "a job id was listed twice");
    map
}

#[test]
fn kill_9_of_the_master_mid_map_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &[]);
    let port = master.addr().port();
    let url = master.url();
    let workers: Vec<Worker> = (0..2)
        .map(|i| {
            Worker::start(
                &url,
                &[
                    "--processes",
                    "1",
                    "--io-slots",
                    "40",
                    "--name",
                    &format!("w{i}"),
                ],
            )
        })
        .collect();

    // 10,000 sleeps of 5 to 24 ms: about 3 s of work on 80 slots.
    let mut args = vec!["submit", "sleep"];
    args.extend(std::iter::repeat_n("5..=24", 500));
    let submitted: Submitted = master.cli(&args).success().one();
    assert_eq!(submitted.job_ids.len(), 10_000);

    wait_until(MINUTE, "a third of the jobs to finish", || {
        master.stats().succeeded >= 3_000
    });
    let before = master.stats();
    assert!(
        before.succeeded < 10_000,
        "the map finished before the master could be killed"
    );
    master.kill9();
    drop(master);

    let master = master_on(dir.path(), port, &[]);
    // The workers reconnect by themselves, and send again the results the
    // master had not acknowledged (stored) when it died.
    wait_until(MINUTE, "both workers to reconnect", || {
        master.stats().workers.len() == 2
    });
    wait_until(
        MINUTE,
        "the master to hold at least the results it had before the crash",
        || master.stats().succeeded >= before.succeeded,
    );
    let got = master
        .cli(&["get", &submitted.batch_id, "--wait", "--timeout", "120s"])
        .success()
        .jobs();
    assert_eq!(got.len(), 10_000);
    let ids: HashSet<&str> = got.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids.len(), 10_000, "a job appears twice");
    for (i, (job, id)) in got.iter().zip(&submitted.job_ids).enumerate() {
        assert_eq!(
            &job.job_id, id,
            "result {i} is not the job submitted at {i}"
        );
        assert_eq!(job.state, "succeeded", "{job:?}");
        let ms: u64 = job.arg.parse().unwrap();
        assert_eq!(job.result.as_u64(), Some(ms), "{job:?}");
    }
    let stats = master.stats();
    assert_eq!(
        stats.succeeded, 10_000,
        "a result was recorded twice or lost"
    );
    drop(workers);
}

#[test]
fn kill_9_of_the_master_while_submitting_keeps_every_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &[]);
    let port = master.addr().port();
    let url = master.url();

    // A client submitting batches of 100 in a loop, remembering every id it
    // was given, until the master goes away.
    let progress = Arc::new(AtomicUsize::new(0));
    let client = {
        let url = url.clone();
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut acked: Vec<(String, Vec<String>)> = Vec::new();
            let mut queue = drover_tests::grpc::queue_client(&url);
            loop {
                let jobs = (0..100).map(|i| job(JobKind::Fib, i)).collect();
                match block_on(queue.submit(pb::SubmitRequest {
                    jobs,
                    ..Default::default()
                })) {
                    Ok(r) => {
                        let r = r.into_inner();
                        acked.push((r.batch_id, r.job_ids));
                        progress.store(acked.len(), Ordering::SeqCst);
                    }
                    Err(_) => return acked,
                }
            }
        })
    };
    wait_until(MINUTE, "the client to have 20 batches acknowledged", || {
        progress.load(Ordering::SeqCst) >= 20
    });
    master.kill9();
    drop(master);
    let acked = client.join().expect("the client thread");
    assert!(acked.len() >= 20);

    let master = master_on(dir.path(), port, &[]);
    let all = master
        .cli(&["jobs", "--state", "all", "--limit", "1000000"])
        .success()
        .jobs();
    let by_id = jobs_by_id(all.clone());
    for (batch, ids) in &acked {
        for id in ids {
            let job = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged job {id} of batch {batch} was lost"));
            assert_eq!(&job.batch_id, batch);
        }
    }
    // Nothing half-written: every batch the master holds is whole.
    let mut batches: HashMap<&str, Vec<u32>> = HashMap::new();
    for j in &all {
        batches
            .entry(j.batch_id.as_str())
            .or_default()
            .push(j.index);
    }
    for (batch, mut indexes) in batches {
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..100).collect::<Vec<u32>>(),
            "batch {batch} was recovered in part"
        );
    }
}

#[test]
fn a_job_that_keeps_crashing_backs_off_then_fails_and_retry_revives_it() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &["--retry-base", "1s", "--retry-max", "1s"]);
    let worker = Worker::start(&master.url(), &["--processes", "1", "--name", "w"]);
    let submitted: Submitted = master
        .cli(&["submit", "prime", SLOW_PRIME, "--max-attempts", "2"])
        .success()
        .one();
    let id = &submitted.job_ids[0];

    // Attempt 1: its process dies under it.
    let pid = busy_child(&master, &worker, id);
    sys::sigkill(pid);
    // It waits out its backoff (at least half of 1 s, with jitter) queued.
    let crashed = Instant::now();
    wait_until(MINUTE, "the job to be queued for its retry", || {
        master.job(id).state == "queued"
    });
    let pid = busy_child(&master, &worker, id);
    assert!(
        crashed.elapsed() >= Duration::from_millis(500),
        "the retry started {:?} after the crash, before its backoff",
        crashed.elapsed()
    );
    // Attempt 2 dies too: attempts are exhausted.
    sys::sigkill(pid);
    let failed = wait_for(MINUTE, "the job to fail", || {
        let j = master.job(id);
        (j.state == "failed").then_some(j)
    });
    assert_eq!(failed.attempts, 2);
    assert_eq!(failed.attempt_errors.len(), 2, "{failed:?}");
    for e in &failed.attempt_errors {
        assert!(e.contains("killed by signal 9"), "{failed:?}");
    }
    let dead: Vec<JobLine> = master.cli(&["jobs", "--state", "failed"]).success().jobs();
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].job_id, id);

    // `drover retry` queues it again, and this time it runs to the end.
    let retried = master.cli(&["retry", id]).success().json();
    assert_eq!(retried[0]["retried"], 1);
    let done = master
        .cli(&["get", id, "--wait", "--timeout", "120s"])
        .success()
        .jobs()
        .remove(0);
    assert_eq!(done.state, "succeeded");
    assert_eq!(done.result, serde_json::Value::Bool(true), "{done:?}");
}

#[test]
fn a_worker_stopped_past_its_lease_has_its_jobs_run_elsewhere_once() {
    let master = Master::start(&["--lease", "1s", "--retry-base", "50ms"]);
    let url = master.url();
    let victim = Worker::start(
        &url,
        &["--processes", "1", "--io-slots", "4", "--name", "victim"],
    );
    let submitted: Submitted = master
        .cli(&["submit", "sleep", "1500", "1500", "1500", "1500"])
        .success()
        .one();
    wait_until(MINUTE, "the victim to hold all four jobs", || {
        master
            .status()
            .worker("victim")
            .is_some_and(|w| w.running == 4)
    });
    victim.sigstop();
    let survivor = Worker::start(
        &url,
        &["--processes", "1", "--io-slots", "4", "--name", "survivor"],
    );
    let got = master
        .cli(&["get", &submitted.batch_id, "--wait", "--timeout", "60s"])
        .success()
        .jobs();
    for j in &got {
        assert_eq!(j.state, "succeeded");
        assert_eq!(j.worker(), "survivor", "{j:?}");
        assert_eq!(j.attempts, 2, "{j:?}");
    }
    // The victim wakes and delivers results for attempts that are over.
    victim.sigcont();
    wait_until(MINUTE, "the late results to be dropped", || {
        master.stats().late_results_dropped >= 4
    });
    let stats = master.stats();
    assert_eq!(stats.succeeded, 4, "a result was recorded twice");
    let again = master.cli(&["get", &submitted.batch_id]).success().jobs();
    for j in &again {
        assert_eq!(
            j.worker(),
            "survivor",
            "a late result replaced the first: {j:?}"
        );
    }
    // And the victim serves again under a new session.
    wait_until(MINUTE, "the victim to reconnect", || {
        master.status().worker("victim").is_some()
    });
    let more: Submitted = master
        .cli(&[
            "submit", "sleep", "10", "10", "10", "10", "10", "10", "10", "10", "10", "10", "10",
            "10",
        ])
        .success()
        .one();
    let ran = master
        .cli(&["get", &more.batch_id, "--wait", "--timeout", "60s"])
        .success()
        .jobs();
    assert!(
        ran.iter().any(|j| j.worker() == "victim"),
        "the victim ran none of the new jobs: {ran:?}"
    );
    drop(survivor);
}

#[test]
fn idempotency_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &[]);
    let first: Submitted = master
        .cli(&["submit", "fib", "30", "--idempotency-key", "order-17"])
        .success()
        .one();
    master.kill9();
    drop(master);
    let master = master_on(dir.path(), 0, &[]);
    let second: Submitted = master
        .cli(&["submit", "fib", "30", "--idempotency-key", "order-17"])
        .success()
        .one();
    assert_eq!(first.job_ids, second.job_ids);
    let other: Submitted = master
        .cli(&["submit", "fib", "30", "--idempotency-key", "order-18"])
        .success()
        .one();
    assert_ne!(first.job_ids, other.job_ids);
}

#[test]
fn finished_jobs_expire_after_the_retention_period() {
    let master = Master::start(&["--retention", "1s"]);
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let done = master
        .cli(&["apply", "fib", "20"])
        .success()
        .jobs()
        .remove(0);
    assert_eq!(done.result.as_str(), Some("6765"));
    let out = wait_for(MINUTE, "the job to expire", || {
        let out = master.cli(&["get", &done.job_id]);
        (!out.status.success()).then_some(out)
    });
    assert!(out.stderr.contains("expired"), "{out}");
    assert!(out.stderr.contains("not found"), "{out}");
    // An id never seen is not reported as expired.
    let never = "01900000-0000-7000-8000-000000000000";
    let out = master.cli(&["get", never]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("not known"), "{out}");
}

#[test]
fn a_locked_corrupt_or_newer_data_directory_is_refused() {
    // Locked: a second master on the same directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let _first = master_on(dir.path(), 0, &[]);
    let err = Master::refused_start(&["--data-dir", path]);
    assert!(err.contains("in use by another master"), "{err}");

    // Corrupt: garbage where the database should be.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("drover.redb"), vec![0x42; 64 * 1024]).unwrap();
    let err = Master::refused_start(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("corrupt"), "{err}");

    // Newer: a store whose format version is past this build's.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("drover.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("meta");
            let mut t = txn.open_table(meta).unwrap();
            t.insert("format_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Master::refused_start(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("newer drover"), "{err}");
}

#[test]
fn a_bad_byte_budget_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for (value, says) in [
        ("lots", "bad size"),
        ("0", "at least 1 byte"),
        ("12parsecs", "unit"),
    ] {
        let err = Master::refused_start(&["--data-dir", dir, "--retention-bytes", value]);
        assert!(
            err.contains("--retention-bytes") && err.contains(says),
            "--retention-bytes {value}: {err}"
        );
    }
}

#[test]
fn a_map_rides_through_a_master_restart_printing_every_result_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &[]);
    let port = master.addr().port();
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    // 40 jobs of a few hundred milliseconds each.
    let mut args = vec!["map", "prime"];
    args.extend([MEDIUM_PRIME; 40]);
    let map = master.cli_spawn(&args);
    wait_until(MINUTE, "the map to print its first results", || {
        map.stdout_so_far().lines().count() >= 3
    });
    master.kill9();
    drop(master);
    let master = master_on(dir.path(), port, &[]);
    let got = map.wait(Duration::from_secs(300)).success();
    let jobs = got.jobs();
    assert_eq!(jobs.len(), 40, "every result once");
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.index as usize, i, "in order: {j:?}");
        assert_eq!(j.arg, MEDIUM_PRIME);
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, serde_json::Value::Bool(true), "{j:?}");
    }
    // It said where its results live, so a user could have resumed.
    assert!(got.stderr.contains("drover watch"), "{}", got.stderr);
    drop(master);
}

#[test]
fn a_clean_stop_of_the_master_costs_running_jobs_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_on(dir.path(), 0, &[]);
    let port = master.addr().port();
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let submitted: Submitted = master
        .cli(&["submit", "sleep", "60000", "--max-attempts", "1"])
        .success()
        .one();
    let id = &submitted.job_ids[0];
    wait_until(MINUTE, "the job to run", || {
        master.job(id).state == "running"
    });
    master.sigterm();
    assert!(master.wait_exit(MINUTE).success(), "a clean stop exits 0");
    drop(master);

    let master = master_on(dir.path(), port, &[]);
    let job = master.job(id);
    assert_ne!(job.state, "failed", "a clean stop failed the job: {job:?}");
    let raw = master.cli(&["get", id]).success().json();
    assert_eq!(raw[0]["counted_attempts"], 0, "{raw:?}");
    master.cli(&["cancel", id]).success();
}
