//! High availability on PostgreSQL: several `drover-master`s on one
//! database (a real PostgreSQL server the test starts), one the leader and
//! the others standbys. A standby answers UNAVAILABLE naming the leader and
//! reports NOT_SERVING; when the leader dies (kill -9), is paused past its
//! lease (SIGSTOP), or loses its database sessions, a standby takes over,
//! recovers from the database and goes on, with nothing acknowledged lost
//! and nothing run twice; the old leader never writes again. A Python
//! client given both masters (the venv of `drover_tests::python`) reads
//! its map to the end across the takeover.

use std::collections::HashSet;
use std::time::Duration;

use drover_common::pb::{self, JobKind};
use drover_tests::grpc::{block_on, job};
use drover_tests::http;
use drover_tests::pg::Postgres;
use drover_tests::security::{free_port, scrape};
use drover_tests::{Master, Submitted, Worker, wait_for, wait_until};

const MINUTE: Duration = Duration::from_secs(60);

/// Flags that make failovers quick: a 1 s lease renewed every 200 ms.
/// Metrics and dashboard on ports of their own: two masters share a host.
const QUICK: [&str; 8] = [
    "--leader-lease",
    "1s",
    "--leader-renew",
    "200ms",
    "--metrics-listen",
    "127.0.0.1:0",
    "--dashboard-listen",
    "127.0.0.1:0",
];

/// Starts a leader and a standby on `pg`.
fn pair(pg: &Postgres) -> (Master, Master) {
    let (leader, leading) = Master::start_ha(&pg.url(), &QUICK);
    assert!(leading, "the first master on an empty database is elected");
    let (standby, leading) = Master::start_ha(&pg.url(), &QUICK);
    assert!(!leading, "a second master stands by while the first leads");
    (leader, standby)
}

/// The number of rows, in every table a master writes, written at `epoch`.
fn rows_of_epoch(pg: &Postgres, epoch: u64) -> u64 {
    let tables = [
        "drover_jobs",
        "drover_batches",
        "drover_keys",
        "drover_requests",
        "drover_assignments",
        "drover_coord",
    ];
    let sql = tables
        .iter()
        .map(|t| format!("(SELECT count(*) FROM {t} WHERE epoch = {epoch})"))
        .collect::<Vec<_>>()
        .join(" + ");
    pg.psql(&format!("SELECT {sql}")).parse().unwrap()
}

/// Checks a finished map of sleeps: every job once, in order, right.
fn check_sleeps(master: &Master, submitted: &Submitted) {
    let got = master
        .cli(&["get", &submitted.batch_id, "--wait", "--timeout", "120s"])
        .success()
        .jobs();
    assert_eq!(got.len(), submitted.job_ids.len());
    let ids: HashSet<&str> = got.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "a job appears twice");
    for (job, id) in got.iter().zip(&submitted.job_ids) {
        assert_eq!(&job.job_id, id, "the results are not in submission order");
        assert_eq!(job.state, "succeeded", "{job:?}");
        let ms: u64 = job.arg.parse().unwrap();
        assert_eq!(job.result.as_u64(), Some(ms), "{job:?}");
    }
    assert_eq!(
        master.stats().succeeded,
        submitted.job_ids.len() as u64,
        "a result was recorded twice or lost"
    );
}

/// Starts a worker given both masters and submits `ranges` x 21 sleeps of
/// 20 to 40 ms to the leader; returns once `done` of them have finished.
fn sleeps_under_way(
    leader: &Master,
    standby: &Master,
    ranges: usize,
    done: u64,
) -> (Worker, Submitted) {
    let masters = format!("{},{}", leader.url(), standby.url());
    let worker = Worker::start_for(
        &masters,
        &leader.url(),
        &["--processes", "1", "--io-slots", "20"],
    );
    let mut args = vec!["submit", "sleep"];
    args.extend(std::iter::repeat_n("20..=40", ranges));
    let submitted: Submitted = leader.cli(&args).success().one();
    wait_until(MINUTE, "some jobs to finish", || {
        leader.stats().succeeded >= done
    });
    (worker, submitted)
}

