//! Security and observability through the real binaries: tokens and their
//! roles, TLS and worker certificates, the refusal to run open on the
//! network, the limits, the Prometheus metrics, and malformed input to the
//! master and to a child process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drover_common::net::ClientOptions;
use drover_common::pb::{
    self, CancelRequest, JobKind, StatsRequest, SubmitRequest, WatchRequest, child_result,
    job_output, worker_message,
};
use drover_tests::bins::bin;
use drover_tests::grpc::{block_on, job};
use drover_tests::reference::{fib_u128, is_prime};
use drover_tests::security::{
    ChildProc, Metrics, Pki, RawReply, Rng, connect_worker, free_port, grpc_frame, options, queue,
    raw_call, scrape, stats,
};
use drover_tests::{Master, Worker, cli, wait_for, wait_until};
use prost::Message;
use serde_json::Value;
use tonic::Code;

const CLIENT: &str = "client-s3cret";
const WORKER: &str = "worker-s3cret";

/// The seed's `map fib 2..=20`.
fn fib_table() -> Vec<Value> {
    (2..=20)
        .map(|n| Value::String(fib_u128(n).to_string()))
        .collect()
}

/// Submits one fib job; the status code if refused.
fn submit(url: &str, opts: &ClientOptions) -> Result<(), Code> {
    block_on(queue(url, opts).submit(SubmitRequest {
        jobs: vec![job(JobKind::Fib, 10)],
        ..Default::default()
    }))
    .map(|_| ())
    .map_err(|s| s.code())
}

/// Asserts that the master holds no job and no worker.
#[track_caller]
fn assert_untouched(url: &str, opts: &ClientOptions) {
    let s = stats(url, opts);
    assert_eq!(
        (s.queued, s.running, s.succeeded, s.failed, s.cancelled),
        (0, 0, 0, 0, 0),
        "a refused call changed the queue: {s:?}"
    );
    assert!(s.workers.is_empty(), "a refused worker is listed: {s:?}");
}

/// Waits until the master lists a worker named `name` with its pool up.
fn wait_registered(url: &str, opts: &ClientOptions, name: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("worker {name} to register"),
        || {
            stats(url, opts)
                .workers
                .iter()
                .any(|w| w.name == name && w.child_pids.len() as u32 == w.cpu_slots)
        },
    );
}

