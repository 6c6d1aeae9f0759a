//! The fixed pool of long-lived child processes that run CPU jobs.
//!
//! Each child is a process of the worker's own binary in child mode
//! ([`crate::child`]), in its own process group, fed batches of jobs over
//! its stdin. A reader task per child turns its stdout frames into
//! [`PoolEvent`]s and reaps it when its output ends, so no child is left as
//! a zombie. A child that dies, times out, or runs a cancelled job is killed
//! and replaced at once. A replacement that cannot start (no memory, no
//! file descriptors, the binary gone) leaves its slot empty, and the start
//! is tried again with a backoff, 100 ms doubling to 10 s: the pool has its
//! N children again as soon as the system lets it, and meanwhile says how
//! many it really has ([`Pool::alive`]), which is what the worker's credit
//! counts.
//!
//! Starting and killing the processes is behind [`Launcher`]: the pool's
//! bookkeeping (what each slot runs, since when, its generation) is the
//! same whether [`Processes`] starts real children or a test starts fakes.

use std::process::Stdio;
use std::time::Duration;

use drover_common::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::child::{CHILD_ARG, MAX_FRAME, encode_frame};

/// How long an empty slot waits before its first new try to start a
/// process; each failure doubles it, up to [`RESTART_BACKOFF_MAX`].
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// The longest an empty slot waits between tries.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a child's reader task reports.
#[derive(Debug)]
pub enum PoolEvent {
    /// Results from child `slot` of generation `generation`.
    Output {
        /// Index of the child in the pool.
        slot: usize,
        /// Which process in that slot: a replaced child's events are stale.
        generation: u64,
        /// The results.
        response: pb::ChildResponse,
    },
    /// The child's output ended and it was reaped.
    Exited {
        /// Index of the child in the pool.
        slot: usize,
        /// Which process in that slot.
        generation: u64,
        /// How it ended, for the job's failure reason.
        status: String,
    },
}

/// Starts and kills the processes behind the pool's slots.
pub trait Launcher: Send + std::fmt::Debug {
    /// Starts a process for `slot`. Everything it answers, and its end,
    /// must reach `events` tagged with `slot` and `generation`.
    fn spawn(
        &mut self,
        slot: usize,
        generation: u64,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) -> std::io::Result<Launched>;

    /// Kills the process `pid` (never 0) and everything it started. Its
    /// exit event still comes, and is stale by then.
    fn kill(&mut self, pid: u32);
}

/// A process just started.
#[derive(Debug)]
pub struct Launched {
    /// Its process id.
    pub pid: u32,
    /// Where its request frames go; dropping it closes the process's input.
    pub stdin: mpsc::UnboundedSender<Vec<u8>>,
}

/// The real launcher: children of the worker's own binary in child mode
/// in the first `cpu_slots` slots, and Python interpreters running the
/// runner script in the slots after them; each in its own process group.
#[derive(Debug, Clone)]
pub struct Processes {
    /// The worker's `--max-result-bytes`, passed to each child: it answers
    /// a larger result as a failure rather than write it.
    pub max_result_bytes: usize,
    /// Slots below this are Rust children; the rest are Python processes.
    pub cpu_slots: usize,
    /// The interpreter and allowed modules of the Python slots.
    pub python: Option<crate::PythonConfig>,
    /// The URL and secret of the worker's Coord proxy, given to the
    /// Python processes as `DROVER_COORD` and `DROVER_COORD_TOKEN`.
    pub coord: Option<(String, String)>,
}

impl Default for Processes {
    fn default() -> Processes {
        Processes {
            max_result_bytes: crate::DEFAULT_MAX_RESULT_BYTES,
            cpu_slots: usize::MAX,
            python: None,
            coord: None,
        }
    }
}

impl Processes {
    /// The command that starts the process of `slot`.
    fn command(&self, slot: usize) -> std::io::Result<Command> {
        match &self.python {
            Some(python) if slot >= self.cpu_slots => {
                let mut cmd = Command::new(&python.interpreter);
                cmd.arg("-c")
                    .arg(crate::python::RUNNER)
                    .arg(self.max_result_bytes.to_string())
                    .arg(python.modules.join(","));
                if let Some((url, token)) = &self.coord {
                    cmd.env("DROVER_COORD", url)
                        .env("DROVER_COORD_TOKEN", token);
                }
                Ok(cmd)
            }
            _ => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg(CHILD_ARG).arg(self.max_result_bytes.to_string());
                Ok(cmd)
            }
        }
    }
}

