//! Results of any size: every answer that carries results is bounded in
//! bytes, and the CLI reads them whole.

use std::time::Duration;

use drover_common::pb::{self, GetRequest, JobKind};
use drover_tests::grpc::{block_on, job};
use drover_tests::reference::assert_fib;
use drover_tests::{Master, Submitted, Worker};

/// F(FIRST) has 41,798 digits: 24 of them are about a megabyte.
const FIRST: u64 = 200_000;
const COUNT: u64 = 24;

fn check(jobs: &[drover_tests::model::JobLine]) {
    assert_eq!(jobs.len() as u64, COUNT, "every job, once");
    for (j, n) in jobs.iter().zip(FIRST..) {
        assert_fib(j, n);
    }
}

#[test]
fn results_larger_than_one_message_are_read_whole_through_pages() {
    // A 2 MiB message limit: a page of results is bounded at 512 KiB, so a
    // megabyte of results takes several.
    let master = Master::start(&["--max-message-bytes", "2097152"]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let range = format!("{FIRST}..{}", FIRST + COUNT);

    let submitted: Submitted = master.cli(&["submit", "fib", &range]).success().one();
    let got = master
        .cli(&["get", &submitted.batch_id, "--wait"])
        .success()
        .jobs();
    check(&got);

    // The first page alone does not hold them all: paging was needed.
    let page = block_on(master.queue().get(GetRequest {
        batch_id: submitted.batch_id.clone(),
        ..Default::default()
    }))
    .expect("Get")
    .into_inner();
    assert!(
        (page.jobs.len() as u64) < COUNT && !page.next_page_token.is_empty(),
        "one page held {} jobs",
        page.jobs.len()
    );

    let watched = master.cli(&["watch", &submitted.batch_id]).success().jobs();
    let mut watched = watched;
    watched.sort_by_key(|j| j.index);
    check(&watched);

    let mapped = master
        .cli_spawn(&["map", "fib", &range])
        .wait(Duration::from_secs(120))
        .success()
        .jobs();
    check(&mapped);
}

/// The case with the default limits: 100 results of F(n) for n
/// just under 10^7 (2,089,877 digits each, 209 MB in all, three times the
/// 64 MiB message limit) read whole through `get --wait`, `watch` and
/// `map`, every digit count (and the last 18 digits) right. The batch
/// closes, so `get` and `watch` read it from the redb store. About a
/// minute with the test profile, whose worker is built at opt-level 2.
#[test]
fn a_batch_of_200_mb_of_results_is_read_whole_by_get_watch_and_map() {
    const BIG: u64 = 9_999_900;
    const JOBS: u64 = 100;
    let master = Master::start(&[]);
    let _worker = Worker::start(&master.url(), &["--processes", "2"]);
    let range = format!("{BIG}..{}", BIG + JOBS);
    let check = |what: &str, mut jobs: Vec<drover_tests::model::JobLine>| {
        assert_eq!(jobs.len() as u64, JOBS, "{what}: every job, once");
        jobs.sort_by_key(|j| j.index);
        let mut bytes = 0;
        for (j, n) in jobs.iter().zip(BIG..) {
            assert_fib(j, n);
            bytes += j.result.as_str().map_or(0, str::len);
        }
        assert!(bytes > 200_000_000, "{what}: {bytes} bytes of digits");
    };
    let submitted: Submitted = master.cli(&["submit", "fib", &range]).success().one();
    check(
        "get --wait",
        master
            .cli(&["get", &submitted.batch_id, "--wait"])
            .success()
            .jobs(),
    );
    check(
        "watch",
        master.cli(&["watch", &submitted.batch_id]).success().jobs(),
    );
    check(
        "map",
        master
            .cli_spawn(&["map", "fib", &range])
            .wait(Duration::from_secs(600))
            .success()
            .jobs(),
    );
}

/// A result over the worker's `--max-result-bytes` fails the job with a
/// reason naming the flag; the worker goes on with the next job.
#[test]
fn a_result_over_the_byte_limit_fails_naming_the_flag() {
    let master = Master::start(&[]);
    let _worker = Worker::start(&master.url(), &["--max-result-bytes", "1024"]);
    // F(10,000) has 2,090 digits; F(1,000) has 209.
    let big: Submitted = master
        .cli(&["submit", "fib", "10000", "--max-attempts", "1"])
        .success()
        .one();
    // `get` exits non-zero when a job failed.
    let out = master.cli(&["get", &big.batch_id, "--wait"]);
    assert!(!out.status.success(), "{out}");
    let got = out.jobs();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].state, "failed", "{got:?}");
    assert!(
        got[0].error().contains("--max-result-bytes"),
        "the reason names the flag: {got:?}"
    );
    let small = master.cli(&["map", "fib", "1000"]).success().jobs();
    assert_fib(&small[0], 1000);
}

