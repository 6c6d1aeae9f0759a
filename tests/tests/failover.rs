//! Several masters given to the worker and the CLI (`--master a,b,c`):
//! a dead one first is passed over; when the master they work with is
//! killed, they move to the next one (here a second master started on the
//! first one's store, as a standby taking over would be); a standby's
//! UNAVAILABLE sends every call on, and a bare UNAVAILABLE only the calls
//! safe to send twice; an empty address is refused.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_common::net::STANDBY_METADATA;
use drover_tests::bins::bin;
use drover_tests::cli::{CLI_TIMEOUT, cli, cli_raw};
use drover_tests::reference::fib_u128;
use drover_tests::{CliRun, JobLine, Master, Worker, grpc, wait_until};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// The URL of a loopback port with nothing listening on it.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A loopback port free now (bound and let go).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// Starts a master with the redb store on `dir`, on `port` (0 for any).
fn master_on(dir: &Path, port: u16) -> Master {
    let listen = format!("127.0.0.1:{port}");
    let dir = dir.to_str().expect("a UTF-8 path");
    Master::start(&["--listen", &listen, "--data-dir", dir, "--store", "redb"])
}

/// Checks that `jobs` are `map fib 2..=20`'s, in order, right, and run by
/// `worker`.
#[track_caller]
fn assert_fib_map(jobs: &[JobLine], worker: &str) {
    assert_eq!(jobs.len(), 19, "{jobs:?}");
    for (i, (j, n)) in jobs.iter().zip(2..=20u32).enumerate() {
        assert_eq!(j.index as usize, i, "{j:?}");
        assert_eq!(j.state, "succeeded", "{j:?}");
        assert_eq!(j.result, Value::String(fib_u128(n).to_string()), "{j:?}");
        assert_eq!(j.worker(), worker, "{j:?}");
    }
}

#[test]
fn a_dead_master_first_is_passed_over_by_the_worker_and_the_cli() {
    let live = Master::start(&[]);
    let masters = format!("{},{}", dead_url(), live.url());
    let worker = Worker::start_for(&masters, &live.url(), &["--processes", "1"]);

    let jobs = cli(&masters, &["map", "fib", "2..=20"]).success().jobs();
    assert_fib_map(&jobs, worker.name());
    let status = cli(&masters, &["status"]).success().status();
    assert!(status.worker(worker.name()).is_some(), "{status:?}");
}

#[test]
fn the_worker_and_a_map_move_to_the_next_master_when_theirs_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let first = master_on(dir.path(), 0);
    let first_url = first.url();
    // The second master starts on this port once the first is dead.
    let second_port = free_port();
    let masters = format!("{first_url},http://127.0.0.1:{second_port}");
    let worker = Worker::start_for(
        &masters,
        &first_url,
        &["--processes", "1", "--io-slots", "40"],
    );

    // 6,000 sleeps of 5 to 24 ms: over two seconds of work on 40 slots.
    let mut args = vec!["map", "sleep", "--no-progress"];
    args.extend(std::iter::repeat_n("5..=24", 300));
    let map = CliRun::spawn(&masters, &args);
    wait_until(
        MINUTE,
        "a tenth of the map to finish on the first master",
        || grpc::stats(&first_url).succeeded >= 600,
    );
    assert!(
        first.stats().succeeded < 6_000,
        "the map finished before the first master could be killed"
    );
    first.kill9();
    drop(first);

    // On the first one's store, as a standby that takes over would be.
    let second = master_on(dir.path(), second_port);
    wait_until(MINUTE, "the worker to move to the second master", || {
        second
            .stats()
            .workers
            .iter()
            .any(|w| w.name == worker.name())
    });
    // The map's watch moved too, and resumed where it was cut.
    let jobs = map.wait(CLI_TIMEOUT).success().jobs();
    assert_eq!(jobs.len(), 6_000);
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j.index as usize, i, "{j:?}");
        assert_eq!(j.state, "succeeded", "{j:?}");
        let ms: u64 = j.arg.parse().unwrap();
        assert_eq!(j.result.as_u64(), Some(ms), "{j:?}");
    }
    assert_eq!(
        second.stats().succeeded,
        6_000,
        "a result was recorded twice or lost"
    );

    // A new command given both finds the second master, and its jobs run
    // on the worker that moved.
    let jobs = cli(&masters, &["map", "fib", "2..=20"]).success().jobs();
    assert_fib_map(&jobs, worker.name());
}

