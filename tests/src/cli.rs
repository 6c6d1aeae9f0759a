//! Runs the `drover` CLI as a user would, and parses its output.

use std::fs::File;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bins::bin;
use crate::model::{JobLine, Status};
use crate::wait;

/// How long a foreground CLI command may run before the test fails: long
/// enough for F(10^7) twice in a debug build on a busy machine.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// What a finished CLI command printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Asserts that the command exited 0 and returns it.
    ///
    /// # Panics
    ///
    /// When it did not, with its output.
    #[track_caller]
    pub fn success(self) -> CliOutput {
        assert!(self.status.success(), "`{}` failed\n{self}", self.command);
        self
    }

    /// Every JSON document on stdout, in order (one per line, or documents
    /// spread over several lines).
    ///
    /// # Panics
    ///
    /// When stdout is not a sequence of JSON documents.
    #[track_caller]
    pub fn json(&self) -> Vec<Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| {
                panic!(
                    "`{}` printed something that is not JSON: {e}\n{self}",
                    self.command
                )
            })
    }

    /// The one JSON document on stdout, as a `T`.
    ///
    /// # Panics
    ///
    /// When there is not exactly one document or it does not fit `T`.
    #[track_caller]
    pub fn one<T: DeserializeOwned>(&self) -> T {
        let docs = self.json();
        assert_eq!(
            docs.len(),
            1,
            "`{}` printed {} JSON documents, not one\n{self}",
            self.command,
            docs.len()
        );
        serde_json::from_value(docs.into_iter().next().unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "`{}` printed JSON that does not match the contract: {e}\n{self}",
                self.command
            )
        })
    }

    /// The per-job JSON lines on stdout (`map`, `apply`, `get`, `watch`,
    /// `jobs`).
    ///
    /// # Panics
    ///
    /// When a line is not a job as INTERFACES.md describes it.
    #[track_caller]
    pub fn jobs(&self) -> Vec<JobLine> {
        self.json()
            .into_iter()
            .map(|doc| {
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
                    panic!(
                        "`{}` printed a job line that does not match the contract: {e}: {doc}",
                        self.command
                    )
                })
            })
            .collect()
    }

    /// The output of `status`, parsed.
    #[track_caller]
    pub fn status(&self) -> Status {
        self.one()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 4000;
        let cut = |s: &str| {
            if s.len() <= MAX {
                s.to_string()
            } else {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}... ({} bytes in all)", &s[..end], s.len())
            }
        };
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            cut(&self.stdout),
            cut(&self.stderr)
        )
    }
}

/// Runs `drover --master URL --output json ARGS...` to completion.
///
/// # Panics
///
/// When it cannot start or runs longer than [`CLI_TIMEOUT`].
pub fn cli(master_url: &str, args: &[&str]) -> CliOutput {
    CliRun::spawn(master_url, args).wait(CLI_TIMEOUT)
}

/// Runs `drover ARGS...` exactly as given (no `--master`, no `--output`).
pub fn cli_raw(args: &[&str]) -> CliOutput {
    CliRun::spawn_raw(args).wait(CLI_TIMEOUT)
}

/// A CLI command running in the background, e.g. a `map` in progress while
/// the test kills a worker.
pub struct CliRun {
    /// The command line, for messages.
    command: String,
    /// The process; killed and reaped on drop if it is still running.
    child: Child,
    /// Where its stdout and stderr go.
    dir: tempfile::TempDir,
}

impl CliRun {
    /// Starts `drover --master URL --output json ARGS...`.
    pub fn spawn(master_url: &str, args: &[&str]) -> CliRun {
        let mut full = vec!["--master", master_url, "--output", "json"];
        full.extend_from_slice(args);
        CliRun::spawn_raw(&full)
    }

    /// Starts `drover ARGS...` exactly as given.
    pub fn spawn_raw(args: &[&str]) -> CliRun {
        let dir = tempfile::Builder::new()
            .prefix("drover-cli-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let stdout = File::create(dir.path().join("stdout")).expect("cannot create a file");
        let stderr = File::create(dir.path().join("stderr")).expect("cannot create a file");
        let mut cmd = Command::new(bin("drover"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DROVER_") {
                cmd.env_remove(&key);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run drover: {e}"));
        CliRun {
            command: format!("drover {}", args.join(" ")),
            child,
            dir,
        }
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn finished(&mut self) -> bool {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot poll `{}`: {e}", self.command))
            .is_some()
    }

    /// What it has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit and returns its output. The
    /// daemons the test started are checked meanwhile.
    ///
    /// # Panics
    ///
    /// When it runs longer (it is then killed), with what it printed.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> CliOutput {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot poll `{}`: {e}", self.command))
            {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("cannot reap the CLI");
                panic!(
                    "`{}` did not finish within {timeout:?}\n{}",
                    self.command,
                    self.output(status)
                );
            }
            crate::process::check_started();
            std::thread::sleep(wait::POLL);
        };
        self.output(status)
    }

    fn output(&self, status: ExitStatus) -> CliOutput {
        let read = |name: &str| {
            std::fs::read(self.dir.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        CliOutput {
            command: self.command.clone(),
            status,
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }
}

impl Drop for CliRun {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let status = self.child.wait();
            if std::thread::panicking()
                && let Ok(status) = status
            {
                eprintln!(
                    "----- `{}`, still running when the test failed -----\n{}",
                    self.command,
                    self.output(status)
                );
            }
        }
    }
}