impl Launcher for Processes {
    fn spawn(
        &mut self,
        slot: usize,
        generation: u64,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) -> std::io::Result<Launched> {
        let mut cmd = self.command(slot)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            // Its own process group: a ^C at the terminal reaches the worker,
            // which decides what happens to running jobs.
            .process_group(0);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, rx));
        tokio::spawn(read_frames(child, stdout, slot, generation, events));
        Ok(Launched { pid, stdin: tx })
    }

    fn kill(&mut self, pid: u32) {
        kill_group(pid);
    }
}

/// One child process slot.
#[derive(Debug)]
pub struct ChildProc {
    /// Process id, for status and for killing.
    pub pid: u32,
    /// Bumped on every replacement, to tell stale events apart.
    pub generation: u64,
    /// Jobs sent and not yet answered, in the order the child runs them.
    pub in_flight: Vec<u64>,
    /// When the job at the head of `in_flight` started, as near as the
    /// worker can tell (the batch's start, or the last results' arrival).
    pub current_started: Instant,
    /// Jobs this child has run, for `--max-jobs-per-child`.
    pub jobs_run: u64,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// When to try again to start a process in this slot, if it has none
    /// because the last start failed.
    restart_at: Option<Instant>,
    /// How long to wait after the next failed start.
    backoff: Duration,
}

impl ChildProc {
    /// Whether the child has nothing to do.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    /// The children, one per slot.
    pub children: Vec<ChildProc>,
    /// Children replaced since the pool started.
    pub restarted: u64,
    events: mpsc::UnboundedSender<PoolEvent>,
    next_generation: u64,
    launcher: Box<dyn Launcher>,
}

impl Pool {
    /// Starts `n` children with `launcher`; their events arrive on `events`.
    pub fn start(
        n: usize,
        launcher: Box<dyn Launcher>,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) -> std::io::Result<Pool> {
        let mut pool = Pool {
            children: Vec::with_capacity(n),
            restarted: 0,
            events,
            next_generation: 1,
            launcher,
        };
        for slot in 0..n {
            let child = pool.spawn(slot)?;
            pool.children.push(child);
        }
        Ok(pool)
    }

