//! Where the master keeps its jobs across restarts.
//!
//! The queue itself lives in memory ([`crate::state`]); a [`Store`] holds a
//! copy of every job record and batch so that a restarted master recovers
//! them. Writes are grouped: the committer ([`crate::committer`]) takes
//! every change made since its last commit and writes them in one durable
//! transaction, so many requests share one fsync.
//!
//! Two stores: [`RedbStore`] (the default: a redb file in the data
//! directory) and [`MemoryStore`] (nothing survives a restart).
//!
//! The redb store is also where finished work lives: once every job of a
//! batch is finished and that is committed, the batch is *closed* and
//! leaves the master's memory; its jobs are read back on demand (the
//! `read_*` methods, in read transactions that run beside the committer's
//! writes). Indexes keep what must be found without reading history:
//! open batches (all that recovery reads), idempotency keys, request ids,
//! closed batches by close time (retention), and the counts of closed
//! jobs by state.
//!
//! A data directory of the previous format (2) is upgraded in place when
//! opened ([`RedbStore::open`]); older ones are refused.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use drover_common::ids::{BatchId, JobId};
use drover_common::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use uuid::Uuid;

/// Job records by job id.
const JOBS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("jobs");
/// Batch records by batch id.
const BATCHES: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("batches");
/// The assignment log: per commit, the jobs handed to workers in it and
/// their attempt (16-byte id, 4-byte attempt, repeated).
const ASSIGNMENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("assignments");
/// Format version, creation time, the next sequence number and the counts
/// of closed jobs.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Batches not yet closed: what recovery reads.
const OPEN: TableDefinition<'_, u128, ()> = TableDefinition::new("open_batches");
/// Closed batches: their close time and job counts (a `ClosedInfo`).
const CLOSED: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("closed_batches");
/// Closed batches by close time, oldest first (retention).
const CLOSED_BY_TIME: TableDefinition<'_, (u64, u128), ()> = TableDefinition::new("closed_by_time");
/// Idempotency keys: the job each names.
const KEYS: TableDefinition<'_, &str, u128> = TableDefinition::new("idempotency_keys");
/// Request ids: the batch each submit made.
const REQUESTS: TableDefinition<'_, &str, u128> = TableDefinition::new("request_ids");
/// Jobs whose last record is FAILED or CANCELLED, by state (its wire value)
/// and id: `retry --failed` and listings of those states read these
/// instead of every record.
const BY_STATE: TableDefinition<'_, (i32, u128), ()> = TableDefinition::new("jobs_by_state");

/// Whether a state is indexed in [`BY_STATE`].
fn indexed(state: i32) -> bool {
    state == pb::JobState::Failed as i32 || state == pb::JobState::Cancelled as i32
}

/// The version of the data directory's format this build writes. 2: open
/// batches, closed batches and the key and request indexes. 3: closed
/// batches carry their bytes, and `meta` their sum (`--retention-bytes`);
/// failed and cancelled jobs are indexed by state. Format 2 is upgraded
/// at open (`upgrade_from_2`).
pub const FORMAT_VERSION: u64 = 3;

/// The META key of the bytes of the closed batches' records and their own
/// jobs' records.
const CLOSED_BYTES: &str = "closed_bytes";
/// The META key of the newest creation time (unix ms) of a batch purged
/// over the byte budget: tells a purged id from one never seen.
const PURGED_UPTO: &str = "budget_purged_upto_ms";

/// The META keys of the counts of closed jobs, by state.
const CLOSED_COUNTS: [&str; 3] = ["closed_succeeded", "closed_failed", "closed_cancelled"];

/// The file name of the database inside the data directory.
const DB_FILE: &str = "drover.redb";
/// The file a master holds an exclusive lock on while it runs.
const LOCK_FILE: &str = "LOCK";

/// A job's record to insert or replace, with the state it holds: the
/// store indexes some states, and need not decode the record to learn it.
#[derive(Debug, Clone)]
pub struct JobWrite {
    /// The job.
    pub id: JobId,
    /// The state its record holds.
    pub state: pb::JobState,
    /// Its record, encoded.
    pub record: Vec<u8>,
}

impl JobWrite {
    /// The write of a record (tests build records as messages).
    #[cfg(test)]
    pub(crate) fn of(record: &pb::JobRecord) -> JobWrite {
        JobWrite {
            id: JobId::from_slice(&record.id).expect("a 16-byte id"),
            state: record.state(),
            record: record.encode_to_vec(),
        }
    }
}

/// Changes to write in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// Job records, encoded, to insert or replace.
    pub jobs: Vec<JobWrite>,
    /// Jobs to delete (purged after the retention period).
    pub deleted_jobs: Vec<JobId>,
    /// Batch records, encoded, to insert.
    pub batches: Vec<(BatchId, Vec<u8>)>,
    /// Batches to delete.
    pub deleted_batches: Vec<BatchId>,
    /// This commit's number, the key of its assignment log entry.
    pub number: u64,
    /// Jobs handed to workers, with their attempt: one log entry for all,
    /// instead of a record per job.
    pub assignments: Vec<(JobId, u32)>,
    /// Every job running now is written whole in this commit: the log
    /// entries of earlier commits are obsolete and are deleted.
    pub truncate_log: bool,
    /// Batches in `batches` whose record is a closed one, with what the
    /// store keeps of them (every other batch written is open).
    pub closed: Vec<(BatchId, pb::ClosedInfo)>,
    /// For batches in `closed` whose every own job's record was written by
    /// this master: those records' bytes (as written, this commit's
    /// included), so the store need not read them back. A batch missing
    /// here has them read.
    pub closed_own_bytes: HashMap<BatchId, u64>,
    /// Idempotency keys given to new jobs.
    pub keys: Vec<(String, JobId)>,
    /// Request ids of new batches.
    pub requests: Vec<(String, BatchId)>,
    /// The next job sequence number (0: unchanged).
    pub next_seq: u64,
    /// Batches open again (a retry queued one of their jobs): counted
    /// open, their record kept as it is.
    pub reopened: Vec<BatchId>,
    /// The newest creation time (unix ms) of a batch in `deleted_batches`
    /// purged over the byte budget (0: none).
    pub budget_purged_upto_ms: u64,
    /// Jobs FAILED before and queued again (a retry): out of the state
    /// index, unless their record in this commit is FAILED again.
    pub unfailed: Vec<JobId>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.deleted_jobs.is_empty()
            && self.batches.is_empty()
            && self.deleted_batches.is_empty()
            && self.assignments.is_empty()
            && !self.truncate_log
            && self.closed.is_empty()
            && self.reopened.is_empty()
    }
}

/// A batch read from the store, without its jobs.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// Its jobs in submission order.
    pub jobs: Vec<JobId>,
    /// Its submit's request id, or empty.
    pub request_id: String,
    /// When it closed (unix ms); 0 while open.
    pub closed_at_ms: u64,
    /// Closed: the places of its jobs in the order they finished.
    pub finished: Vec<u32>,
}

/// Counts of closed jobs by final state: succeeded, failed, cancelled.
pub type ClosedCounts = [u64; 3];

/// One item read back at start-up.
#[derive(Debug)]
pub enum Loaded {
    /// A job record.
    Job(Box<pb::JobRecord>),
    /// A batch: its id, its jobs in order, the first records of the jobs
    /// it created, and its submit's request id (or empty).
    Batch(BatchId, Vec<JobId>, CreatedRecords, String),
    /// One commit's assignment log entry: jobs handed out, with their attempt.
    Assigned(Vec<(JobId, u32)>),
}

