//! Concurrency limits on jobs with the real binaries: a `--limit db=4`
//! batch across three workers never has a fifth job running, checked from
//! the jobs' own start and end times; `drover limits` shows the holders
//! and waiters while it runs; bad limits are refused naming the field.

use std::time::Duration;

use drover_tests::{Master, Submitted, Worker, reference, wait_for};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// The most spans open at once, in ms (the master gives the permit back
/// before it hands the next job out, so touching spans do not overlap).
fn max_overlap(spans: &[(u64, u64)]) -> usize {
    reference::max_overlap(spans.iter().map(|&(s, e)| (s as u128, e as u128)))
}

#[test]
fn max_overlap_counts_what_runs_at_once() {
    assert_eq!(max_overlap(&[(0, 10), (10, 20), (20, 30)]), 1);
    assert_eq!(max_overlap(&[(0, 10), (5, 20), (6, 7), (19, 30)]), 3);
}

#[test]
fn a_limited_batch_never_runs_more_jobs_than_its_permits() {
    let master = Master::start(&[]);
    let _workers: Vec<Worker> = (0..3)
        .map(|i| {
            Worker::start(
                &master.url(),
                &["--name", &format!("w{i}"), "--io-slots", "8"],
            )
        })
        .collect();
    // 200 jobs of 20 ms each.
    let args: Vec<String> = std::iter::repeat_n("20".to_string(), 200).collect();
    let mut cmd = vec!["submit", "sleep"];
    cmd.extend(args.iter().map(String::as_str));
    cmd.extend(["--limit", "db=4"]);
    let batch: Submitted = master.cli(&cmd).success().one();

    // While it runs: at most 4 holders, each on a worker, and jobs waiting.
    let seen = wait_for(
        MINUTE,
        "`drover limits` to show db held and waited for",
        || {
            let out = master.cli(&["limits", "db"]).success().one::<Value>();
            let l = out["limits"].get(0)?.clone();
            (l["waiters"].as_u64()? > 0).then_some(l)
        },
    );
    let holders = seen["holders"].as_array().unwrap();
    assert!((1..=4).contains(&holders.len()), "{seen}");

    let jobs = master
        .cli(&["get", &batch.batch_id, "--wait"])
        .success()
        .json();
    assert_eq!(jobs.len(), 200);
    let mut spans = Vec::new();
    let mut workers = std::collections::HashSet::new();
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["limits"]["db"], 4, "{j}");
        let (s, e) = (
            j["started_at_ms"].as_u64().unwrap(),
            j["finished_at_ms"].as_u64().unwrap(),
        );
        assert!(s > 0 && e >= s, "{j}");
        spans.push((s, e));
        workers.insert(j["worker"].as_str().unwrap().to_string());
    }
    assert!(
        max_overlap(&spans) <= 4,
        "{} jobs holding db=4 ran at once",
        max_overlap(&spans)
    );
    assert!(workers.len() > 1, "the jobs ran on {workers:?} only");
    // Everything given back.
    let after = master.cli(&["limits"]).success().one::<Value>();
    assert_eq!(after["limits"], Value::Array(vec![]), "{after}");
}

#[test]
fn bad_limits_are_refused_naming_the_field() {
    let master = Master::start(&[]);
    let out = master.cli(&["submit", "sleep", "1", "--limit", "db=0"]);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("jobs[0].limits[0].permits: 0 is out of range 1 to 1000000"),
        "{out}"
    );
    let long = format!("{}=2", "n".repeat(129));
    let out = master.cli(&["submit", "sleep", "1", "--limit", &long]);
    assert!(
        out.stderr
            .contains("jobs[0].limits[0].name: 129 bytes; a limit name has 1 to 128"),
        "{out}"
    );
    let out = master.cli(&["submit", "sleep", "1", "--limit", "db"]);
    assert!(out.stderr.contains("expected NAME=N"), "{out}");
}
