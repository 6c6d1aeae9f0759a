//! Results a user gets through the real binaries: the seed tables, a mixed
//! map over two workers, bad input refused with a useful gRPC error, and a
//! CLI that says why when the master is unreachable.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drover_common::pb::{
    GetRequest, JobKind, JobSpec, JobState, SubmitRequest, WatchRequest, job_output,
};
use drover_tests::grpc::{block_on, job};
use drover_tests::reference::{fib_u128, is_prime};
use drover_tests::{JobLine, Master, Worker, cli};
use serde_json::Value;
use tonic::Code;

/// The seed's `map fib 2..=20` (its `fib(1..19)`), from issue 2.
const FIB_TABLE: [u64; 19] = [
    1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765,
];

/// The seed's prime table, from issue 2.
const PRIME_TABLE: [(&str, bool); 6] = [
    ("1112272535095293", false),
    ("1112582705942171", true),
    ("1112272535095291", true),
    ("1115280095190773", false),
    ("1115797848077099", false),
    ("11099726899285419", false),
];

fn assert_in_order(jobs: &[JobLine], n: usize) {
    let indexes: Vec<u32> = jobs.iter().map(|j| j.index).collect();
    assert_eq!(
        indexes,
        (0..n as u32).collect::<Vec<_>>(),
        "the map's results are not each there once, in submission order"
    );
}

#[test]
fn seed_tables_through_a_master_and_a_worker_over_tcp() {
    // Its services on one thread (`--runtime-threads 1`); the other tests
    // run the default, a thread per core.
    let master = Master::start(&["--runtime-threads", "1"]);
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);

    let out = master.cli(&["map", "fib", "2..=20"]).success();
    let jobs = out.jobs();
    assert_in_order(&jobs, 19);
    let args: Vec<String> = (2..=20).map(|n: u32| n.to_string()).collect();
    assert_eq!(jobs.iter().map(|j| j.arg.clone()).collect::<Vec<_>>(), args);
    for j in &jobs {
        assert_eq!(
            (j.kind.as_str(), j.state.as_str()),
            ("fib", "succeeded"),
            "{j:?}"
        );
    }
    let results: Vec<&Value> = jobs.iter().map(|j| &j.result).collect();
    let expected: Vec<Value> = FIB_TABLE
        .iter()
        .map(|v| Value::String(v.to_string()))
        .collect();
    assert_eq!(
        results,
        expected.iter().collect::<Vec<_>>(),
        "fib results are JSON strings"
    );
    // The seed's table and an independent computation agree.
    for (n, v) in (2..=20).zip(FIB_TABLE) {
        assert_eq!(fib_u128(n), u128::from(v));
    }

    let primes: Vec<&str> = PRIME_TABLE.iter().map(|(n, _)| *n).collect();
    let mut args = vec!["map", "prime"];
    args.extend(&primes);
    let jobs = master.cli(&args).success().jobs();
    assert_in_order(&jobs, primes.len());
    for (j, (n, is_prime)) in jobs.iter().zip(PRIME_TABLE) {
        assert_eq!(j.arg, n);
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, Value::Bool(is_prime), "prime {n}");
        // Every number of the table is below 2^64: deterministic answers.
        assert_eq!(j.certainty.as_deref(), Some("proven"), "prime {n}");
    }

    // The text output a person reads: `<arg>\t<result>`, True/False.
    let url = master.url();
    let mut args = vec!["--master", url.as_str(), "map", "prime"];
    args.extend(&primes);
    let out = cli::cli_raw(&args).success();
    let expected: Vec<String> = PRIME_TABLE
        .iter()
        .map(|(n, p)| format!("{n}\t{}", if *p { "True" } else { "False" }))
        .collect();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), expected, "{out}");
}

/// What job `i` of the mixed map is, and its expected result.
fn mixed_job(i: u64) -> (JobSpec, job_output::Value) {
    match i % 3 {
        0 => {
            let n = (i * 7) % 187;
            (
                job(JobKind::Fib, n),
                job_output::Value::Fib(fib_u128(n as u32).to_string()),
            )
        }
        1 => {
            let n = 1_000_003 + i;
            (
                job(JobKind::Prime, n),
                job_output::Value::Prime(drover_common::pb::PrimeOutput {
                    is_prime: is_prime(n),
                    certainty: drover_common::pb::Certainty::Proven as i32,
                }),
            )
        }
        _ => {
            let ms = 5 + i % 20;
            (job(JobKind::Sleep, ms), job_output::Value::SleptMs(ms))
        }
    }
}

