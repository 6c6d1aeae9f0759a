//! The harness for drover's integration tests: it runs the real
//! `drover-master`, `drover-worker` and `drover` binaries on ephemeral
//! loopback ports and lets a test check what a user would see.
//!
//! # Layout
//!
//! - [`bins`]: finds the binaries, building them once per test process
//!   (`cargo test` does not build other packages' binaries for us).
//! - [`daemon`]: one daemon as a child process, with its log, tied to the
//!   life of its parent; the tests and drover-bench both start daemons
//!   through it.
//! - [`process`]: [`Master`] and [`Worker`], child processes whose stderr is
//!   kept in a temporary file; each one is killed and reaped on drop, and the
//!   tail of every log is printed when a test fails.
//! - [`cli`]: runs `drover --master URL --output json ...` and parses its
//!   JSON output, in the foreground or in the background.
//! - [`grpc`]: a shared tokio runtime and `Queue` clients for direct calls.
//! - [`fake_worker`]: a `Workers` session played message by message by the
//!   test, for the races a real worker meets only by chance.
//! - [`wait`]: polls a condition until a deadline, failing at once when a
//!   started process dies unexpectedly. No test sleeps for a fixed time.
//! - [`model`]: the CLI's JSON lines as typed values.
//! - [`reference`]: answers computed independently of drover's code.
//! - [`slow`]: jobs slow enough to catch in their child process.
//! - [`sys`]: signals and process lookups (Linux `/proc`).
//! - [`security`]: certificates, token and TLS clients, raw gRPC calls,
//!   a hand-fed child process and a strict Prometheus text check.
//! - [`http`]: a minimal HTTP/1.1 client (the dashboard, WebDriver).
//! - [`pg`]: a throwaway PostgreSQL server (the PostgreSQL store, HA).
//! - [`python`]: the virtualenv with the Python client, for pytest and
//!   for Python client scripts run against real masters.
//! - [`webdriver`]: headless Chromium through chromedriver, for the
//!   dashboard's browser test.

pub mod bins;
pub mod cli;
pub mod daemon;
pub mod fake_worker;
pub mod grpc;
pub mod http;
pub mod model;
pub mod pg;
pub mod process;
pub mod python;
pub mod reference;
pub mod security;
pub mod slow;
pub mod sys;
pub mod wait;
pub mod webdriver;

pub use cli::{CliOutput, CliRun};
pub use model::{Cancelled, JobLine, Status, Submitted, WorkerStatus};
pub use process::{Master, Proc, Worker};
pub use wait::{wait_for, wait_until};