/// What a store held at start-up, all at once (tests).
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every job record.
    pub jobs: Vec<pb::JobRecord>,
    /// Every batch: its id, its jobs in order, and its jobs' first records.
    pub batches: Vec<(BatchId, Vec<JobId>, CreatedRecords, String)>,
    /// The assignment log, oldest commit first.
    pub assignments: Vec<Vec<(JobId, u32)>>,
    /// When the store was created (unix ms): ids older than this were never
    /// seen here, younger ones missing were purged.
    pub created_at_ms: u64,
}

/// A place to keep job records.
pub trait Store: Send + Sync + 'static {
    /// Whether writes survive a restart; when false the master skips the
    /// committer entirely.
    fn is_durable(&self) -> bool;
    /// Reads everything back at start-up, item by item (every job, then
    /// every batch), so a million jobs are never all decoded at once.
    /// Returns when the store was created (unix ms).
    fn load(&self, sink: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64>;
    /// Writes changes in one durable transaction.
    fn write(&self, changes: Changes) -> anyhow::Result<()>;
    /// A job's last committed record.
    fn read_job(&self, _id: &JobId) -> anyhow::Result<Option<pb::JobRecord>> {
        Ok(None)
    }
    /// The last committed records of several jobs, in one read.
    fn read_jobs(&self, ids: &[JobId]) -> anyhow::Result<Vec<Option<pb::JobRecord>>> {
        ids.iter().map(|id| self.read_job(id)).collect()
    }
    /// Whether the store holds a job's record (without reading it).
    fn has_job(&self, _id: &JobId) -> anyhow::Result<bool> {
        Ok(false)
    }
    /// A batch's job list and header.
    fn read_batch(&self, _id: &BatchId) -> anyhow::Result<Option<StoredBatch>> {
        Ok(None)
    }
    /// The job an idempotency key names.
    fn job_by_key(&self, _key: &str) -> anyhow::Result<Option<JobId>> {
        Ok(None)
    }
    /// The jobs that `keys` name and whose records the store still holds,
    /// by key, in as few reads as the store can: a submit asks once for all
    /// its keys not found in memory.
    fn jobs_by_keys(&self, keys: &[&str]) -> anyhow::Result<HashMap<String, JobId>> {
        let mut found = HashMap::new();
        for &key in keys {
            if let Some(id) = self.job_by_key(key)?
                && self.has_job(&id)?
            {
                found.insert(key.to_string(), id);
            }
        }
        Ok(found)
    }
    /// The batch a submit's request id made.
    fn batch_by_request(&self, _request_id: &str) -> anyhow::Result<Option<BatchId>> {
        Ok(None)
    }
    /// Closed jobs by final state, as of the last commit.
    fn closed_counts(&self) -> anyhow::Result<ClosedCounts> {
        Ok([0; 3])
    }
    /// The next job sequence number saved, or 0.
    fn next_seq(&self) -> anyhow::Result<u64> {
        Ok(0)
    }
    /// Up to `limit` closed batches that closed before `cutoff_ms`, oldest
    /// first (retention).
    fn closed_before(&self, _cutoff_ms: u64, _limit: usize) -> anyhow::Result<Vec<BatchId>> {
        Ok(Vec::new())
    }
    /// The bytes the closed batches hold (their records and their own
    /// jobs'), as of the last commit.
    fn closed_bytes(&self) -> anyhow::Result<u64> {
        Ok(0)
    }
    /// The oldest closed batches (by close time) that together hold at
    /// least `bytes`, at most `limit` of them (the byte budget).
    fn oldest_closed(&self, _bytes: u64, _limit: usize) -> anyhow::Result<Vec<BatchId>> {
        Ok(Vec::new())
    }
    /// The newest creation time (unix ms) of a batch purged over the byte
    /// budget, or 0.
    fn budget_purged_upto_ms(&self) -> anyhow::Result<u64> {
        Ok(0)
    }
    /// Visits job records in id order (about submission order), from the
    /// first after `after` (or the first of all), until `visit` returns
    /// false: a listing's later pages start where the last one ended
    /// without reading what came before.
    fn scan_jobs(
        &self,
        _after: Option<JobId>,
        _visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// Visits the records of the jobs in `state`, in id order from the
    /// first after `after`, until `visit` returns false: FAILED and
    /// CANCELLED from an index, other states by a scan of every record.
    fn scan_jobs_in_state(
        &self,
        _state: pb::JobState,
        _after: Option<JobId>,
        _visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// Visits the records of the jobs whose batch is closed (out of
    /// memory), newest first, until `visit` returns false: the dashboard's
    /// pages of finished jobs.
    fn scan_closed_jobs_newest(
        &self,
        _visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// Closed batches, newest first: up to `limit` of them after skipping
    /// `offset`, and how many there are in all.
    fn closed_batches_newest(
        &self,
        _offset: usize,
        _limit: usize,
    ) -> anyhow::Result<(Vec<(BatchId, pb::ClosedInfo)>, usize)> {
        Ok((Vec::new(), 0))
    }

    // ---- the coordination service ----

    /// Where the coordination service's records are kept, in the same
    /// database; `None` keeps nothing (see [`crate::coord`]).
    fn coord(&self) -> Option<&dyn crate::coord::CoordStore> {
        None
    }
}

/// Keeps nothing: the queue lives and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn is_durable(&self) -> bool {
        false
    }

    fn load(&self, _sink: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        Ok(now_ms())
    }

    fn write(&self, _changes: Changes) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A redb database in a data directory, locked against a second master.
pub struct RedbStore {
    db: Database,
    created_at_ms: u64,
    /// Released when the store is dropped (after `db`, dropped first).
    _lock: DirLock,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// The database, for the coordination records kept beside the jobs
    /// (`crate::coord`).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Opens (or creates) the store in `dir`, upgrading one of format 2 in
    /// place. Refuses, with a message that says what to do, a directory
    /// locked by another master, one written by a newer drover or in
    /// format 1, or one that is corrupt.
    pub fn open(dir: &Path) -> anyhow::Result<RedbStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
        })?;
        let lock = lock_dir(dir)?;
        let path: PathBuf = dir.join(DB_FILE);
        let existed = path.exists();
        let mut builder = Database::builder();
        // The queue is in memory already; the page cache only needs to
        // hold the pages that writes touch.
        builder.set_cache_size(16 * 1024 * 1024);
        let db = builder.create(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the data directory {} ({}): {e}; if it is corrupt, move it aside and start with an empty one",
                dir.display(),
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        let created_at_ms;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get("format_version")?.map(|v| v.value());
            match version {
                Some(v) if v > FORMAT_VERSION => anyhow::bail!(
                    "the data directory {} was written by a newer drover (format {v}; this build reads up to {FORMAT_VERSION}); run that version, or start with another directory",
                    dir.display()
                ),
                Some(2) => upgrade_from_2(&txn, &mut meta, dir)?,
                Some(v) if v < FORMAT_VERSION => anyhow::bail!(
                    "the data directory {} was written by an older drover (format {v}; this build reads format {FORMAT_VERSION}); finish or drain its jobs with that version and start this one on an empty directory",
                    dir.display()
                ),
                Some(_) => {}
                None if existed && has_tables(&txn)? => anyhow::bail!(
                    "the data directory {} holds a database without drover's format marker; it is corrupt or not drover's",
                    dir.display()
                ),
                None => {
                    meta.insert("format_version", FORMAT_VERSION)?;
                    meta.insert("created_at_ms", now_ms())?;
                }
            }
            created_at_ms = meta.get("created_at_ms")?.map_or(0, |v| v.value());
            txn.open_table(JOBS)?;
            txn.open_table(BATCHES)?;
            txn.open_table(ASSIGNMENTS)?;
            txn.open_table(OPEN)?;
            txn.open_table(CLOSED)?;
            txn.open_table(CLOSED_BY_TIME)?;
            txn.open_table(KEYS)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(BY_STATE)?;
        }
        txn.commit()?;
        Ok(RedbStore {
            db,
            created_at_ms,
            _lock: lock,
        })
    }
}

