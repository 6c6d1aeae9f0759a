//! A drover cluster made of the real binaries, started for a benchmark and
//! always torn down after it.
//!
//! The bench measures what a user runs, so it starts `drover-master` and
//! `drover-worker` as separate processes on loopback rather than calling the
//! libraries in-process. [`Cluster`] owns them: workloads that need a
//! different master (a durable store, a restart for recovery) start one with
//! other arguments through [`ClusterConfig`], or stop and start pieces with
//! [`Cluster::stop_master`] and [`Cluster::start_master_on`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{StatsRequest, StatsResponse};
use drover_tests::daemon::{self, Daemon};
use tonic::transport::Channel;

/// How long a daemon may take to come up before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a daemon has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The paths of the daemon binaries under test.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// `drover-master`.
    pub(crate) master: PathBuf,
    /// `drover-worker`.
    pub(crate) worker: PathBuf,
}

impl Binaries {
    /// Finds the daemons in `dir`, or beside this executable, where cargo
    /// puts every binary of the workspace. In the latter case it builds them
    /// first when `build` is set, when they are missing, or when they are
    /// older than their sources: `cargo run -p drover-bench` does not rebuild
    /// other packages' binaries, and a bench of a stale master measures old
    /// code.
    ///
    /// Returns notes for the report alongside the paths.
    pub(crate) fn locate(dir: Option<&Path>, build: bool) -> Result<(Self, Vec<String>)> {
        // Only the default directory is cargo's: binaries the user points at
        // are taken as they are.
        let ours = dir.is_none();
        let dir = match dir {
            // Absolute, because the daemons run in their own directory.
            Some(d) => {
                std::fs::canonicalize(d).with_context(|| format!("--bin-dir {}", d.display()))?
            }
            None => std::env::current_exe()
                .context("cannot find this executable's path")?
                .parent()
                .ok_or_else(|| anyhow!("this executable has no parent directory"))?
                .to_path_buf(),
        };
        let bins = Self {
            master: dir.join(exe_name("drover-master")),
            worker: dir.join(exe_name("drover-worker")),
        };
        let missing = !bins.master.is_file() || !bins.worker.is_file();
        let mut notes = Vec::new();
        if ours && (build || missing || bins.older_than_sources()) {
            let built = build_daemons().with_context(|| {
                format!(
                    "building drover-master and drover-worker for {}",
                    dir.display()
                )
            });
            match built {
                // Stale binaries still run: while someone edits the master
                // the bench measures the last build that compiled, and says so.
                Err(e) if !build && !missing => notes.push(format!(
                    "the daemons are older than their sources and rebuilding them failed, \
                     so the existing binaries were measured: {e:#}"
                )),
                other => other?,
            }
        }
        for path in [&bins.master, &bins.worker] {
            if !path.is_file() {
                bail!(
                    "{} not found; build it with `cargo build --release --bins`",
                    path.display()
                );
            }
        }
        Ok((bins, notes))
    }
}

impl Binaries {
    /// Whether a daemon is older than any source it is built from, when the
    /// source tree is at hand: then benchmarking it would measure old code.
    fn older_than_sources(&self) -> bool {
        let root = drover_tests::bins::workspace_root();
        let Some(newest) = ["common", "master", "worker", "proto", "Cargo.lock"]
            .iter()
            .filter_map(|p| newest_mtime(&root.join(p)))
            .max()
        else {
            return false;
        };
        [&self.master, &self.worker].iter().any(|bin| {
            std::fs::metadata(bin)
                .and_then(|m| m.modified())
                .is_ok_and(|built| built < newest)
        })
    }
}

/// The newest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest_mtime(&entry.ok()?.path()))
        .max()
}

