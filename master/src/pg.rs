//! The PostgreSQL store (`--store postgres://...`): the same records and
//! guarantees as the redb store ([`crate::store::RedbStore`]), in tables
//! several masters share, one of them the leader ([`crate::ha`]).
//!
//! Like redb, PostgreSQL is the durable log and the source of truth at
//! recovery, not a table polled for work: the queue stays in the leader's
//! memory, and each group commit is one transaction of a few multi-row
//! statements (`unnest` of arrays), whatever the number of jobs in it.
//!
//! **Fencing.** A store is opened with the epoch its master was elected
//! with. Every transaction first reads the lease row `FOR SHARE` and
//! refuses to go on if the epoch there is another: a takeover (which
//! updates that row) waits for a commit under way, and a commit after it
//! sees the new epoch. So a leader paused past its lease and resumed never
//! writes again, and every row written carries the epoch that wrote it.
//!
//! The store's calls are synchronous, like redb's: the committer thread and
//! the request handlers call them. They run on a small runtime of the
//! store's own that drives its two connections (one for the committers'
//! transactions, one for reads), and the caller waits for the answer.

pub mod tls;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drover_common::ids::{BatchId, JobId};
use drover_common::pb;
use parking_lot::Mutex;
use prost::Message;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};
use uuid::Uuid;

use crate::coord::{CoordStore, Record};
use crate::store::{
    Changes, Closed, ClosedCounts, Loaded, Store, StoredBatch, decode_batch, now_ms,
    pack_assignments, stored_batch, unpack_assignments,
};

/// The version of the tables this build writes. Format 1 had
/// `drover_jobs` and `drover_batches` unpartitioned; 2 partitions them by
/// batch id (see [`Partitions`]).
pub const PG_FORMAT_VERSION: i64 = 2;

/// The width of a partition (unix ms of batch creation) in a database this
/// build creates: an hour. A partition is dropped once every batch in it
/// is purged, so retention of hours or more drops most finished work
/// whole; a lookup by job id alone probes every partition newer than the
/// job, so there should not be thousands. Kept in `drover_meta` at
/// creation: every master of a database cuts the same ranges.
pub const PARTITION_MS: u64 = 3_600_000;

/// The key of the advisory lock that serializes creating the tables.
const SCHEMA_LOCK: i64 = 0x6472_6f76_6572; // "drover"

/// How long a master waits for that lock before it gives up saying why.
/// Making the tables takes milliseconds: a session that holds the lock this
/// long belongs to a master stopped in the middle (paused, or its network
/// cut off before PostgreSQL noticed).
const SCHEMA_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Rows read per query by the scans, which may stop early.
const SCAN_PAGE: i64 = 1000;

/// The meta rows of the counts of closed jobs, by state, and their bytes.
const CLOSED_COUNTS: [&str; 3] = ["closed_succeeded", "closed_failed", "closed_cancelled"];
const CLOSED_BYTES: &str = "closed_bytes";
const PURGED_UPTO: &str = "budget_purged_upto_ms";
const NEXT_SEQ: &str = "next_seq";
const PARTITION_WIDTH: &str = "partition_ms";

