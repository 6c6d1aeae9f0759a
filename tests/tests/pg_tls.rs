//! drover-master on a PostgreSQL server that takes connections only over
//! TLS (`hostssl`), its certificate signed by a test CA: with
//! `sslmode=verify-full&sslrootcert=CA` a master is elected and runs a map,
//! every one of its sessions encrypted by the server's account; a CA that
//! did not sign the server's certificate, and plain text, are refused at
//! start with a message that says why.

use drover_tests::pg::{HOSTSSL_ONLY, Postgres};
use drover_tests::security::Pki;
use drover_tests::{Master, Worker};
use serde_json::Value;

/// Own ports for metrics and the dashboard: tests share a host.
const PORTS: [&str; 4] = [
    "--metrics-listen",
    "127.0.0.1:0",
    "--dashboard-listen",
    "127.0.0.1:0",
];

/// Runs a master on `url` expecting it to refuse to start; returns its
/// stderr.
fn refused_start(url: &str) -> String {
    Master::refused_start(&[&["--store", url], &PORTS[..]].concat())
}

fn fib(n: u32) -> u128 {
    (0..n).fold((0u128, 1u128), |(a, b), _| (b, a + b)).0
}

#[test]
fn a_master_runs_a_map_over_verified_tls_and_refuses_a_wrong_ca_or_plain_text() {
    let pki = Pki::new();
    let pg = Postgres::start_tls(&pki, HOSTSSL_ONLY);
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        pki.arg("ca.pem")
    );
    let (master, leading) = Master::start_ha(&url, &PORTS);
    assert!(leading, "the only master is elected");
    let _worker = Worker::start(&master.url(), &["--processes", "1"]);

    let jobs = master.cli(&["map", "fib", "2..=20"]).success().jobs();
    assert_eq!(jobs.len(), 19);
    for (job, n) in jobs.iter().zip(2..=20) {
        assert_eq!(job.arg, n.to_string(), "{job:?}");
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_eq!(job.result, Value::String(fib(n).to_string()), "{job:?}");
    }

    // The writer's, the reader's and the election's sessions, all TLS.
    let sessions = pg.psql(&format!(
        "SELECT a.application_name || ' ' || s.ssl FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name LIKE 'drover-master {} %' ORDER BY 1",
        master.pid()
    ));
    let pid = master.pid();
    assert_eq!(
        sessions.lines().collect::<Vec<_>>(),
        [
            format!("drover-master {pid} election true"),
            format!("drover-master {pid} reader true"),
            format!("drover-master {pid} writer true"),
        ],
        "{sessions}"
    );

    let rogue = pki.arg("rogue-ca.pem");
    let said = refused_start(&format!(
        "{}?sslmode=verify-full&sslrootcert={rogue}",
        pg.url()
    ));
    assert!(
        said.contains("invalid peer certificate: UnknownIssuer")
            && said.contains(&format!("sslrootcert={rogue}")),
        "a master given the wrong CA does not say so:\n{said}"
    );

    let said = refused_start(&format!("{}?sslmode=disable", pg.url()));
    assert!(
        said.contains("no pg_hba.conf entry") && said.contains("no encryption"),
        "PostgreSQL's refusal of plain text does not surface:\n{said}"
    );
}