#[test]
fn map_of_200_mixed_jobs_over_two_workers_gives_every_result_once_in_order() {
    let master = Master::start(&[]);
    let a = Worker::start(&master.url(), &["--processes", "1", "--io-slots", "8"]);
    // The default runtime is one thread; b runs one thread per core, so
    // both give the same answers.
    let b = Worker::start(
        &master.url(),
        &[
            "--processes",
            "1",
            "--io-slots",
            "8",
            "--runtime-threads",
            "0",
        ],
    );
    let (specs, expected): (Vec<JobSpec>, Vec<job_output::Value>) = (0..200).map(mixed_job).unzip();

    let mut queue = master.queue();
    let submitted = block_on(queue.submit(SubmitRequest {
        jobs: specs,
        ..Default::default()
    }))
    .expect("Submit")
    .into_inner();
    assert_eq!(submitted.job_ids.len(), 200);
    let unique: HashSet<&String> = submitted.job_ids.iter().collect();
    assert_eq!(unique.len(), 200, "job ids are not unique");

    // The map's own path: Watch in submission order.
    let watched = block_on(async {
        let mut stream = queue
            .watch(WatchRequest {
                batch_id: submitted.batch_id.clone(),
                ordered: true,
                ..Default::default()
            })
            .await
            .expect("Watch")
            .into_inner();
        let mut jobs = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => panic!(
                    "Watch did not end within 120 s; {} results so far",
                    jobs.len()
                ),
                Ok(Err(e)) => panic!("Watch failed after {} results: {e}", jobs.len()),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(msg))) => {
                    assert_eq!(msg.total, 200);
                    jobs.extend(msg.jobs);
                    // Finished so far, whether or not its turn to be sent has come.
                    assert!(
                        msg.done as usize >= jobs.len() && msg.done <= 200,
                        "Watch says {} done after sending {}",
                        msg.done,
                        jobs.len()
                    );
                }
            }
        }
        jobs
    });
    let indexes: Vec<u32> = watched.iter().map(|j| j.index).collect();
    assert_eq!(
        indexes,
        (0..200).collect::<Vec<_>>(),
        "ordered Watch: every result once, in order"
    );
    for (j, want) in watched.iter().zip(&expected) {
        assert_eq!(j.job_id, submitted.job_ids[j.index as usize]);
        let got = j.output.as_ref().and_then(|o| o.value.clone());
        assert_eq!(
            got.as_ref(),
            Some(want),
            "job {} ({:?} {})",
            j.index,
            j.kind,
            j.arg
        );
    }

    // What a user reads back with the CLI.
    let jobs = master
        .cli(&["get", &submitted.batch_id, "--wait", "--timeout", "60s"])
        .success()
        .jobs();
    assert_in_order(&jobs, 200);
    let mut workers = HashSet::new();
    for (j, want) in jobs.iter().zip(&expected) {
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.attempts, 1, "{j:?}");
        let want = match want {
            job_output::Value::Fib(s) => Value::String(s.clone()),
            job_output::Value::Prime(p) => Value::Bool(p.is_prime),
            job_output::Value::SleptMs(ms) => Value::from(*ms),
            job_output::Value::Json(_) => unreachable!("this test submits no python job"),
        };
        assert_eq!(j.result, want, "{j:?}");
        workers.insert(j.worker().to_string());
    }
    assert_eq!(
        workers,
        HashSet::from([a.name().to_string(), b.name().to_string()]),
        "both workers should have run jobs of the map"
    );
}

/// Submits `specs` and returns the error, which must have `code`.
#[track_caller]
fn refused(master: &Master, specs: Vec<JobSpec>, code: Code) -> String {
    let what = format!(
        "{:?}",
        specs
            .iter()
            .map(|s| (s.kind, &s.arg[..s.arg.len().min(20)]))
            .collect::<Vec<_>>()
    );
    let result = block_on(master.queue().submit(SubmitRequest {
        jobs: specs,
        ..Default::default()
    }));
    let status = match result {
        Ok(r) => panic!("Submit of {what} was accepted: {:?}", r.into_inner()),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "Submit of {what}: {status:?}");
    status.message().to_string()
}

#[track_caller]
fn assert_names(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "the error {message:?} does not name {part:?}"
        );
    }
}