#[test]
fn a_malformed_page_token_names_the_field() {
    let master = Master::start(&[]);
    let submitted: Submitted = master.cli(&["submit", "fib", "10"]).success().one();
    let status = block_on(master.queue().get(GetRequest {
        batch_id: submitted.batch_id,
        page_token: "7".into(),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("page_token:"), "{status:?}");
    // A listing's token is the last job of the page before it.
    let status = block_on(master.queue().list_jobs(pb::ListJobsRequest {
        page_token: "7".into(),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("page_token:"), "{status:?}");
}

/// A Python job whose argument is about `ARG_BYTES` long (it waits,
/// queued: no worker runs Python here).
fn padded_job(n: usize) -> pb::JobSpec {
    const ARG_BYTES: usize = 3000;
    job(
        JobKind::Python,
        format!(
            "tests.listing:f {{\"args\": [{n}, \"{}\"]}}",
            "x".repeat(ARG_BYTES)
        ),
    )
}

/// Submits `batches` batches of 30 padded jobs; returns each batch's id
/// and job ids, in submission order.
fn submit_padded(master: &Master, batches: usize) -> Vec<(String, Vec<String>)> {
    (0..batches)
        .map(|b| {
            let jobs = (0..30).map(|i| padded_job(b * 30 + i)).collect();
            let resp = block_on(master.queue().submit(pb::SubmitRequest {
                jobs,
                ..Default::default()
            }))
            .expect("submit")
            .into_inner();
            (resp.batch_id, resp.job_ids)
        })
        .collect()
}

/// Checks `drover jobs --state STATE` lists `want` (ids, oldest first)
/// whole and once through pages, and says it is truncated exactly when a
/// limit leaves some out.
#[track_caller]
fn assert_listed(master: &Master, state: &str, want: &[String]) {
    let n = want.len();
    for limit in [n + 1000, n, n - 7] {
        let out = master
            .cli(&["jobs", "--state", state, "--limit", &limit.to_string()])
            .success();
        let got: Vec<String> = out.jobs().into_iter().map(|j| j.job_id).collect();
        let shown = limit.min(n);
        assert_eq!(
            got,
            want[..shown],
            "jobs --state {state} --limit {limit}: every job once, oldest first"
        );
        assert_eq!(
            out.stderr.contains("more jobs matched"),
            limit < n,
            "jobs --state {state} --limit {limit}: {}",
            out.stderr
        );
    }
    // One answer alone does not hold them: paging was needed, and each
    // page is well under the 256 KiB message limit.
    let page = block_on(master.queue().list_jobs(pb::ListJobsRequest {
        state: drover_common::job::parse_state(state).unwrap() as i32,
        ..Default::default()
    }))
    .expect("ListJobs")
    .into_inner();
    assert!(
        page.jobs.len() < n && page.truncated && !page.next_page_token.is_empty(),
        "one page held {} of {n} jobs",
        page.jobs.len()
    );
    assert!(prost::Message::encoded_len(&page) < 128 * 1024);
}

#[test]
fn a_listing_larger_than_one_message_is_read_whole_through_pages() {
    // A 256 KiB message limit, and 150 jobs of 3 KB (450 KB): one answer
    // of them all was over the limit, and `jobs` failed with "encoded
    // message length too large".
    const LIMIT: &str = "262144";
    let master = Master::start(&["--store", "memory", "--max-message-bytes", LIMIT]);
    let batches = submit_padded(&master, 5);
    let all: Vec<String> = batches.iter().flat_map(|(_, ids)| ids.clone()).collect();
    assert_listed(&master, "all", &all);
    assert_listed(&master, "queued", &all);
    drop(master);

    // With redb, the jobs of closed batches are read from the store and
    // merged with those in memory: batches 0, 2 and 4 cancelled (closed,
    // and out of memory after a restart), 1 and 3 queued (in memory).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().to_str().expect("a UTF-8 path");
    let redb = [
        "--data-dir",
        data,
        "--store",
        "redb",
        "--max-message-bytes",
        LIMIT,
    ];
    let master = Master::start(&redb);
    let batches = submit_padded(&master, 5);
    for (batch, _) in batches.iter().step_by(2) {
        master.cli(&["cancel", batch]).success();
    }
    master.sigterm();
    master.wait_exit(Duration::from_secs(60));
    let master = Master::start(&redb);
    let ids = |pick: &dyn Fn(usize) -> bool| -> Vec<String> {
        batches
            .iter()
            .enumerate()
            .filter(|(b, _)| pick(*b))
            .flat_map(|(_, (_, ids))| ids.clone())
            .collect()
    };
    assert_listed(&master, "all", &ids(&|_| true));
    assert_listed(&master, "cancelled", &ids(&|b| b % 2 == 0));
    assert_listed(&master, "queued", &ids(&|b| b % 2 == 1));
    // One closed batch, read from the store in pages.
    let (closed, closed_ids) = &batches[2];
    let listed: Vec<String> = master
        .cli(&["jobs", "--batch", closed, "--state", "all"])
        .success()
        .jobs()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(&listed, closed_ids, "jobs --batch of a closed batch");
}
