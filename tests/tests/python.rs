//! The Python client's pytest suite (`python/tests`), run against the real
//! binaries, so that `cargo test --workspace` covers it.
//!
//! The test builds the binaries (through the harness), prepares the
//! virtualenv with the current client installed
//! ([`drover_tests::python::venv`]), and runs pytest with
//! `DROVER_MASTER_BIN` and `DROVER_WORKER_BIN` pointing at the binaries.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::bins::{bin, workspace_root};
use drover_tests::python::venv;

/// The most the whole pytest run may take before it is killed (its own
/// tests take about half a minute; a first debug build is not counted).
const PYTEST_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn python_client_pytest_suite() {
    let started = Instant::now();
    let master = bin("drover-master");
    let worker = bin("drover-worker");
    eprintln!("python: binaries ready after {:?}", started.elapsed());
    let python_dir = workspace_root().join("python");
    let venv = venv();
    eprintln!("python: virtualenv ready after {:?}", started.elapsed());

    let mut cmd = Command::new(venv.join("bin/pytest"));
    // The pytest script, not `python -m pytest`: that would put the working
    // directory, and so the source tree's `drover`, on sys.path.
    cmd.current_dir(&python_dir)
        .args([
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "faulthandler_timeout=120",
            "--durations=5",
            "tests",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DROVER_MASTER_BIN", &master)
        .env("DROVER_WORKER_BIN", &worker)
        .env("DROVER_TEST_INSTALLED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start pytest: {e}"));
    // Read the pipes on threads so that pytest never blocks on them while
    // this thread watches the deadline.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let deadline = Instant::now() + PYTEST_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll pytest") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => println!("{out}"),
        Some(s) => panic!("pytest failed ({s}):\n{out}\n--- stderr ---\n{err}"),
        None => panic!(
            "pytest did not finish within {PYTEST_DEADLINE:?}:\n{out}\n--- stderr ---\n{err}"
        ),
    }
}