fn has_tables(txn: &redb::WriteTransaction) -> anyhow::Result<bool> {
    Ok(txn.list_tables()?.any(|t| t.name() != "meta"))
}

/// Takes an exclusive lock on the data directory, or says who holds it.
/// The lock on a data directory: an exclusive `flock` of its lock file,
/// released when dropped. It is released explicitly, not by closing the
/// file: a process forked meanwhile (any `Command::spawn` of the process,
/// until its exec) shares the file's description and would hold the lock
/// on after the close, and a store opened again in this process (a test's
/// restart) would find the directory "in use by another master".
#[derive(Debug)]
struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock_dir(dir: &Path) -> anyhow::Result<DirLock> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!(
            "the data directory {} is in use by another master (pid {}); stop it, or give this one another --data-dir",
            dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(DirLock(file))
}

impl Store for RedbStore {
    fn is_durable(&self) -> bool {
        true
    }

    fn coord(&self) -> Option<&dyn crate::coord::CoordStore> {
        Some(self)
    }

    fn load(&self, sink: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        // Open batches only: a closed batch's jobs are all finished and are
        // read on demand. Each batch first (its record holds its jobs'
        // first state), then its jobs' own records, which override it.
        let open = txn.open_table(OPEN)?;
        let batch_table = txn.open_table(BATCHES)?;
        let jobs_table = txn.open_table(JOBS)?;
        for entry in open.iter()? {
            let key = entry?.0.value();
            let id = BatchId::from_uuid(Uuid::from_u128(key));
            let Some(value) = batch_table.get(key)? else {
                anyhow::bail!("open batch {id} has no record: the store is corrupt");
            };
            let (ids, created, request_id) = decode_batch(value.value())
                .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?;
            // A batch opened again keeps its closed record, which holds no
            // jobs: its own jobs are those whose records name it.
            let reopened = created.is_empty();
            let own: Vec<JobId> = if reopened {
                ids.clone()
            } else {
                created
                    .ids()
                    .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?
            };
            sink(Loaded::Batch(id, ids, created, request_id))?;
            for job in own {
                if let Some(value) = jobs_table.get(job.uuid().as_u128())? {
                    let record = pb::JobRecord::decode(value.value())
                        .map_err(|e| anyhow::anyhow!("job record {job} is corrupt: {e}"))?;
                    if !reopened || record.batch == id.as_bytes() {
                        sink(Loaded::Job(Box::new(record)))?;
                    }
                }
            }
        }
        let log = txn.open_table(ASSIGNMENTS)?;
        for entry in log.iter()? {
            let (key, value) = entry?;
            let list = unpack_assignments(key.value(), value.value())?;
            sink(Loaded::Assigned(list))?;
        }
        Ok(self.created_at_ms)
    }

