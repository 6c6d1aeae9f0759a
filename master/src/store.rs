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

use std::fs::File;
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
/// Format version and creation time.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The version of the data directory's format this build writes.
pub const FORMAT_VERSION: u64 = 1;

/// The file name of the database inside the data directory.
const DB_FILE: &str = "drover.redb";
/// The file a master holds an exclusive lock on while it runs.
const LOCK_FILE: &str = "LOCK";

/// Changes to write in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// Job records, encoded, to insert or replace.
    pub jobs: Vec<(JobId, Vec<u8>)>,
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
    }
}

/// One item read back at start-up.
#[derive(Debug)]
pub enum Loaded {
    /// A job record.
    Job(Box<pb::JobRecord>),
    /// A batch: its id, its jobs in order, the first records of the jobs
    /// it created, and its submit's request id (or empty).
    Batch(BatchId, Vec<JobId>, Vec<pb::JobRecord>, String),
    /// One commit's assignment log entry: jobs handed out, with their attempt.
    Assigned(Vec<(JobId, u32)>),
}

/// What a store held at start-up, all at once (tests).
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every job record.
    pub jobs: Vec<pb::JobRecord>,
    /// Every batch: its id, its jobs in order, and its jobs' first records.
    pub batches: Vec<(BatchId, Vec<JobId>, Vec<pb::JobRecord>, String)>,
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
    /// Held open for its lock; released when the store is dropped.
    _lock: File,
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

    /// Opens (or creates) the store in `dir`. Refuses, with a message that
    /// says what to do, a directory locked by another master, one written
    /// by a newer drover, or one that is corrupt.
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
fn lock_dir(dir: &Path) -> anyhow::Result<File> {
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
    Ok(file)
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
        // Batches first: their records are the jobs' first state, which the
        // jobs' own records then override.
        let batch_table = txn.open_table(BATCHES)?;
        for entry in batch_table.iter()? {
            let (key, value) = entry?;
            let id = BatchId::from_uuid(Uuid::from_u128(key.value()));
            let (ids, created, request_id) = decode_batch(value.value())
                .map_err(|e| anyhow::anyhow!("batch record {id} is corrupt: {e}"))?;
            sink(Loaded::Batch(id, ids, created, request_id))?;
        }
        let jobs_table = txn.open_table(JOBS)?;
        for entry in jobs_table.iter()? {
            let (key, value) = entry?;
            let record = pb::JobRecord::decode(value.value()).map_err(|e| {
                anyhow::anyhow!(
                    "job record {} is corrupt: {e}",
                    Uuid::from_u128(key.value())
                )
            })?;
            sink(Loaded::Job(Box::new(record)))?;
        }
        let log = txn.open_table(ASSIGNMENTS)?;
        for entry in log.iter()? {
            let (key, value) = entry?;
            let bytes = value.value();
            anyhow::ensure!(
                bytes.len() % 20 == 0,
                "assignment log entry {} is corrupt",
                key.value()
            );
            let list = bytes
                .chunks_exact(20)
                .map(|c| {
                    let id =
                        JobId::from_uuid(Uuid::from_bytes(c[..16].try_into().expect("16 bytes")));
                    (id, u32::from_le_bytes(c[16..].try_into().expect("4 bytes")))
                })
                .collect();
            sink(Loaded::Assigned(list))?;
        }
        Ok(self.created_at_ms)
    }

    fn write(&self, changes: Changes) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut jobs = txn.open_table(JOBS)?;
            for (id, bytes) in &changes.jobs {
                jobs.insert(id.uuid().as_u128(), bytes.as_slice())?;
            }
            for id in &changes.deleted_jobs {
                jobs.remove(id.uuid().as_u128())?;
            }
            let mut batches = txn.open_table(BATCHES)?;
            for (id, bytes) in &changes.batches {
                batches.insert(id.uuid().as_u128(), bytes.as_slice())?;
            }
            for id in &changes.deleted_batches {
                batches.remove(id.uuid().as_u128())?;
            }
            let mut log = txn.open_table(ASSIGNMENTS)?;
            if changes.truncate_log {
                log.retain_in::<u64, _>(..changes.number, |_, _| false)?;
            }
            if !changes.assignments.is_empty() {
                let mut packed = Vec::with_capacity(changes.assignments.len() * 20);
                for (id, attempt) in &changes.assignments {
                    packed.extend_from_slice(id.as_bytes());
                    packed.extend_from_slice(&attempt.to_le_bytes());
                }
                log.insert(changes.number, packed.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
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
    }
    .encode_to_vec()
}

/// Decodes a batch record: its jobs, the records of those it created, and
/// its submit's request id.
pub fn decode_batch(bytes: &[u8]) -> Result<(Vec<JobId>, Vec<pb::JobRecord>, String), String> {
    let record = pb::BatchRecord::decode(bytes).map_err(|e| e.to_string())?;
    if record.job_ids.len() % 16 != 0 {
        return Err("its job list is not a whole number of ids".into());
    }
    let ids = record
        .job_ids
        .chunks_exact(16)
        .map(|c| JobId::from_uuid(Uuid::from_bytes(c.try_into().expect("chunks of 16"))))
        .collect();
    Ok((ids, record.created, record.request_id))
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

    #[test]
    fn writes_survive_reopening_and_a_second_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::new();
        let batch = BatchId::new();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let record = pb::JobRecord {
                id: id.as_bytes().to_vec(),
                arg: "20".into(),
                ..Default::default()
            };
            store
                .write(Changes {
                    jobs: vec![(id, record.encode_to_vec())],
                    batches: vec![(batch, encode_batch(&[id], vec![], ""))],
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
    fn refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