#[test]
fn a_standby_names_the_leader_then_takes_over_after_kill_9_losing_nothing() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);

    // The standby refuses work, naming the leader, and is not healthy.
    let refused = standby.cli(&["status"]);
    assert!(!refused.status.success(), "a standby served status");
    let said = refused.stderr.clone();
    assert!(
        said.contains("standby") && said.contains(&leader.addr().to_string()),
        "the standby's refusal does not name the leader {}: {said}",
        leader.addr()
    );
    let health = standby.cli(&["health", "--timeout", "5s"]);
    assert!(!health.status.success(), "a standby says it is healthy");
    assert!(
        health.stderr.contains("NOT_SERVING") && health.stderr.contains(&leader.addr().to_string()),
        "`drover health` of a standby does not name its leader: {}",
        health.stderr
    );
    leader.cli(&["health", "--timeout", "5s"]).success();

    let masters = format!("{},{}", leader.url(), standby.url());
    let worker = Worker::start_for(
        &masters,
        &leader.url(),
        &["--processes", "1", "--io-slots", "40"],
    );
    // 4,000 sleeps of 5 to 24 ms: about 2 s of work on 40 slots.
    let mut args = vec!["submit", "sleep"];
    args.extend(std::iter::repeat_n("5..=24", 200));
    let submitted: Submitted = leader.cli(&args).success().one();
    assert_eq!(submitted.job_ids.len(), 4_000);
    wait_until(MINUTE, "a quarter of the jobs to finish", || {
        leader.stats().succeeded >= 1_000
    });
    let before = leader.stats().succeeded;
    assert!(before < 4_000, "the map finished before the leader died");
    leader.kill9();

    standby.wait_leading(MINUTE);
    assert_eq!(pg.psql("SELECT epoch FROM drover_lease"), "2");
    // The worker moves to the new leader by itself and finishes the map.
    wait_until(MINUTE, "the worker to reach the new leader", || {
        standby.stats().workers.len() == 1
    });
    assert!(standby.stats().succeeded >= before);
    check_sleeps(&standby, &submitted);
    drop(worker);
}

