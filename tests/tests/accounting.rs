//! Accounting: every job a user submits is one job, and every attempt of it
//! is counted once, whatever happens between the submit and its end: a map
//! split over several submits, a dead letter revived and a master restarted,
//! a drain and a restart, a stale result, a result sent again on a new
//! session.

use std::collections::HashSet;

use drover_tests::reference::is_prime;
use drover_tests::{Master, Submitted, Worker};
use serde_json::Value;

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
