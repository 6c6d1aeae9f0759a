//! One daemon as a child process, the way both the tests
//! ([`crate::process`]) and drover-bench start drover's binaries: its
//! stderr (and its stdout, unless that is read line by line) in a log file,
//! tied to the life of the process that started it, and stopped and reaped
//! when dropped, so that no error path leaves a daemon or a zombie behind.
//!
//! It returns errors rather than panicking: the tests turn them into
//! failures with the process's log, the bench into its own errors.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a wait polls the child.
const POLL: Duration = Duration::from_millis(20);

/// How a daemon is started and stopped.
#[derive(Debug, Clone)]
pub struct Options {
    /// The file its stderr goes to, and its stdout unless `stdout_lines`.
    pub log: PathBuf,
    /// Read its stdout line by line ([`Daemon::read_stdout_line`]), e.g. for
    /// the master's `listening on` line, instead of logging it.
    pub stdout_lines: bool,
    /// The signal it gets when the thread that started it exits (Linux;
    /// see [`die_with_parent`]).
    pub parent_death_signal: i32,
    /// On [`Daemon::stop`] and drop: how long it has to exit after SIGTERM
    /// before SIGKILL. Zero sends SIGKILL at once.
    pub stop_grace: Duration,
}

/// A started daemon.
pub struct Daemon {
    /// What it is, for messages: `drover-master`, `bench-w1`.
    name: String,
    /// The process, reaped once `status` is set.
    child: Child,
    /// Where its stderr goes.
    log: PathBuf,
    /// Its stdout lines, read by a thread so that waiting for one can time
    /// out and notice an exit meanwhile.
    lines: Option<mpsc::Receiver<String>>,
    /// Its exit status, once reaped: after that its pid may belong to
    /// another process and is never signalled.
    status: Option<ExitStatus>,
    /// See [`Options::stop_grace`].
    stop_grace: Duration,
}

impl Daemon {
    /// Spawns `cmd` with stdin from /dev/null and the output `options` say.
    /// The caller sets the arguments, the environment and the directory.
    ///
    /// # Errors
    ///
    /// When the log cannot be created or the program cannot be started.
    pub fn spawn(name: &str, mut cmd: Command, options: Options) -> std::io::Result<Daemon> {
        let file = File::create(&options.log).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", options.log.display()),
            )
        })?;
        let stdout = if options.stdout_lines {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file));
        die_with_parent(&mut cmd, options.parent_death_signal);
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {name} ({:?}): {e}", cmd.get_program()),
            )
        })?;
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(out);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    if tx.send(std::mem::take(&mut line)).is_err() {
                        // Nobody reads any more: drain, so the child never
                        // blocks on a full pipe.
                        let _ = std::io::copy(&mut reader, &mut std::io::sink());
                        break;
                    }
                }
            });
            rx
        });
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: options.log,
            lines,
            status: None,
            stop_grace: options.stop_grace,
        })
    }

    /// What it is, as messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (it is then reaped), without
    /// waiting.
    ///
    /// # Errors
    ///
    /// When the child cannot be polled.
    pub fn try_status(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for its next stdout line.
    ///
    /// # Errors
    ///
    /// When it exits or closes its stdout first, when `timeout` passes, or
    /// when its stdout is not read line by line; the message says which.
    pub fn read_stdout_line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let rx = self
                .lines
                .as_ref()
                .ok_or_else(|| format!("{}: stdout is not read", self.name))?;
            match rx.recv_timeout(POLL) {
                Ok(line) => return Ok(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Closed: most likely because it exited; say so if it did.
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < deadline {
                        if let Ok(Some(status)) = self.try_status() {
                            return Err(format!("{} exited: {status}", self.name));
                        }
                        std::thread::sleep(POLL);
                    }
                    return Err(format!("{} closed its stdout", self.name));
                }
            }
            if let Ok(Some(status)) = self.try_status() {
                return Err(format!("{} exited: {status}", self.name));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} printed nothing within {timeout:?}", self.name));
            }
        }
    }

    /// Sends `sig`, unless it has been reaped (its pid may be reused).
    pub fn signal(&mut self, sig: i32) {
        if matches!(self.try_status(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes no pointers; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after the stop grace, or SIGKILL at
    /// once without one) and reaps it; returns its exit status. Does
    /// nothing more once it has exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.try_status() {
            return Some(status);
        }
        if !self.stop_grace.is_zero() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + self.stop_grace;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.try_status() {
                    return Some(status);
                }
                std::thread::sleep(POLL);
            }
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }

    /// Everything in its log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address in the master's first stdout line,
/// `drover-master listening on 127.0.0.1:PORT`.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("drover-master listening on ")?
        .parse()
        .ok()
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".into();
    };
    // The tail of a long log is at its end; 256 KiB is plenty.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asks the kernel to send `signal` to the child when its parent dies, so
/// that even a parent killed with SIGKILL (whose destructors never run)
/// leaves no daemon behind.
///
/// The signal follows the thread that spawned the child, not the process:
/// a test's daemons die with its thread, the bench's with its main thread.
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid before the fork; between fork and exec the closure only
    // makes async-signal-safe calls (prctl, getppid) and allocates nothing.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect. (An OS
            // error, not `Error::other`, which would allocate.)
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere only drop stops the child.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_cmd: &mut Command, _signal: i32) {}