/// The value of the sample `name` (without labels) in a scrape.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn status_metrics_and_dashboard_name_the_role_and_epoch_and_a_standby_holds_its_ports() {
    let pg = Postgres::start();
    let (leader, _) = Master::start_ha(&pg.url(), &QUICK);
    let (metrics, dashboard) = (free_port(), free_port());
    let (metrics_at, dashboard_at) = (
        format!("127.0.0.1:{metrics}"),
        format!("127.0.0.1:{dashboard}"),
    );
    let flags = [
        &QUICK[..4],
        &[
            "--metrics-listen",
            &metrics_at,
            "--dashboard-listen",
            &dashboard_at,
        ],
    ]
    .concat();
    let (standby, leading) = Master::start_ha(&pg.url(), &flags);
    assert!(!leading);

    // `drover status` of the leader names it and its epoch.
    let text = drover_tests::cli::cli_raw(&["--master", &leader.url(), "status"])
        .success()
        .stdout;
    let named = format!(
        "leader: this master ({}), elected at epoch 1",
        leader.addr()
    );
    assert!(
        text.contains(&named),
        "status does not say {named:?}:\n{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&leader.cli(&["status"]).success().stdout).unwrap();
    assert_eq!(json["leader_epoch"], 1, "{json}");
    assert_eq!(json["leader_address"], leader.addr().to_string(), "{json}");

    // The standby serves its metrics from the start: a standby, epoch 1.
    let scraped = scrape(metrics);
    assert_eq!(gauge(&scraped, "drover_standby"), Some(1.0), "{scraped}");
    assert_eq!(
        gauge(&scraped, "drover_leader_epoch"),
        Some(1.0),
        "{scraped}"
    );
    // Its dashboard says it is a standby and names the leader.
    let addr = dashboard_at.parse().unwrap();
    let page = http::request(addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(page.status, 503, "{page:?}");
    assert!(
        page.body.contains("standby") && page.body.contains(&leader.addr().to_string()),
        "{page:?}"
    );
    // A third master that cannot have the standby's metrics port fails at
    // start, not when it is elected.
    let taken = [&QUICK[..4], &["--metrics-listen", &metrics_at]].concat();
    let mut third = std::process::Command::new(drover_tests::bins::bin("drover-master"))
        .args(["--listen", "127.0.0.1:0", "--store", &pg.url()])
        .args(&taken)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(MINUTE, "the third master to fail", || {
        third.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut third.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!exited.success(), "a master without its metrics port ran");
    assert!(
        err.contains("--metrics-listen") && err.contains(&metrics_at),
        "the error does not name the flag and the address:\n{err}"
    );

    // The leader resigns on SIGTERM; the standby takes over on the same
    // ports, and every view says so.
    leader.sigterm();
    standby.wait_leading(MINUTE);
    let scraped = wait_for(MINUTE, "the new leader's metrics", || {
        let s = scrape(metrics);
        (gauge(&s, "drover_standby") == Some(0.0)).then_some(s)
    });
    assert_eq!(
        gauge(&scraped, "drover_leader_epoch"),
        Some(2.0),
        "{scraped}"
    );
    assert!(scraped.contains("drover_queue_jobs"), "{scraped}");
    let page = wait_for(MINUTE, "the new leader's dashboard", || {
        http::request(addr, "GET", "/", &[], b"")
            .ok()
            .filter(|p| p.status == 200)
    });
    assert!(page.body.contains("Leader epoch"), "{}", page.body);
    let json: serde_json::Value =
        serde_json::from_str(&standby.cli(&["status"]).success().stdout).unwrap();
    assert_eq!(json["leader_epoch"], 2, "{json}");
    assert_eq!(json["leader_address"], standby.addr().to_string(), "{json}");
}

#[test]
fn drover_lock_rides_through_kill_9_of_the_leader_and_releases_on_the_new_one() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let dir = tempfile::tempdir().unwrap();
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    // The command says it runs, then waits for the test's word.
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let masters = format!("{},{}", leader.url(), standby.url());
    let run = drover_tests::CliRun::spawn(
        &masters,
        &["lock", "L", "--lease", "5s", "--", "sh", "-c", &script],
    );
    wait_until(MINUTE, "the command to run under the lock", || {
        started.exists()
    });
    leader.kill9();
    standby.wait_leading(MINUTE);
    std::fs::write(&go, "").unwrap();
    let out = run.wait(MINUTE);
    assert!(
        out.status.success(),
        "drover lock failed across the takeover: {}",
        out.stderr
    );
    // Released on the new leader: another holder gets it at once, not
    // when the session's lease runs out.
    standby
        .cli(&["lock", "L", "--timeout", "2s", "--", "true"])
        .success();
}

/// What `master` holds under `name`.
fn inspect(master: &Master, name: &str) -> pb::InspectResponse {
    block_on(
        drover_tests::grpc::coord_client(&master.url())
            .inspect(pb::InspectRequest { name: name.into() }),
    )
    .unwrap()
    .into_inner()
}

/// A `drover lock` waiting behind the holder when the leader is killed:
/// its acquire was cut off, maybe granted, so it is not sent again on that
/// session; the session is closed and a new one acquires on the new
/// leader, which grants the lock once the holder releases it there.
#[test]
fn a_drover_lock_waiting_when_the_leader_is_killed_acquires_on_the_new_one() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let masters = format!("{},{}", leader.url(), standby.url());
    let lock = |script: &str| {
        drover_tests::CliRun::spawn(
            &masters,
            &["lock", "L", "--lease", "5s", "--", "sh", "-c", script],
        )
    };
    // The holder runs until the test says go; the waiter notes its token.
    let holder_script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        path("holding").display(),
        path("go").display()
    );
    let holder = lock(&holder_script);
    wait_until(MINUTE, "the holder's command to run", || {
        path("holding").exists()
    });
    let waiter_script = format!(
        "echo $DROVER_FENCING_TOKEN > '{}'",
        path("waiter-token").display()
    );
    let waiter = lock(&waiter_script);
    wait_until(MINUTE, "the waiter to queue on the leader", || {
        inspect(&leader, "L").lock_waiters == 1
    });
    let held = inspect(&leader, "L").lock_tokens;
    assert_eq!(held.len(), 1, "{held:?}");

    leader.kill9();
    standby.wait_leading(MINUTE);
    // The new leader has the holder's grant from the store, and the
    // waiter queued again.
    wait_until(MINUTE, "the waiter to queue on the new leader", || {
        let now = inspect(&standby, "L");
        now.lock_waiters == 1 && now.lock_tokens == held
    });
    assert!(
        !path("waiter-token").exists(),
        "the waiter ran while the holder held the lock"
    );
    std::fs::write(path("go"), "").unwrap();
    let out = holder.wait(MINUTE);
    assert!(out.status.success(), "the holder failed: {}", out.stderr);
    let out = waiter.wait(MINUTE);
    assert!(
        out.status.success(),
        "the waiter failed across the takeover: {}",
        out.stderr
    );
    let token: u64 = std::fs::read_to_string(path("waiter-token"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(token > held[0], "token {token} after {held:?}");
    // Both released: the lock is free on the new leader, nobody waits.
    let now = inspect(&standby, "L");
    assert!(
        now.lock_tokens.is_empty() && now.lock_waiters == 0,
        "{now:?}"
    );
}

/// A `drover lock` holding a lock when the leader is paused (SIGSTOP: it
/// answers nothing, its connections stay open): its renewals move on to
/// the new leader, so it keeps the lock and its command runs on, and the
/// release on the new leader frees it. Before, every renewal went back to
/// the paused master until the lease ran out, the command was killed, and
/// the new leader gave the lock away.
#[test]
fn a_drover_lock_keeps_its_lock_when_the_leader_is_paused() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let dir = tempfile::tempdir().unwrap();
    let (holding, go) = (dir.path().join("holding"), dir.path().join("go"));
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        holding.display(),
        go.display()
    );
    let lease = Duration::from_secs(3);
    let masters = format!("{},{}", leader.url(), standby.url());
    let mut holder = drover_tests::CliRun::spawn(
        &masters,
        &["lock", "L", "--lease", "3s", "--", "sh", "-c", &script],
    );
    wait_until(MINUTE, "the holder's command to run", || holding.exists());
    let held = inspect(&leader, "L").lock_tokens;
    assert_eq!(held.len(), 1, "{held:?}");

    leader.expect_exit();
    leader.sigstop();
    standby.wait_leading(MINUTE);
    // Two leases after the takeover the session would have expired on the
    // new leader had it not been renewed there: the lock stays held by
    // the same grant, and the command runs, all along.
    let until = std::time::Instant::now() + 2 * lease;
    while std::time::Instant::now() < until {
        assert!(
            !holder.finished(),
            "the holder ended while the leader was paused"
        );
        assert_eq!(
            inspect(&standby, "L").lock_tokens,
            held,
            "the grant changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&go, "").unwrap();
    let out = holder.wait(MINUTE);
    assert!(
        out.status.success(),
        "drover lock failed while the leader was paused: {}",
        out.stderr
    );
    let now = inspect(&standby, "L");
    assert!(now.lock_tokens.is_empty(), "not released: {now:?}");
}

#[test]
fn a_leader_paused_past_its_lease_never_writes_again_and_steps_down() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let (worker, submitted) = sleeps_under_way(&leader, &standby, 100, 100);

    // A submit to the paused leader waits in its socket (a direct call,
    // not the CLI, which would go on trying for minutes once it exits), on
    // a connection made while it ran.
    let mut queue = drover_tests::grpc::queue_client(&leader.url());
    leader.sigstop();
    let late = {
        std::thread::spawn(move || {
            let jobs = (1..=3).map(|n| job(JobKind::Fib, n)).collect();
            block_on(queue.submit(pb::SubmitRequest {
                jobs,
                ..Default::default()
            }))
        })
    };
    standby.wait_leading(MINUTE);
    let written_before = rows_of_epoch(&pg, 1);
    assert!(written_before > 0, "the first leader wrote nothing");

    // It will exit once awake: that is the point, not a crash.
    leader.expect_exit();
    leader.sigcont();
    let status = leader.wait_exit(MINUTE);
    assert!(
        !status.success(),
        "the old leader exited with {status} after losing its lease"
    );
    let log = leader.log();
    assert!(
        log.contains("stepped down") || log.contains("took over"),
        "the old leader does not say it stepped down:\n{}",
        leader.log_tail(20)
    );
    let late = late.join().unwrap();
    assert!(
        late.is_err(),
        "the paused leader acknowledged a submit after it lost its lease: {late:?}"
    );
    // Rows of epoch 1 are overwritten by epoch 2, never added.
    assert!(
        rows_of_epoch(&pg, 1) <= written_before,
        "the old leader wrote after the takeover"
    );
    check_sleeps(&standby, &submitted);
    drop(worker);
}