    fn write(&self, changes: Changes) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        // The allocator state is saved with each commit: a restart after a
        // crash need not walk the whole file (seconds for a history of
        // millions of jobs) to rebuild it.
        txn.set_quick_repair(true);
        {
            let mut jobs = txn.open_table(JOBS)?;
            let mut batches = txn.open_table(BATCHES)?;
            let mut open = txn.open_table(OPEN)?;
            let mut closed = txn.open_table(CLOSED)?;
            let mut by_time = txn.open_table(CLOSED_BY_TIME)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut requests = txn.open_table(REQUESTS)?;
            let mut by_state = txn.open_table(BY_STATE)?;
            let mut meta = txn.open_table(META)?;
            let mut counts = Closed::default();
            for (i, name) in CLOSED_COUNTS.iter().enumerate() {
                counts.jobs[i] = meta.get(*name)?.map_or(0, |v| v.value());
            }
            counts.bytes = meta.get(CLOSED_BYTES)?.map_or(0, |v| v.value());
            // Deletions first: a batch purged and brought back in the same
            // commit is written again after.
            for id in &changes.deleted_batches {
                let key = id.uuid().as_u128();
                unclose(&mut closed, &mut by_time, &mut counts, key)?;
                open.remove(key)?;
                let Some(record) = batches.remove(key)? else {
                    continue;
                };
                let header = pb::BatchHeader::decode(record.value())
                    .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?;
                drop(record);
                if !header.request_id.is_empty()
                    && requests
                        .get(header.request_id.as_str())?
                        .is_some_and(|v| v.value() == key)
                {
                    requests.remove(header.request_id.as_str())?;
                }
                for chunk in header.job_ids.chunks_exact(16) {
                    let job = u128::from_be_bytes(chunk.try_into().expect("16 bytes"));
                    let Some(value) = jobs.get(job)? else {
                        continue;
                    };
                    let job_header = pb::JobHeader::decode(value.value())
                        .map_err(|e| anyhow::anyhow!("job record {job:x} is corrupt: {e}"))?;
                    drop(value);
                    if job_header.batch != id.as_bytes() {
                        continue;
                    }
                    jobs.remove(job)?;
                    if indexed(job_header.state) {
                        by_state.remove((job_header.state, job))?;
                    }
                    let k = job_header.idempotency_key.as_str();
                    if !k.is_empty() && keys.get(k)?.is_some_and(|v| v.value() == job) {
                        keys.remove(k)?;
                    }
                }
            }
            for id in &changes.deleted_jobs {
                let key = id.uuid().as_u128();
                if let Some(old) = jobs.remove(key)? {
                    let state = job_header(key, old.value())?.state;
                    drop(old);
                    if indexed(state) {
                        by_state.remove((state, key))?;
                    }
                }
            }
            let mut indexed_now = HashSet::new();
            for w in &changes.jobs {
                let key = w.id.uuid().as_u128();
                jobs.insert(key, w.record.as_slice())?;
                let state = w.state as i32;
                // Tests run debug builds: every write checks the state
                // given against the record's.
                if cfg!(debug_assertions) {
                    let recorded = job_header(key, &w.record)?.state;
                    anyhow::ensure!(
                        recorded == state,
                        "job {}: written as state {state}, its record says {recorded}",
                        w.id
                    );
                }
                if indexed(state) {
                    by_state.insert((state, key), ())?;
                    indexed_now.insert(key);
                }
            }
            for id in &changes.unfailed {
                let key = id.uuid().as_u128();
                if !indexed_now.contains(&key) {
                    by_state.remove((pb::JobState::Failed as i32, key))?;
                }
            }
            let closing: HashMap<BatchId, &pb::ClosedInfo> =
                changes.closed.iter().map(|(b, i)| (*b, i)).collect();
            // This commit's job records, for the bytes of a batch it closes
            // whose records the state did not count: made only then.
            let mut written: Option<HashMap<u128, &[u8]>> = None;
            let mut read_own_bytes = |id: &BatchId, record: &[u8]| -> anyhow::Result<u64> {
                let written = written.get_or_insert_with(|| {
                    changes
                        .jobs
                        .iter()
                        .map(|w| (w.id.uuid().as_u128(), w.record.as_slice()))
                        .collect()
                });
                own_bytes(&jobs, written, id, &job_ids_of(record)?)
            };
            for (id, bytes) in &changes.batches {
                let key = id.uuid().as_u128();
                batches.insert(key, bytes.as_slice())?;
                // A batch closed before and written again was reopened (a
                // retry): it counts as open until it closes again.
                unclose(&mut closed, &mut by_time, &mut counts, key)?;
                match closing.get(id) {
                    Some(info) => {
                        let mut info = **info;
                        let own = match changes.closed_own_bytes.get(id) {
                            Some(&counted) => {
                                // Tests run debug builds: every close checks
                                // the state's count against the records (a
                                // failed write stops the master, saying so).
                                if cfg!(debug_assertions) {
                                    let read = read_own_bytes(id, bytes)?;
                                    anyhow::ensure!(
                                        counted == read,
                                        "batch {id}: the state counted {counted} bytes of \
                                         its jobs' records, the store holds {read}"
                                    );
                                }
                                counted
                            }
                            None => read_own_bytes(id, bytes)?,
                        };
                        info.bytes = bytes.len() as u64 + own;
                        open.remove(key)?;
                        closed.insert(key, info.encode_to_vec().as_slice())?;
                        by_time.insert((info.closed_at_ms, key), ())?;
                        counts.close(&info);
                    }
                    None => {
                        open.insert(key, ())?;
                    }
                }
            }
            for id in &changes.reopened {
                let key = id.uuid().as_u128();
                // Never an open batch without its record: recovery would
                // refuse the store.
                if batches.get(key)?.is_none() {
                    continue;
                }
                unclose(&mut closed, &mut by_time, &mut counts, key)?;
                open.insert(key, ())?;
            }
            for (key, job) in &changes.keys {
                keys.insert(key.as_str(), job.uuid().as_u128())?;
            }
            for (request_id, batch) in &changes.requests {
                requests.insert(request_id.as_str(), batch.uuid().as_u128())?;
            }
            for (i, name) in CLOSED_COUNTS.iter().enumerate() {
                meta.insert(*name, counts.jobs[i])?;
            }
            meta.insert(CLOSED_BYTES, counts.bytes)?;
            if changes.budget_purged_upto_ms > 0 {
                let was = meta.get(PURGED_UPTO)?.map_or(0, |v| v.value());
                meta.insert(PURGED_UPTO, was.max(changes.budget_purged_upto_ms))?;
            }
            if changes.next_seq > 0 {
                meta.insert("next_seq", changes.next_seq)?;
            }
            let mut log = txn.open_table(ASSIGNMENTS)?;
            if changes.truncate_log {
                log.retain_in::<u64, _>(..changes.number, |_, _| false)?;
            }
            if !changes.assignments.is_empty() {
                let packed = pack_assignments(&changes.assignments);
                log.insert(changes.number, packed.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn read_job(&self, id: &JobId) -> anyhow::Result<Option<pb::JobRecord>> {
        Ok(self.read_jobs(std::slice::from_ref(id))?.pop().flatten())
    }

    fn read_jobs(&self, ids: &[JobId]) -> anyhow::Result<Vec<Option<pb::JobRecord>>> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        ids.iter()
            .map(|id| {
                let Some(value) = jobs.get(id.uuid().as_u128())? else {
                    return Ok(None);
                };
                let record = pb::JobRecord::decode(value.value())
                    .map_err(|e| anyhow::anyhow!("job record {id} is corrupt: {e}"))?;
                Ok(Some(record))
            })
            .collect()
    }

    fn has_job(&self, id: &JobId) -> anyhow::Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(JOBS)?.get(id.uuid().as_u128())?.is_some())
    }

    fn read_batch(&self, id: &BatchId) -> anyhow::Result<Option<StoredBatch>> {
        let txn = self.db.begin_read()?;
        let batches = txn.open_table(BATCHES)?;
        let Some(value) = batches.get(id.uuid().as_u128())? else {
            return Ok(None);
        };
        Ok(Some(stored_batch(id, value.value())?))
    }

    fn job_by_key(&self, key: &str) -> anyhow::Result<Option<JobId>> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        Ok(keys
            .get(key)?
            .map(|v| JobId::from_uuid(Uuid::from_u128(v.value()))))
    }

    fn jobs_by_keys(&self, keys: &[&str]) -> anyhow::Result<HashMap<String, JobId>> {
        let txn = self.db.begin_read()?;
        let (by_key, jobs) = (txn.open_table(KEYS)?, txn.open_table(JOBS)?);
        let mut found = HashMap::new();
        for &key in keys {
            if let Some(v) = by_key.get(key)? {
                let id = v.value();
                if jobs.get(id)?.is_some() {
                    found.insert(key.to_string(), JobId::from_uuid(Uuid::from_u128(id)));
                }
            }
        }
        Ok(found)
    }

    fn batch_by_request(&self, request_id: &str) -> anyhow::Result<Option<BatchId>> {
        let txn = self.db.begin_read()?;
        let requests = txn.open_table(REQUESTS)?;
        Ok(requests
            .get(request_id)?
            .map(|v| BatchId::from_uuid(Uuid::from_u128(v.value()))))
    }

    fn closed_counts(&self) -> anyhow::Result<ClosedCounts> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let mut counts = [0u64; 3];
        for (i, name) in CLOSED_COUNTS.iter().enumerate() {
            counts[i] = meta.get(*name)?.map_or(0, |v| v.value());
        }
        Ok(counts)
    }

    fn next_seq(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("next_seq")?.map_or(0, |v| v.value()))
    }

    fn closed_bytes(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(CLOSED_BYTES)?.map_or(0, |v| v.value()))
    }

    fn budget_purged_upto_ms(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(PURGED_UPTO)?.map_or(0, |v| v.value()))
    }

    fn oldest_closed(&self, bytes: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        let txn = self.db.begin_read()?;
        let by_time = txn.open_table(CLOSED_BY_TIME)?;
        let closed = txn.open_table(CLOSED)?;
        let (mut out, mut sum) = (Vec::new(), 0u64);
        for entry in by_time.iter()? {
            if sum >= bytes || out.len() >= limit {
                break;
            }
            let (_, key) = entry?.0.value();
            if let Some(value) = closed.get(key)? {
                let info = pb::ClosedInfo::decode(value.value())
                    .map_err(|e| anyhow::anyhow!("closed batch {key:x} is corrupt: {e}"))?;
                sum += info.bytes;
            }
            out.push(BatchId::from_uuid(Uuid::from_u128(key)));
        }
        Ok(out)
    }

    fn closed_before(&self, cutoff_ms: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        let txn = self.db.begin_read()?;
        let by_time = txn.open_table(CLOSED_BY_TIME)?;
        let mut out = Vec::new();
        for entry in by_time.range((0, 0)..(cutoff_ms, 0))? {
            if out.len() >= limit {
                break;
            }
            let (at, key) = entry?.0.value();
            debug_assert!(at < cutoff_ms);
            out.push(BatchId::from_uuid(Uuid::from_u128(key)));
        }
        Ok(out)
    }

    fn scan_closed_jobs_newest(
        &self,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        let open = txn.open_table(OPEN)?;
        // Whether each batch seen is open (its jobs are in memory).
        let mut is_open: HashMap<u128, bool> = Default::default();
        for entry in jobs.iter()?.rev() {
            let (key, value) = entry?;
            let record = decode_job(key.value(), value.value())?;
            let batch = Uuid::from_slice(&record.batch)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "job record {} names no batch: {e}",
                        Uuid::from_u128(key.value())
                    )
                })?
                .as_u128();
            let open_now = match is_open.get(&batch) {
                Some(o) => *o,
                None => {
                    let o = open.get(batch)?.is_some();
                    is_open.insert(batch, o);
                    o
                }
            };
            if !open_now && !visit(record) {
                break;
            }
        }
        Ok(())
    }

    fn closed_batches_newest(
        &self,
        offset: usize,
        limit: usize,
    ) -> anyhow::Result<(Vec<(BatchId, pb::ClosedInfo)>, usize)> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        let closed = txn.open_table(CLOSED)?;
        let total = closed.len()? as usize;
        let mut page = Vec::new();
        for entry in closed.iter()?.rev().skip(offset).take(limit) {
            let (key, value) = entry?;
            let id = BatchId::from_uuid(Uuid::from_u128(key.value()));
            let info = pb::ClosedInfo::decode(value.value())
                .map_err(|e| anyhow::anyhow!("closed batch {id} is corrupt: {e}"))?;
            page.push((id, info));
        }
        Ok((page, total))
    }

    fn scan_jobs_in_state(
        &self,
        state: pb::JobState,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        let state = state as i32;
        if !indexed(state) {
            return self.scan_jobs(after, &mut |r| r.state != state || visit(r));
        }
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        let by_state = txn.open_table(BY_STATE)?;
        let from = match after {
            Some(id) => Bound::Excluded((state, id.uuid().as_u128())),
            None => Bound::Included((state, 0)),
        };
        for entry in by_state.range::<(i32, u128)>((from, Bound::Included((state, u128::MAX))))? {
            let (_, key) = entry?.0.value();
            let Some(value) = jobs.get(key)? else {
                anyhow::bail!(
                    "job {} is indexed by state but has no record: the store is corrupt",
                    Uuid::from_u128(key)
                );
            };
            if !visit(decode_job(key, value.value())?) {
                break;
            }
        }
        Ok(())
    }

    fn scan_jobs(
        &self,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        let from = match after {
            Some(id) => Bound::Excluded(id.uuid().as_u128()),
            None => Bound::Unbounded,
        };
        for entry in jobs.range::<u128>((from, Bound::Unbounded))? {
            let (key, value) = entry?;
            let record = decode_job(key.value(), value.value())?;
            if !visit(record) {
                break;
            }
        }
        Ok(())
    }
}