/// The tables, their indexes, the lease row and the format marker, made
/// once, by the first master, under an advisory lock.
///
/// `drover_jobs` is partitioned by its `batch` column and `drover_batches`
/// by its id, on the same ranges of batch creation time (a UUID v7 starts
/// with its time in ms), so a batch and its jobs are in partitions of the
/// same range, and a range whose batches are all purged is dropped whole.
/// A job's row is keyed by (batch, id), as a partitioned table's keys must
/// hold the partition key; `drover_jobs_id` serves reads by id. The
/// DEFAULT partitions take what no range holds (ids that are not v7).
fn schema() -> String {
    let failed = pb::JobState::Failed as i32;
    let cancelled = pb::JobState::Cancelled as i32;
    format!(
        "
SET LOCAL client_min_messages = warning;
CREATE TABLE drover_meta (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE drover_lease (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    address text NOT NULL,
    expires_at timestamptz NOT NULL);
INSERT INTO drover_lease VALUES (1, 0, '', '', '-infinity') ON CONFLICT DO NOTHING;
CREATE TABLE drover_jobs (
    id uuid NOT NULL,
    batch uuid NOT NULL,
    state int NOT NULL,
    record bytea NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (batch, id)) PARTITION BY RANGE (batch);
CREATE INDEX drover_jobs_id ON drover_jobs (id);
CREATE INDEX drover_jobs_ended ON drover_jobs (state, id)
    WHERE state IN ({failed}, {cancelled});
CREATE TABLE drover_jobs_default PARTITION OF drover_jobs DEFAULT;
CREATE TABLE drover_batches (
    id uuid PRIMARY KEY,
    record bytea NOT NULL,
    open boolean NOT NULL,
    closed_at_ms bigint,
    info bytea,
    bytes bigint NOT NULL DEFAULT 0,
    epoch bigint NOT NULL) PARTITION BY RANGE (id);
CREATE INDEX drover_batches_open ON drover_batches (id) WHERE open;
CREATE INDEX drover_batches_closed ON drover_batches (closed_at_ms, id)
    WHERE NOT open;
CREATE TABLE drover_batches_default PARTITION OF drover_batches DEFAULT;
CREATE TABLE drover_keys (key text PRIMARY KEY, job uuid NOT NULL, epoch bigint NOT NULL);
CREATE INDEX drover_keys_job ON drover_keys (job);
CREATE TABLE drover_requests (
    request_id text PRIMARY KEY, batch uuid NOT NULL, epoch bigint NOT NULL);
CREATE INDEX drover_requests_batch ON drover_requests (batch);
CREATE TABLE drover_assignments (
    number bigint PRIMARY KEY, packed bytea NOT NULL, epoch bigint NOT NULL);
CREATE TABLE drover_coord (key text PRIMARY KEY, value bytea NOT NULL, epoch bigint NOT NULL);
"
    )
}

/// Connects to `url`, over TLS as its `sslmode` and `sslrootcert` say
/// ([`tls`]), the connection driven on the current runtime; the error
/// names the URL without its password. Unless the URL names one, the
/// session's `application_name` is `drover-master PID ROLE`, so that an
/// operator (or a test) can tell a master's sessions in
/// `pg_stat_activity`.
pub async fn connect(url: &str, role: &str) -> anyhow::Result<Client> {
    let (mut config, tls) = tls::parse(url)
        .map_err(|e| anyhow::anyhow!("not a PostgreSQL URL ({}): {e}", redact(url)))?;
    if config.get_application_name().is_none() {
        config.application_name(format!("drover-master {} {role}", std::process::id()));
    }
    let (client, connection) = tls::connect(&mut config, &tls, &redact(url)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Connects the committers' session. Its transactions hold the lease row
/// (the fence): if this process stops in the middle of one (SIGSTOP, a
/// stall), PostgreSQL ends the session after `patience` idle in the
/// transaction, so that a standby's takeover, which waits for that lock, is
/// not held up for longer than a lease. 0: no limit (tests).
async fn connect_writer(url: &str, patience: Duration) -> anyhow::Result<Client> {
    let client = connect(url, "writer").await?;
    if !patience.is_zero() {
        client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                patience.as_millis().max(1)
            ))
            .await?;
    }
    Ok(client)
}

/// Creates the tables if they are missing and checks their format;
/// returns when the store was created (unix ms).
pub async fn ensure_schema(client: &mut Client, url: &str) -> anyhow::Result<u64> {
    ensure_schema_with(client, url, PARTITION_MS).await
}

/// [`ensure_schema`], giving a database it creates partitions of
/// `partition_ms` (tests use a few ms, to cross many); a database that
/// exists keeps its own.
pub async fn ensure_schema_with(
    client: &mut Client,
    url: &str,
    partition_ms: u64,
) -> anyhow::Result<u64> {
    ensure_schema_waiting(client, url, partition_ms, SCHEMA_LOCK_WAIT).await
}

/// [`ensure_schema_with`], waiting at most `lock_wait` for another master
/// that is making the tables.
async fn ensure_schema_waiting(
    client: &mut Client,
    url: &str,
    partition_ms: u64,
    lock_wait: Duration,
) -> anyhow::Result<u64> {
    anyhow::ensure!(partition_ms > 0, "a partition is at least 1 ms wide");
    // Tables of this format already there: no DDL, whose locks would wait
    // for (and hold up) the leader's commits.
    if let Some(created) = current_format(client, url).await? {
        return Ok(created);
    }
    // The lock is taken before the transaction begins. The check above left
    // "no such table" in this connection's catalog cache; a transaction
    // begun before another master's commit does not refresh it, so a
    // check made in one begun before the wait would still miss the tables
    // made meanwhile, and the CREATE would fail ("already exists"). One
    // begun after the wait does refresh it.
    client
        .batch_execute(&format!(
            "SET lock_timeout = {}",
            lock_wait.as_millis().max(1)
        ))
        .await?;
    let locked = client
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(anyhow::Error::from);
    // Checked after the lock's error, which says more than this one would
    // (a broken connection, say). The caller drops the connection on any
    // error, which releases a lock taken.
    let reset = client.batch_execute("RESET lock_timeout").await;
    if let Err(e) = locked {
        if lock_timed_out(&e) {
            // pg_locks shows a bigint key as its two halves.
            let (high, low) = (SCHEMA_LOCK >> 32, SCHEMA_LOCK & 0xffff_ffff);
            anyhow::bail!(
                "waited {lock_wait:?} for another session to finish making drover's tables in {} \
                 (it holds their advisory lock: SELECT pid, application_name FROM pg_locks JOIN \
                 pg_stat_activity USING (pid) WHERE locktype = 'advisory' AND granted AND \
                 classid = {high} AND objid = {low} AND objsubid = 1 AND pg_locks.database = \
                 (SELECT oid FROM pg_database WHERE datname = current_database())); a master \
                 stopped while making them? End that session with pg_terminate_backend(pid) \
                 and start again",
                redact(url)
            );
        }
        return Err(e);
    }
    reset?;
    let made = create_schema(client, url, partition_ms).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await;
    let created = made?;
    unlocked?;
    Ok(created)
}

/// Makes the tables unless another master made them while this one waited
/// for the schema lock, which the caller holds.
async fn create_schema(client: &mut Client, url: &str, partition_ms: u64) -> anyhow::Result<u64> {
    let txn = client.transaction().await?;
    // Another master may have made them while this one waited.
    if let Some(created) = current_format(&txn, url).await? {
        txn.commit().await?;
        return Ok(created);
    }
    txn.batch_execute(&schema()).await?;
    let created = now_ms() as i64;
    txn.execute(
        "INSERT INTO drover_meta VALUES ('format_version', $1), ('created_at_ms', $2), ($3, $4)",
        &[
            &PG_FORMAT_VERSION,
            &created,
            &PARTITION_WIDTH,
            &(partition_ms as i64),
        ],
    )
    .await?;
    txn.commit().await?;
    Ok(created as u64)
}

/// When the store was created, if its tables are there and of this
/// format; `None` if there are none; an error naming both formats if they
/// are of another.
async fn current_format(client: &impl GenericClient, url: &str) -> anyhow::Result<Option<u64>> {
    let existing: Option<String> = client
        .query_one("SELECT to_regclass('drover_meta')::text", &[])
        .await?
        .get(0);
    if existing.is_none() {
        return Ok(None);
    }
    let version = meta_value(client, "format_version").await?;
    anyhow::ensure!(
        version != 0,
        "the database at {} has a drover_meta table without drover's format marker; it is not drover's, or its creation was interrupted",
        redact(url)
    );
    anyhow::ensure!(
        version <= PG_FORMAT_VERSION as u64,
        "the database at {} was written by a newer drover (format {version}; this build reads up to {PG_FORMAT_VERSION}); run that version, or use another database",
        redact(url)
    );
    anyhow::ensure!(
        version == PG_FORMAT_VERSION as u64,
        "the database at {} holds drover's tables of format {version} (jobs and batches in plain tables); this build writes format {PG_FORMAT_VERSION} (partitioned by batch time, dropped whole by retention) and does not convert them: finish its work with the drover that wrote it, or use another database",
        redact(url)
    );
    Ok(Some(meta_value(client, "created_at_ms").await?))
}

async fn meta_value(client: &impl GenericClient, name: &str) -> anyhow::Result<u64> {
    let row = client
        .query_opt("SELECT value FROM drover_meta WHERE name = $1", &[&name])
        .await?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// A URL with its password (if any) replaced, for messages: the one in
/// `user:password@` (the user info: [`tls::host_start`]) and a
/// `password=` parameter.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    let host = tls::host_start(url);
    if let Some(scheme_end) = url.find("://")
        && host > scheme_end + 3
        && let Some((user, _)) = url[scheme_end + 3..host - 1].split_once(':')
    {
        out = format!("{}{user}:***@{}", &url[..scheme_end + 3], &url[host..]);
    }
    if let Some(at) = out.find("password=") {
        let start = at + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// The prepared statements of the writer's connection.
struct Writes {
    fence: Statement,
    counts: Statement,
    delete_batches: Statement,
    delete_requests_of: Statement,
    delete_jobs_of: Statement,
    delete_jobs: Statement,
    batch_in_range: Statement,
    in_default: Statement,
    delete_keys_in_range: Statement,
    upsert_jobs: Statement,
    lock_batches: Statement,
    own_bytes: Statement,
    upsert_batches: Statement,
    reopen_batches: Statement,
    upsert_keys: Statement,
    upsert_requests: Statement,
    upsert_meta: Statement,
    raise_meta: Statement,
    truncate_log: Statement,
    insert_log: Statement,
}

impl Writes {
    async fn prepare(c: &Client) -> anyhow::Result<Writes> {
        Ok(Writes {
            fence: c
                .prepare("SELECT epoch FROM drover_lease WHERE id = 1 FOR SHARE")
                .await?,
            counts: c
                .prepare("SELECT name, value FROM drover_meta WHERE name = ANY($1::text[])")
                .await?,
            delete_batches: c
                .prepare("DELETE FROM drover_batches WHERE id = ANY($1::uuid[]) RETURNING info")
                .await?,
            delete_requests_of: c
                .prepare("DELETE FROM drover_requests WHERE batch = ANY($1::uuid[])")
                .await?,
            // A purged batch's own jobs (those whose record names it) go,
            // with the idempotency keys that name them.
            delete_jobs_of: c
                .prepare(
                    "WITH gone AS (DELETE FROM drover_jobs WHERE batch = ANY($1::uuid[]) RETURNING id) \
                     DELETE FROM drover_keys WHERE job IN (SELECT id FROM gone)",
                )
                .await?,
            delete_jobs: c
                .prepare("DELETE FROM drover_jobs WHERE id = ANY($1::uuid[]) AND batch > $2")
                .await?,
            batch_in_range: c
                .prepare("SELECT 1 FROM drover_batches WHERE id >= $1 AND id < $2 LIMIT 1")
                .await?,
            in_default: c
                .prepare(
                    "SELECT EXISTS (SELECT 1 FROM drover_batches_default WHERE id >= $1 AND id < $2) \
                     OR EXISTS (SELECT 1 FROM drover_jobs_default WHERE batch >= $1 AND batch < $2)",
                )
                .await?,
            // The keys of the jobs of a range about to be dropped.
            delete_keys_in_range: c
                .prepare(
                    "DELETE FROM drover_keys WHERE job IN \
                     (SELECT id FROM drover_jobs WHERE batch >= $1 AND batch < $2)",
                )
                .await?,
            upsert_jobs: c
                .prepare(
                    "INSERT INTO drover_jobs (id, batch, state, record, epoch) \
                     SELECT j.id, j.batch, j.state, j.record, $5 \
                     FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::bytea[]) AS j(id, batch, state, record) \
                     ON CONFLICT (batch, id) DO UPDATE SET state = excluded.state, \
                     record = excluded.record, epoch = excluded.epoch",
                )
                .await?,
            lock_batches: c
                .prepare("SELECT id, info FROM drover_batches WHERE id = ANY($1::uuid[]) FOR UPDATE")
                .await?,
            own_bytes: c
                .prepare(
                    "SELECT batch, sum(length(record))::bigint FROM drover_jobs \
                     WHERE batch = ANY($1::uuid[]) GROUP BY batch",
                )
                .await?,
            upsert_batches: c
                .prepare(
                    "INSERT INTO drover_batches (id, record, open, closed_at_ms, info, bytes, epoch) \
                     SELECT b.id, b.record, b.open, b.closed_at_ms, b.info, b.bytes, $7 \
                     FROM unnest($1::uuid[], $2::bytea[], $3::bool[], $4::int8[], $5::bytea[], $6::int8[]) \
                     AS b(id, record, open, closed_at_ms, info, bytes) \
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record, open = excluded.open, \
                     closed_at_ms = excluded.closed_at_ms, info = excluded.info, bytes = excluded.bytes, \
                     epoch = excluded.epoch",
                )
                .await?,
            reopen_batches: c
                .prepare(
                    "UPDATE drover_batches SET open = true, closed_at_ms = NULL, info = NULL, bytes = 0, \
                     epoch = $2 WHERE id = ANY($1::uuid[])",
                )
                .await?,
            upsert_keys: c
                .prepare(
                    "INSERT INTO drover_keys (key, job, epoch) SELECT k.key, k.job, $3 \
                     FROM unnest($1::text[], $2::uuid[]) AS k(key, job) \
                     ON CONFLICT (key) DO UPDATE SET job = excluded.job, epoch = excluded.epoch",
                )
                .await?,
            upsert_requests: c
                .prepare(
                    "INSERT INTO drover_requests (request_id, batch, epoch) SELECT r.id, r.batch, $3 \
                     FROM unnest($1::text[], $2::uuid[]) AS r(id, batch) \
                     ON CONFLICT (request_id) DO UPDATE SET batch = excluded.batch, epoch = excluded.epoch",
                )
                .await?,
            upsert_meta: c
                .prepare(
                    "INSERT INTO drover_meta (name, value) SELECT * FROM unnest($1::text[], $2::int8[]) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .await?,
            raise_meta: c
                .prepare(
                    "INSERT INTO drover_meta (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = greatest(drover_meta.value, excluded.value)",
                )
                .await?,
            truncate_log: c
                .prepare("DELETE FROM drover_assignments WHERE number < $1")
                .await?,
            insert_log: c
                .prepare(
                    "INSERT INTO drover_assignments (number, packed, epoch) VALUES ($1, $2, $3) \
                     ON CONFLICT (number) DO UPDATE SET packed = excluded.packed, epoch = excluded.epoch",
                )
                .await?,
        })
    }
}

/// The store on a PostgreSQL database, writing as the leader of `epoch`.
pub struct PgStore {
    /// Drives the connections; shut down in the background on drop.
    runtime: Option<tokio::runtime::Runtime>,
    /// The committers' connection, with its statements: one transaction
    /// at a time. `None` after it broke, until made again.
    writer: Mutex<Option<(Client, Writes)>>,
    /// Reads, which may run beside a transaction; made again when broken.
    reader: Mutex<Option<Arc<Client>>>,
    /// How long a commit keeps trying through a broken connection (the
    /// lease: past it, a standby may have taken over anyway).
    patience: Duration,
    epoch: i64,
    created_at_ms: u64,
    url: String,
    /// The partitions made, as the writer's commits left them.
    partitions: Mutex<Partitions>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &redact(&self.url))
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Waits for `fut` on this thread (the store's calls are synchronous; its
/// connections are driven by its own runtime, so this never waits on the
/// caller's).
fn block<F: Future>(fut: F) -> F::Output {
    futures::executor::block_on(fut)
}

/// Whether `e` means the connection is gone (closed, or its session ended
/// by the server: a restart, `pg_terminate_backend`), not that the
/// statement failed.
fn broken(client: &Client, e: &anyhow::Error) -> bool {
    if client.is_closed() {
        return true;
    }
    let Some(e) = e.downcast_ref::<tokio_postgres::Error>() else {
        return false;
    };
    // Class 08: connection exception; 57P: operator intervention (admin
    // shutdown, crash shutdown, cannot connect now).
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

/// Job ids as UUIDs, for `uuid[]` parameters.
fn uuids<'a>(ids: impl IntoIterator<Item = &'a JobId>) -> Vec<Uuid> {
    ids.into_iter().map(|id| id.uuid()).collect()
}

fn batch_uuids<'a>(ids: impl IntoIterator<Item = &'a BatchId>) -> Vec<Uuid> {
    ids.into_iter().map(|id| id.uuid()).collect()
}

/// The partitions of `drover_jobs` and `drover_batches` (always made and
/// dropped in pairs, in one transaction), as the writer knows them: its
/// cache, read at open and changed only by its own commits once they are
/// written (a commit that failed and is written again starts from what
/// was there before it).
///
/// A partition holds the batches made in `[start, start + width)` (unix
/// ms, the first 48 bits of a UUID v7), and their jobs. The commit that
/// first writes a batch of a range not made yet makes it; each commit also
/// makes the next range ahead of the clock, when the lock it needs is free
/// (see [`PgStore::write_async`]).
#[derive(Debug, Clone, Default)]
struct Partitions {
    /// The range width (ms), the database's.
    width: u64,
    /// The start of each range with a partition.
    made: BTreeSet<u64>,
    /// Ranges not made because the DEFAULT partitions hold rows in them
    /// (ids that only looked like a v7 one's, or a commit that could not
    /// have the locks to make them): their rows stay there.
    in_default: HashSet<u64>,
    /// Until when commits leave the partitions alone, after one could not
    /// have the locks in time ([`DDL_BACKOFF`]).
    paused_until: Option<std::time::Instant>,
}

/// How long commits leave the partitions alone (rows of a range not made
/// go to the DEFAULT partition, rows of a range not dropped are deleted)
/// after one waited [`PgStore::ddl_wait`] in vain for the locks: another
/// client's long read (a pg_dump, say) then costs one commit that wait,
/// not every commit.
const DDL_BACKOFF: Duration = Duration::from_secs(30);

impl Partitions {
    /// The start of the range of batch `id`; `None` for an id that is not
    /// a UUID v7 (its rows go to the DEFAULT partition).
    fn start_of(&self, id: &Uuid) -> Option<u64> {
        if id.get_version_num() != 7 {
            return None;
        }
        let b = id.as_bytes();
        let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
        Some(ms - ms % self.width)
    }

    /// Whether the rows of range `start` need its partition made.
    fn missing(&self, start: u64) -> bool {
        !self.made.contains(&start) && !self.in_default.contains(&start)
    }
}

/// The lowest UUID of the range starting at `ms` (the highest for a time
/// past what 48 bits hold).
fn bound(ms: u64) -> Uuid {
    if ms >= 1 << 48 {
        return Uuid::max();
    }
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// The lowest of `ids`: every row of `drover_jobs` has `batch > id` (a
/// submit makes its batch's id after its jobs', and `Uuid::now_v7` orders
/// the ids of a process; a write of a row that does not is refused), so
/// `batch > lowest` lets PostgreSQL skip the partitions of older batches
/// in a read by job id.
fn lowest(ids: &[Uuid]) -> Uuid {
    ids.iter().min().copied().unwrap_or_else(Uuid::max)
}

/// The partitions of `drover_jobs` and `drover_batches` that exist, by the
/// start of their range, read from the catalog.
async fn made_partitions(client: &impl GenericClient) -> anyhow::Result<BTreeSet<u64>> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'drover_batches'::regclass",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            r.get::<_, &str>(0)
                .strip_prefix("drover_batches_p")?
                .parse()
                .ok()
        })
        .collect())
}

impl PgStore {
    /// Connects to `url`, creating the tables if they are missing, to write
    /// as the leader elected with `epoch` (see [`crate::ha`]). A commit
    /// whose connection breaks (PostgreSQL restarted, the session was
    /// terminated) connects again and is written again, for up to
    /// `patience`; a commit is idempotent, so one that was written before
    /// the break is written the same way twice.
    pub fn open(url: &str, epoch: u64, patience: Duration) -> anyhow::Result<PgStore> {
        PgStore::open_with(url, epoch, patience, PARTITION_MS)
    }

    /// [`PgStore::open`], creating a missing database with partitions of
    /// `partition_ms` (tests: a few ms, so that histories cross many).
    pub fn open_with(
        url: &str,
        epoch: u64,
        patience: Duration,
        partition_ms: u64,
    ) -> anyhow::Result<PgStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("drover-pg")
            .enable_all()
            .build()?;
        let owned = url.to_string();
        let opened = block(runtime.spawn(async move {
            let mut writer = connect_writer(&owned, patience).await?;
            let created = ensure_schema_with(&mut writer, &owned, partition_ms).await?;
            let partitions = Partitions {
                width: meta_value(&writer, PARTITION_WIDTH).await?,
                made: made_partitions(&writer).await?,
                in_default: HashSet::new(),
                paused_until: None,
            };
            anyhow::ensure!(partitions.width > 0, "drover_meta has no partition width");
            let writes = Writes::prepare(&writer).await?;
            let reader = connect(&owned, "reader").await?;
            anyhow::Ok((writer, writes, reader, created, partitions))
        }))??;
        let (writer, writes, reader, created_at_ms, partitions) = opened;
        Ok(PgStore {
            runtime: Some(runtime),
            writer: Mutex::new(Some((writer, writes))),
            reader: Mutex::new(Some(Arc::new(reader))),
            patience,
            epoch: epoch as i64,
            created_at_ms,
            url: url.to_string(),
            partitions: Mutex::new(partitions),
        })
    }

    /// Runs `fut` on the store's runtime, which drives its connections.
    fn on_runtime<T: Send + 'static>(
        &self,
        fut: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        block(runtime.spawn(fut))?
    }

    /// The read connection, made again if it broke.
    fn reader(&self) -> anyhow::Result<Arc<Client>> {
        let mut slot = self.reader.lock();
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let url = self.url.clone();
        let client = Arc::new(self.on_runtime(async move { connect(&url, "reader").await })?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The epoch this store writes as.
    pub fn epoch(&self) -> u64 {
        self.epoch as u64
    }

    /// Checks, inside `txn`, that the lease still holds this store's epoch,
    /// and holds the lease row against a takeover until `txn` ends.
    async fn fence(&self, txn: &Transaction<'_>, stmt: &Statement) -> anyhow::Result<()> {
        let row = txn.query_one(stmt, &[]).await?;
        let now: i64 = row.get(0);
        anyhow::ensure!(
            now == self.epoch,
            "this master was the leader of epoch {}, and the lease is now at epoch {now}: \
             another master took over; this one writes nothing more and steps down",
            self.epoch
        );
        Ok(())
    }

    async fn write_async(
        &self,
        client: &mut Client,
        s: &Writes,
        c: &Changes,
    ) -> anyhow::Result<()> {
        let epoch = self.epoch;
        let jobs = JobRows::of(c)?;
        let txn = client.transaction().await?;
        self.fence(&txn, &s.fence).await?;
        let mut names: Vec<&str> = CLOSED_COUNTS.to_vec();
        names.push(CLOSED_BYTES);
        let mut meta: HashMap<String, i64> = txn
            .query(&s.counts, &[&names])
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut counts = Closed {
            jobs: std::array::from_fn(|i| meta.remove(CLOSED_COUNTS[i]).unwrap_or(0) as u64),
            bytes: meta.remove(CLOSED_BYTES).unwrap_or(0) as u64,
        };

        // The partitions as this commit leaves them, kept once it is
        // written.
        let mut parts = self.partitions.lock().clone();
        let width = parts.width;
        let now = now_ms();
        let current = now - now % width;
        let written: BTreeSet<u64> = c
            .batches
            .iter()
            .map(|(id, _)| id.uuid())
            .chain(jobs.batches.iter().copied())
            .filter_map(|b| parts.start_of(&b))
            .collect();

        // Deletions first: a batch purged and brought back in the same
        // commit is written again after. The batch rows go one by one
        // (their closed info is taken off the counts); a range left with
        // no batch at all, wholly before the clock's and not written by
        // this commit, is dropped with its jobs instead of deleting them.
        let purged = batch_uuids(&c.deleted_batches);
        let mut dropped = Vec::new();
        if !purged.is_empty() {
            for row in txn.query(&s.delete_batches, &[&purged]).await? {
                if let Some(info) = row.get::<_, Option<&[u8]>>(0) {
                    counts.unclose(&decode_info(info)?);
                }
            }
            let candidates: BTreeSet<u64> = purged
                .iter()
                .filter_map(|b| parts.start_of(b))
                .filter(|s| parts.made.contains(s) && s + width <= current && !written.contains(s))
                .collect();
            for start in candidates {
                let range = [bound(start), bound(start + width)];
                if txn
                    .query_opt(&s.batch_in_range, &[&range[0], &range[1]])
                    .await?
                    .is_none()
                {
                    dropped.push(start);
                }
            }
        }
        // Ranges to make: those this commit writes in, and the next one
        // ahead of the clock, so that the commits of the next range
        // seldom make their own (which must wait for the lock).
        let mut needed = Vec::new();
        let ahead = current + width;
        let mut ahead = (parts.missing(ahead) && !written.contains(&ahead)).then_some(ahead);
        for start in written.iter().copied().chain(ahead) {
            if !parts.missing(start) {
                continue;
            }
            let range = [bound(start), bound(start + width)];
            if txn
                .query_one(&s.in_default, &[&range[0], &range[1]])
                .await?
                .get(0)
            {
                parts.in_default.insert(start);
                if ahead == Some(start) {
                    ahead = None;
                }
            } else if ahead != Some(start) {
                needed.push(start);
            }
        }
        let paused = parts
            .paused_until
            .is_some_and(|t| std::time::Instant::now() < t);
        let changed = (!needed.is_empty() || !dropped.is_empty() || ahead.is_some())
            && !paused
            && self
                .change_partitions(&txn, s, &needed, ahead, &dropped, width)
                .await?;
        if changed {
            parts.made.extend(needed.iter().copied().chain(ahead));
            for start in &dropped {
                parts.made.remove(start);
            }
        } else {
            if !paused && (!needed.is_empty() || !dropped.is_empty() || ahead.is_some()) {
                // Rows of the ranges not made go to DEFAULT, and stay.
                parts.paused_until = Some(std::time::Instant::now() + DDL_BACKOFF);
            }
            dropped.clear();
        }
        if !purged.is_empty() {
            txn.execute(&s.delete_requests_of, &[&purged]).await?;
            let rest: Vec<Uuid> = purged
                .iter()
                .filter(|b| {
                    parts
                        .start_of(b)
                        .is_none_or(|start| !dropped.contains(&start))
                })
                .copied()
                .collect();
            if !rest.is_empty() {
                txn.execute(&s.delete_jobs_of, &[&rest]).await?;
            }
        }
        if !c.deleted_jobs.is_empty() {
            let ids = uuids(&c.deleted_jobs);
            txn.execute(&s.delete_jobs, &[&ids, &lowest(&ids)]).await?;
        }

        if !jobs.ids.is_empty() {
            txn.execute(
                &s.upsert_jobs,
                &[
                    &jobs.ids,
                    &jobs.batches,
                    &jobs.states,
                    &jobs.records,
                    &epoch,
                ],
            )
            .await?;
        }

        // Batches: each ends open or closed, as redb's commit leaves it.
        let touched: Vec<Uuid> = c
            .batches
            .iter()
            .map(|(id, _)| id.uuid())
            .chain(c.reopened.iter().map(|id| id.uuid()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !touched.is_empty() {
            // Whether each batch exists, and its closed info if closed.
            let mut now: HashMap<Uuid, Option<pb::ClosedInfo>> = HashMap::new();
            for row in txn.query(&s.lock_batches, &[&touched]).await? {
                let info = match row.get::<_, Option<&[u8]>>(1) {
                    Some(b) => Some(decode_info(b)?),
                    None => None,
                };
                now.insert(row.get(0), info);
            }
            let closing: HashMap<BatchId, &pb::ClosedInfo> =
                c.closed.iter().map(|(b, i)| (*b, i)).collect();
            // The bytes of the closing batches' own jobs, as this commit
            // leaves them: counted by the state, else summed here (and
            // always summed in debug builds, to check the state's count).
            let to_sum: Vec<Uuid> = c
                .batches
                .iter()
                .filter(|(id, _)| {
                    closing.contains_key(id)
                        && (cfg!(debug_assertions) || !c.closed_own_bytes.contains_key(id))
                })
                .map(|(id, _)| id.uuid())
                .collect();
            let summed: HashMap<Uuid, i64> = if to_sum.is_empty() {
                HashMap::new()
            } else {
                txn.query(&s.own_bytes, &[&to_sum])
                    .await?
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            };
            // The final row of each batch written.
            let mut rows: HashMap<Uuid, (&[u8], Option<pb::ClosedInfo>)> = HashMap::new();
            for (id, bytes) in &c.batches {
                let key = id.uuid();
                if let Some(Some(old)) = now.insert(key, None) {
                    counts.unclose(&old);
                }
                let info = match closing.get(id) {
                    Some(info) => {
                        let mut info = **info;
                        let read = summed.get(&key).copied().unwrap_or(0) as u64;
                        let own = match c.closed_own_bytes.get(id) {
                            Some(&counted) => {
                                anyhow::ensure!(
                                    !cfg!(debug_assertions) || counted == read,
                                    "batch {id}: the state counted {counted} bytes of \
                                     its jobs' records, the store holds {read}"
                                );
                                counted
                            }
                            None => read,
                        };
                        info.bytes = bytes.len() as u64 + own;
                        counts.close(&info);
                        now.insert(key, Some(info));
                        Some(info)
                    }
                    None => None,
                };
                rows.insert(key, (bytes.as_slice(), info));
            }
            let mut reopened = Vec::new();
            for id in &c.reopened {
                let key = id.uuid();
                // Never an open batch without its record: recovery would
                // refuse the store.
                let Some(was) = now.get_mut(&key) else {
                    continue;
                };
                if let Some(old) = was.take() {
                    counts.unclose(&old);
                }
                match rows.get_mut(&key) {
                    Some(row) => row.1 = None,
                    None => reopened.push(key),
                }
            }
            if !rows.is_empty() {
                let n = rows.len();
                let mut cols = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (id, (record, info)) in &rows {
                    cols.0.push(*id);
                    cols.1.push(*record);
                    cols.2.push(info.is_none());
                    cols.3.push(info.map(|i| i.closed_at_ms as i64));
                    cols.4.push(info.map(|i| i.encode_to_vec()));
                    cols.5.push(info.map_or(0, |i| i.bytes as i64));
                }
                txn.execute(
                    &s.upsert_batches,
                    &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &epoch],
                )
                .await?;
            }
            if !reopened.is_empty() {
                txn.execute(&s.reopen_batches, &[&reopened, &epoch]).await?;
            }
        }

        if !c.keys.is_empty() {
            let last: HashMap<&str, Uuid> =
                c.keys.iter().map(|(k, j)| (k.as_str(), j.uuid())).collect();
            let (keys, jobs): (Vec<&str>, Vec<Uuid>) = last.into_iter().unzip();
            txn.execute(&s.upsert_keys, &[&keys, &jobs, &epoch]).await?;
        }
        if !c.requests.is_empty() {
            let last: HashMap<&str, Uuid> = c
                .requests
                .iter()
                .map(|(r, b)| (r.as_str(), b.uuid()))
                .collect();
            let (ids, batches): (Vec<&str>, Vec<Uuid>) = last.into_iter().unzip();
            txn.execute(&s.upsert_requests, &[&ids, &batches, &epoch])
                .await?;
        }

        let mut names: Vec<&str> = CLOSED_COUNTS.to_vec();
        names.push(CLOSED_BYTES);
        let mut values: Vec<i64> = counts.jobs.iter().map(|&v| v as i64).collect();
        values.push(counts.bytes as i64);
        if c.next_seq > 0 {
            names.push(NEXT_SEQ);
            values.push(c.next_seq as i64);
        }
        txn.execute(&s.upsert_meta, &[&names, &values]).await?;
        if c.budget_purged_upto_ms > 0 {
            txn.execute(
                &s.raise_meta,
                &[&PURGED_UPTO, &(c.budget_purged_upto_ms as i64)],
            )
            .await?;
        }

        if c.truncate_log {
            txn.execute(&s.truncate_log, &[&(c.number as i64)]).await?;
        }
        if !c.assignments.is_empty() {
            let packed = pack_assignments(&c.assignments);
            txn.execute(&s.insert_log, &[&(c.number as i64), &packed, &epoch])
                .await?;
        }
        txn.commit().await?;
        *self.partitions.lock() = parts;
        Ok(())
    }

    /// Makes the partitions of the ranges starting at `needed` and `ahead`
    /// and drops those of `dropped` (with the keys of their jobs), inside
    /// `txn`. Returns whether it did: it waits for the locks at most
    /// `ddl_wait`, then gives up, leaving `txn` as it was (the commit holds
    /// the lease row: waiting longer would hold up the leader's renewal).
    /// What it gave up is done by a later commit or not at all: rows of a
    /// range not made go to the DEFAULT partition (and stay there), those
    /// of a range not dropped are deleted.
    ///
    /// Making or dropping a partition takes an ACCESS EXCLUSIVE lock on
    /// both tables (the parent, and its DEFAULT partition): it waits for
    /// the reads under way and holds up new ones until the commit. They
    /// are taken first, `drover_jobs` then `drover_batches`, before any
    /// partition's, and every read that joins the two names `drover_jobs`
    /// first, so a read never holds a lock this transaction waits for
    /// while waiting for one it holds. Making a partition that exists (a
    /// commit written again after its connection broke) does nothing.
    async fn change_partitions(
        &self,
        txn: &Transaction<'_>,
        s: &Writes,
        needed: &[u64],
        ahead: Option<u64>,
        dropped: &[u64],
        width: u64,
    ) -> anyhow::Result<bool> {
        txn.batch_execute(&format!(
            "SAVEPOINT drover_partitions; SET LOCAL lock_timeout = {}",
            self.ddl_wait().as_millis()
        ))
        .await?;
        let mut sql = String::from(
            "SET LOCAL client_min_messages = warning; \
             LOCK TABLE ONLY drover_jobs, drover_batches IN ACCESS EXCLUSIVE MODE;",
        );
        for start in needed.iter().copied().chain(ahead) {
            let (lo, hi) = (bound(start), bound(start + width));
            for table in ["drover_jobs", "drover_batches"] {
                sql.push_str(&format!(
                    " CREATE TABLE IF NOT EXISTS {table}_p{start} PARTITION OF {table} \
                     FOR VALUES FROM ('{lo}') TO ('{hi}');"
                ));
            }
        }
        let done = async {
            txn.batch_execute(&sql).await?;
            for &start in dropped {
                let range = [bound(start), bound(start + width)];
                txn.execute(&s.delete_keys_in_range, &[&range[0], &range[1]])
                    .await?;
                txn.batch_execute(&format!(
                    "DROP TABLE IF EXISTS drover_jobs_p{start}, drover_batches_p{start}"
                ))
                .await?;
            }
            anyhow::Ok(())
        }
        .await;
        match done {
            Ok(()) => {
                txn.batch_execute(
                    "SET LOCAL lock_timeout = DEFAULT; RELEASE SAVEPOINT drover_partitions",
                )
                .await?;
                Ok(true)
            }
            Err(e) if lock_timed_out(&e) => {
                tracing::debug!(error = %e, "partitions left for a later commit");
                txn.batch_execute("ROLLBACK TO SAVEPOINT drover_partitions")
                    .await?;
                txn.batch_execute("SET LOCAL lock_timeout = DEFAULT")
                    .await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// How long a commit waits for the locks to make or drop partitions: a
    /// quarter of the lease, between 50 ms and 1 s.
    fn ddl_wait(&self) -> Duration {
        if self.patience.is_zero() {
            return Duration::from_secs(1);
        }
        (self.patience / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Runs `op` (one transaction) on the writer's connection. If the
    /// connection breaks, it is made again and `op` runs again, for up to
    /// `patience`: every transaction here is idempotent.
    fn in_transaction(
        &self,
        mut op: impl FnMut(&mut Client, &Writes) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut slot = self.writer.lock();
        loop {
            let failed = match slot.as_mut() {
                Some((client, writes)) => match op(client, writes) {
                    Ok(()) => return Ok(()),
                    Err(e) if broken(client, &e) => e,
                    Err(e) => return Err(e),
                },
                None => {
                    let (url, patience) = (self.url.clone(), self.patience);
                    match self.on_runtime(async move {
                        let client = connect_writer(&url, patience).await?;
                        let writes = Writes::prepare(&client).await?;
                        anyhow::Ok((client, writes))
                    }) {
                        Ok(conn) => {
                            tracing::info!("connected to PostgreSQL again");
                            *slot = Some(conn);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
            };
            *slot = None;
            if started.elapsed() >= self.patience {
                return Err(failed.context(format!(
                    "the connection to PostgreSQL broke and could not be made again within {:?}",
                    self.patience
                )));
            }
            tracing::warn!(error = %format!("{failed:#}"), "the connection to PostgreSQL broke; connecting again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads pages of `sql` (which takes the last key seen as `$1` and a
    /// page size as `$2`, and returns a key and a job record) until `visit`
    /// returns false or the rows end.
    fn scan_pages(
        &self,
        sql: &str,
        first: Uuid,
        extra: Option<i32>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        let reader = self.reader()?;
        block(async {
            let stmt = reader.prepare(sql).await?;
            let mut after = first;
            loop {
                let rows = match extra {
                    Some(x) => reader.query(&stmt, &[&after, &SCAN_PAGE, &x]).await?,
                    None => reader.query(&stmt, &[&after, &SCAN_PAGE]).await?,
                };
                let full = rows.len() as i64 == SCAN_PAGE;
                for row in rows {
                    after = row.get(0);
                    let record = decode_job(after, row.get(1))?;
                    if !visit(record) {
                        return Ok(());
                    }
                }
                if !full {
                    return Ok(());
                }
            }
        })
    }

    fn meta(&self, name: &str) -> anyhow::Result<u64> {
        block(meta_value(&*self.reader()?, name))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A commit's job rows as columns: the last write of each job, its batch
/// read from its record.
struct JobRows<'a> {
    ids: Vec<Uuid>,
    batches: Vec<Uuid>,
    states: Vec<i32>,
    records: Vec<&'a [u8]>,
}

impl<'a> JobRows<'a> {
    fn of(c: &'a Changes) -> anyhow::Result<JobRows<'a>> {
        let mut last: HashMap<JobId, usize> = HashMap::with_capacity(c.jobs.len());
        for (i, w) in c.jobs.iter().enumerate() {
            last.insert(w.id, i);
        }
        let n = last.len();
        let mut rows = JobRows {
            ids: Vec::with_capacity(n),
            batches: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        };
        for (i, w) in c.jobs.iter().enumerate() {
            if last.get(&w.id) != Some(&i) {
                continue;
            }
            let header = pb::JobHeader::decode(w.record.as_slice())
                .map_err(|e| anyhow::anyhow!("job record {} is corrupt: {e}", w.id))?;
            anyhow::ensure!(
                header.state == w.state as i32,
                "job {}: written as state {}, its record says {}",
                w.id,
                w.state as i32,
                header.state
            );
            let batch = Uuid::from_slice(&header.batch)
                .map_err(|e| anyhow::anyhow!("job record {} names no batch: {e}", w.id))?;
            // What reads by id rely on (see `lowest`).
            anyhow::ensure!(
                batch > w.id.uuid(),
                "job {}: its batch {batch} is not newer than it; a batch's id is made after its jobs'",
                w.id
            );
            rows.ids.push(w.id.uuid());
            rows.batches.push(batch);
            rows.states.push(w.state as i32);
            rows.records.push(w.record.as_slice());
        }
        Ok(rows)
    }
}

/// Whether `e` is PostgreSQL's `lock_not_available` (55P03): a lock
/// timeout.
fn lock_timed_out(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

fn decode_info(bytes: &[u8]) -> anyhow::Result<pb::ClosedInfo> {
    pb::ClosedInfo::decode(bytes).map_err(|e| anyhow::anyhow!("a closed batch is corrupt: {e}"))
}

fn decode_job(id: Uuid, bytes: &[u8]) -> anyhow::Result<pb::JobRecord> {
    pb::JobRecord::decode(bytes).map_err(|e| anyhow::anyhow!("job record {id} is corrupt: {e}"))
}

impl Store for PgStore {
    fn is_durable(&self) -> bool {
        true
    }

    fn coord(&self) -> Option<&dyn CoordStore> {
        Some(self)
    }

    fn load(&self, sink: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        let reader = self.reader()?;
        block(async {
            // Open batches only, in id order, a page at a time; then their
            // own jobs' records, which override the batches' first ones.
            let batches = reader
                .prepare(
                    "SELECT id, record FROM drover_batches WHERE open AND id > $1 \
                     ORDER BY id LIMIT $2",
                )
                .await?;
            let mut after = Uuid::nil();
            loop {
                let rows = reader.query(&batches, &[&after, &SCAN_PAGE]).await?;
                let full = rows.len() as i64 == SCAN_PAGE;
                for row in rows {
                    after = row.get(0);
                    let id = BatchId::from_uuid(after);
                    let (ids, created, request_id) = decode_batch(row.get(1))
                        .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?;
                    sink(Loaded::Batch(id, ids, created, request_id))?;
                }
                if !full {
                    break;
                }
            }
            let jobs = reader.prepare(
                    "SELECT j.id, j.record FROM drover_jobs j JOIN drover_batches b ON b.id = j.batch \
                     WHERE b.open AND j.id > $1 AND j.batch > $1 ORDER BY j.id LIMIT $2",
                )
                .await?;
            let mut after = Uuid::nil();
            loop {
                let rows = reader.query(&jobs, &[&after, &SCAN_PAGE]).await?;
                let full = rows.len() as i64 == SCAN_PAGE;
                for row in rows {
                    after = row.get(0);
                    sink(Loaded::Job(Box::new(decode_job(after, row.get(1))?)))?;
                }
                if !full {
                    break;
                }
            }
            let log = reader
                .query(
                    "SELECT number, packed FROM drover_assignments ORDER BY number",
                    &[],
                )
                .await?;
            for row in log {
                let list = unpack_assignments(row.get::<_, i64>(0) as u64, row.get(1))?;
                sink(Loaded::Assigned(list))?;
            }
            anyhow::Ok(())
        })?;
        Ok(self.created_at_ms)
    }

    fn write(&self, changes: Changes) -> anyhow::Result<()> {
        self.in_transaction(|client, writes| block(self.write_async(client, writes, &changes)))
    }

    fn read_job(&self, id: &JobId) -> anyhow::Result<Option<pb::JobRecord>> {
        Ok(self.read_jobs(std::slice::from_ref(id))?.pop().flatten())
    }

    fn read_jobs(&self, ids: &[JobId]) -> anyhow::Result<Vec<Option<pb::JobRecord>>> {
        let keys = uuids(ids);
        let rows = block(self.reader()?.query(
            "SELECT id, record FROM drover_jobs WHERE id = ANY($1::uuid[]) AND batch > $2",
            &[&keys, &lowest(&keys)],
        ))?;
        let mut found: HashMap<Uuid, pb::JobRecord> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.get(0);
            found.insert(id, decode_job(id, row.get(1))?);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn has_job(&self, id: &JobId) -> anyhow::Result<bool> {
        Ok(block(self.reader()?.query_opt(
            "SELECT 1 FROM drover_jobs WHERE id = $1 AND batch > $1",
            &[&id.uuid()],
        ))?
        .is_some())
    }

    fn read_batch(&self, id: &BatchId) -> anyhow::Result<Option<StoredBatch>> {
        let Some(row) = block(self.reader()?.query_opt(
            "SELECT record FROM drover_batches WHERE id = $1",
            &[&id.uuid()],
        ))?
        else {
            return Ok(None);
        };
        Ok(Some(stored_batch(id, row.get(0))?))
    }

    fn job_by_key(&self, key: &str) -> anyhow::Result<Option<JobId>> {
        Ok(block(
            self.reader()?
                .query_opt("SELECT job FROM drover_keys WHERE key = $1", &[&key]),
        )?
        .map(|r| JobId::from_uuid(r.get(0))))
    }

    fn jobs_by_keys(&self, keys: &[&str]) -> anyhow::Result<HashMap<String, JobId>> {
        let rows = block(self.reader()?.query(
            "SELECT k.key, k.job FROM drover_keys k WHERE k.key = ANY($1::text[]) \
             AND EXISTS (SELECT 1 FROM drover_jobs j WHERE j.id = k.job AND j.batch > k.job)",
            &[&keys],
        ))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), JobId::from_uuid(r.get(1))))
            .collect())
    }

    fn batch_by_request(&self, request_id: &str) -> anyhow::Result<Option<BatchId>> {
        Ok(block(self.reader()?.query_opt(
            "SELECT batch FROM drover_requests WHERE request_id = $1",
            &[&request_id],
        ))?
        .map(|r| BatchId::from_uuid(r.get(0))))
    }

    fn closed_counts(&self) -> anyhow::Result<ClosedCounts> {
        let rows = block(self.reader()?.query(
            "SELECT name, value FROM drover_meta WHERE name = ANY($1::text[])",
            &[&CLOSED_COUNTS.to_vec()],
        ))?;
        let mut counts = [0u64; 3];
        for row in rows {
            let name: &str = row.get(0);
            if let Some(i) = CLOSED_COUNTS.iter().position(|n| *n == name) {
                counts[i] = row.get::<_, i64>(1) as u64;
            }
        }
        Ok(counts)
    }

    fn next_seq(&self) -> anyhow::Result<u64> {
        self.meta(NEXT_SEQ)
    }

    fn closed_bytes(&self) -> anyhow::Result<u64> {
        self.meta(CLOSED_BYTES)
    }

    fn budget_purged_upto_ms(&self) -> anyhow::Result<u64> {
        self.meta(PURGED_UPTO)
    }

    fn oldest_closed(&self, bytes: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        let rows = block(self.reader()?.query(
            "SELECT id, bytes FROM drover_batches WHERE NOT open \
             ORDER BY closed_at_ms, id LIMIT $1",
            &[&(limit as i64)],
        ))?;
        let (mut out, mut sum) = (Vec::new(), 0u64);
        for row in rows {
            if sum >= bytes {
                break;
            }
            sum += row.get::<_, i64>(1) as u64;
            out.push(BatchId::from_uuid(row.get(0)));
        }
        Ok(out)
    }

    fn closed_before(&self, cutoff_ms: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        let cutoff = i64::try_from(cutoff_ms).unwrap_or(i64::MAX);
        let rows = block(self.reader()?.query(
            "SELECT id FROM drover_batches WHERE NOT open AND closed_at_ms < $1 \
             ORDER BY closed_at_ms, id LIMIT $2",
            &[&cutoff, &(limit as i64)],
        ))?;
        Ok(rows
            .into_iter()
            .map(|r| BatchId::from_uuid(r.get(0)))
            .collect())
    }

    fn scan_closed_jobs_newest(
        &self,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        self.scan_pages(
            "SELECT j.id, j.record FROM drover_jobs j JOIN drover_batches b ON b.id = j.batch \
             WHERE NOT b.open AND j.id < $1 ORDER BY j.id DESC LIMIT $2",
            Uuid::max(),
            None,
            visit,
        )
    }

    fn closed_batches_newest(
        &self,
        offset: usize,
        limit: usize,
    ) -> anyhow::Result<(Vec<(BatchId, pb::ClosedInfo)>, usize)> {
        let reader = self.reader()?;
        block(async {
            let total: i64 = reader
                .query_one("SELECT count(*) FROM drover_batches WHERE NOT open", &[])
                .await?
                .get(0);
            let rows = reader
                .query(
                    "SELECT id, info FROM drover_batches WHERE NOT open \
                     ORDER BY id DESC OFFSET $1 LIMIT $2",
                    &[&(offset as i64), &(limit as i64)],
                )
                .await?;
            let mut page = Vec::with_capacity(rows.len());
            for row in rows {
                let id = BatchId::from_uuid(row.get(0));
                let info = decode_info(row.get(1))?;
                page.push((id, info));
            }
            anyhow::Ok((page, total as usize))
        })
    }

    fn scan_jobs_in_state(
        &self,
        state: pb::JobState,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        // Each row's batch is above its id (see `lowest`), so `batch > $1`
        // holds for every row past the cursor and skips older partitions.
        self.scan_pages(
            "SELECT id, record FROM drover_jobs WHERE id > $1 AND batch > $1 AND state = $3 \
             ORDER BY id LIMIT $2",
            after.map_or(Uuid::nil(), |id| id.uuid()),
            Some(state as i32),
            visit,
        )
    }

    fn scan_jobs(
        &self,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        self.scan_pages(
            "SELECT id, record FROM drover_jobs WHERE id > $1 AND batch > $1 \
             ORDER BY id LIMIT $2",
            after.map_or(Uuid::nil(), |id| id.uuid()),
            None,
            visit,
        )
    }
}

impl CoordStore for PgStore {
    fn load_coord(&self, sink: &mut dyn FnMut(Record)) -> anyhow::Result<()> {
        let rows = block(
            self.reader()?
                .query("SELECT key, value FROM drover_coord ORDER BY key", &[]),
        )?;
        for row in rows {
            let record = Record::decode(row.get(0), row.get(1))
                .map_err(|e| anyhow::anyhow!("coordination {e}: the store is corrupt"))?;
            sink(record);
        }
        Ok(())
    }

    fn write_coord(&self, records: HashMap<String, Option<Vec<u8>>>) -> anyhow::Result<()> {
        self.in_transaction(|client, writes| {
            block(async {
            let txn = client.transaction().await?;
            self.fence(&txn, &writes.fence).await?;
            let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
            for (key, value) in &records {
                match value {
                    Some(v) => {
                        keys.push(key.as_str());
                        values.push(v.as_slice());
                    }
                    None => gone.push(key.as_str()),
                }
            }
            if !gone.is_empty() {
                txn.execute(
                    "DELETE FROM drover_coord WHERE key = ANY($1::text[])",
                    &[&gone],
                )
                .await?;
            }
            if !keys.is_empty() {
                txn.execute(
                    "INSERT INTO drover_coord (key, value, epoch) \
                     SELECT * , $3::int8 FROM unnest($1::text[], $2::bytea[]) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, epoch = excluded.epoch",
                    &[&keys, &values, &self.epoch],
                )
                .await?;
            }
            txn.commit().await?;
            anyhow::Ok(())
        })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::Elector;
    use crate::store::JobWrite;
    use std::time::Duration;

    /// A UUID v7 made at `ms` (unix), its other bits random.
    fn v7_at(ms: u64) -> Uuid {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        Uuid::new_v7(ts)
    }

    /// A job of `batch` in `state`, its id made a millisecond before the
    /// batch's (a submit makes the jobs' ids first).
    fn job(batch: BatchId, state: pb::JobState) -> pb::JobRecord {
        let ms = batch.made_ms().unwrap();
        pb::JobRecord {
            id: v7_at(ms - 1).as_bytes().to_vec(),
            batch: batch.as_bytes().to_vec(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn submit(batch: BatchId, record: &pb::JobRecord) -> Changes {
        let id = JobId::from_slice(&record.id).unwrap();
        Changes {
            jobs: vec![JobWrite::of(record)],
            batches: vec![(
                batch,
                crate::store::encode_batch(&[id], vec![record.clone()], ""),
            )],
            ..Changes::default()
        }
    }

    /// An election moves the lease on; the store of the old epoch is
    /// fenced off: its writes fail, naming both epochs, and write nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_of_an_old_epoch_writes_nothing_once_another_master_is_elected() {
        let server = drover_tests::pg::Postgres::start();
        let url = server.url();
        let lease = Duration::from_millis(300);
        let rt = tokio::runtime::Handle::current();
        let first = Elector::connect(&url, lease, "a:1".into(), rt.clone())
            .await
            .unwrap();
        let second = Elector::connect(&url, lease, "b:2".into(), rt)
            .await
            .unwrap();
        let epoch = first
            .try_acquire()
            .await
            .unwrap()
            .expect("the first is elected");
        let leader = second.try_acquire().await.unwrap().unwrap_err();
        assert_eq!(
            (leader.epoch, leader.address.as_str(), leader.live),
            (epoch, "a:1", true)
        );

        let (u, e) = (url.clone(), epoch);
        let old = tokio::task::spawn_blocking(move || PgStore::open(&u, e, Duration::ZERO))
            .await
            .unwrap()
            .unwrap();
        let batch = BatchId::new();
        let record = job(batch, pb::JobState::Queued);
        let old = tokio::task::spawn_blocking(move || {
            old.write(submit(batch, &record)).unwrap();
            old
        })
        .await
        .unwrap();

        // The first master stops renewing: its lease expires and the
        // second takes it, one epoch on.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let next = loop {
            if let Ok(epoch) = second.try_acquire().await.unwrap() {
                break epoch;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(next, epoch + 1);
        assert!(
            !first.renew(epoch).await.unwrap(),
            "the old leader cannot renew"
        );

        let late_batch = BatchId::new();
        let late = job(late_batch, pb::JobState::Succeeded);
        let late_id = JobId::from_slice(&late.id).unwrap();
        let err = tokio::task::spawn_blocking(move || {
            let err = old.write(submit(late_batch, &late)).unwrap_err();
            (err, old.has_job(&late_id).unwrap())
        })
        .await
        .unwrap();
        let msg = format!("{:#}", err.0);
        assert!(
            msg.contains(&format!("epoch {epoch}")) && msg.contains(&format!("epoch {next}")),
            "{msg}"
        );
        assert!(!err.1, "the fenced write left its job behind");
        let epochs = server.psql("SELECT DISTINCT epoch FROM drover_jobs");
        assert_eq!(
            epochs,
            epoch.to_string(),
            "only the first leader's job is there"
        );

        // The new leader's store recovers the first one's job and writes.
        let (u, e) = (url.clone(), next);
        let new = tokio::task::spawn_blocking(move || {
            let store = PgStore::open(&u, e, Duration::ZERO).unwrap();
            let mut batches = 0;
            store
                .load(&mut |item| {
                    batches += matches!(item, Loaded::Batch(..)) as usize;
                    Ok(())
                })
                .unwrap();
            let batch = BatchId::new();
            store
                .write(submit(batch, &job(batch, pb::JobState::Queued)))
                .map(|()| batches)
        })
        .await
        .unwrap();
        assert_eq!(new.unwrap(), 1);

        // Resigning hands the lease over at once; the lease reads as
        // expired meanwhile (its -infinity is not subtracted from).
        second.resign(next).await.unwrap();
        let resigned = second.leader().await.unwrap();
        assert!(
            !resigned.live && resigned.expires_in.is_zero(),
            "{resigned:?}"
        );
        assert_eq!(first.try_acquire().await.unwrap().ok(), Some(next + 1));
    }

    /// Another client's long read (a pg_dump holds ACCESS SHARE on every
    /// table) cannot hold up a commit that would make partitions, which
    /// holds the lease row: it gives up the DDL after a quarter of the
    /// lease and writes the range's rows to the DEFAULT partition, and the
    /// commits after it leave partitions alone.
    #[test]
    fn a_commit_does_not_wait_for_another_clients_long_read_to_make_partitions() {
        let server = drover_tests::pg::Postgres::start();
        let url = server.url();
        let store = PgStore::open(&url, 0, Duration::from_secs(2)).unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let u = url.clone();
        let reader = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&u, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client
                    .batch_execute("BEGIN; LOCK TABLE drover_jobs IN ACCESS SHARE MODE")
                    .await
                    .unwrap();
                locked.send(()).unwrap();
                tokio::task::spawn_blocking(move || released.recv())
                    .await
                    .unwrap()
                    .unwrap();
                client.batch_execute("COMMIT").await.unwrap();
            });
        });
        is_locked.recv().unwrap();
        // Batches of ranges no commit has made: hours ahead.
        let now = now_ms();
        let mut ids = Vec::new();
        for hours in [5, 6] {
            let batch = BatchId::from_uuid(v7_at(
                now - now % PARTITION_MS + hours * PARTITION_MS + 1000,
            ));
            let record = job(batch, pb::JobState::Queued);
            store.write(submit(batch, &record)).unwrap();
            ids.push(JobId::from_slice(&record.id).unwrap());
        }
        // Written while the other client still reads.
        assert!(
            !reader.is_finished(),
            "the reader's transaction ended early"
        );
        assert_eq!(
            server
                .psql("SELECT string_agg(DISTINCT tableoid::regclass::text, ',') FROM drover_jobs"),
            "drover_jobs_default"
        );
        let read = store.read_jobs(&ids).unwrap();
        assert!(read.iter().all(Option::is_some), "{read:?}");
        release.send(()).unwrap();
        reader.join().unwrap();
    }

    /// Retention drops the partitions of a range when it purges the last
    /// of its batches, and deletes rows where some stay; keys, request
    /// ids, counts and bytes end as if every row had been deleted, a purge
    /// written twice (a commit retried) changes nothing more, and a
    /// restart reads exactly what is left.
    #[test]
    fn a_purge_drops_the_partitions_it_empties_and_deletes_rows_elsewhere() {
        let server = drover_tests::pg::Postgres::start();
        let url = server.url();
        let store = PgStore::open(&url, 0, Duration::ZERO).unwrap();
        let width = PARTITION_MS;
        let now = now_ms();
        let base = now - now % width - 10 * width;
        // Two batches in the first range, two in the second, one (open)
        // in the third; two jobs each, the first with a key.
        let starts = [base, base, base + width, base + width, base + 2 * width];
        let mut batches: Vec<(BatchId, [JobId; 2])> = Vec::new();
        let mut changes = Changes::default();
        let mut bytes = Vec::new();
        for (i, start) in starts.iter().enumerate() {
            let ms = start + 1000 * (i as u64 + 1);
            let jobs = [v7_at(ms), v7_at(ms + 1)].map(JobId::from_uuid);
            let batch = BatchId::from_uuid(v7_at(ms + 2));
            let open = i == 4;
            let state = if open {
                pb::JobState::Queued
            } else {
                pb::JobState::Succeeded
            };
            let records: Vec<pb::JobRecord> = jobs
                .iter()
                .enumerate()
                .map(|(k, id)| pb::JobRecord {
                    id: id.as_bytes().to_vec(),
                    batch: batch.as_bytes().to_vec(),
                    state: state as i32,
                    idempotency_key: if k == 0 {
                        format!("key-{i}")
                    } else {
                        String::new()
                    },
                    arg: "x".repeat(10 * (i + 1)),
                    ..Default::default()
                })
                .collect();
            changes.jobs.extend(records.iter().map(JobWrite::of));
            changes.keys.push((format!("key-{i}"), jobs[0]));
            changes.requests.push((format!("req-{i}"), batch));
            let record = if open {
                crate::store::encode_batch(&jobs, records.clone(), &format!("req-{i}"))
            } else {
                crate::store::encode_closed_batch(&jobs, &[0, 1], &format!("req-{i}"), 1000)
            };
            bytes.push(
                (record.len() + records.iter().map(|r| r.encoded_len()).sum::<usize>()) as u64,
            );
            changes.batches.push((batch, record));
            if !open {
                changes.closed.push((
                    batch,
                    pb::ClosedInfo {
                        closed_at_ms: 1000,
                        succeeded: 2,
                        ..Default::default()
                    },
                ));
            }
            batches.push((batch, jobs));
        }
        store.write(changes).unwrap();
        assert_eq!(store.closed_counts().unwrap(), [8, 0, 0]);
        assert_eq!(
            store.closed_bytes().unwrap(),
            bytes[..4].iter().sum::<u64>()
        );
        let exists =
            |table: &str| server.psql(&format!("SELECT to_regclass('{table}') IS NOT NULL")) == "t";
        let range = |i: u64| format!("p{}", base + i * width);
        for i in 0..3 {
            assert!(exists(&format!("drover_jobs_{}", range(i))));
            assert!(exists(&format!("drover_batches_{}", range(i))));
        }

        // All of the first range and half of the second.
        let purge = || Changes {
            deleted_batches: vec![batches[0].0, batches[1].0, batches[2].0],
            ..Changes::default()
        };
        for _ in 0..2 {
            store.write(purge()).unwrap();
            assert!(!exists(&format!("drover_jobs_{}", range(0))), "dropped");
            assert!(!exists(&format!("drover_batches_{}", range(0))), "dropped");
            assert!(exists(&format!("drover_jobs_{}", range(1))), "kept");
            assert_eq!(
                server.psql(&format!("SELECT count(*) FROM drover_jobs_{}", range(1))),
                "2",
                "the purged batch's rows deleted, the other's kept"
            );
            assert_eq!(store.closed_counts().unwrap(), [2, 0, 0]);
            assert_eq!(store.closed_bytes().unwrap(), bytes[3]);
        }
        let orphans = server.psql(&format!(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'drover_jobs'::regclass \
             AND inhrelid::regclass::text = 'drover_jobs_{}'",
            range(0)
        ));
        assert_eq!(orphans, "0");
        for (i, (batch, jobs)) in batches.iter().enumerate() {
            let kept = i >= 3;
            assert_eq!(
                store.read_batch(batch).unwrap().is_some(),
                kept,
                "batch {i}"
            );
            for job in jobs {
                assert_eq!(store.read_job(job).unwrap().is_some(), kept, "job of {i}");
                assert_eq!(store.has_job(job).unwrap(), kept, "job of {i}");
            }
            assert_eq!(
                store.job_by_key(&format!("key-{i}")).unwrap(),
                kept.then_some(jobs[0]),
                "key of {i}"
            );
            assert_eq!(
                store.batch_by_request(&format!("req-{i}")).unwrap(),
                kept.then_some(*batch),
                "request of {i}"
            );
        }

        // A restart reads the open batch, and a scan finds the jobs left.
        drop(store);
        let store = PgStore::open(&url, 0, Duration::ZERO).unwrap();
        let (mut loaded_batches, mut loaded_jobs) = (Vec::new(), Vec::new());
        store
            .load(&mut |item| {
                match item {
                    Loaded::Batch(id, ..) => loaded_batches.push(id),
                    Loaded::Job(r) => loaded_jobs.push(JobId::from_slice(&r.id).unwrap()),
                    Loaded::Assigned(_) => {}
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(loaded_batches, vec![batches[4].0]);
        assert_eq!(loaded_jobs, batches[4].1.to_vec());
        let mut scanned = Vec::new();
        store
            .scan_jobs(None, &mut |r| {
                scanned.push(JobId::from_slice(&r.id).unwrap());
                true
            })
            .unwrap();
        let want: Vec<JobId> = batches[3].1.iter().chain(&batches[4].1).copied().collect();
        assert_eq!(scanned, want);
        // And one from a listing's cursor starts past it.
        for at in 1..=want.len() {
            let mut rest = Vec::new();
            store
                .scan_jobs(Some(want[at - 1]), &mut |r| {
                    rest.push(JobId::from_slice(&r.id).unwrap());
                    true
                })
                .unwrap();
            assert_eq!(rest, want[at..], "after {at}");
        }

        // The last batch of the second range goes: so does the range.
        store
            .write(Changes {
                deleted_batches: vec![batches[3].0],
                ..Changes::default()
            })
            .unwrap();
        assert!(!exists(&format!("drover_jobs_{}", range(1))));
        assert!(
            exists(&format!("drover_jobs_{}", range(2))),
            "its batch is open"
        );
        assert_eq!(store.closed_counts().unwrap(), [0, 0, 0]);
        assert_eq!(store.closed_bytes().unwrap(), 0);
        assert_eq!(store.job_by_key("key-3").unwrap(), None);
        assert_eq!(store.job_by_key("key-4").unwrap(), Some(batches[4].1[0]));
    }

    /// Two masters making the tables of a new database at once: the one
    /// that waited for the other's lock finds the tables made and comes up
    /// (it used to fail with "relation drover_meta already exists": its
    /// check, made in a transaction begun before the wait, read the
    /// catalog as it was then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_that_waited_for_another_to_make_the_tables_finds_them() {
        let server = drover_tests::pg::Postgres::start();
        let url = server.url();
        let mut first = connect(&url, "first").await.unwrap();
        // The first master is making the tables: it holds the lock.
        first
            .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let url = url.clone();
            async move {
                let mut second = connect(&url, "second").await?;
                ensure_schema(&mut second, &url).await
            }
        });
        let observer = connect(&url, "observer").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiters: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiters == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second master never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let created = ensure_schema(&mut first, &url).await.unwrap();
        first
            .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .await
            .unwrap();
        let seen = waiting.await.unwrap();
        assert_eq!(
            seen.map_err(|e| format!("{e:#}")),
            Ok(created),
            "the waiting master reads the tables the first one made"
        );
    }

    /// A master that finds another's session holding the tables' lock for
    /// longer than it waits gives up, saying which lock and how to end the
    /// session, and leaves the lock as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_gives_up_on_a_schema_lock_held_too_long_and_says_why() {
        let server = drover_tests::pg::Postgres::start();
        let url = server.url();
        let stuck = connect(&url, "stuck").await.unwrap();
        stuck
            .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await
            .unwrap();
        let mut second = connect(&url, "second").await.unwrap();
        let err =
            ensure_schema_waiting(&mut second, &url, PARTITION_MS, Duration::from_millis(300))
                .await
                .expect_err("made the tables while another session held the lock");
        let msg = format!("{err:#}");
        for part in ["waited 300ms", "advisory lock", "pg_terminate_backend"] {
            assert!(msg.contains(part), "{part:?} not in: {msg}");
        }
        // The query it gives finds the stuck session, and only it.
        let start = msg.find("SELECT pid").expect("a query in the message");
        let end = start + msg[start..].find("); a master").expect("the query's end");
        let pids: Vec<i32> = second
            .query(&msg[start..end], &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stuck_pid: i32 = stuck
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pids, vec![stuck_pid], "{msg}");
        // The session's lock_timeout is back to its default, and the stuck
        // session still holds the lock.
        let timeout: String = second
            .query_one("SHOW lock_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "0");
        let held: i64 = second
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 1);
        // Once the stuck session lets go, the same call makes the tables.
        stuck
            .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
            .await
            .unwrap();
        ensure_schema_waiting(&mut second, &url, PARTITION_MS, Duration::from_millis(300))
            .await
            .expect("the tables once the lock is free");
    }

    /// A database of format 1 (unpartitioned tables) is refused, naming
    /// both formats.
    #[test]
    fn a_database_of_the_previous_format_is_refused_naming_both() {
        let server = drover_tests::pg::Postgres::start();
        server.psql(
            "CREATE TABLE drover_meta (name text PRIMARY KEY, value bigint NOT NULL); \
             INSERT INTO drover_meta VALUES ('format_version', 1), ('created_at_ms', 1)",
        );
        let err = PgStore::open(&server.url(), 0, Duration::ZERO).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("format 1") && msg.contains("format 2"),
            "{msg}"
        );
    }

    #[test]
    fn passwords_never_show_in_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u@h/db?password=hunter2&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        // An `@` in the query is not the user info's.
        assert_eq!(
            redact("postgres://u:secret@h/db?application_name=me@host"),
            "postgres://u:***@h/db?application_name=me@host"
        );
        assert_eq!(
            redact("postgres://u:secret@h?application_name=me@host"),
            "postgres://u:***@h?application_name=me@host"
        );
    }

    /// A commit whose connection broke (its session terminated, then the
    /// whole server restarted while it waited) connects again and is
    /// written; reads connect again too.
    #[test]
    fn a_commit_rides_through_a_terminated_session_and_a_restarted_server() {
        let mut server = drover_tests::pg::Postgres::start();
        let store = Arc::new(PgStore::open(&server.url(), 0, Duration::from_secs(60)).unwrap());
        let first = BatchId::new();
        store
            .write(submit(first, &job(first, pb::JobState::Queued)))
            .unwrap();

        let mine = format!("drover-master {} %", std::process::id());
        let killed = server.psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name LIKE '{mine}'"
        ));
        assert_eq!(killed, "2", "the writer's and the reader's sessions");
        let second = BatchId::new();
        store
            .write(submit(second, &job(second, pb::JobState::Queued)))
            .unwrap();
        assert!(store.read_batch(&second).unwrap().is_some());

        // The server goes away; a commit waits for it to come back.
        server.stop();
        let third = BatchId::new();
        let writing = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.write(submit(third, &job(third, pb::JobState::Queued)))
            })
        };
        server.start_server();
        writing.join().unwrap().unwrap();
        let mut batches = Vec::new();
        store
            .load(&mut |item| {
                if let Loaded::Batch(id, ..) = item {
                    batches.push(id);
                }
                Ok(())
            })
            .unwrap();
        batches.sort();
        let mut want = vec![first, second, third];
        want.sort();
        assert_eq!(batches, want, "every batch once");
    }
}