#[test]
fn a_leader_cut_off_from_the_database_steps_down_and_a_standby_takes_over() {
    let pg = Postgres::start();
    // Each master logs in as its own role, so one can be shut out.
    pg.psql("CREATE ROLE a LOGIN SUPERUSER; CREATE ROLE b LOGIN SUPERUSER");
    let url_of = |role: &str| pg.url().replace("postgres@", &format!("{role}@"));
    let (leader, leading) = Master::start_ha(&url_of("a"), &QUICK);
    assert!(leading);
    let (standby, leading) = Master::start_ha(&url_of("b"), &QUICK);
    assert!(!leading);
    let (worker, submitted) = sleeps_under_way(&leader, &standby, 100, 100);

    // The leader's sessions end and it may not log in again.
    leader.expect_exit();
    pg.psql(
        "ALTER ROLE a NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'a'",
    );
    let status = leader.wait_exit(MINUTE);
    assert!(!status.success(), "the cut-off leader exited with {status}");
    standby.wait_leading(MINUTE);
    assert_eq!(pg.psql("SELECT epoch FROM drover_lease"), "2");
    check_sleeps(&standby, &submitted);
    drop(worker);
}

#[test]
fn when_postgresql_restarts_the_leader_reconnects_and_goes_on() {
    let mut pg = Postgres::start();
    // A lease long enough to outlast the restart.
    let slow = ["--leader-lease", "20s", "--leader-renew", "500ms"];
    let args: Vec<&str> = slow.iter().chain(&QUICK[4..]).copied().collect();
    let (leader, leading) = Master::start_ha(&pg.url(), &args);
    assert!(leading);
    let (standby, leading) = Master::start_ha(&pg.url(), &args);
    assert!(!leading);
    let (worker, submitted) = sleeps_under_way(&leader, &standby, 60, 50);
    pg.stop();
    pg.start_server();
    // The same leader, the same epoch; every job once.
    check_sleeps(&leader, &submitted);
    assert_eq!(pg.psql("SELECT epoch FROM drover_lease"), "1");
    let refused = standby.cli(&["status"]);
    assert!(
        !refused.status.success() && refused.stderr.contains("standby"),
        "the standby no longer stands by: {}",
        refused.stderr
    );
    drop(worker);
}