fn exe_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Builds the daemons with the bench's own profile, so that they land in the
/// directory the bench runs from.
fn build_daemons() -> Result<()> {
    let root = drover_tests::bins::workspace_root();
    if !root.join("Cargo.toml").is_file() {
        bail!(
            "the drover workspace is not at {}: build the daemons by hand",
            root.display()
        );
    }
    // The tests' cargo command: without the variables `cargo run` gave
    // this process, which would rebuild half the workspace.
    let mut cmd = drover_tests::bins::cargo();
    cmd.current_dir(&root)
        .args(["build", "--bin", "drover-master", "--bin", "drover-worker"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    // cargo's progress goes to our stderr; stdout stays clean for --json.
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

/// The master's store, which the bench always names on its command line
/// rather than leaving it to the master's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// `--store memory`: nothing on disk. The core figures are defined on
    /// it; the user's `--master-arg` comes after it and may replace it.
    Memory,
    /// `--store redb --data-dir <work dir>/data`: a fresh durable store for
    /// each cluster, which a restarted master finds again. These come after
    /// the user's `--master-arg`, whose own `--store` and `--data-dir` are
    /// dropped: the durable workloads are defined by them.
    Redb,
    /// `--store <URL>`: a PostgreSQL database (a fresh one for each
    /// cluster, on the server the bench started), after the user's
    /// `--master-arg` without its `--store` and `--data-dir`, as for redb.
    Postgres(String),
}

/// What to start: the daemons' shapes and any extra flags.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    /// Worker daemons to start (0 for a master alone).
    pub(crate) workers: usize,
    /// `--processes` of each worker: its CPU slots.
    pub(crate) processes: usize,
    /// The master's store.
    pub(crate) store: StoreKind,
    /// The user's extra master flags (`--master-arg`), e.g. a lease.
    pub(crate) master_args: Vec<String>,
    /// Extra flags given to every worker.
    pub(crate) worker_args: Vec<String>,
}

/// A running master and its workers. Dropping it stops and reaps them all.
pub(crate) struct Cluster {
    bins: Binaries,
    config: ClusterConfig,
    /// The daemons' working directory: it holds their stderr, so a failure
    /// can show what it said, the redb store's `data/` (see [`StoreKind`]),
    /// and whatever they create by relative path, so nothing lands where the
    /// bench was started and every cluster starts empty. Removed on drop;
    /// a restarted master finds its store again.
    work_dir: tempfile::TempDir,
    /// The master's `127.0.0.1:PORT`, once it listens.
    addr: String,
    /// The master's `http://127.0.0.1:PORT`.
    url: String,
    master: Option<Daemon>,
    /// Masters started so far, restarts included.
    master_starts: u32,
    workers: Vec<Daemon>,
}

impl Cluster {
    /// Starts a master on an ephemeral loopback port, then the workers, and
    /// waits until the master reports every worker connected.
    pub(crate) async fn start(bins: &Binaries, config: ClusterConfig) -> Result<Self> {
        let work_dir = tempfile::Builder::new()
            .prefix("drover-bench-")
            .tempdir()
            .context("cannot create a directory for the daemons' logs")?;
        let mut cluster = Self {
            bins: bins.clone(),
            config,
            work_dir,
            addr: String::new(),
            url: String::new(),
            master: None,
            master_starts: 0,
            workers: Vec::new(),
        };
        cluster.start_master_on("127.0.0.1:0")?;
        for i in 0..cluster.config.workers {
            cluster.start_worker(&format!("bench-w{}", i + 1))?;
        }
        let want = cluster.config.workers;
        cluster.wait_for_workers(want).await?;
        Ok(cluster)
    }

    /// The URL clients dial.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The address the master listens on, `127.0.0.1:PORT`: a restarted
    /// master is given it again.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The process id of the running master.
    pub(crate) fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Daemon::pid)
    }

    /// The redb store's directory (used only with [`StoreKind::Redb`]).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.work_dir.path().join("data")
    }

    /// The master's command line after `--listen`: the store flags and the
    /// user's, in the order [`StoreKind`] describes.
    pub(crate) fn master_args(&self) -> Vec<String> {
        master_flags(
            &self.config.store,
            &self.config.master_args,
            &self.data_dir(),
        )
    }

    /// Starts a master listening on `listen` (`127.0.0.1:0` for any port)
    /// with the configured flags, and records its address. A restart for a
    /// recovery workload passes the previous address.
    pub(crate) fn start_master_on(&mut self, listen: &str) -> Result<()> {
        self.start_master_within(listen, START_TIMEOUT)
    }

    /// [`Cluster::start_master_on`], allowing `timeout` until the master
    /// says it listens (it opens its store first, which after a crash may
    /// take a while).
    pub(crate) fn start_master_within(&mut self, listen: &str, timeout: Duration) -> Result<()> {
        if self.master.is_some() {
            bail!("a master is already running");
        }
        let mut cmd = Command::new(&self.bins.master);
        cmd.args(["--listen", listen]).args(self.master_args());
        // A restarted master logs to a file of its own, so the last words
        // of the one before it are kept.
        self.master_starts += 1;
        let name = match self.master_starts {
            1 => "master".to_string(),
            n => format!("master-{n}"),
        };
        let mut master = spawn_daemon(&name, cmd, self.work_dir.path(), true)?;
        let line = master
            .read_stdout_line(timeout)
            .map_err(|e| anyhow!("{e}{}", log_tail(&master)))?;
        let addr = daemon::listening_addr(&line).ok_or_else(|| {
            anyhow!(
                "unexpected first line from drover-master: {line:?}{}",
                log_tail(&master)
            )
        })?;
        self.addr = addr.to_string();
        self.url = format!("http://{addr}");
        self.master = Some(master);
        Ok(())
    }

    /// Stops the master (SIGTERM, or SIGKILL when `kill` is set, as a crash
    /// would) and reaps it; the workers keep running and reconnect to the
    /// next one.
    pub(crate) fn stop_master(&mut self, kill: bool) {
        if let Some(mut m) = self.master.take() {
            if kill {
                m.signal(libc::SIGKILL);
            }
            m.stop();
        }
    }

    /// Starts one more worker pointed at the master.
    pub(crate) fn start_worker(&mut self, name: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bins.worker);
        cmd.args(["--master", &self.url])
            .args(["--processes", &self.config.processes.to_string()])
            .args(["--name", name])
            .args(&self.config.worker_args);
        let worker = spawn_daemon(name, cmd, self.work_dir.path(), false)?;
        self.workers.push(worker);
        Ok(())
    }

    /// Connects a client to the master, accepting messages as large as a
    /// master may send (a batch of results, a big fib).
    pub(crate) async fn client(&self) -> Result<QueueClient<Channel>> {
        let channel = drover_common::net::connect(&self.url)
            .await
            .map_err(|e| anyhow!(e))?;
        Ok(QueueClient::new(channel)
            .max_decoding_message_size(drover_common::net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(drover_common::net::MAX_MESSAGE_BYTES))
    }

    /// Polls Stats until `n` workers are connected with all their CPU slots,
    /// failing early if a daemon exits.
    pub(crate) async fn wait_for_workers(&mut self, n: usize) -> Result<StatsResponse> {
        let deadline = Instant::now() + START_TIMEOUT;
        let want_slots = (n * self.config.processes) as u64;
        let mut client = None;
        let mut last = String::from("no answer yet");
        loop {
            self.check_alive()?;
            if client.is_none() {
                match self.client().await {
                    Ok(c) => client = Some(c),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if let Some(c) = client.as_mut() {
                match c.stats(StatsRequest {}).await {
                    Ok(resp) => {
                        let stats = resp.into_inner();
                        let slots: u64 = stats.workers.iter().map(|w| u64::from(w.cpu_slots)).sum();
                        if stats.workers.len() >= n && slots >= want_slots {
                            return Ok(stats);
                        }
                        last = format!("{} workers, {slots} cpu slots", stats.workers.len());
                    }
                    Err(e) => last = format!("stats: {}", e.message()),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{n} workers did not connect within {START_TIMEOUT:?} (last: {last}){}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, with the daemons' last words, if any of them has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for d in self.master.iter_mut().chain(self.workers.iter_mut()) {
            if let Ok(Some(status)) = d.try_status() {
                dead.push(format!("{} exited ({status})", d.name()));
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            bail!("{}{}", dead.join(", "), self.log_tails())
        }
    }

    /// The end of every daemon's stderr, for error messages.
    pub(crate) fn log_tails(&self) -> String {
        self.master
            .iter()
            .chain(self.workers.iter())
            .map(log_tail)
            .collect()
    }

    /// Stops the workers first (so none reconnects to a dying master), then
    /// the master, and reaps them all. Idempotent.
    pub(crate) fn shutdown(&mut self) {
        // Signal every worker before waiting on any, so they drain together.
        for w in &mut self.workers {
            w.signal(libc::SIGTERM);
        }
        for mut w in self.workers.drain(..) {
            w.stop();
        }
        if let Some(mut m) = self.master.take() {
            m.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The master's flags for `store`, around the user's `user` flags, as
/// [`StoreKind`] describes.
fn master_flags(store: &StoreKind, user: &[String], data_dir: &Path) -> Vec<String> {
    let owned = |flags: &[&str]| flags.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match store {
        // A user's own --store stands alone, whether or not the master lets
        // a later flag override an earlier one.
        StoreKind::Memory if without_flags(user, &["--store"]).len() != user.len() => user.to_vec(),
        StoreKind::Memory => [owned(&["--store", "memory"]), user.to_vec()].concat(),
        StoreKind::Redb => [
            without_flags(user, &["--store", "--data-dir"]),
            owned(&["--store", "redb", "--data-dir"]),
            vec![data_dir.display().to_string()],
        ]
        .concat(),
        StoreKind::Postgres(url) => [
            without_flags(user, &["--store", "--data-dir"]),
            owned(&["--store", url]),
        ]
        .concat(),
    }
}

/// `args` without the flags named in `drop`, written `--flag value` or
/// `--flag=value`.
fn without_flags(args: &[String], drop: &[&str]) -> Vec<String> {
    let mut kept = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if drop.contains(&arg.as_str()) {
            iter.next(); // its value
        } else if !drop.iter().any(|f| {
            arg.strip_prefix(f)
                .is_some_and(|rest| rest.starts_with('='))
        }) {
            kept.push(arg.clone());
        }
    }
    kept
}

/// The master's resident memory (VmRSS) in MiB, from /proc.
pub(crate) fn rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS line in {path}"))?;
    Ok(kib / 1024.0)
}

/// Where the durable stores go (the system temporary directory, `TMPDIR`)
/// and its filesystem, for the notes: an fsync on tmpfs costs nothing, so
/// the durable figures would flatter drover there.
pub(crate) fn store_location() -> String {
    let dir = std::env::temp_dir();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    // The mount whose point is the longest prefix of the directory.
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, point, fstype) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(point)
                .then_some((point.len(), device, fstype))
        })
        .max_by_key(|m| m.0);
    match mount {
        Some((_, _, "tmpfs")) => format!(
            "{} (tmpfs: fsync costs nothing there, so the durable figures are optimistic; \
             set TMPDIR to a directory on a disk)",
            dir.display()
        ),
        Some((_, device, fstype)) => format!("{} ({fstype} on {device})", dir.display()),
        None => dir.display().to_string(),
    }
}

/// Starts `cmd` in `work_dir` through the harness the tests use, with its
/// stderr in `<work_dir>/<name>.log`, and its stdout read line by line when
/// `stdout_lines` (else in the log too). A bench killed outright takes its
/// daemons with it (SIGTERM); dropping one stops it within [`STOP_GRACE`].
fn spawn_daemon(
    name: &str,
    mut cmd: Command,
    work_dir: &Path,
    stdout_lines: bool,
) -> Result<Daemon> {
    // Plain logs: they end up in files and in error messages.
    cmd.current_dir(work_dir).env("NO_COLOR", "1");
    let options = daemon::Options {
        log: work_dir.join(format!("{name}.log")),
        stdout_lines,
        parent_death_signal: libc::SIGTERM,
        stop_grace: STOP_GRACE,
    };
    Ok(Daemon::spawn(name, cmd, options)?)
}

/// The last lines of a daemon's log, formatted for an error message.
fn log_tail(d: &Daemon) -> String {
    let tail = d.log_tail(20);
    if tail.is_empty() {
        return String::new();
    }
    format!("\n--- {} stderr (last lines) ---\n{tail}", d.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_dropped_in_both_spellings() {
        let args: Vec<String> = ["--store", "memory", "--lease=5s", "--data-dir=/x", "-v"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            without_flags(&args, &["--store", "--data-dir"]),
            ["--lease=5s", "-v"]
        );
        assert_eq!(without_flags(&args, &["--stor"]), args);
    }

    #[test]
    fn store_flags_and_the_users() {
        let user = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dir = Path::new("/d");
        assert_eq!(
            master_flags(&StoreKind::Memory, &user(&["--lease=5s"]), dir),
            ["--store", "memory", "--lease=5s"]
        );
        assert_eq!(
            master_flags(&StoreKind::Memory, &user(&["--store=redb"]), dir),
            ["--store=redb"]
        );
        assert_eq!(
            master_flags(
                &StoreKind::Redb,
                &user(&["--store", "memory", "--data-dir=/x", "--lease=5s"]),
                dir
            ),
            ["--lease=5s", "--store", "redb", "--data-dir", "/d"]
        );
        assert_eq!(
            master_flags(
                &StoreKind::Postgres("postgres://u@h:1/d".into()),
                &user(&["--store=memory", "--data-dir", "/x", "--lease=5s"]),
                dir
            ),
            ["--lease=5s", "--store", "postgres://u@h:1/d"]
        );
    }

    #[test]
    fn rss_of_this_process() {
        let mib = rss_mib(std::process::id()).unwrap();
        assert!(mib > 0.0 && mib < 100_000.0, "{mib}");
    }
}