/// The batch, key and state of a job record.
fn job_header(key: u128, bytes: &[u8]) -> anyhow::Result<pb::JobHeader> {
    pb::JobHeader::decode(bytes)
        .map_err(|e| anyhow::anyhow!("job record {} is corrupt: {e}", Uuid::from_u128(key)))
}

/// A job record read by a scan, keyed by its id.
fn decode_job(key: u128, bytes: &[u8]) -> anyhow::Result<pb::JobRecord> {
    pb::JobRecord::decode(bytes)
        .map_err(|e| anyhow::anyhow!("job record {} is corrupt: {e}", Uuid::from_u128(key)))
}

/// What the closed batches hold, kept in `meta`: their own jobs by final
/// state, and their bytes.
#[derive(Debug, Default)]
pub(crate) struct Closed {
    pub(crate) jobs: ClosedCounts,
    pub(crate) bytes: u64,
}

impl Closed {
    /// Counts a batch that closes.
    pub(crate) fn close(&mut self, info: &pb::ClosedInfo) {
        self.jobs[0] += info.succeeded;
        self.jobs[1] += info.failed;
        self.jobs[2] += info.cancelled;
        self.bytes += info.bytes;
    }

    /// Stops counting a closed batch (reopened or purged).
    pub(crate) fn unclose(&mut self, info: &pb::ClosedInfo) {
        self.jobs[0] = self.jobs[0].saturating_sub(info.succeeded);
        self.jobs[1] = self.jobs[1].saturating_sub(info.failed);
        self.jobs[2] = self.jobs[2].saturating_sub(info.cancelled);
        self.bytes = self.bytes.saturating_sub(info.bytes);
    }
}

/// Packs one commit's assignment log entry: 16-byte id, 4-byte attempt.
pub(crate) fn pack_assignments(list: &[(JobId, u32)]) -> Vec<u8> {
    let mut packed = Vec::with_capacity(list.len() * 20);
    for (id, attempt) in list {
        packed.extend_from_slice(id.as_bytes());
        packed.extend_from_slice(&attempt.to_le_bytes());
    }
    packed
}

/// Unpacks the assignment log entry of commit `number`.
pub(crate) fn unpack_assignments(number: u64, bytes: &[u8]) -> anyhow::Result<Vec<(JobId, u32)>> {
    anyhow::ensure!(
        bytes.len().is_multiple_of(20),
        "assignment log entry {number} is corrupt"
    );
    Ok(bytes
        .chunks_exact(20)
        .map(|c| {
            let id = JobId::from_uuid(Uuid::from_bytes(c[..16].try_into().expect("16 bytes")));
            (id, u32::from_le_bytes(c[16..].try_into().expect("4 bytes")))
        })
        .collect())
}

/// A batch record read back, without its jobs' records.
pub(crate) fn stored_batch(id: &BatchId, bytes: &[u8]) -> anyhow::Result<StoredBatch> {
    let header = pb::BatchHeader::decode(bytes)
        .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?;
    anyhow::ensure!(
        header.job_ids.len() % 16 == 0 && header.finished.len() % 4 == 0,
        "batch record {id} is corrupt: its lists are not whole"
    );
    Ok(StoredBatch {
        jobs: job_ids(&header.job_ids),
        request_id: header.request_id,
        closed_at_ms: header.closed_at_ms,
        finished: header
            .finished
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    })
}