/// Sends batches of 10 fib jobs in a loop, each with its own request id,
/// to whichever master takes it (going around both until one does), until
/// `stop`; returns every batch acknowledged, with its jobs' n. A batch is
/// sent until acknowledged even after `stop`, so none is left half-known.
fn submit_loop(
    urls: [String; 2],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, Vec<u64>)>> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut next = 0;
        for i in 0u64.. {
            if stop.load(Ordering::SeqCst) {
                return acked;
            }
            let ns: Vec<u64> = (0..10).map(|k| (i * 10 + k) % 90).collect();
            let request = pb::SubmitRequest {
                jobs: ns.iter().map(|&n| job(JobKind::Fib, n)).collect(),
                request_id: format!("loop-{i}"),
                ..Default::default()
            };
            let deadline = std::time::Instant::now() + 2 * MINUTE;
            let batch = loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no master took batch {i} within two minutes"
                );
                let url = &urls[next % 2];
                let sent = block_on(async {
                    let channel = tokio::time::timeout(
                        Duration::from_secs(2),
                        drover_common::net::connect(url),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    let mut queue = pb::queue_client::QueueClient::new(channel);
                    tokio::time::timeout(Duration::from_secs(5), queue.submit(request.clone()))
                        .await
                        .ok()?
                        .ok()
                });
                match sent {
                    Some(reply) => break reply.into_inner().batch_id,
                    None => {
                        next += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            acked.push((batch, ns));
            std::thread::sleep(Duration::from_millis(10));
        }
        unreachable!()
    })
}