#[test]
fn tokens_let_each_role_call_only_its_own_service() {
    let files = Pki::new();
    let client_file = files.write("client.token", &format!("{CLIENT}\n"));
    let master = Master::start(&[
        "--client-token-file",
        &client_file,
        "--worker-token",
        WORKER,
    ]);
    let url = master.url();
    let good = options(None, None, Some(CLIENT));
    let none = options(None, None, None);
    let wrong = options(None, None, Some("not-the-token"));
    let worker_token = options(None, None, Some(WORKER));

    // The Queue service.
    assert_eq!(submit(&url, &none), Err(Code::Unauthenticated));
    assert_eq!(submit(&url, &wrong), Err(Code::Unauthenticated));
    assert_eq!(submit(&url, &worker_token), Err(Code::PermissionDenied));
    let e = block_on(queue(&url, &none).stats(StatsRequest {})).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("--token"),
        "the refusal says what to do: {e:?}"
    );
    let e = block_on(queue(&url, &none).watch(WatchRequest {
        batch_id: uuid_like(),
        ordered: false,
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = block_on(queue(&url, &worker_token).cancel(CancelRequest {
        job_ids: vec![uuid_like()],
        batch_id: String::new(),
    }))
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The Workers service.
    let code = |opts: &ClientOptions| connect_worker(&url, opts).map_err(|s| s.code());
    assert_eq!(code(&good), Err(Code::PermissionDenied));
    assert_eq!(code(&none), Err(Code::Unauthenticated));
    assert_eq!(code(&wrong), Err(Code::Unauthenticated));
    assert_untouched(&url, &good);

    // Health stays open.
    cli::cli_raw(&["--master", &url, "health"]).success();

    // The CLI says why it was refused.
    let out = cli::cli_raw(&["--master", &url, "--token", "nope", "status"]);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("unauthenticated"), "{out}");

    // A worker with the client token is refused, and says so in its log.
    let impostor = Worker::spawn(
        &url,
        &[
            "--processes",
            "1",
            "--token",
            CLIENT,
            "--metrics-listen",
            "off",
        ],
    );
    wait_until(
        Duration::from_secs(30),
        "the impostor worker to log its refusal",
        || impostor.log().contains("PermissionDenied"),
    );
    assert_untouched(&url, &good);
    drop(impostor);

    // The real worker, its token from a file, runs the client's jobs.
    let worker_file = files.write("worker.token", WORKER);
    let worker = Worker::spawn(
        &url,
        &[
            "--processes",
            "1",
            "--token-file",
            &worker_file,
            "--metrics-listen",
            "off",
        ],
    );
    wait_registered(&url, &good, worker.name());
    let out = cli::cli_raw(&[
        "--master",
        &url,
        "--output",
        "json",
        "--token-file",
        &client_file,
        "map",
        "fib",
        "2..=20",
    ])
    .success();
    let results: Vec<Value> = out.jobs().into_iter().map(|j| j.result).collect();
    assert_eq!(results, fib_table());
}

/// A well-formed id that names nothing.
fn uuid_like() -> String {
    "0190a0a0-0000-7000-8000-000000000000".into()
}

#[test]
fn tls_with_worker_certificates_refuses_what_it_cannot_trust() {
    let pki = Pki::new();
    let master = Master::start(&[
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--client-ca",
        &pki.arg("ca.pem"),
        "--client-token",
        CLIENT,
        "--worker-token",
        WORKER,
    ]);
    let url = format!("https://127.0.0.1:{}", master.addr().port());
    let ca = pki.path("ca.pem");
    let good = options(Some(&ca), None, Some(CLIENT));
    assert_untouched(&url, &good);

    // A plain-text client against the TLS master.
    let plain = options(None, None, Some(CLIENT));
    let e = block_on(queue(&master.url(), &plain).stats(StatsRequest {})).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("https://"),
        "the refusal says what to do: {e:?}"
    );
    assert_eq!(submit(&master.url(), &plain), Err(Code::Unavailable));

    // A client that does not trust the master's certificate.
    let rogue_ca = pki.path("rogue-ca.pem");
    let untrusting = options(Some(&rogue_ca), None, Some(CLIENT));
    assert_eq!(submit(&url, &untrusting), Err(Code::Unavailable));
    let out = cli::cli_raw(&[
        "--master",
        &url,
        "--ca",
        &pki.arg("rogue-ca.pem"),
        "--token",
        CLIENT,
        "status",
    ]);
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("certificate"), "{out}");

    // Workers: no client certificate, one from another CA, and the right
    // certificate with the wrong role's token.
    let code = |opts: &ClientOptions| connect_worker(&url, opts).map_err(|s| s.code());
    assert_eq!(
        code(&options(Some(&ca), None, Some(WORKER))),
        Err(Code::Unauthenticated)
    );
    // A certificate from another CA fails the handshake: with TLS 1.3 the
    // client learns it from the master's alert after its own side is
    // done, so the code it reports is the transport's.
    let rogue_cert = (pki.path("rogue-client.pem"), pki.path("rogue-client.key"));
    let e = connect_worker(
        &url,
        &options(
            Some(&ca),
            Some((&rogue_cert.0, &rogue_cert.1)),
            Some(WORKER),
        ),
    )
    .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Unknown),
        "{e:?}"
    );
    let cert = (pki.path("client.pem"), pki.path("client.key"));
    assert_eq!(
        code(&options(Some(&ca), Some((&cert.0, &cert.1)), Some(CLIENT))),
        Err(Code::PermissionDenied)
    );
    assert_untouched(&url, &good);

    // A worker with an https URL and no --ca stops at once and says why.
    let lost = Worker::spawn(&url, &["--processes", "1", "--token", WORKER]);
    let status = lost.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(lost.log().contains("--ca"), "{}", lost.log());

    // The real thing: a worker with its certificate, and the CLI, over TLS.
    let worker = Worker::spawn(
        &url,
        &[
            "--processes",
            "1",
            "--ca",
            &pki.arg("ca.pem"),
            "--tls-cert",
            &pki.arg("client.pem"),
            "--tls-key",
            &pki.arg("client.key"),
            "--token",
            WORKER,
            "--metrics-listen",
            "off",
        ],
    );
    wait_registered(&url, &good, worker.name());
    let out = cli::cli_raw(&[
        "--master",
        &url,
        "--output",
        "json",
        "--ca",
        &pki.arg("ca.pem"),
        "--token",
        CLIENT,
        "map",
        "fib",
        "2..=20",
    ])
    .success();
    let results: Vec<Value> = out.jobs().into_iter().map(|j| j.result).collect();
    assert_eq!(results, fib_table());
    cli::cli_raw(&["--master", &url, "--ca", &pki.arg("ca.pem"), "health"]).success();
}

