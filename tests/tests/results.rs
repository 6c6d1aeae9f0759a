//! Results of any size: every answer that carries results is bounded in
//! bytes, and the CLI reads them whole.

use std::time::Duration;

use drover_common::pb::GetRequest;
use drover_tests::grpc::block_on;
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
}