/// A stand-in for a standby master: it speaks HTTP/2 and answers every
/// call, to any service, at once with UNAVAILABLE naming the leader, with
/// the standby mark ([`STANDBY_METADATA`]) when `marked`, as issue 12's
/// standby does; unmarked, it is a master answering UNAVAILABLE for a
/// reason of its own (shutting down, say, maybe after applying the call).
/// It records the path of every call.
struct Standby {
    url: String,
    calls: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Standby {
    fn start(leader: &str, marked: bool) -> Standby {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let leader = leader.to_string();
        let server = grpc::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                let (seen, leader) = (seen.clone(), leader.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        seen.lock().unwrap().push(request.uri().path().to_string());
                        let mut status = tonic::Status::unavailable(format!(
                            "this master is a standby; the leader is {leader}"
                        ));
                        if marked {
                            let value = leader.parse().expect("a URL is a metadata value");
                            status.metadata_mut().insert(STANDBY_METADATA, value);
                        }
                        // Trailers-only: the status in the response's head.
                        let (head, ()) = status.into_http::<()>().into_parts();
                        let _ = respond.send_response(http::Response::from_parts(head, ()), true);
                    }
                });
            }
        });
        Standby { url, calls, server }
    }

    /// Whether it was called at `path` (`/drover.v1.Queue/Submit`).
    fn saw(&self, path: &str) -> bool {
        self.calls.lock().unwrap().iter().any(|p| p == path)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[test]
fn a_standby_first_sends_every_call_on_to_the_leader() {
    let leader = Master::start(&[]);
    let standby = Standby::start(&leader.url(), true);
    let masters = format!("{},{}", standby.url, leader.url());
    let worker = Worker::start_for(&masters, &leader.url(), &["--processes", "1"]);
    assert!(standby.saw("/drover.v1.Workers/Connect"));

    let jobs = cli(&masters, &["map", "fib", "2..=20"]).success().jobs();
    assert_fib_map(&jobs, worker.name());
    assert!(standby.saw("/drover.v1.Queue/Submit"));
    // Calls unsafe to send twice go on too: a standby applied nothing.
    let retried: Value = cli(&masters, &["retry", "--failed"]).success().one();
    assert_eq!(retried["retried"], 0, "{retried}");
    assert!(standby.saw("/drover.v1.Queue/Retry"));
    let added: Value = cli(&masters, &["counter", "add", "n", "5"]).success().one();
    assert_eq!(added["value"], 5, "{added}");
    assert!(standby.saw("/drover.v1.Coord/CounterAdd"));
    // health names the master that serves.
    let health = cli_raw(&["--master", &masters, "health"]).success();
    assert_eq!(
        health.stdout.trim(),
        format!("serving: {}", leader.url()),
        "{health}"
    );
}

#[test]
fn a_bare_unavailable_sends_on_only_the_calls_safe_to_send_twice() {
    let leader = Master::start(&[]);
    let going = Standby::start(&leader.url(), false);
    let masters = format!("{},{}", going.url, leader.url());

    // It may have applied the add before it answered: not sent again.
    let add = cli(&masters, &["counter", "add", "n", "5"]);
    assert!(!add.status.success(), "{add}");
    assert!(
        add.stderr
            .contains("master unavailable: this master is a standby"),
        "{add}"
    );
    assert!(going.saw("/drover.v1.Coord/CounterAdd"));
    let value: Value = cli(&masters, &["counter", "get", "n"]).success().one();
    assert_eq!(value["value"], 0, "{value}");
    // A read goes on.
    cli(&masters, &["status"]).success().status();
    assert!(going.saw("/drover.v1.Queue/Stats"));
}

#[test]
fn an_empty_address_is_refused_naming_the_flag() {
    let given = "http://127.0.0.1:1,,http://127.0.0.1:2";
    let expected = format!("--master: empty address in '{given}'");
    let flag = cli_raw(&["--master", given, "status"]);
    assert_eq!(flag.status.code(), Some(1), "{flag}");
    assert!(flag.stderr.contains(&expected), "{flag}");

    for program in ["drover", "drover-worker"] {
        let mut cmd = Command::new(bin(program));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DROVER_") {
                cmd.env_remove(&key);
            }
        }
        if program == "drover" {
            cmd.arg("status");
        }
        let out = cmd
            .env("DROVER_MASTER", "http://127.0.0.1:1,")
            .env("DROVER_METRICS_LISTEN", "off")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{program}: {stderr}");
        assert!(
            stderr.contains("--master: empty address in 'http://127.0.0.1:1,'"),
            "{program}: {stderr}"
        );
    }
}
