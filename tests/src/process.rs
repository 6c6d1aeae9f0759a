//! The daemons under test as child processes: [`Master`] and [`Worker`],
//! both built on [`Proc`].
//!
//! Every process writes its stderr (and stdout, apart from the master's
//! first line) to a temporary file. It is registered with the test's thread
//! so that [`crate::wait`] notices at once when it dies unexpectedly; on drop
//! it is killed with its descendants and reaped, and when the test is failing
//! the tail of its log is printed, so a failure shows what every process said.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{StatsResponse, WorkerInfo};
use tonic::transport::Channel;

use crate::bins::bin;
use crate::cli::{CliOutput, CliRun};
use crate::daemon::{self, Daemon};
use crate::model::{JobLine, Status};
use crate::{grpc, sys, wait};

/// How long a daemon may take to start: the first start of a debug build
/// can be slow on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many log lines a failing test prints per process.
const TAIL_LINES: usize = 60;

thread_local! {
    /// The processes the current test started, for crash checks while it
    /// polls. Each test runs on its own thread.
    static STARTED: RefCell<Vec<Weak<Inner>>> = const { RefCell::new(Vec::new()) };
}

/// A child process under test.
struct Inner {
    /// What the process is, for messages: `drover-master`, `worker "a"`.
    label: String,
    /// Its pid, readable without the lock.
    pid: u32,
    /// The process; locked only briefly, to poll, signal or reap it (and
    /// by [`Master::start`] while it reads the first line).
    daemon: Mutex<Daemon>,
    /// Set when the test made it exit on purpose (a signal, a drain), so
    /// that its exit is not reported as a crash.
    expect_exit: std::sync::atomic::AtomicBool,
    /// Set once a failure message has shown its log tail, so that drop does
    /// not print it again.
    reported: std::sync::atomic::AtomicBool,
    /// Its descendants when the test killed or signalled it: a worker's pool
    /// children, which drop kills and reaps if they are still around.
    orphans: Mutex<Vec<u32>>,
    /// Keeps the log's directory until the process is dropped.
    _dir: tempfile::TempDir,
}

/// A started child process: its pid, its log, signals, and its exit.
///
/// Cloning gives another handle on the same process; the process is killed
/// and reaped when the last handle is dropped.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<Inner>,
}