/// The issue's test: 20 rounds of kill -9 of the leader at a moment set by
/// the work done, during a 50,000-job map and a loop of submits; the killed
/// master comes back as the standby on its port. Nothing acknowledged is
/// lost, nothing is recorded twice, every job finishes with its result.
#[test]
fn twenty_kill_9s_of_the_leader_during_a_map_and_a_submit_loop_lose_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pg = Postgres::start();
    let (first, leading) = Master::start_ha(&pg.url(), &QUICK);
    assert!(leading);
    let (second, leading) = Master::start_ha(&pg.url(), &QUICK);
    assert!(!leading);
    let urls = [first.url(), second.url()];
    let masters = urls.join(",");
    let workers: Vec<Worker> = (0..2)
        .map(|i| {
            Worker::start_for(
                &masters,
                &first.url(),
                &[
                    "--processes",
                    "1",
                    "--io-slots",
                    "100",
                    "--name",
                    &format!("w{i}"),
                ],
            )
        })
        .collect();
    // 50,000 sleeps of 1 to 5 ms, in one submit.
    let map: Vec<u64> = (0..50_000).map(|i| 1 + i % 5).collect();
    let submitted = block_on(first.queue().submit(pb::SubmitRequest {
        jobs: map.iter().map(|&ms| job(JobKind::Sleep, ms)).collect(),
        request_id: "the-map".into(),
        ..Default::default()
    }))
    .unwrap()
    .into_inner();
    let stop = Arc::new(AtomicBool::new(false));
    let looping = submit_loop(urls, stop.clone());

    let (mut leader, mut standby) = (first, second);
    let began = std::time::Instant::now();
    for round in 1..=20u64 {
        // Some work done under this leader, then it dies.
        let start = leader.stats().succeeded;
        wait_until(MINUTE, &format!("round {round}: progress"), || {
            leader.stats().succeeded >= start + 300
        });
        let port = leader.addr().port();
        leader.kill9();
        drop(leader);
        standby.wait_leading(MINUTE);
        let listen = format!("127.0.0.1:{port}");
        let mut args = QUICK.to_vec();
        args.extend(["--listen", &listen]);
        let (back, leading) = Master::start_ha(&pg.url(), &args);
        assert!(!leading, "round {round}: the restarted master leads");
        assert_eq!(
            pg.psql("SELECT epoch FROM drover_lease"),
            (round + 1).to_string()
        );
        (leader, standby) = (standby, back);
    }
    eprintln!("20 failovers in {:.1} s", began.elapsed().as_secs_f64());
    stop.store(true, Ordering::SeqCst);
    let acked = looping.join().unwrap();
    assert!(
        acked.len() > 20,
        "the submit loop got only {} batches in",
        acked.len()
    );

    let got = drover_tests::cli::cli(
        &masters,
        &["get", &submitted.batch_id, "--wait", "--timeout", "300s"],
    )
    .success()
    .jobs();
    assert_eq!(got.len(), 50_000);
    for ((job, id), ms) in got.iter().zip(&submitted.job_ids).zip(&map) {
        assert_eq!(&job.job_id, id, "the map's results are not in order");
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_eq!(job.result.as_u64(), Some(*ms), "{job:?}");
    }
    eprintln!(
        "the map read back at {:.1} s; {} batches of the submit loop to check",
        began.elapsed().as_secs_f64(),
        acked.len()
    );
    // Thousands of small batches: read directly, not one CLI run each.
    let mut queue = leader.queue();
    for (batch, ns) in &acked {
        let got = block_on(queue.get(pb::GetRequest {
            batch_id: batch.clone(),
            wait: true,
            timeout_ms: 120_000,
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("acknowledged batch {batch}: {e}"))
        .into_inner();
        assert!(got.complete, "acknowledged batch {batch} did not finish");
        assert_eq!(got.jobs.len(), ns.len(), "acknowledged batch {batch}");
        for (job, &n) in got.jobs.iter().zip(ns) {
            assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
            let want = drover_tests::reference::fib_u128(n as u32).to_string();
            assert_eq!(
                job.output.as_ref().and_then(|o| o.value.clone()),
                Some(pb::job_output::Value::Fib(want)),
                "F({n}) in batch {batch}"
            );
        }
    }
    let stats = leader.stats();
    assert_eq!(
        stats.succeeded,
        50_000 + 10 * acked.len() as u64,
        "a result was lost or recorded twice"
    );
    assert_eq!(
        stats.failed + stats.cancelled + stats.queued + stats.running,
        0
    );
    drop(workers);
}

#[test]
fn a_leader_whose_database_calls_hang_steps_down_within_its_lease() {
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let (worker, submitted) = sleeps_under_way(&leader, &standby, 100, 100);
    // The leader's sessions stop answering (their backends stopped): its
    // calls hang, while the standby's still work.
    let backends: Vec<i32> = pg
        .psql(&format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'drover-master {} %'",
            leader.pid()
        ))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(
        backends.len(),
        3,
        "the writer, reader and election sessions"
    );
    leader.expect_exit();
    for &pid in &backends {
        drover_tests::sys::signal(pid as u32, libc::SIGSTOP);
    }
    let status = leader.wait_exit(MINUTE);
    for &pid in &backends {
        drover_tests::sys::signal(pid as u32, libc::SIGCONT);
    }
    assert!(!status.success(), "the hung leader exited with {status}");
    assert!(
        leader.log().contains("could not be renewed"),
        "the hung leader does not say why it stepped down:\n{}",
        leader.log_tail(20)
    );
    standby.wait_leading(MINUTE);
    check_sleeps(&standby, &submitted);
    drop(worker);
}

