//! The PostgreSQL server of the `pg` workload: the tests' throwaway server
//! ([`drover_tests::pg::Postgres`]: Debian's binaries, `initdb` into a
//! temporary directory, 127.0.0.1 on a free port, run as the `postgres`
//! user under root), with a fresh database for each cluster, so every
//! master starts from empty tables as the redb masters start from an empty
//! directory.
//!
//! The tests' harness fails by panicking (a test has nothing better to
//! do); here a panic becomes an error, so a machine without PostgreSQL
//! fails the `pg` workload alone and the others still run.

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Result, anyhow};
use drover_tests::pg::Postgres;

use crate::cluster::StoreKind;

/// A running server and the databases made on it so far.
pub(crate) struct Server {
    postgres: Postgres,
    databases: u32,
}

impl Server {
    /// Creates a cluster in the system temporary directory and starts it
    /// (a second or two: `initdb`, then the server's start).
    pub(crate) fn start() -> Result<Server> {
        let postgres = unpanic("starting PostgreSQL", Postgres::start)?;
        Ok(Server {
            postgres,
            databases: 0,
        })
    }

    /// A store on a new, empty database of the server.
    pub(crate) fn fresh_store(&mut self) -> Result<StoreKind> {
        self.databases += 1;
        let name = format!("bench_{}", self.databases);
        let pg = &self.postgres;
        unpanic("creating a database", || {
            pg.psql(&format!("CREATE DATABASE {name}"))
        })?;
        Ok(StoreKind::Postgres(pg.url_of(&name)))
    }

    /// The server's version and the settings that decide what a commit
    /// costs, for the notes.
    pub(crate) fn describe(&self) -> Result<String> {
        let pg = &self.postgres;
        let settings = unpanic("reading the server's settings", || {
            pg.psql(
                "SELECT concat_ws(', ', 'PostgreSQL ' || current_setting('server_version'), \
                 'fsync=' || current_setting('fsync'), \
                 'synchronous_commit=' || current_setting('synchronous_commit'), \
                 'wal_sync_method=' || current_setting('wal_sync_method'), \
                 'shared_buffers=' || current_setting('shared_buffers'))",
            )
        })?;
        Ok(format!("{settings}, on {}", pg.url()))
    }
}

/// Runs `f`, turning its panic into an error with the panic's message.
pub(crate) fn unpanic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        anyhow!("{what}: {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error() {
        assert_eq!(unpanic("adding", || 1 + 1).unwrap(), 2);
        let e = unpanic("failing", || -> u32 { panic!("no server: {}", 7) }).unwrap_err();
        assert_eq!(e.to_string(), "failing: no server: 7");
    }
}