impl Proc {
    /// Spawns `cmd` with stderr (and stdout, unless `stdout_lines`) going to
    /// a log file, and registers it with the current test.
    fn spawn(label: String, mut cmd: Command, stdout_lines: bool) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("drover-test-")
            .tempdir()
            .expect("cannot create a temporary directory");
        scrub_env(&mut cmd, dir.path());
        sys::become_subreaper();
        let options = daemon::Options {
            log: dir.path().join("log"),
            stdout_lines,
            // An aborted test run leaves no daemon behind.
            parent_death_signal: libc::SIGKILL,
            // Drop kills at once: a test's daemons have nothing to save.
            stop_grace: Duration::ZERO,
        };
        let daemon = Daemon::spawn(&label, cmd, options).unwrap_or_else(|e| panic!("{e}"));
        let inner = Arc::new(Inner {
            label,
            pid: daemon.pid(),
            daemon: Mutex::new(daemon),
            expect_exit: false.into(),
            reported: false.into(),
            orphans: Mutex::new(Vec::new()),
            _dir: dir,
        });
        STARTED.with(|s| s.borrow_mut().push(Arc::downgrade(&inner)));
        Proc { inner }
    }

    /// What the process is, as messages name it.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Its exit status if it has exited (and is now reaped), without waiting.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner
            .daemon
            .lock()
            .unwrap()
            .try_status()
            .unwrap_or_else(|e| panic!("cannot poll {}: {e}", self.inner.label))
    }

    /// Marks the process as allowed to exit from now on: the test is about to
    /// make it exit (a signal, a drain), so that is no crash.
    pub fn expect_exit(&self) {
        self.inner.expect_exit.store(true, Ordering::SeqCst);
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        sys::signal(self.pid(), sig);
    }

    /// Kills the process with SIGKILL (`kill -9`) and reaps it.
    pub fn kill9(&self) -> ExitStatus {
        self.expect_exit();
        // What happens to its children is the product's business, but drop
        // cleans up whatever is left of them.
        *self.inner.orphans.lock().unwrap() = sys::descendants(self.pid());
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends SIGTERM; the process is then expected to exit.
    pub fn sigterm(&self) {
        self.expect_exit();
        *self.inner.orphans.lock().unwrap() = sys::descendants(self.pid());
        self.signal(libc::SIGTERM);
    }

    /// Stops the process (SIGSTOP) until [`Proc::sigcont`].
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a stopped process go on (SIGCONT).
    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`, with its log tail.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        self.expect_exit();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\n{}",
                self.inner.label,
                self.log_tail(TAIL_LINES)
            );
            std::thread::sleep(wait::POLL);
        }
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        self.inner.daemon.lock().unwrap().log()
    }

    /// [`Proc::log_tail`] for a failure message, which drop then does not
    /// print again.
    fn reported_tail(&self) -> String {
        self.inner.reported.store(true, Ordering::SeqCst);
        self.log_tail(TAIL_LINES)
    }

    /// The last `lines` lines of its log, under a header naming the process.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_with_header(&mut self.inner.daemon.lock().unwrap(), lines)
    }
}

/// The last `lines` lines of `daemon`'s log, under a header naming it, its
/// pid and its exit status if it has exited.
fn tail_with_header(daemon: &mut Daemon, lines: usize) -> String {
    let exited = match daemon.try_status() {
        Ok(Some(s)) => format!(", exited: {s}"),
        _ => String::new(),
    };
    format!(
        "----- {} (pid {}{exited}): last {lines} lines of its log -----\n{}",
        daemon.name(),
        daemon.pid(),
        daemon.log_tail(lines)
    )
}

impl Drop for Inner {
    fn drop(&mut self) {
        let daemon = self.daemon.get_mut().unwrap_or_else(|e| e.into_inner());
        let pid = self.pid;
        let running = !matches!(daemon.try_status(), Ok(Some(_)));
        let orphans = std::mem::take(self.orphans.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Collect the descendants before the kill: once the parent is dead
        // they are re-parented and can no longer be found. A worker's pool
        // children would otherwise go on computing after the test.
        let mut leftovers = if running {
            sys::descendants(pid)
        } else {
            Vec::new()
        };
        // Children of a process the test killed earlier, if still there
        // (re-parented to the test process, a subreaper, or to init).
        let me = std::process::id();
        leftovers.extend(
            orphans
                .into_iter()
                .filter(|&o| matches!(sys::parent(o), Some(p) if p == pid || p == me || p == 1)),
        );
        // SIGKILL and reap (the stop grace is zero).
        let status = daemon.stop();
        for &d in &leftovers {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(d as libc::pid_t, libc::SIGKILL) };
        }
        // The test process is a subreaper, so the killed descendants are now
        // its children: reap them, leaving no zombies.
        for d in leftovers {
            sys::reap(d, Duration::from_secs(2));
        }
        if std::thread::panicking() && !self.reported.load(Ordering::SeqCst) {
            eprintln!(
                "----- {} (pid {pid}, {}): last {TAIL_LINES} lines of its log -----\n{}",
                self.label,
                match status {
                    Some(s) if !running => format!("exited: {s}"),
                    _ => "killed by the harness".to_string(),
                },
                daemon.log_tail(TAIL_LINES)
            );
        }
    }
}

/// Fails the test at once when a process it started has exited without the
/// test asking for it; called by every poll in [`crate::wait`].
///
/// # Panics
///
/// When such a process is found, naming it, its status and its log tail.
pub fn check_started() {
    let procs: Vec<Arc<Inner>> = STARTED.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|w| w.strong_count() > 0);
        s.iter().filter_map(Weak::upgrade).collect()
    });
    for inner in procs {
        if inner.expect_exit.load(Ordering::SeqCst) {
            continue;
        }
        let p = Proc { inner };
        if let Some(status) = p.try_status() {
            p.inner.reported.store(true, Ordering::SeqCst);
            panic!(
                "{} exited unexpectedly: {status}\n{}",
                p.label(),
                p.log_tail(TAIL_LINES)
            );
        }
    }
}

/// Removes the DROVER_* variables of the caller's environment, so that only
/// the flags a test passes count, and points the data directory at a
/// temporary one in case the daemon writes one.
fn scrub_env(cmd: &mut Command, dir: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DROVER_DATA_DIR", dir.join("data"));
    // Plain logs in the tails a failing test prints.
    cmd.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
}

/// A running `drover-master` on an ephemeral loopback port.
pub struct Master {
    /// The process.
    proc: Proc,
    /// Where it listens, from its first stdout line.
    addr: SocketAddr,
}

impl Master {
    /// Starts `drover-master --listen 127.0.0.1:0 ARGS...` and waits for its
    /// `drover-master listening on 127.0.0.1:PORT` line on stdout.
    ///
    /// # Panics
    ///
    /// When it exits before that line, prints something else, or takes
    /// longer than 30 s.
    pub fn start(args: &[&str]) -> Master {
        let (proc, line) = Master::spawn(args);
        let addr = daemon::listening_addr(&line).unwrap_or_else(|| {
            panic!(
                "drover-master's first stdout line is {line:?}, not \
                 `drover-master listening on 127.0.0.1:PORT`\n{}",
                proc.reported_tail()
            )
        });
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "drover-master says it listens on {addr}, not on a loopback port"
        );
        Master { proc, addr }
    }

    /// Starts `drover-master --listen 127.0.0.1:0 --store URL ARGS...` on a
    /// PostgreSQL store shared with other masters, and waits for its first
    /// stdout line: `drover-master listening on ADDR` if it was elected
    /// leader (true), `drover-master standby on ADDR` if another leads
    /// (false; [`Master::wait_leading`] waits for it to take over).
    ///
    /// # Panics
    ///
    /// When it exits before either line, prints something else, or takes
    /// longer than 30 s.
    pub fn start_ha(url: &str, args: &[&str]) -> (Master, bool) {
        let (proc, line) = Master::spawn(&[&["--store", url], args].concat());
        let (addr, leading) = match daemon::listening_addr(&line) {
            Some(addr) => (addr, true),
            None => {
                let addr = line
                    .trim()
                    .strip_prefix("drover-master standby on ")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "drover-master's first stdout line is {line:?}, neither listening \
                             nor standby\n{}",
                            proc.reported_tail()
                        )
                    });
                (addr, false)
            }
        };
        (Master { proc, addr }, leading)
    }

    /// Runs `drover-master --listen 127.0.0.1:0 ARGS...` expecting it to
    /// refuse to start; returns its stderr.
    ///
    /// # Panics
    ///
    /// When it starts, panics, or says it is listening before refusing.
    pub fn refused_start(args: &[&str]) -> String {
        let out = Command::new(bin("drover-master"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("drover-master runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "drover-master {args:?} started, but should have refused: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "drover-master panicked instead of refusing: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "drover-master said it was listening before refusing: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// Starts `drover-master --listen 127.0.0.1:0 ARGS...` and reads its
    /// first stdout line.
    fn spawn(args: &[&str]) -> (Proc, String) {
        let mut cmd = Command::new(bin("drover-master"));
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let proc = Proc::spawn("drover-master".into(), cmd, true);
        let line = proc
            .inner
            .daemon
            .lock()
            .unwrap()
            .read_stdout_line(START_TIMEOUT);
        let line = line.unwrap_or_else(|e| {
            panic!(
                "drover-master did not say it was listening: {e}\n{}",
                proc.reported_tail()
            )
        });
        (proc, line)
    }

    /// Waits for a standby's `drover-master listening on ADDR` line: it
    /// took over as the leader, with the queue recovered.
    ///
    /// # Panics
    ///
    /// When another line comes, the master exits, or `timeout` passes.
    pub fn wait_leading(&self, timeout: Duration) {
        let line = self
            .proc
            .inner
            .daemon
            .lock()
            .unwrap()
            .read_stdout_line(timeout)
            .unwrap_or_else(|e| {
                panic!(
                    "the standby did not take over: {e}\n{}",
                    self.proc.reported_tail()
                )
            });
        assert_eq!(
            daemon::listening_addr(&line),
            Some(self.addr),
            "the standby's next line is {line:?}"
        );
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL workers and the CLI dial: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `Queue` client on a new connection, for direct calls.
    pub fn queue(&self) -> QueueClient<Channel> {
        grpc::queue_client(&self.url())
    }

    /// The master's stats, through the `Queue.Stats` call.
    pub fn stats(&self) -> StatsResponse {
        grpc::stats(&self.url())
    }

    /// Runs `drover --master URL --output json ARGS...` to completion.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        crate::cli::cli(&self.url(), args)
    }

    /// Starts `drover --master URL --output json ARGS...` in the background.
    pub fn cli_spawn(&self, args: &[&str]) -> CliRun {
        CliRun::spawn(&self.url(), args)
    }

    /// The one job `id`, as `drover get ID --output json` shows it, in
    /// whatever state it is.
    ///
    /// # Panics
    ///
    /// When `get` prints other than one job.
    #[track_caller]
    pub fn job(&self, id: &str) -> JobLine {
        // Not `.success()`: the exit status says whether the job succeeded,
        // and this reads jobs in every state.
        let mut jobs = self.cli(&["get", id]).jobs();
        assert_eq!(jobs.len(), 1, "`get {id}` printed {} jobs", jobs.len());
        jobs.remove(0)
    }

    /// `drover status --output json`, parsed.
    ///
    /// # Panics
    ///
    /// When the command fails or its output does not parse.
    pub fn status(&self) -> Status {
        self.cli(&["status"]).success().status()
    }
}

impl Deref for Master {
    type Target = Proc;

    fn deref(&self) -> &Proc {
        &self.proc
    }
}

/// A running `drover-worker`.
pub struct Worker {
    /// The process.
    proc: Proc,
    /// The name it registers under (`--name`), which jobs show as their
    /// worker.
    name: String,
    /// The master it works for (of several, the one it registers with
    /// first).
    master_url: String,
}

impl Worker {
    /// Starts `drover-worker --master URL ARGS...` and waits until the
    /// master lists it among its workers with its pool started (as many
    /// child pids as its CPU slots). When ARGS has no `--name`, a unique
    /// one is added.
    ///
    /// # Panics
    ///
    /// When it exits, or the master does not list it within 30 s.
    pub fn start(master_url: &str, args: &[&str]) -> Worker {
        Worker::start_for(master_url, master_url, args)
    }

    /// Starts `drover-worker --master MASTERS ARGS...`, MASTERS being
    /// several masters' URLs, comma-separated, and waits, as
    /// [`Worker::start`] does, until the one at `master_url` lists it.
    ///
    /// # Panics
    ///
    /// When it exits, or that master does not list it within 30 s.
    pub fn start_for(masters: &str, master_url: &str, args: &[&str]) -> Worker {
        let mut worker = Worker::spawn(masters, args);
        worker.master_url = master_url.to_string();
        let info = wait::wait_for(
            START_TIMEOUT,
            &format!("{} to register", worker.label()),
            || {
                worker
                    .info()
                    .filter(|w| w.child_pids.len() as u32 == w.cpu_slots)
            },
        );
        assert_eq!(
            info.pid,
            worker.pid(),
            "the master lists worker {:?} with pid {}, but it is {}",
            worker.name,
            info.pid,
            worker.pid()
        );
        worker
    }

    /// Starts `drover-worker --master URL ARGS...` without waiting for it to
    /// register.
    pub fn spawn(master_url: &str, args: &[&str]) -> Worker {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let name = match args.iter().position(|a| a == "--name") {
            Some(i) => args.get(i + 1).expect("--name needs a value").clone(),
            None => {
                let name = format!(
                    "w{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                args.push("--name".into());
                args.push(name.clone());
                name
            }
        };
        let mut cmd = Command::new(bin("drover-worker"));
        cmd.args(["--master", master_url]).args(&args);
        let proc = Proc::spawn(format!("drover-worker {name:?}"), cmd, false);
        Worker {
            proc,
            name,
            master_url: master_url.to_string(),
        }
    }

    /// The name it registers under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the master says about this worker now, if it lists it.
    pub fn info(&self) -> Option<WorkerInfo> {
        grpc::stats(&self.master_url)
            .workers
            .into_iter()
            .find(|w| w.name == self.name)
    }
}

impl Deref for Worker {
    type Target = Proc;

    fn deref(&self) -> &Proc {
        &self.proc
    }
}