/// The job list of an encoded batch record.
fn job_ids_of(record: &[u8]) -> anyhow::Result<Vec<u128>> {
    let header = pb::BatchHeader::decode(record)
        .map_err(|e| anyhow::anyhow!("batch record is corrupt: {e}"))?;
    Ok(header
        .job_ids
        .chunks_exact(16)
        .map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// The bytes a closed batch holds: its record and its own jobs' records
/// (from `written`, else from the table).
fn closed_batch_bytes(
    jobs: &redb::Table<'_, u128, &[u8]>,
    written: &HashMap<u128, &[u8]>,
    batch: &BatchId,
    record: &[u8],
) -> anyhow::Result<u64> {
    Ok(record.len() as u64 + own_bytes(jobs, written, batch, &job_ids_of(record)?)?)
}

/// Upgrades a format-2 data directory to format 3 in the opening
/// transaction: each closed batch gets its bytes (as its close would have
/// counted them) and `meta` their sum; failed and cancelled jobs are
/// indexed by state from their records. Format 2 wrote no byte-budget
/// purges, so that marker stays absent (0), and its job records lack
/// `limits` and `started_at_ms`, whose empty defaults are right: it had no
/// limits, and a start time is only shown.
fn upgrade_from_2(
    txn: &redb::WriteTransaction,
    meta: &mut redb::Table<'_, &str, u64>,
    dir: &Path,
) -> anyhow::Result<()> {
    let jobs = txn.open_table(JOBS)?;
    let batches = txn.open_table(BATCHES)?;
    let mut closed = txn.open_table(CLOSED)?;
    let mut by_state = txn.open_table(BY_STATE)?;
    let mut infos = Vec::new();
    for entry in closed.iter()? {
        let (key, value) = entry?;
        let key = key.value();
        let info = pb::ClosedInfo::decode(value.value())
            .map_err(|e| anyhow::anyhow!("closed batch {key:x} is corrupt: {e}"))?;
        infos.push((key, info));
    }
    let none = HashMap::new();
    let mut total = 0u64;
    for (key, mut info) in infos.iter().copied() {
        let batch = BatchId::from_uuid(Uuid::from_u128(key));
        let Some(record) = batches.get(key)? else {
            anyhow::bail!("closed batch {batch} has no record: the store is corrupt");
        };
        info.bytes = closed_batch_bytes(&jobs, &none, &batch, record.value())?;
        drop(record);
        total += info.bytes;
        closed.insert(key, info.encode_to_vec().as_slice())?;
    }
    let (mut read, mut indexed_jobs) = (0u64, 0u64);
    for entry in jobs.iter()? {
        let (key, value) = entry?;
        let key = key.value();
        let state = job_header(key, value.value())?.state;
        read += 1;
        if indexed(state) {
            by_state.insert((state, key), ())?;
            indexed_jobs += 1;
        }
    }
    meta.insert(CLOSED_BYTES, total)?;
    meta.insert("format_version", FORMAT_VERSION)?;
    tracing::info!(
        "upgraded the data directory {} from format 2 to {FORMAT_VERSION}: read {} closed batches ({total} bytes) and {read} job records ({indexed_jobs} failed or cancelled)",
        dir.display(),
        infos.len()
    );
    Ok(())
}

/// The bytes of the records of a batch's own jobs: from this commit's
/// writes, else from the table.
fn own_bytes(
    jobs: &redb::Table<'_, u128, &[u8]>,
    written: &HashMap<u128, &[u8]>,
    batch: &BatchId,
    ids: &[u128],
) -> anyhow::Result<u64> {
    let mut sum = 0;
    let mut seen = HashSet::with_capacity(ids.len());
    for job in ids {
        // A batch may name its own job twice (one idempotency key given
        // twice): its record counts once.
        if !seen.insert(job) {
            continue;
        }
        let stored;
        let bytes: &[u8] = match written.get(job) {
            Some(b) => b,
            None => match jobs.get(*job)? {
                Some(v) => {
                    stored = v;
                    stored.value()
                }
                None => continue,
            },
        };
        let header = pb::JobHeader::decode(bytes)
            .map_err(|e| anyhow::anyhow!("job record {job:x} is corrupt: {e}"))?;
        if header.batch == batch.as_bytes() {
            sum += bytes.len() as u64;
        }
    }
    Ok(sum)
}

/// Takes a batch out of the closed ones, if it was: its close-time entry
/// and its jobs' counts and bytes go.
fn unclose(
    closed: &mut redb::Table<'_, u128, &[u8]>,
    by_time: &mut redb::Table<'_, (u64, u128), ()>,
    counts: &mut Closed,
    key: u128,
) -> anyhow::Result<()> {
    let Some(old) = closed.remove(key)? else {
        return Ok(());
    };
    let info = pb::ClosedInfo::decode(old.value())
        .map_err(|e| anyhow::anyhow!("closed batch {key:x} is corrupt: {e}"))?;
    drop(old);
    by_time.remove((info.closed_at_ms, key))?;
    counts.unclose(&info);
    Ok(())
}

/// Splits concatenated 16-byte ids.
fn job_ids(bytes: &[u8]) -> Vec<JobId> {
    bytes
        .chunks_exact(16)
        .map(|c| JobId::from_uuid(Uuid::from_bytes(c.try_into().expect("chunks of 16"))))
        .collect()
}

/// Encodes a batch's job list and the first records of the jobs it created.
pub fn encode_batch(ids: &[JobId], created: Vec<pb::JobRecord>, request_id: &str) -> Vec<u8> {
    let mut job_ids = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        job_ids.extend_from_slice(id.as_bytes());
    }
    pb::BatchRecord {
        job_ids,
        created,
        request_id: request_id.to_string(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Encodes a closed batch: its job list, the order its jobs finished in,
/// and when it closed; no job records (each job's own record has its last
/// state).
pub fn encode_closed_batch(
    ids: &[JobId],
    finished: &[u32],
    request_id: &str,
    closed_at_ms: u64,
) -> Vec<u8> {
    let mut job_ids = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        job_ids.extend_from_slice(id.as_bytes());
    }
    pb::BatchRecord {
        job_ids,
        created: Vec::new(),
        request_id: request_id.to_string(),
        closed_at_ms,
        finished: finished.iter().flat_map(|i| i.to_le_bytes()).collect(),
    }
    .encode_to_vec()
}

/// Decodes a batch record: its jobs, the records of those it created (left
/// encoded), and its submit's request id. The fields are read as prost
/// reads `BatchRecord` (a repeated `job_ids` or `request_id`: the last
/// wins; unknown fields skipped), but each created job's record stays
/// bytes, for recovery to read straight into its job (`state/encode.rs`):
/// a decoded `BatchRecord` made a message and three allocations per job
/// (a quarter of recovering ten million jobs, bench/README.md).
pub fn decode_batch(bytes: &[u8]) -> Result<(Vec<JobId>, CreatedRecords, String), String> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let whole = bytes.len();
    let mut buf = bytes;
    let mut ids: &[u8] = &[];
    let mut spans = Vec::new();
    let mut request_id = "";
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        // closed_at_ms and finished are not needed here, but their wire
        // types are checked as prost checks them.
        let want = match tag {
            1..=3 | 5 => Some(WireType::LengthDelimited),
            4 => Some(WireType::Varint),
            _ => None,
        };
        if want.is_some_and(|w| w != wire_type) {
            return Err(format!("field {tag} has wire type {wire_type:?}"));
        }
        if !(1..=3).contains(&tag) {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?;
            continue;
        }
        let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
        if len > buf.len() as u64 {
            return Err("a field runs past the end of the record".into());
        }
        let (value, rest) = buf.split_at(len as usize);
        match tag {
            1 => ids = value,
            2 => {
                let start = whole - buf.len();
                spans.push((start, start + value.len()));
            }
            // Every copy is checked, as prost checks them; the last wins.
            _ => {
                request_id = std::str::from_utf8(value)
                    .map_err(|_| "its request id is not UTF-8".to_string())?;
            }
        }
        buf = rest;
    }
    if !ids.len().is_multiple_of(16) {
        return Err("its job list is not a whole number of ids".into());
    }
    let request_id = request_id.to_string();
    let created = CreatedRecords {
        bytes: if spans.is_empty() {
            Vec::new()
        } else {
            bytes.to_vec()
        },
        spans,
    };
    Ok((job_ids(ids), created, request_id))
}

/// The records of the jobs a batch created, as its record holds them:
/// still encoded (see [`decode_batch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatedRecords {
    /// The batch record they sit in.
    bytes: Vec<u8>,
    /// Where each record sits in `bytes`, in the record's order.
    spans: Vec<(usize, usize)>,
}