#[test]
fn bad_input_gets_a_grpc_error_naming_the_field_and_the_limit() {
    let master = Master::start(&["--max-batch-jobs", "10"]);
    let invalid = Code::InvalidArgument;

    let msg = refused(&master, vec![job(JobKind::Fib, "-1")], invalid);
    assert_names(&msg, &["jobs[0]", "-1"]);
    let msg = refused(&master, vec![job(JobKind::Fib, "1000000000000")], invalid);
    assert_names(&msg, &["jobs[0]", "1000000000000"]);
    // The limit, apart from the argument that contains its digits.
    assert_names(&msg.replace("1000000000000", ""), &["10000000"]);
    // The field names the job at fault, not always the first.
    let msg = refused(
        &master,
        vec![job(JobKind::Fib, "5"), job(JobKind::Fib, "1000000000000")],
        invalid,
    );
    assert_names(&msg, &["jobs[1]", "10000000"]);
    let msg = refused(&master, vec![job(JobKind::Prime, "12a")], invalid);
    assert_names(&msg, &["jobs[0]", "12a"]);
    let msg = refused(&master, vec![job(JobKind::Prime, "")], invalid);
    assert_names(&msg, &["jobs[0]", "empty"]);
    let msg = refused(
        &master,
        vec![job(JobKind::Prime, "7".repeat(100_000))],
        invalid,
    );
    assert_names(&msg, &["jobs[0]", "100000", "4000"]);
    assert!(
        msg.len() < 1000,
        "the error quotes the whole argument: {} bytes",
        msg.len()
    );
    let msg = refused(
        &master,
        vec![JobSpec {
            kind: 99,
            arg: "1".into(),
            ..Default::default()
        }],
        invalid,
    );
    assert_names(&msg, &["jobs[0]", "kind", "99"]);
    let msg = refused(&master, vec![], invalid);
    assert_names(&msg, &["jobs"]);

    // Over the batch limit: bad input that names the limit. DESIGN.md maps
    // limits to RESOURCE_EXHAUSTED and bad input to INVALID_ARGUMENT; this
    // one is both, so either code is right.
    let eleven: Vec<JobSpec> = (0..11).map(|n| job(JobKind::Fib, n)).collect();
    let status = block_on(master.queue().submit(SubmitRequest {
        jobs: eleven,
        ..Default::default()
    }))
    .expect_err("a batch of 11 jobs was accepted with --max-batch-jobs 10");
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted
        ),
        "a batch over the limit: {status:?}"
    );
    assert_names(status.message(), &["jobs", "10"]);
    // Exactly at the limit is fine (no worker yet: the jobs wait).
    let ten: Vec<JobSpec> = (0..10).map(|n| job(JobKind::Fib, n)).collect();
    block_on(master.queue().submit(SubmitRequest {
        jobs: ten,
        ..Default::default()
    }))
    .expect("a batch of exactly 10 jobs");

    // An unknown job id, well formed: NOT_FOUND.
    let unknown = "01900000-0000-7000-8000-000000000000";
    let status = block_on(master.queue().get(GetRequest {
        job_ids: vec![unknown.into()],
        ..Default::default()
    }))
    .expect_err("Get of an unknown job id succeeded");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_names(status.message(), &[unknown]);
    let status = block_on(master.queue().get(GetRequest {
        batch_id: unknown.into(),
        ..Default::default()
    }))
    .expect_err("Get of an unknown batch id succeeded");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // After all that, the master still serves a correct result.
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let mut queue = master.queue();
    let ids = block_on(queue.submit(SubmitRequest {
        jobs: vec![job(JobKind::Fib, 90)],
        ..Default::default()
    }))
    .expect("Submit of fib 90")
    .into_inner()
    .job_ids;
    let got = block_on(queue.get(GetRequest {
        job_ids: ids,
        wait: true,
        timeout_ms: 60_000,
        ..Default::default()
    }))
    .expect("Get of fib 90")
    .into_inner();
    assert!(got.complete, "fib 90 did not finish within 60 s: {got:?}");
    let value = got.jobs[0].output.as_ref().and_then(|o| o.value.clone());
    assert_eq!(
        value,
        Some(job_output::Value::Fib(fib_u128(90).to_string()))
    );
}

#[test]
fn cli_says_why_in_one_line_when_the_master_is_unreachable() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    // Build first, so that the timing below is the CLI's alone.
    drover_tests::bins::bin("drover");
    for args in [
        &["status"][..],
        &["map", "fib", "1..5"],
        &["submit", "sleep", "10"],
    ] {
        let started = Instant::now();
        let out = cli::cli(&url, args);
        assert!(!out.status.success(), "exit status 0 with no master\n{out}");
        let reason = out.stderr.trim();
        assert!(!reason.is_empty(), "no reason on stderr\n{out}");
        assert_eq!(
            reason.lines().count(),
            1,
            "the reason is not one line\n{out}"
        );
        assert!(
            reason.contains(&format!("127.0.0.1:{port}")),
            "the reason does not name the master\n{out}"
        );
        assert!(
            out.stdout.trim().is_empty(),
            "printed results with no master\n{out}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?} to give up",
            started.elapsed()
        );
    }
}