    /// The process ids of the live children.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter(|c| c.pid != 0)
            .map(|c| c.pid)
            .collect()
    }

    fn spawn(&mut self, slot: usize) -> std::io::Result<ChildProc> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let Launched { pid, stdin } = self.launcher.spawn(slot, generation, self.events.clone())?;
        tracing::debug!(slot, pid, "child started");
        Ok(ChildProc {
            pid,
            generation,
            in_flight: Vec::new(),
            current_started: Instant::now(),
            jobs_run: 0,
            stdin: Some(stdin),
            restart_at: None,
            backoff: RESTART_BACKOFF,
        })
    }

    /// Sends a batch of jobs to the child in `slot`. An error, and nothing
    /// sent, if the batch is over the frame limit.
    pub fn send(&mut self, slot: usize, jobs: Vec<pb::ChildJob>) -> std::io::Result<()> {
        let ids: Vec<u64> = jobs.iter().map(|j| j.slot_id).collect();
        let frame = encode_frame(&pb::ChildRequest { jobs })?;
        let child = &mut self.children[slot];
        child.in_flight.extend(ids);
        child.current_started = Instant::now();
        if let Some(stdin) = &child.stdin {
            // A closed pipe shows up as the child's exit event.
            let _ = stdin.send(frame);
        }
        Ok(())
    }

    /// Kills the child in `slot` and starts a replacement; returns the jobs
    /// it had in flight, the running one first. If the replacement cannot
    /// start, the slot stays empty and [`Pool::restart_due`] tries again.
    pub fn replace(&mut self, slot: usize) -> Vec<u64> {
        let old = &mut self.children[slot];
        let in_flight = std::mem::take(&mut old.in_flight);
        if old.pid != 0 {
            self.launcher.kill(old.pid);
        }
        old.stdin = None;
        self.restarted += 1;
        self.start_in(slot, RESTART_BACKOFF);
        in_flight
    }

    /// Starts a process in `slot`, which has none; if it cannot start, the
    /// slot is left empty until a try `backoff` from now.
    fn start_in(&mut self, slot: usize, backoff: Duration) {
        match self.spawn(slot) {
            Ok(child) => self.children[slot] = child,
            Err(e) => {
                tracing::error!(
                    slot, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "cannot start a child process"
                );
                let empty = &mut self.children[slot];
                empty.pid = 0;
                // No process: no event matches (generations start at 1).
                empty.generation = 0;
                empty.stdin = None;
                empty.restart_at = Some(Instant::now() + backoff);
                empty.backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
        }
    }

    /// When the next try to start a process in an empty slot is due.
    pub fn next_restart(&self) -> Option<Instant> {
        self.children.iter().filter_map(|c| c.restart_at).min()
    }

    /// Tries again to start a process in every empty slot whose time has
    /// come; returns whether any started.
    pub fn restart_due(&mut self, now: Instant) -> bool {
        let mut started = false;
        for slot in 0..self.children.len() {
            let child = &mut self.children[slot];
            if child.restart_at.is_some_and(|at| at <= now) {
                child.restart_at = None;
                let backoff = child.backoff;
                self.start_in(slot, backoff);
                if self.is_alive(slot) {
                    tracing::info!(
                        slot,
                        pid = self.children[slot].pid,
                        "child process started again"
                    );
                    started = true;
                }
            }
        }
        started
    }

    /// Whether the slot has a live process.
    pub fn is_alive(&self, slot: usize) -> bool {
        self.children[slot].stdin.is_some() && self.children[slot].pid != 0
    }

    /// How many slots have a live process: what the worker can run at once.
    pub fn alive(&self) -> usize {
        (0..self.children.len())
            .filter(|&s| self.is_alive(s))
            .count()
    }

    /// Kills every child (shutdown); an empty slot is not tried again.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            if child.pid != 0 {
                self.launcher.kill(child.pid);
            }
            child.stdin = None;
            child.restart_at = None;
        }
    }
}

/// SIGKILLs a child's process group (the child leads it).
fn kill_group(pid: u32) {
    if pid != 0 {
        // SAFETY: kill(2) has no memory effects; a stale pid can only name
        // a group that no longer exists, since the reader task has not
        // reaped the child before its output ended.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

async fn write_frames(mut stdin: ChildStdin, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if stdin.write_all(&frame).await.is_err() {
            return;
        }
    }
    // Dropping stdin closes the pipe: an idle child then exits cleanly.
}

async fn read_frames(
    mut child: Child,
    stdout: tokio::process::ChildStdout,
    slot: usize,
    generation: u64,
    events: mpsc::UnboundedSender<PoolEvent>,
) {
    // Buffered: a frame's length and body (and often the next frame) in
    // one read, not one system call each.
    let mut stdout = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    let problem = loop {
        let mut len = [0u8; 4];
        if stdout.read_exact(&mut len).await.is_err() {
            break None;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            break Some(format!("sent a frame of {len} bytes, over the limit"));
        }
        buf.resize(len, 0);
        if stdout.read_exact(&mut buf).await.is_err() {
            break None;
        }
        match pb::ChildResponse::decode(buf.as_slice()) {
            Ok(response) => {
                let _ = events.send(PoolEvent::Output {
                    slot,
                    generation,
                    response,
                });
            }
            Err(e) => break Some(format!("sent a malformed frame: {e}")),
        }
    };
    if problem.is_some() {
        let _ = child.start_kill();
    }
    let status = match child.wait().await {
        Ok(s) => describe_exit(s),
        Err(e) => format!("could not be waited for: {e}"),
    };
    let status = match problem {
        Some(p) => format!("{p}; {status}"),
        None => status,
    };
    let _ = events.send(PoolEvent::Exited {
        slot,
        generation,
        status,
    });
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".into(),
    }
}