impl CreatedRecords {
    /// How many records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none (a batch reopened keeps its closed record,
    /// which holds no jobs).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each record, encoded, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans
            .iter()
            .map(|&(start, end)| &self.bytes[start..end])
    }

    /// Each record, decoded.
    pub fn decode(&self) -> Result<Vec<pb::JobRecord>, String> {
        self.iter()
            .map(|r| pb::JobRecord::decode(r).map_err(|e| format!("a job record is corrupt: {e}")))
            .collect()
    }

    /// The ids their records name, read without decoding the rest (a
    /// record whose id is not 16 bytes names none).
    pub fn ids(&self) -> Result<Vec<JobId>, String> {
        self.iter()
            .filter_map(|r| record_id(r).transpose())
            .collect()
    }
}

/// The id a job's record names (its field 1, the first one written), or
/// `None` if that is not 16 bytes.
fn record_id(mut record: &[u8]) -> Result<Option<JobId>, String> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut id = None;
    while !record.is_empty() {
        let (tag, wire_type) = decode_key(&mut record).map_err(|e| e.to_string())?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut record).map_err(|e| e.to_string())?;
            if len > record.len() as u64 {
                return Err("a job record's id runs past its end".into());
            }
            let (value, rest) = record.split_at(len as usize);
            id = Some(value);
            record = rest;
        } else {
            skip_field(wire_type, tag, &mut record, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(id.and_then(JobId::from_slice))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the lock file's description (what a process forked
    /// meanwhile holds until its exec) does not keep a dropped store's
    /// directory locked: it opens again at once (the redb model test's
    /// restarts failed now and then, "in use by another master", while
    /// another test spawned processes).
    #[test]
    fn a_dropped_stores_directory_opens_again_while_a_forked_copy_of_its_lock_lives() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_dir(dir.path()).unwrap();
        // SAFETY: dup of a descriptor we own; the copy is owned and closed.
        let copy = unsafe { OwnedFd::from_raw_fd(libc::dup(lock.0.as_raw_fd())) };
        assert!(lock_dir(dir.path()).is_err(), "a held directory is refused");
        drop(lock);
        let again = lock_dir(dir.path());
        assert!(again.is_ok(), "{:#}", again.unwrap_err());
        drop(copy);
    }

    #[test]
    fn writes_survive_reopening_and_a_second_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::new();
        let batch = BatchId::new();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let record = pb::JobRecord {
                id: id.as_bytes().to_vec(),
                batch: batch.as_bytes().to_vec(),
                arg: "20".into(),
                ..Default::default()
            };
            store
                .write(Changes {
                    jobs: vec![JobWrite::of(&record)],
                    batches: vec![(batch, encode_batch(&[id], vec![record], ""))],
                    ..Changes::default()
                })
                .unwrap();
            let second = RedbStore::open(dir.path()).unwrap_err().to_string();
            assert!(second.contains("in use by another master"), "{second}");
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let mut items = Vec::new();
        let created = store
            .load(&mut |item| {
                items.push(item);
                Ok(())
            })
            .unwrap();
        assert!(created > 0);
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[0], Loaded::Batch(b, ids, _, _) if *b == batch && *ids == vec![id])
        );
        assert!(matches!(&items[1], Loaded::Job(r) if r.arg == "20"));
    }

    #[test]
    fn a_closed_batch_is_not_loaded_but_read_on_demand_until_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let (open_batch, closed_batch) = (BatchId::new(), BatchId::new());
        let (queued, done) = (JobId::new(), JobId::new());
        let record = |id: JobId, batch: BatchId, state: pb::JobState| pb::JobRecord {
            id: id.as_bytes().to_vec(),
            batch: batch.as_bytes().to_vec(),
            state: state as i32,
            idempotency_key: format!("key-{id}"),
            ..Default::default()
        };
        let finished = record(done, closed_batch, pb::JobState::Succeeded);
        store
            .write(Changes {
                jobs: vec![JobWrite::of(&finished)],
                batches: vec![
                    (
                        open_batch,
                        encode_batch(
                            &[queued],
                            vec![record(queued, open_batch, pb::JobState::Queued)],
                            "req-open",
                        ),
                    ),
                    (
                        closed_batch,
                        encode_closed_batch(&[done], &[0], "req-closed", 1000),
                    ),
                ],
                closed: vec![(
                    closed_batch,
                    pb::ClosedInfo {
                        closed_at_ms: 1000,
                        succeeded: 1,
                        ..Default::default()
                    },
                )],
                keys: vec![(format!("key-{done}"), done)],
                requests: vec![
                    ("req-open".into(), open_batch),
                    ("req-closed".into(), closed_batch),
                ],
                next_seq: 7,
                ..Changes::default()
            })
            .unwrap();
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        let mut loaded = Vec::new();
        store
            .load(&mut |item| {
                if let Loaded::Batch(id, ..) = item {
                    loaded.push(id);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(
            loaded,
            vec![open_batch],
            "only the open batch is read at start"
        );
        assert_eq!(store.closed_counts().unwrap(), [1, 0, 0]);
        assert_eq!(store.next_seq().unwrap(), 7);
        assert_eq!(
            store.job_by_key(&format!("key-{done}")).unwrap(),
            Some(done)
        );
        assert_eq!(
            store.batch_by_request("req-closed").unwrap(),
            Some(closed_batch)
        );
        let read = store.read_batch(&closed_batch).unwrap().unwrap();
        assert_eq!(
            (read.jobs, read.finished, read.closed_at_ms),
            (vec![done], vec![0], 1000)
        );
        assert_eq!(store.read_job(&done).unwrap(), Some(finished));
        assert_eq!(store.closed_before(1000, 10).unwrap(), vec![]);
        assert_eq!(store.closed_before(1001, 10).unwrap(), vec![closed_batch]);
        store
            .write(Changes {
                deleted_batches: vec![closed_batch],
                ..Changes::default()
            })
            .unwrap();
        assert_eq!(store.read_job(&done).unwrap(), None);
        assert!(store.read_batch(&closed_batch).unwrap().is_none());
        assert_eq!(store.job_by_key(&format!("key-{done}")).unwrap(), None);
        assert_eq!(store.batch_by_request("req-closed").unwrap(), None);
        assert_eq!(store.closed_counts().unwrap(), [0, 0, 0]);
        assert_eq!(store.closed_before(u64::MAX, 10).unwrap(), vec![]);
    }

    /// A scan from a listing's cursor starts after it, by id, in every
    /// table it reads: the jobs, and the index of failed and cancelled ones.
    #[test]
    fn a_scan_after_a_job_starts_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let batch = BatchId::new();
        let states = [
            pb::JobState::Failed,
            pb::JobState::Succeeded,
            pb::JobState::Failed,
            pb::JobState::Cancelled,
            pb::JobState::Succeeded,
            pb::JobState::Failed,
        ];
        let jobs: Vec<(JobId, pb::JobState)> = states.iter().map(|&s| (JobId::new(), s)).collect();
        let records: Vec<pb::JobRecord> = jobs
            .iter()
            .map(|(id, state)| pb::JobRecord {
                id: id.as_bytes().to_vec(),
                batch: batch.as_bytes().to_vec(),
                state: *state as i32,
                ..Default::default()
            })
            .collect();
        store
            .write(Changes {
                jobs: records.iter().map(JobWrite::of).collect(),
                ..Changes::default()
            })
            .unwrap();
        for at in 0..=jobs.len() {
            let after = at.checked_sub(1).map(|i| jobs[i].0);
            for state in [
                None,
                Some(pb::JobState::Failed),
                Some(pb::JobState::Succeeded),
            ] {
                let mut got = Vec::new();
                let mut visit = |r: pb::JobRecord| {
                    got.push(JobId::from_slice(&r.id).unwrap());
                    true
                };
                match state {
                    None => store.scan_jobs(after, &mut visit),
                    Some(state) => store.scan_jobs_in_state(state, after, &mut visit),
                }
                .unwrap();
                let want: Vec<JobId> = jobs[at..]
                    .iter()
                    .filter(|(_, s)| state.is_none_or(|state| *s == state))
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(got, want, "{state:?} after {at}");
            }
        }
    }

    /// What format 2 left on disk for `changes`. Formats 2 and 3 encode
    /// every record alike (3's new fields are proto3 defaults here: closed
    /// batches' `bytes`, jobs' `limits` and `started_at_ms`), so this writes
    /// with the format-3 writer, then takes away what only format 3 writes:
    /// the bytes of each closed batch, their sum and the budget-purge
    /// marker in `meta`, and the `jobs_by_state` table; and marks it 2.
    fn write_format_2(dir: &Path, changes: Changes) {
        RedbStore::open(dir).unwrap().write(changes).unwrap();
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut closed = txn.open_table(CLOSED).unwrap();
            let mut infos = Vec::new();
            for entry in closed.iter().unwrap() {
                let (k, v) = entry.unwrap();
                infos.push((k.value(), pb::ClosedInfo::decode(v.value()).unwrap()));
            }
            for (key, info) in infos {
                let info = pb::ClosedInfo { bytes: 0, ..info };
                closed.insert(key, info.encode_to_vec().as_slice()).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            meta.remove(CLOSED_BYTES).unwrap();
            meta.remove(PURGED_UPTO).unwrap();
            meta.insert("format_version", 2).unwrap();
        }
        assert!(txn.delete_table(BY_STATE).unwrap());
        txn.commit().unwrap();
    }

    /// The entries of the closed batches (id, encoded info) and of the
    /// state index.
    type Indexes = (Vec<(u128, Vec<u8>)>, Vec<(i32, u128)>);

    /// Every entry of the closed batches and the state index.
    fn closed_and_by_state(store: &RedbStore) -> Indexes {
        let txn = store.database().begin_read().unwrap();
        let closed = txn.open_table(CLOSED).unwrap();
        let by_state = txn.open_table(BY_STATE).unwrap();
        let closed = closed
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect();
        let by_state = by_state
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect();
        (closed, by_state)
    }

    #[test]
    fn a_format_2_directory_is_upgraded_in_place_once() {
        let (open_batch, closed_a, closed_b) = (BatchId::new(), BatchId::new(), BatchId::new());
        let [queued, failed_open, done, failed, cancelled, cancelled_b] =
            std::array::from_fn(|_| JobId::new());
        let record = |id: JobId, batch: BatchId, state: pb::JobState| pb::JobRecord {
            id: id.as_bytes().to_vec(),
            batch: batch.as_bytes().to_vec(),
            state: state as i32,
            arg: format!("arg of {id}"),
            error: if state == pb::JobState::Failed {
                "it broke".repeat(20)
            } else {
                String::new()
            },
            ..Default::default()
        };
        use pb::JobState::*;
        let changes = || Changes {
            jobs: [
                (failed_open, open_batch, Failed),
                (done, closed_a, Succeeded),
                (failed, closed_a, Failed),
                (cancelled, closed_a, Cancelled),
                (cancelled_b, closed_b, Cancelled),
            ]
            .into_iter()
            .map(|(id, b, st)| JobWrite::of(&record(id, b, st)))
            .collect(),
            batches: vec![
                (
                    open_batch,
                    encode_batch(
                        &[queued, failed_open],
                        vec![
                            record(queued, open_batch, Queued),
                            record(failed_open, open_batch, Queued),
                        ],
                        "req-open",
                    ),
                ),
                (
                    closed_a,
                    encode_closed_batch(&[done, failed, cancelled], &[0, 1, 2], "req-a", 1000),
                ),
                (
                    closed_b,
                    encode_closed_batch(&[cancelled_b], &[0], "", 2000),
                ),
            ],
            closed: vec![
                (
                    closed_a,
                    pb::ClosedInfo {
                        closed_at_ms: 1000,
                        succeeded: 1,
                        failed: 1,
                        cancelled: 1,
                        ..Default::default()
                    },
                ),
                (
                    closed_b,
                    pb::ClosedInfo {
                        closed_at_ms: 2000,
                        cancelled: 1,
                        ..Default::default()
                    },
                ),
            ],
            requests: vec![("req-open".into(), open_batch), ("req-a".into(), closed_a)],
            next_seq: 9,
            ..Changes::default()
        };
        // The same content written by this build, for what the upgrade
        // must arrive at.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = RedbStore::open(fresh_dir.path()).unwrap();
        fresh.write(changes()).unwrap();
        let want_bytes = fresh.closed_bytes().unwrap();
        assert!(want_bytes > 0);

        let dir = tempfile::tempdir().unwrap();
        write_format_2(dir.path(), changes());
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.closed_bytes().unwrap(), want_bytes);
        assert_eq!(closed_and_by_state(&store), closed_and_by_state(&fresh));
        let in_state = |state| {
            let mut ids = Vec::new();
            store
                .scan_jobs_in_state(state, None, &mut |r| {
                    ids.push(JobId::from_slice(&r.id).unwrap());
                    true
                })
                .unwrap();
            ids.sort_by_key(|id| id.uuid().as_u128());
            ids
        };
        let mut want_failed = vec![failed_open, failed];
        want_failed.sort_by_key(|id| id.uuid().as_u128());
        let mut want_cancelled = vec![cancelled, cancelled_b];
        want_cancelled.sort_by_key(|id| id.uuid().as_u128());
        assert_eq!(in_state(Failed), want_failed);
        assert_eq!(in_state(Cancelled), want_cancelled);
        assert_eq!(store.budget_purged_upto_ms().unwrap(), 0);
        assert_eq!(store.closed_counts().unwrap(), [1, 1, 2]);
        assert_eq!(store.next_seq().unwrap(), 9);
        assert_eq!(store.batch_by_request("req-a").unwrap(), Some(closed_a));
        let loaded = |store: &RedbStore| {
            let mut items = Vec::new();
            store
                .load(&mut |item| {
                    items.push(format!("{item:?}"));
                    Ok(())
                })
                .unwrap();
            items
        };
        let recovered = loaded(&store);
        assert!(
            recovered
                .iter()
                .any(|l| l.contains(&format!("{open_batch:?}"))),
            "{recovered:?}"
        );
        assert_eq!(recovered, loaded(&fresh));
        drop(store);

        // A second open finds format 3 and changes nothing: a stand-in sum
        // put in `meta` survives it (an upgrade run again would recompute).
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 3);
                meta.insert(CLOSED_BYTES, 12345).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.closed_bytes().unwrap(), 12345);
        assert_eq!(closed_and_by_state(&store), closed_and_by_state(&fresh));
    }

    #[test]
    fn format_1_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format_version", 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("older drover (format 1"), "{err}");
    }

    #[test]
    fn refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
