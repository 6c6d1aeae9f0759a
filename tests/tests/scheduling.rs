//! Who runs what, and when: priorities with every slot busy, and the credit
//! flow that keeps one worker from hoarding the queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_common::pb::{StatsResponse, WatchRequest};
use drover_tests::grpc::{self, block_on};
use drover_tests::slow::{MEDIUM_PRIME, SLOW_PRIME, busy_child};
use drover_tests::sys;
use drover_tests::{Master, Submitted, Worker, wait_for, wait_until};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_later_job_of_higher_priority_runs_before_earlier_lower_ones() {
    let master = Master::start(&[]);
    let worker = Worker::start(&master.url(), &["--processes", "1", "--prefetch", "0"]);

    // Occupy the only slot, and hold it: the long job's child is stopped
    // until every other job is queued, so the order below does not depend
    // on how fast the machine is.
    let long: Submitted = master.cli(&["submit", "prime", SLOW_PRIME]).success().one();
    let long_id = &long.job_ids[0];
    let child = busy_child(&master, &worker, long_id);
    sys::sigstop(child);

    let low: Submitted = master
        .cli(&["submit", "fib", "1000..1005", "--priority", "1"])
        .success()
        .one();
    let high: Submitted = master
        .cli(&["submit", "fib", "2000", "--priority", "9"])
        .success()
        .one();

    // Record completions across both batches in the order they arrive.
    let order: Arc<Mutex<Vec<(&'static str, u32)>>> = Arc::default();
    let queue = master.queue();
    let mut tasks = Vec::new();
    for (label, batch, total) in [("low", &low.batch_id, 5u32), ("high", &high.batch_id, 1)] {
        let mut stream = block_on(queue.clone().watch(WatchRequest {
            batch_id: batch.clone(),
            ordered: false,
            ..Default::default()
        }))
        .expect("Watch")
        .into_inner();
        let order = order.clone();
        tasks.push(grpc::spawn(async move {
            let mut seen = 0;
            while seen < total {
                let Some(msg) = stream.message().await.expect("Watch stream") else {
                    break;
                };
                for job in msg.jobs {
                    order.lock().unwrap().push((label, job.index));
                    seen += 1;
                }
            }
        }));
    }
    // Every completion below is seen live: nothing but the long job has
    // run yet, and the others wait in the queue, not on the worker.
    assert_eq!(
        master.job(long_id).state,
        "running",
        "the long job ended too soon for this test"
    );
    let stats = master.stats();
    assert_eq!(
        stats.queued, 6,
        "the low and high jobs should all be queued: {stats:?}"
    );
    assert_eq!(
        worker.info().map(|w| w.running),
        Some(1),
        "the worker holds more than its one slot"
    );
    sys::sigcont(child);

    for task in tasks {
        block_on(async { tokio::time::timeout(Duration::from_secs(180), task).await })
            .expect("the jobs did not finish within 180 s")
            .expect("a Watch task failed");
    }
    let order = order.lock().unwrap().clone();
    // On failure, how each job ran.
    let jobs = || {
        let mut all = master.cli(&["get", &low.batch_id]).jobs();
        all.extend(master.cli(&["get", &high.batch_id]).jobs());
        all.iter()
            .map(|j| {
                format!(
                    "\n  {} {} attempts {} on {:?}",
                    j.priority,
                    j.arg,
                    j.attempts,
                    j.worker()
                )
            })
            .collect::<String>()
    };
    assert_eq!(order.len(), 6, "{order:?}{}", jobs());
    assert_eq!(
        order[0],
        ("high", 0),
        "completion order: {order:?}{}",
        jobs()
    );
    // Within a priority, first in first out.
    let lows: Vec<u32> = order[1..].iter().map(|(_, i)| *i).collect();
    assert_eq!(
        lows,
        [0, 1, 2, 3, 4],
        "completion order: {order:?}{}",
        jobs()
    );
    assert_eq!(master.job(long_id).state, "succeeded");
}

#[test]
fn a_worker_never_holds_more_than_its_slots_plus_prefetch() {
    const JOBS: u64 = 24;
    let master = Master::start(&[]);
    let _first = Worker::start(
        &master.url(),
        &["--processes", "1", "--prefetch", "2", "--name", "first"],
    );
    let first_limit = 1 + 2;
    let second_limit = 1;

    let mut args = vec!["submit", "prime"];
    args.extend([MEDIUM_PRIME; JOBS as usize]);
    let submitted: Submitted = master.cli(&args).success().one();
    assert_eq!(submitted.job_ids.len() as u64, JOBS);

    let mut samples = 0;
    let mut check = |stats: &StatsResponse| {
        samples += 1;
        for w in &stats.workers {
            let limit = if w.name == "first" {
                first_limit
            } else {
                second_limit
            };
            assert!(
                w.running <= limit,
                "worker {:?} holds {} jobs, over its slots plus prefetch ({limit}): {stats:?}",
                w.name,
                w.running
            );
        }
        let held: u64 = stats.workers.iter().map(|w| u64::from(w.running)).sum();
        assert_eq!(
            stats.queued + held + stats.succeeded,
            JOBS,
            "every job is queued, held or done: {stats:?}"
        );
    };

    // Alone, the first worker works through the queue a few jobs at a time.
    wait_until(MINUTE * 2, "the first worker to finish 3 jobs", || {
        let stats = master.stats();
        check(&stats);
        stats
            .workers
            .iter()
            .any(|w| w.name == "first" && w.completed >= 3)
    });
    // A second worker connects: the first still holds no more than its
    // share, and the newcomer gets jobs from the queue.
    let second = Worker::spawn(
        &master.url(),
        &["--processes", "1", "--prefetch", "0", "--name", "second"],
    );
    let done = wait_for(MINUTE * 3, "the map to finish", || {
        let stats = master.stats();
        check(&stats);
        (stats.succeeded == JOBS).then_some(stats)
    });
    assert!(samples >= 10, "only {samples} samples of the workers' load");

    let completed = |name: &str| {
        done.workers
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.completed)
    };
    assert!(completed("first").unwrap_or(0) >= 3, "{done:?}");
    assert!(
        completed("second").unwrap_or(0) >= 1,
        "the second worker got no job: {done:?}"
    );

    let jobs = master.cli(&["get", &submitted.batch_id]).success().jobs();
    let mut by_worker = (0, 0);
    assert_eq!(jobs.len() as u64, JOBS);
    for j in &jobs {
        assert_eq!(
            (j.state.as_str(), &j.result),
            ("succeeded", &serde_json::Value::Bool(true)),
            "{j:?}"
        );
        match j.worker() {
            "first" => by_worker.0 += 1,
            "second" => by_worker.1 += 1,
            other => panic!("job run by {other:?}: {j:?}"),
        }
    }
    assert!(
        by_worker.0 > 0 && by_worker.1 > 0,
        "jobs per worker: {by_worker:?}"
    );
    drop(second);
}