/// Starts `drover-master ARGS` with a clean environment plus `env`, and
/// returns its first stdout line, or its failure (status and stderr) if it
/// exits first. A master that starts is killed.
fn try_master(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new(bin("drover-master"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .args(["--store", "memory", "--metrics-listen", "off"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start drover-master");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("drover-master neither printed nor exited within 30 s");
    if line.is_empty() {
        let out = child.wait_with_output().expect("cannot reap drover-master");
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(line)
}

#[test]
fn a_master_with_a_key_or_ca_it_cannot_parse_exits_naming_the_file() {
    let pki = Pki::new();
    let key = pki.write(
        "garbled.key",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    // Before it listens: a master that prints its address has started.
    let err = try_master(
        &["--tls-cert", &pki.arg("server.pem"), "--tls-key", &key],
        &[],
    )
    .expect_err("a master with a garbled key started");
    assert!(err.contains("garbled.key"), "{err}");
    assert!(err.contains("--tls-key"), "{err}");

    // A CA that does not parse is named as the CA, not as the pair.
    let ca = pki.write(
        "garbled-ca.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    let err = try_master(
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--client-ca",
            &ca,
        ],
        &[],
    )
    .expect_err("a master with a garbled CA started");
    assert!(err.contains("--client-ca"), "{err}");
    assert!(err.contains("garbled-ca.pem"), "{err}");
    assert!(!err.contains("--tls-key"), "{err}");
}

#[test]
fn a_master_open_to_the_network_refuses_to_start() {
    // These bind 0.0.0.0 only to see whether the master starts; nothing is
    // sent to it.
    let e = try_master(&["--listen", "0.0.0.0:0"], &[]).unwrap_err();
    assert!(e.contains("refusing to listen on 0.0.0.0"), "{e}");
    assert!(
        e.contains("--client-token") && e.contains("--worker-token") && e.contains("--insecure"),
        "the refusal names the way out: {e}"
    );
    let e = try_master(&["--listen", "0.0.0.0:0", "--client-token", CLIENT], &[]).unwrap_err();
    assert!(
        e.contains("--worker-token") && !e.contains("--client-token or"),
        "{e}"
    );

    let line = try_master(&["--listen", "0.0.0.0:0", "--insecure"], &[]).unwrap();
    assert!(
        line.starts_with("drover-master listening on 0.0.0.0:"),
        "{line}"
    );
    let line = try_master(&["--listen", "0.0.0.0:0"], &[("DROVER_INSECURE", "true")]).unwrap();
    assert!(line.starts_with("drover-master listening on"), "{line}");
    let line = try_master(
        &["--listen", "0.0.0.0:0", "--client-token", CLIENT],
        &[("DROVER_WORKER_TOKEN", WORKER)],
    )
    .unwrap();
    assert!(line.starts_with("drover-master listening on"), "{line}");
    // Loopback needs nothing.
    let line = try_master(&["--listen", "127.0.0.1:0"], &[]).unwrap();
    assert!(
        line.starts_with("drover-master listening on 127.0.0.1:"),
        "{line}"
    );
    // One token for both roles would make them one role.
    let e = try_master(
        &[
            "--listen",
            "127.0.0.1:0",
            "--client-token",
            "same",
            "--worker-token",
            "same",
        ],
        &[],
    )
    .unwrap_err();
    assert!(e.contains("the same"), "{e}");
}

#[test]
fn limits_refuse_with_resource_exhausted_naming_their_flag() {
    let master = Master::start(&[
        "--max-batch-jobs",
        "4",
        "--max-queued",
        "6",
        "--max-watches-per-client",
        "2",
        "--max-message-bytes",
        "65536",
    ]);
    let mut q = master.queue();
    let jobs = |n: u64| SubmitRequest {
        jobs: (0..n).map(|i| job(JobKind::Fib, i)).collect(),
        ..Default::default()
    };
    let refused = |r: Result<tonic::Response<pb::SubmitResponse>, tonic::Status>, flag: &str| {
        let e = r.expect_err("accepted over the limit");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains(flag), "{e:?} does not name {flag}");
    };

    refused(block_on(q.submit(jobs(5))), "--max-batch-jobs");
    let first = block_on(q.submit(jobs(4))).expect("4 jobs").into_inner();
    refused(block_on(q.submit(jobs(3))), "--max-queued");
    let mut named = jobs(2);
    named.request_id = "fills-the-queue".into();
    let filled = block_on(q.submit(named.clone()))
        .expect("exactly up to the limit")
        .into_inner();
    refused(block_on(q.submit(jobs(1))), "--max-queued");
    // With the queue full, a batch too big is told it is too big, and a
    // submit sent again gets its batch back rather than "queue full".
    refused(block_on(q.submit(jobs(5))), "--max-batch-jobs");
    let again = block_on(q.submit(named))
        .expect("a repeated request is answered")
        .into_inner();
    assert_eq!(again.batch_id, filled.batch_id);
    let big = SubmitRequest {
        jobs: vec![job(JobKind::Prime, "7".repeat(70_000))],
        ..Default::default()
    };
    refused(block_on(q.submit(big)), "--max-message-bytes");
    assert_eq!(master.stats().queued, 6);

    // Watch streams per client: no worker, so the watches stay open.
    let watch = |q: &mut drover_common::pb::queue_client::QueueClient<_>| {
        block_on(q.watch(WatchRequest {
            batch_id: first.batch_id.clone(),
            ordered: false,
            ..Default::default()
        }))
    };
    let one = watch(&mut q).expect("a first watch");
    let _two = watch(&mut q).expect("a second watch");
    let e = watch(&mut q).expect_err("a third watch was accepted");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-watches-per-client"), "{e:?}");
    // Another connection from the same address counts too.
    assert_eq!(
        watch(&mut master.queue()).map(|_| ()).unwrap_err().code(),
        Code::ResourceExhausted
    );
    // A closed watch gives its slot back.
    drop(one);
    wait_until(Duration::from_secs(10), "a freed watch slot", || {
        watch(&mut q).is_ok()
    });
}

#[test]
fn metrics_rise_as_jobs_run_and_parse_as_prometheus_text() {
    let (mport, wport) = (free_port(), free_port());
    let master = Master::start(&["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    let worker = Worker::start(
        &master.url(),
        &[
            "--processes",
            "1",
            "--metrics-listen",
            &format!("127.0.0.1:{wport}"),
        ],
    );
    let before = Metrics::parse(scrape(mport));
    let wbefore = Metrics::parse(scrape(wport));
    for name in [
        "drover_queue_jobs",
        "drover_jobs_submitted_total",
        "drover_jobs_completed_total",
        "drover_jobs_failed_total",
        "drover_jobs_retried_total",
        "drover_jobs_cancelled_total",
        "drover_job_run_seconds",
        "drover_job_queue_wait_seconds",
        "drover_workers_connected",
        "drover_pool_processes_restarted",
        "drover_late_results_dropped_total",
        "drover_store_commit_seconds",
        "drover_requests_refused_total",
    ] {
        assert!(
            before.scrape.docs.contains_key(name),
            "no {name} in the master's metrics\n{}",
            before.text
        );
    }
    let fib = [("kind", "fib")];
    let sleep = [("kind", "sleep")];

    master.cli(&["map", "fib", "0..40"]).success();
    // A sleep that times out twice: retried once, then failed.
    let out = master.cli(&[
        "apply",
        "sleep",
        "5000",
        "--timeout",
        "20ms",
        "--max-attempts",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    // A sleep cancelled while it runs.
    let submitted: Value = master.cli(&["submit", "sleep", "60000"]).success().json()[0].clone();
    let id = submitted["job_ids"][0]
        .as_str()
        .expect("a job id")
        .to_string();
    wait_until(Duration::from_secs(30), "the sleep to run", || {
        master.stats().running == 1
    });
    master.cli(&["cancel", &id]).success();

    let after = wait_for(
        Duration::from_secs(30),
        "the metrics to count the jobs",
        || {
            let m = Metrics::parse(scrape(mport));
            let done = m.value("drover_jobs_completed_total", &fib)
                >= before.value("drover_jobs_completed_total", &fib) + 40.0
                && m.value("drover_jobs_cancelled_total", &sleep) >= 1.0
                && m.value("drover_jobs_failed_total", &sleep) >= 1.0;
            done.then_some(m)
        },
    );
    let rose = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(rose("drover_jobs_submitted_total", &fib), 40.0);
    assert_eq!(rose("drover_jobs_submitted_total", &sleep), 2.0);
    assert_eq!(rose("drover_jobs_completed_total", &fib), 40.0);
    assert_eq!(rose("drover_jobs_failed_total", &sleep), 1.0);
    assert_eq!(rose("drover_jobs_retried_total", &sleep), 1.0);
    assert_eq!(rose("drover_jobs_cancelled_total", &sleep), 1.0);
    let hist_rose = |m: &Metrics, b: &Metrics, name: &str| {
        m.histogram_count(name, &fib) - b.histogram_count(name, &fib)
    };
    assert_eq!(hist_rose(&after, &before, "drover_job_run_seconds"), 40.0);
    assert_eq!(
        hist_rose(&after, &before, "drover_job_queue_wait_seconds"),
        40.0
    );
    assert_eq!(after.value("drover_workers_connected", &[]), 1.0);
    assert_eq!(
        after.value("drover_queue_jobs", &[("state", "succeeded")]),
        40.0
    );
    assert_eq!(
        after.value("drover_queue_jobs", &[("state", "cancelled")]),
        1.0
    );
    assert!(
        after.histogram_count("drover_store_commit_seconds", &[])
            > before.histogram_count("drover_store_commit_seconds", &[]),
        "no store commit was timed\n{}",
        after.text
    );

    let name = worker.name();
    let wfib = [("worker", name), ("kind", "fib")];
    let wafter = wait_for(Duration::from_secs(10), "the worker's metrics", || {
        let m = Metrics::parse(scrape(wport));
        (m.value("drover_worker_jobs_completed_total", &wfib) >= 40.0).then_some(m)
    });
    assert_eq!(
        wafter.value("drover_worker_jobs_completed_total", &wfib)
            - wbefore.value("drover_worker_jobs_completed_total", &wfib),
        40.0
    );
    assert_eq!(
        wafter.histogram_count("drover_worker_job_run_seconds", &wfib),
        40.0
    );
    let w = [("worker", name)];
    assert_eq!(wafter.value("drover_worker_connected", &w), 1.0);
    assert_eq!(wafter.value("drover_worker_pool_processes", &w), 1.0);
    assert_eq!(wafter.value("drover_worker_jobs_cancelled_total", &w), 1.0);
    assert_eq!(wafter.value("drover_worker_jobs_held", &w), 0.0);
    assert!(
        wafter.value(
            "drover_worker_jobs_failed_total",
            &[("worker", name), ("kind", "sleep")]
        ) >= 2.0
    );
}

/// The methods a raw request may name, with a valid message for each.
const PATHS: [&str; 11] = [
    "/drover.v1.Queue/Submit",
    "/drover.v1.Queue/Get",
    "/drover.v1.Queue/Watch",
    "/drover.v1.Queue/Cancel",
    "/drover.v1.Queue/Stats",
    "/drover.v1.Queue/ListJobs",
    "/drover.v1.Queue/Retry",
    "/drover.v1.Queue/Limits",
    "/drover.v1.Workers/Connect",
    "/drover.v1.Queue/NoSuchMethod",
    "/no.such.Service/Call",
];

/// A random string: digits, text, odd characters, or nothing.
fn random_arg(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.below(2000).to_string(),
        1 => String::new(),
        2 => "9".repeat(1 + rng.below(60) as usize),
        3 => "-1".into(),
        4 => "\u{0}\u{feff}é∞ 12".into(),
        _ => (0..rng.below(20))
            .map(|_| (b' ' + rng.below(95) as u8) as char)
            .collect(),
    }
}

/// A valid message for `path`, with random content.
fn valid_message(rng: &mut Rng, path: &str) -> Vec<u8> {
    let id = |rng: &mut Rng| {
        if rng.percent(50) {
            uuid_like()
        } else {
            random_arg(rng)
        }
    };
    match path {
        "/drover.v1.Queue/Submit" => SubmitRequest {
            request_id: if rng.percent(20) {
                id(rng)
            } else {
                String::new()
            },
            jobs: (0..rng.below(4))
                .map(|_| pb::JobSpec {
                    kind: *rng.pick(&[0, 1, 2, 3, 7, -1]),
                    arg: random_arg(rng),
                    priority: rng.next_u64() as i32,
                    timeout_ms: rng.below(1000),
                    max_attempts: rng.below(200) as u32,
                    idempotency_key: String::new(),
                    limits: if rng.percent(20) {
                        vec![pb::JobLimit {
                            name: random_arg(rng),
                            permits: rng.below(3) as u32,
                        }]
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            // A wait never without limit: the workers may be gone.
            wait: rng.percent(20),
            timeout_ms: 1 + rng.below(50),
        }
        .encode_to_vec(),
        "/drover.v1.Queue/Get" => pb::GetRequest {
            job_ids: vec![id(rng)],
            batch_id: String::new(),
            wait: rng.percent(50),
            timeout_ms: rng.below(50),
            page_token: if rng.percent(50) {
                rng.below(1_000_000).to_string()
            } else {
                id(rng)
            },
        }
        .encode_to_vec(),
        "/drover.v1.Queue/Watch" => WatchRequest {
            batch_id: id(rng),
            ordered: rng.percent(50),
            resume_from: rng.next_u64() as u32,
            received: (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
        }
        .encode_to_vec(),
        "/drover.v1.Queue/Cancel" => CancelRequest {
            job_ids: vec![id(rng)],
            batch_id: String::new(),
        }
        .encode_to_vec(),
        "/drover.v1.Queue/ListJobs" => pb::ListJobsRequest {
            state: rng.below(8) as i32 - 1,
            limit: rng.below(10) as u32,
            batch_id: if rng.percent(50) {
                String::new()
            } else {
                id(rng)
            },
            page_token: match rng.below(3) {
                0 => String::new(),
                1 => id(rng),
                _ => random_arg(rng),
            },
        }
        .encode_to_vec(),
        "/drover.v1.Queue/Retry" => pb::RetryRequest {
            job_ids: vec![id(rng)],
            batch_id: String::new(),
            all_failed: false,
        }
        .encode_to_vec(),
        "/drover.v1.Queue/Limits" => pb::LimitsRequest {
            name: random_arg(rng),
        }
        .encode_to_vec(),
        "/drover.v1.Workers/Connect" => {
            let msg = match rng.below(3) {
                0 => worker_message::Msg::Hello(pb::Hello {
                    protocol: rng.below(3) as u32,
                    name: random_arg(rng),
                    cpu_slots: rng.below(4) as u32,
                    ..Default::default()
                }),
                1 => worker_message::Msg::Credit(pb::Credit {
                    cpu: 5,
                    io: 5,
                    python: 0,
                }),
                _ => worker_message::Msg::Results(pb::Results {
                    results: vec![pb::JobResult {
                        job_id: id(rng),
                        attempt: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            };
            pb::WorkerMessage { msg: Some(msg) }.encode_to_vec()
        }
        _ => StatsRequest {}.encode_to_vec(),
    }
}

/// Protobuf-shaped noise: fields of random numbers with random wire types
/// (so known fields arrive with the wrong type), and invalid UTF-8.
fn protobuf_noise(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let field = 1 + rng.below(16);
        let wire = *rng.pick(&[0u64, 1, 2, 5, 3, 4, 6, 7]);
        out.push(((field << 3) | wire) as u8);
        match wire {
            0 => {
                let n = 1 + rng.below(10) as usize;
                out.extend(rng.bytes(n))
            }
            1 => out.extend(rng.bytes(8)),
            5 => out.extend(rng.bytes(4)),
            2 => {
                let n = rng.below(12) as usize;
                out.push(n as u8);
                if rng.percent(50) {
                    out.extend([0xff, 0xfe, 0xc0][..n.min(3)].iter());
                    out.extend(rng.bytes(n.saturating_sub(3)));
                } else {
                    out.extend(rng.bytes(n));
                }
            }
            _ => {}
        }
    }
    out
}

/// One random request: its path, token and body, and the code it must get
/// when the answer is fixed by construction.
fn random_request(
    rng: &mut Rng,
    limit: u32,
) -> (&'static str, Option<&'static str>, Vec<u8>, Option<Code>) {
    let path = *rng.pick(&PATHS);
    // An unknown method of a known service still meets its token check.
    let gated = !path.starts_with("/no.");
    let known = gated && !path.contains("NoSuch");
    let worker = path.contains("Workers");
    let token = match rng.below(20) {
        0 => None,
        1 => Some("forged"),
        2 => Some(if worker { CLIENT } else { WORKER }),
        _ => Some(if worker { WORKER } else { CLIENT }),
    };
    let right_token = token == Some(if worker { WORKER } else { CLIENT });
    let (body, oversize) = match rng.below(10) {
        0 => (rng.some_bytes(300), false),
        1 => {
            let payload = rng.some_bytes(200);
            (grpc_frame(0, payload.len() as u32, &payload), false)
        }
        2 => {
            let payload = protobuf_noise(rng);
            (grpc_frame(0, payload.len() as u32, &payload), false)
        }
        3 => {
            // A valid message, damaged: bytes flipped or cut short.
            let mut payload = valid_message(rng, path);
            if !payload.is_empty() {
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(payload.len() as u64) as usize;
                    payload[i] ^= 1 << rng.below(8);
                }
                if rng.percent(50) {
                    payload.truncate(rng.below(payload.len() as u64) as usize);
                }
            }
            (grpc_frame(0, payload.len() as u32, &payload), false)
        }
        4 => {
            // A truncated stream: the frame declares more than is sent.
            let payload = valid_message(rng, path);
            let declared = payload.len() as u32 + 1 + rng.below(1000) as u32;
            (grpc_frame(0, declared, &payload), false)
        }
        5 => {
            // Compressed without an encoding, or an unknown flag.
            let payload = valid_message(rng, path);
            let flag = if rng.percent(50) {
                1
            } else {
                2 + rng.below(250) as u8
            };
            (grpc_frame(flag, payload.len() as u32, &payload), false)
        }
        6 => {
            // Two messages where one is expected, or none at all.
            if rng.percent(50) {
                let a = valid_message(rng, path);
                let b = valid_message(rng, path);
                let mut body = grpc_frame(0, a.len() as u32, &a);
                body.extend(grpc_frame(0, b.len() as u32, &b));
                (body, false)
            } else {
                (Vec::new(), false)
            }
        }
        7 => {
            // Declared over the limit; the body is never sent in full.
            let declared = limit + 1 + rng.below(u64::from(u32::MAX - limit - 1)) as u32;
            (grpc_frame(0, declared, &rng.bytes(16)), true)
        }
        _ => {
            let payload = valid_message(rng, path);
            (grpc_frame(0, payload.len() as u32, &payload), false)
        }
    };
    let expect = match (gated, token, right_token) {
        (false, _, _) => Some(Code::Unimplemented),
        (true, None, _) => Some(Code::Unauthenticated),
        (true, Some("forged"), _) => Some(Code::Unauthenticated),
        (true, Some(_), false) => Some(Code::PermissionDenied),
        (true, Some(_), true) if !known => Some(Code::Unimplemented),
        (true, Some(_), true) if oversize => Some(Code::ResourceExhausted),
        _ => None,
    };
    (path, token, body, expect)
}

/// Codes a malformed or random request may get from a master that is
/// working as it should.
const ACCEPTABLE: [Code; 8] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::Internal,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::DeadlineExceeded,
    Code::OutOfRange,
];

#[test]
fn ten_thousand_malformed_requests_leave_the_master_serving() {
    const REQUESTS: usize = 10_000;
    const LIMIT: u32 = 1 << 20;
    let master = Master::start(&[
        "--client-token",
        CLIENT,
        "--worker-token",
        WORKER,
        "--max-message-bytes",
        &LIMIT.to_string(),
        // What random input may validly ask for stays cheap.
        "--max-fib-n",
        "2000",
        "--max-prime-digits",
        "30",
        "--max-sleep-ms",
        "20",
        "--max-watches-per-client",
        "10000",
    ]);
    let url = master.url();
    let good = options(None, None, Some(CLIENT));
    let worker = Worker::spawn(
        &url,
        &[
            "--processes",
            "1",
            "--token",
            WORKER,
            "--metrics-listen",
            "off",
        ],
    );
    wait_registered(&url, &good, worker.name());

    let seed = 0x5eed_d20e;
    let mut rng = Rng::new(seed);
    let mut cases: Vec<_> = (0..REQUESTS)
        .map(|_| random_request(&mut rng, LIMIT))
        .collect();
    // A few bodies really over the limit.
    for (i, case) in cases.iter_mut().take(5).enumerate() {
        let payload = vec![b'x'; LIMIT as usize + 1 + i];
        *case = (
            "/drover.v1.Queue/Submit",
            Some(CLIENT),
            grpc_frame(0, payload.len() as u32, &payload),
            Some(Code::ResourceExhausted),
        );
    }
    let channel = block_on(async { drover_common::net::endpoint(&url).map(|e| e.connect_lazy()) })
        .expect("a valid URL");
    let started = Instant::now();
    let replies: Vec<(usize, Result<RawReply, String>)> = block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(REQUESTS);
        for (i, (path, token, body, _)) in cases.iter().cloned().enumerate() {
            if set.len() >= 64
                && let Some(done) = set.join_next().await
            {
                out.push(done.expect("a request task panicked"));
            }
            let channel = channel.clone();
            // One in a hundred is given up mid-way: a stream reset.
            let cancel = i % 100 == 99;
            set.spawn(async move {
                let call = raw_call(channel, path, token, body);
                let result = if cancel {
                    match tokio::time::timeout(Duration::from_micros(200), call).await {
                        Ok(r) => r,
                        Err(_) => Ok(RawReply {
                            http: 0,
                            code: None,
                            message: "cancelled by the test".into(),
                        }),
                    }
                } else {
                    match tokio::time::timeout(Duration::from_secs(30), call).await {
                        Ok(r) => r,
                        Err(_) => Err("no answer within 30 s".into()),
                    }
                };
                (i, result)
            });
        }
        while let Some(done) = set.join_next().await {
            out.push(done.expect("a request task panicked"));
        }
        out
    });
    let elapsed = started.elapsed();

    let mut codes = std::collections::BTreeMap::new();
    for (i, result) in &replies {
        let (path, token, body, expect) = &cases[*i];
        let what = || {
            format!(
                "request {i} (seed {seed:#x}): {path}, token {token:?}, {} body bytes starting {:02x?}",
                body.len(),
                &body[..body.len().min(24)]
            )
        };
        let reply = match result {
            Ok(r) => r,
            Err(e) => panic!("{}: {e}", what()),
        };
        if reply.message == "cancelled by the test" {
            continue;
        }
        let code = reply
            .code
            .unwrap_or_else(|| panic!("{}: no gRPC status (HTTP {})", what(), reply.http));
        *codes.entry(format!("{code:?}")).or_insert(0u32) += 1;
        if let Some(expect) = expect {
            assert_eq!(code, *expect, "{}: {}", what(), reply.message);
        } else {
            assert!(
                ACCEPTABLE.contains(&code),
                "{}: {code:?} {}",
                what(),
                reply.message
            );
        }
    }
    eprintln!("{REQUESTS} malformed requests in {elapsed:?}: {codes:?}");

    // The master still serves correct results, through the same worker.
    cli::cli_raw(&["--master", &url, "health"]).success();
    wait_until(
        Duration::from_secs(30),
        "the handmade sessions to end",
        || stats(&url, &good).workers.len() == 1,
    );
    let out = cli::cli_raw(&[
        "--master", &url, "--output", "json", "--token", CLIENT, "map", "fib", "0..=120",
    ])
    .success();
    let results: Vec<Value> = out.jobs().into_iter().map(|j| j.result).collect();
    let expected: Vec<Value> = (0..=120)
        .map(|n| Value::String(fib_u128(n).to_string()))
        .collect();
    assert_eq!(results, expected);
    let out = cli::cli_raw(&[
        "--master",
        &url,
        "--output",
        "json",
        "--token",
        CLIENT,
        "map",
        "prime",
        "1112582705942171",
        "1112272535095293",
    ])
    .success();
    let results: Vec<Value> = out.jobs().into_iter().map(|j| j.result).collect();
    assert_eq!(results, [Value::Bool(true), Value::Bool(false)]);
}

/// A child frame: a little-endian length, then the bytes.
fn child_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// What a child must answer for a job, when it can be known here.
fn check_child_result(kind: i32, arg: &str, outcome: &Option<child_result::Outcome>) {
    let output = match outcome {
        Some(child_result::Outcome::Output(o)) => o.value.as_ref(),
        Some(child_result::Outcome::Failure(f)) => {
            let valid_fib = kind == 1
                && !arg.is_empty()
                && arg.bytes().all(|b| b.is_ascii_digit())
                && arg.parse::<u64>().is_ok();
            let valid_prime =
                kind == 2 && !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit());
            assert!(
                !valid_fib && !valid_prime,
                "job {kind} {arg:?} failed: {}",
                f.reason
            );
            assert!(!f.retryable, "bad input is not worth a retry: {f:?}");
            return;
        }
        None => panic!("job {kind} {arg:?} got an empty result"),
    };
    match (kind, output) {
        (1, Some(job_output::Value::Fib(v))) => {
            let n: u32 = arg.parse().expect("a fib that succeeded has a number");
            if n <= 186 {
                assert_eq!(v, &fib_u128(n).to_string(), "F({n})");
            } else {
                assert!(v.bytes().all(|b| b.is_ascii_digit()), "F({n}) = {v:?}");
            }
        }
        (2, Some(job_output::Value::Prime(p))) => {
            if let Ok(n) = arg.parse::<u64>() {
                assert_eq!(p.is_prime, is_prime(n), "is_prime({n})");
            }
        }
        other => panic!("job {kind} {arg:?} answered {other:?}"),
    }
}

/// A random argument for a child job, cheap to compute whatever it is.
fn child_arg(rng: &mut Rng, kind: i32) -> String {
    let arg = random_child_arg(rng, kind);
    // The child trusts the master's limits: a random F(10^18) would run
    // for ever.
    if kind == 1 && arg.parse::<u64>().is_ok_and(|n| n > 10_000) {
        return "10".into();
    }
    arg
}

fn random_child_arg(rng: &mut Rng, kind: i32) -> String {
    match rng.below(5) {
        0 if kind == 2 => (0..1 + rng.below(25))
            .map(|_| (b'0' + rng.below(10) as u8) as char)
            .collect(),
        0 | 1 => rng.below(3000).to_string(),
        2 => random_arg(rng),
        3 => format!("{}", u64::MAX as u128 + 1 + rng.below(1000) as u128),
        _ => String::from_utf8_lossy(&rng.some_bytes(12)).into_owned(),
    }
}

/// Whether a decoded request is cheap: random bytes can decode into a
/// request for F(10^18), which would run for ever.
fn cheap(request: &pb::ChildRequest) -> bool {
    request.jobs.iter().all(|j| match j.kind {
        1 => j.arg.parse::<u64>().map_or(true, |n| n <= 10_000),
        2 => j.arg.len() <= 40,
        _ => true,
    })
}

#[test]
fn random_frames_leave_child_processes_serving() {
    let seed = 0xc41d_f00d;
    let mut rng = Rng::new(seed);
    let kinds = [-1, 0, 1, 2, 3, 4, i32::MAX, i32::MIN];

    // Well-formed frames with random jobs: every job is answered once,
    // correctly, by one long-lived child.
    let mut child = ChildProc::start();
    let mut slot = 0u64;
    for round in 0..2_000 {
        let jobs: Vec<pb::ChildJob> = (0..1 + rng.below(6))
            .map(|_| {
                slot += 1;
                let kind = *rng.pick(&kinds);
                pb::ChildJob {
                    slot_id: slot,
                    kind,
                    arg: child_arg(&mut rng, kind),
                }
            })
            .collect();
        let request = pb::ChildRequest { jobs: jobs.clone() };
        assert!(
            child.write(&child_frame(&request.encode_to_vec())),
            "round {round} (seed {seed:#x}): the child closed its input"
        );
        let mut answered = std::collections::HashSet::new();
        while answered.len() < jobs.len() {
            let frame = child
                .read(Duration::from_secs(30))
                .unwrap_or_else(|| panic!("round {round} (seed {seed:#x}): no answer to {jobs:?}"));
            let response = pb::ChildResponse::decode(frame.as_slice())
                .unwrap_or_else(|e| panic!("round {round}: a malformed answer: {e}"));
            for r in response.results {
                let j = jobs
                    .iter()
                    .find(|j| j.slot_id == r.slot_id)
                    .unwrap_or_else(|| panic!("round {round}: an answer for slot {}", r.slot_id));
                assert!(
                    answered.insert(r.slot_id),
                    "slot {} answered twice",
                    r.slot_id
                );
                check_child_result(j.kind, &j.arg, &r.outcome);
            }
        }
    }
    assert!(child.alive(), "the child died on valid frames");

    // Malformed input, each to a fresh child: it stops by itself with an
    // error (status 2), or at the end of its input (0); never a panic
    // (101), a signal or a hang.
    let valid = child_frame(
        &pb::ChildRequest {
            jobs: vec![pb::ChildJob {
                slot_id: 1,
                kind: 1,
                arg: "10".into(),
            }],
        }
        .encode_to_vec(),
    );
    let mut cases = 0;
    while cases < 200 {
        let input = match rng.below(7) {
            0 => rng.some_bytes(64),
            1 => ((64u32 << 20) + 1 + rng.below(1 << 30) as u32)
                .to_le_bytes()
                .to_vec(),
            2 => {
                let payload = rng.some_bytes(200);
                child_frame(&payload)
            }
            3 => {
                let mut f = (1000u32).to_le_bytes().to_vec();
                f.extend(rng.bytes(10));
                f
            }
            4 => {
                let mut f = valid.clone();
                f.extend(child_frame(&protobuf_noise(&mut rng)));
                f
            }
            5 => child_frame(&protobuf_noise(&mut rng)),
            _ => {
                let mut f = valid.clone();
                let cut = rng.below(f.len() as u64) as usize;
                f.truncate(cut.max(1));
                f
            }
        };
        // Skip what would decode into an expensive job.
        let mut reader = input.as_slice();
        let mut buf = Vec::new();
        let mut expensive = false;
        while let Ok(true) = drover_worker_read_frame(&mut reader, &mut buf) {
            if let Ok(r) = pb::ChildRequest::decode(buf.as_slice()) {
                expensive |= !cheap(&r);
            }
        }
        if expensive {
            continue;
        }
        cases += 1;
        let mut c = ChildProc::start();
        c.write(&input);
        c.close();
        let status = c.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "a child fed {:02x?} did not stop within 30 s",
                &input[..input.len().min(32)]
            )
        });
        assert!(
            matches!(status.code(), Some(0) | Some(2)),
            "a child fed {:02x?} ended with {status}",
            &input[..input.len().min(32)]
        );
    }

    // Children still answer correctly afterwards, old and new.
    for c in [&mut child, &mut ChildProc::start()] {
        let request = pb::ChildRequest {
            jobs: vec![
                pb::ChildJob {
                    slot_id: 7,
                    kind: 1,
                    arg: "90".into(),
                },
                pb::ChildJob {
                    slot_id: 8,
                    kind: 2,
                    arg: "1112582705942171".into(),
                },
            ],
        };
        assert!(c.write(&child_frame(&request.encode_to_vec())));
        let mut results = Vec::new();
        while results.len() < 2 {
            let frame = c.read(Duration::from_secs(30)).expect("an answer");
            results.extend(
                pb::ChildResponse::decode(frame.as_slice())
                    .expect("a response")
                    .results,
            );
        }
        check_child_result(1, "90", &results[0].outcome);
        check_child_result(2, "1112582705942171", &results[1].outcome);
        assert!(matches!(
            &results[1].outcome,
            Some(child_result::Outcome::Output(pb::JobOutput {
                value: Some(job_output::Value::Prime(p))
            })) if p.is_prime
        ));
    }
}

/// Reads one child frame the way the child does: a little-endian length,
/// then that many bytes; false at the end.
fn drover_worker_read_frame(input: &mut &[u8], buf: &mut Vec<u8>) -> Result<bool, ()> {
    if input.len() < 4 {
        return Ok(false);
    }
    let len = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
    if len > 64 << 20 || input.len() < 4 + len {
        return Err(());
    }
    buf.clear();
    buf.extend_from_slice(&input[4..4 + len]);
    *input = &input[4 + len..];
    Ok(true)
}
