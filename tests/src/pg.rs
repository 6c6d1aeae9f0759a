//! A throwaway PostgreSQL server for the tests of the PostgreSQL store and
//! of high availability: `initdb` into a temporary directory, `postgres`
//! on 127.0.0.1 and a free port, stopped and removed on drop.
//!
//! The server binaries come from Debian's packages (`.ci/run` installs
//! them when they are missing): `$DROVER_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. PostgreSQL refuses to run as
//! root, and CI runs as root: then the directory is given to the
//! `postgres` system user and the server runs as that user. A missing
//! server fails the test, naming what to install; it never skips.
//!
//! [`Postgres::start_tls`] starts one with TLS on, its certificate from a
//! [`Pki`], and a `pg_hba.conf` of the test's (say [`HOSTSSL_ONLY`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::die_with_parent;
use crate::security::{Pki, free_port};

/// A `pg_hba.conf` that takes TCP connections only over TLS (`hostssl`):
/// PostgreSQL refuses a plain one, saying "no encryption".
pub const HOSTSSL_ONLY: &str = "hostssl all all 127.0.0.1/32 trust\n";

/// A PostgreSQL server of its own, for one test.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Who the server runs as, when the test runs as root.
    user: Option<(u32, u32)>,
    /// Whether TLS is on (`server.crt` and `server.key` in `dir`).
    tls: bool,
    child: Option<Child>,
}

impl Postgres {
    /// Creates a cluster and starts it; returns once it accepts connections.
    ///
    /// # Panics
    ///
    /// When the server binaries are missing or the server does not start
    /// (with its log).
    pub fn start() -> Postgres {
        let mut pg = Postgres::init();
        pg.start_server();
        pg
    }

    /// Creates a cluster with TLS on, the server's certificate and key
    /// `server.pem` and `server.key` of `pki` (signed by its `ca.pem`, for
    /// `localhost` and `127.0.0.1`), and `hba` as its `pg_hba.conf`;
    /// starts it and returns once it accepts connections.
    ///
    /// # Panics
    ///
    /// As [`Postgres::start`], or when the files cannot be written.
    pub fn start_tls(pki: &Pki, hba: &str) -> Postgres {
        let mut pg = Postgres::init();
        let files = [
            ("server.crt", pki.path("server.pem")),
            ("server.key", pki.path("server.key")),
        ];
        for (name, from) in files {
            let to = pg.dir.path().join(name);
            std::fs::copy(&from, &to).expect("the server's certificate can be copied");
            pg.give(&to, 0o600);
        }
        let conf = pg.dir.path().join("data").join("pg_hba.conf");
        std::fs::write(&conf, hba).expect("pg_hba.conf can be written");
        pg.give(&conf, 0o600);
        pg.tls = true;
        pg.start_server();
        pg
    }

    /// Makes `path` the server's user's, with `mode` (PostgreSQL refuses a
    /// key that others can read).
    fn give(&self, path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("permissions can be set");
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .expect("a file can be given to the postgres user");
        }
    }

    /// Creates a cluster in a temporary directory, not started.
    fn init() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("drover-pg-")
            .tempdir()
            .expect("a temporary directory");
        // SAFETY: geteuid has no preconditions.
        let user = (unsafe { libc::geteuid() } == 0).then(postgres_user);
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("the data directory can be given to the postgres user");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null());
        as_user(&mut initdb, user);
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres {
            dir,
            bin,
            port: free_port(),
            user,
            tls: false,
            child: None,
        }
    }

    /// Starts the server on its port again (after [`Postgres::stop`]).
    pub fn start_server(&mut self) {
        assert!(self.child.is_none(), "the server is running already");
        let log = std::fs::File::create(self.log_path()).expect("the server's log");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=60", "-c", "shared_buffers=64MB"]);
        if self.tls {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", file("server.crt")))
                .arg("-c")
                .arg(format!("ssl_key_file={}", file("server.key")));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        as_user(&mut cmd, self.user);
        // SIGQUIT: the server's immediate shutdown, should the test die.
        die_with_parent(&mut cmd, libc::SIGQUIT);
        self.child = Some(cmd.spawn().expect("postgres starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not listen within 30 s: {}",
                self.log()
            );
            std::thread::sleep(crate::wait::POLL);
        }
        // Listening is not yet accepting sessions (startup recovery).
        while !self.psql_ok("SELECT 1") {
            assert!(
                Instant::now() < deadline,
                "postgres did not accept a session within 30 s: {}",
                self.log()
            );
            std::thread::sleep(crate::wait::POLL);
        }
    }

    /// Stops the server (a fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of a database on it.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL with `psql`, failing the test on an error; returns its
    /// unaligned output.
    ///
    /// # Panics
    ///
    /// When psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_command(sql).output().expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn psql_ok(&self, sql: &str) -> bool {
        self.psql_command(sql)
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn psql_command(&self, sql: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql]);
        cmd
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child: an immediate shutdown.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` as the `postgres` user when given one.
fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

/// The uid and gid of the `postgres` system user.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
        .and_then(|(u, g)| Some((u?, g?)))
        .expect(
            "the tests run as root and there is no postgres user to run PostgreSQL as: \
             install PostgreSQL (apt-get install postgresql), as .ci/run does",
        )
}

/// Where the server binaries are.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DROVER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|p| Path::new(p).join("postgres").exists())
    });
    on_path.expect(
        "PostgreSQL's server binaries (postgres, initdb) were not found in $DROVER_PG_BIN, \
         /usr/lib/postgresql/*/bin or PATH: install them (apt-get install postgresql), as .ci/run does",
    )
}
