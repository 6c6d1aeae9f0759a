//! The `ha` workload: how long a failover takes on PostgreSQL
//! (`ha_failover_p50_ms`, `ha_failover_p99_ms`).
//!
//! Two `drover-master`s on one database (a server started as for the `pg`
//! workload), with the default lease (2 s, renewed every 500 ms), and a
//! worker given both (`--master A,B`) running sleeps of 10 to 30 ms on 20
//! slots, so results arrive every millisecond or so. Each round kills the
//! leader with SIGKILL once results are flowing, at a random moment of the
//! next second, and measures, from the kill:
//! - until the standby says it leads (its `listening` line: elected, the
//!   queue recovered from the database): `ha_takeover_*`;
//! - until the new leader has accepted a result: `ha_failover_*`, the
//!   issue's figure. The result is seen by polling its `Stats` until the
//!   succeeded count moves past the first count it answered, so a figure
//!   may be late by the time between two results (about a millisecond),
//!   never early.
//!
//! The killed master is started again as the standby on its port, so the
//! worker's two addresses stay right, and the next round kills the new
//! leader. The daemons are the tests' harness ([`drover_tests::Master`]),
//! which panics on failure; the panic becomes this workload's error.

use std::time::{Duration, Instant};

use anyhow::Result;
use drover_tests::pg::Postgres;
use drover_tests::{Master, Submitted, Worker, wait_until};

use crate::pg::unpanic;

/// Rounds of `--only ha` unless `--ha-rounds` says otherwise.
pub(crate) const DEFAULT_ROUNDS: u32 = 20;

/// No metrics or dashboard: two masters share this host.
const FLAGS: [&str; 4] = ["--metrics-listen", "off", "--dashboard-listen", "off"];

/// The longest any one step may take before the workload gives up.
const STEP: Duration = Duration::from_secs(60);

/// The times of each round, in milliseconds from the kill.
#[derive(Debug, Default)]
pub(crate) struct Failovers {
    /// Until the standby led, with the queue recovered.
    pub(crate) takeover_ms: Vec<f64>,
    /// Until the new leader had accepted a result.
    pub(crate) failover_ms: Vec<f64>,
}

/// Measures `rounds` failovers.
pub(crate) fn run(rounds: u32) -> Result<Failovers> {
    unpanic("ha", || measure(rounds))
}

fn measure(rounds: u32) -> Failovers {
    let pg = Postgres::start();
    let (first, leading) = Master::start_ha(&pg.url(), &FLAGS);
    assert!(leading, "the first master on an empty database leads");
    let (second, leading) = Master::start_ha(&pg.url(), &FLAGS);
    assert!(!leading, "the second master leads beside the first");
    let masters = format!("{},{}", first.url(), second.url());
    let _worker = Worker::start_for(
        &masters,
        &first.url(),
        &["--processes", "1", "--io-slots", "20"],
    );
    let (mut leader, mut standby) = (first, second);
    let mut out = Failovers::default();
    for round in 1..=rounds {
        keep_busy(&leader);
        let start = leader.stats().succeeded;
        wait_until(STEP, "results on the leader", || {
            leader.stats().succeeded >= start + 50
        });
        // A death lands anywhere between two renewals of the lease: the
        // kill is put off by a random part of a second, so that it is not
        // in step with the leader's renewals (which start at its election).
        std::thread::sleep(Duration::from_millis(rand::random_range(0..1_000)));
        let listen = leader.addr().to_string();
        let killed = Instant::now();
        leader.kill9();
        standby.wait_leading(STEP);
        let took_over = killed.elapsed();
        let first_count = standby.stats().succeeded;
        while standby.stats().succeeded <= first_count {
            assert!(
                killed.elapsed() < STEP,
                "round {round}: the new leader accepted no result in {STEP:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let accepted = killed.elapsed();
        out.takeover_ms.push(took_over.as_secs_f64() * 1e3);
        out.failover_ms.push(accepted.as_secs_f64() * 1e3);
        let args = [&FLAGS[..], &["--listen", &listen]].concat();
        let (back, leading) = Master::start_ha(&pg.url(), &args);
        assert!(!leading, "round {round}: the restarted master leads");
        (leader, standby) = (standby, back);
    }
    out
}

/// Queues another 2,100 sleeps when fewer than 2,000 wait: enough for a
/// round, whatever its length.
fn keep_busy(leader: &Master) {
    if leader.stats().queued >= 2_000 {
        return;
    }
    let mut args = vec!["submit", "sleep"];
    args.extend(std::iter::repeat_n("10..=30", 100));
    let submitted: Submitted = leader.cli(&args).success().one();
    assert_eq!(submitted.job_ids.len(), 2_100);
}