/// grpcurl speaks reflection v1; grpcio's reflection client and older tools
/// only v1alpha. Both list the services, open without a token.
#[test]
fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};

    let master = Master::start(&[]);
    let url = master.url();
    let want = [
        "drover.v1.Queue",
        "drover.v1.Workers",
        "grpc.health.v1.Health",
    ];
    let channel = block_on(drover_common::net::connect(&url)).expect("connect");

    let v1_names: Vec<String> = block_on(async {
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("a v1 reply")
            .expect("one reply");
        match reply.message_response {
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("v1 answered {other:?}"),
        }
    });
    let v1alpha_names: Vec<String> = block_on(async {
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("a v1alpha reply")
            .expect("one reply");
        match reply.message_response {
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("v1alpha answered {other:?}"),
        }
    });
    for name in want {
        assert!(
            v1_names.iter().any(|n| n == name),
            "v1 lists {v1_names:?}, not {name}"
        );
        assert!(
            v1alpha_names.iter().any(|n| n == name),
            "v1alpha lists {v1alpha_names:?}, not {name}"
        );
    }
}

/// `drover map ... | head -n 1`: the CLI ends quietly when its reader goes
/// away, with no panic on stderr.
#[test]
fn a_cli_whose_output_pipe_closes_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    let master = Master::start(&[]);
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);
    let mut child = Command::new(drover_tests::bins::bin("drover"))
        .args(["--master", &master.url(), "map", "fib", "2..=5000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run drover");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the first line");
    // The reader is dropped here: the pipe is closed after one line.
    assert!(first.starts_with("2\t1"), "first line: {first:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "drover did not end after its pipe closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!stderr.contains("panicked"), "drover panicked: {stderr}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "drover ended with {status:?}: {stderr}"
    );
}

#[test]
fn a_submit_that_waits_answers_with_its_jobs_finished_or_as_they_stand_at_its_timeout() {
    let master = Master::start(&[]);
    let mut queue = master.queue();
    let (specs, expected): (Vec<JobSpec>, Vec<job_output::Value>) = (0..30).map(mixed_job).unzip();

    // No worker yet: the wait ends at its timeout with the jobs queued.
    let started = Instant::now();
    let waited = block_on(queue.submit(SubmitRequest {
        jobs: specs.clone(),
        request_id: "apply-1".into(),
        wait: true,
        timeout_ms: 200,
    }))
    .expect("Submit with wait")
    .into_inner();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let result = waited
        .result
        .expect("a submit with wait answers with its jobs");
    assert!(!result.complete, "no worker ran them: {result:?}");
    let ids: Vec<&String> = result.jobs.iter().map(|j| &j.job_id).collect();
    assert_eq!(ids, waited.job_ids.iter().collect::<Vec<_>>());
    assert!(
        result
            .jobs
            .iter()
            .all(|j| j.state == JobState::Queued as i32)
    );

    // A worker: the same request id again waits for the same batch, with
    // no limit, and answers with every result in submission order.
    let _worker = Worker::start(&master.url(), &["--processes", "1", "--io-slots", "8"]);
    let again = block_on(queue.submit(SubmitRequest {
        jobs: specs,
        request_id: "apply-1".into(),
        wait: true,
        timeout_ms: 0,
    }))
    .expect("Submit with wait, repeated")
    .into_inner();
    assert_eq!(
        again.batch_id, waited.batch_id,
        "the repeat queued a new batch"
    );
    let result = again.result.expect("the repeat answers with its jobs");
    assert!(result.complete, "{result:?}");
    assert!(result.next_page_token.is_empty());
    for (at, (j, want)) in result.jobs.iter().zip(&expected).enumerate() {
        assert_eq!(j.job_id, waited.job_ids[at]);
        assert_eq!(j.index, at as u32);
        assert_eq!(j.state, JobState::Succeeded as i32, "{j:?}");
        assert_eq!(j.output.as_ref().and_then(|o| o.value.as_ref()), Some(want));
    }
    assert_eq!(result.jobs.len(), 30);

    // Without wait, no result; a Get whose timeout no clock can hold is
    // answered, not refused or dropped.
    let plain = block_on(queue.submit(SubmitRequest {
        jobs: vec![job(JobKind::Fib, 10)],
        ..Default::default()
    }))
    .expect("Submit")
    .into_inner();
    assert_eq!(plain.result, None);
    let got = block_on(queue.get(GetRequest {
        batch_id: plain.batch_id,
        wait: true,
        timeout_ms: u64::MAX,
        ..Default::default()
    }))
    .expect("Get with the largest timeout")
    .into_inner();
    assert!(got.complete);
    assert_eq!(
        got.jobs[0].output.as_ref().and_then(|o| o.value.clone()),
        Some(job_output::Value::Fib("55".into()))
    );
}