/// A Python client given both masters (`DROVER_MASTER=leader,standby`)
/// reading a `Pool.imap` while the leader is killed: the map's ordered
/// watch resumes on the new leader, its later submits (named by request
/// ids) go there, a counter add made during the takeover (unsafe to send
/// twice: it moves on only from a refused connection or a standby) is
/// applied once, and every result comes back once and in order.
#[test]
fn a_python_map_rides_through_kill_9_of_the_leader() {
    const JOBS: usize = 20_000;
    const PAUSE_AT: usize = 1_000;
    let pg = Postgres::start();
    let (leader, standby) = pair(&pg);
    let masters = format!("{},{}", leader.url(), standby.url());
    let worker = Worker::start_for(&masters, &leader.url(), &["--processes", "2"]);

    let mut script = PythonScript::start(MAP_SCRIPT, &masters, &[JOBS, PAUSE_AT]);
    // The script stops reading after PAUSE_AT results: at most
    // max_in_flight jobs are submitted and unread, so the map cannot end
    // before the leader dies.
    script.wait_line(MINUTE, "paused");
    assert!(leader.stats().succeeded < JOBS as u64);
    leader.kill9();
    script.say("go");
    standby.wait_leading(MINUTE);
    let summary: serde_json::Value = serde_json::from_str(&script.finish(Duration::from_secs(180)))
        .expect("the script's last line is JSON");
    assert_eq!(summary["results"], JOBS, "{summary}");
    assert_eq!(summary["wrong"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["added"], 1, "{summary}");
    assert_eq!(summary["url"], standby.url(), "{summary}");
    assert_eq!(
        standby.stats().succeeded,
        JOBS as u64,
        "a result was recorded twice or lost"
    );
    let counter: serde_json::Value = standby.cli(&["counter", "get", "failover"]).success().one();
    assert_eq!(counter["value"], 1, "the add was applied twice: {counter}");
    drop(worker);
}

/// `Pool.imap` of `fib(i % 90)` for `i < JOBS` (argv[1]); after PAUSE_AT
/// (argv[2]) results it prints `paused`, waits for a line on stdin, adds 1
/// to the counter `failover`, and reads on; then prints a JSON summary.
const MAP_SCRIPT: &str = r#"
import json, sys
import drover

jobs, pause_at = int(sys.argv[1]), int(sys.argv[2])
args = [i % 90 for i in range(jobs)]
got, added = [], None
with drover.Pool(max_in_flight=2_000) as pool:
    for r in pool.imap(drover.fib, args, chunksize=500):
        got.append(r)
        if len(got) == pause_at:
            print("paused", flush=True)
            sys.stdin.readline()
            added = drover.Value("failover").add(1)
    url = pool.client.url
wrong = [i for i, (r, n) in enumerate(zip(got, args)) if r != drover.fib(n)]
print(json.dumps({"results": len(got), "wrong": wrong[:10], "added": added, "url": url}), flush=True)
"#;

/// A Python script run with the client's virtualenv, its stdout read line
/// by line; killed and reaped on drop.
struct PythonScript {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl PythonScript {
    /// Starts `python -c SCRIPT ARGS...` with `DROVER_MASTER=masters` and
    /// no other `DROVER_` variable.
    fn start(script: &str, masters: &str, args: &[usize]) -> PythonScript {
        use std::process::{Command, Stdio};
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(drover_tests::python::venv().join("bin/python"));
        cmd.arg("-c").arg(script);
        cmd.args(args.iter().map(usize::to_string));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DROVER_") {
                cmd.env_remove(&key);
            }
        }
        let mut child = cmd
            .env("DROVER_MASTER", masters)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("the venv's python starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        PythonScript {
            child,
            lines,
            stderr,
        }
    }

    /// Its stderr so far, for failures.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Waits for the line `want`, failing if the script exits first.
    fn wait_line(&mut self, timeout: Duration, want: &str) {
        wait_until(timeout, &format!("the script to print {want:?}"), || {
            if let Ok(line) = self.lines.try_recv() {
                assert_eq!(line, want, "stderr:\n{}", self.stderr());
                return true;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the script exited with {status}:\n{}", self.stderr());
            }
            false
        });
    }

    /// Writes `line` to its stdin.
    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        std::io::Write::write_all(stdin, format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for it to exit successfully and returns its last line.
    fn finish(&mut self, timeout: Duration) -> String {
        let status = wait_for(timeout, "the script to finish", || {
            self.child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "the script exited with {status}:\n{}",
            self.stderr()
        );
        // Until its stdout's end: the reader may be behind the exit.
        let lines: Vec<String> = self.lines.iter().collect();
        lines
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("the script printed nothing:\n{}", self.stderr()))
    }
}

impl Drop for PythonScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
