//! How the coordination state is kept: one record per key, counter, set
//! event, session and grant, plus one meta record (the last version, the
//! last fencing token, the next session id), in a redb table of the
//! master's own database; and the [`Writer`] that group-commits them.
//!
//! Record keys start with a letter naming their kind (`k` key, `c`
//! counter, `e` event, `s` session, `g` grant, `m` meta); values are small
//! fixed layouts, little-endian.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use drover_common::pb;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::state::CoordState;
use crate::committer::CommitState;
use crate::store::Store;

/// One stored record of the coordination state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A key's value and version.
    Kv {
        /// The key.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// Its version.
        version: u64,
    },
    /// A counter.
    Counter {
        /// Its name.
        name: String,
        /// Its value.
        value: i64,
    },
    /// An event that is set (a clear one has no record).
    Event {
        /// Its name.
        name: String,
    },
    /// An open session.
    Session {
        /// Its id.
        id: u64,
        /// Its lease.
        lease_ms: u64,
        /// Who holds it.
        owner: String,
    },
    /// A permit held.
    Grant {
        /// Its fencing token.
        token: u64,
        /// The session holding it.
        session: u64,
        /// The semaphore's size.
        permits: u32,
        /// The lock's name.
        name: String,
    },
    /// The numbers that must never go back.
    Meta {
        /// The last key-value version.
        revision: u64,
        /// The last fencing token.
        token: u64,
        /// The next session id.
        next_session: u64,
    },
}

/// The store key of a record.
pub(crate) fn record_key(record: &Record) -> String {
    match record {
        Record::Kv { key, .. } => format!("k{key}"),
        Record::Counter { name, .. } => format!("c{name}"),
        Record::Event { name } => format!("e{name}"),
        Record::Session { id, .. } => format!("s{id:016x}"),
        Record::Grant { token, .. } => format!("g{token:016x}"),
        Record::Meta { .. } => "m".to_string(),
    }
}

impl Record {
    /// The stored value of a record (its key holds the rest).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Record::Kv { value, version, .. } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(value);
            }
            Record::Counter { value, .. } => out.extend_from_slice(&value.to_le_bytes()),
            Record::Event { .. } => {}
            Record::Session {
                lease_ms, owner, ..
            } => {
                out.extend_from_slice(&lease_ms.to_le_bytes());
                out.extend_from_slice(owner.as_bytes());
            }
            Record::Grant {
                session,
                permits,
                name,
                ..
            } => {
                out.extend_from_slice(&session.to_le_bytes());
                out.extend_from_slice(&permits.to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            Record::Meta {
                revision,
                token,
                next_session,
            } => {
                for n in [revision, token, next_session] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }

    /// Reads a record back from its key and value.
    pub fn decode(key: &str, value: &[u8]) -> Result<Record, String> {
        let u64_at = |at: usize| -> Result<u64, String> {
            value
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| format!("record {key:?} is too short"))
        };
        let text = |at: usize| -> Result<String, String> {
            String::from_utf8(value.get(at..).unwrap_or_default().to_vec())
                .map_err(|_| format!("record {key:?} holds a name that is not UTF-8"))
        };
        let id =
            |s: &str| u64::from_str_radix(s, 16).map_err(|_| format!("bad record key {key:?}"));
        let (kind, rest) = key.split_at(key.len().min(1));
        Ok(match kind {
            "k" => Record::Kv {
                key: rest.to_string(),
                version: u64_at(0)?,
                value: value[8..].to_vec(),
            },
            "c" => Record::Counter {
                name: rest.to_string(),
                value: u64_at(0)? as i64,
            },
            "e" => Record::Event {
                name: rest.to_string(),
            },
            "s" => Record::Session {
                id: id(rest)?,
                lease_ms: u64_at(0)?,
                owner: text(8)?,
            },
            "g" => Record::Grant {
                token: id(rest)?,
                session: u64_at(0)?,
                permits: value
                    .get(8..12)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| format!("record {key:?} is too short"))?,
                name: text(12)?,
            },
            "m" => Record::Meta {
                revision: u64_at(0)?,
                token: u64_at(8)?,
                next_session: u64_at(16)?,
            },
            _ => return Err(format!("unknown record key {key:?}")),
        })
    }
}

/// Where the coordination records are kept: a durable store implements it
/// next to its job records (see [`Store::coord`]).
pub trait CoordStore: Send + Sync {
    /// Reads every record back at start-up.
    fn load_coord(&self, sink: &mut dyn FnMut(Record)) -> anyhow::Result<()>;
    /// Writes and deletes (`None`) records in one durable transaction.
    fn write_coord(&self, records: HashMap<String, Option<Vec<u8>>>) -> anyhow::Result<()>;
}

/// The redb table of the coordination records.
const COORD: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("coord");

impl CoordStore for crate::store::RedbStore {
    fn load_coord(&self, sink: &mut dyn FnMut(Record)) -> anyhow::Result<()> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.database().begin_read()?;
        let table = match txn.open_table(COORD) {
            Ok(t) => t,
            // A store written before the service existed.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in table.iter()? {
            let (key, value) = entry?;
            let record = Record::decode(key.value(), value.value())
                .map_err(|e| anyhow::anyhow!("coordination {e}: the store is corrupt"))?;
            sink(record);
        }
        Ok(())
    }

    /// One redb transaction with the default durability: a 1-phase commit,
    /// one fdatasync (the job store's commits set quick repair, which
    /// makes them 2-phase: two). That fdatasync is most of a coordination
    /// call's latency (bench/README.md, "Where the time goes: coord").
    /// Without quick repair the commit drops the allocator snapshot the
    /// job commits save, so a master killed right after a coordination
    /// commit repairs the whole file when it opens again.
    fn write_coord(&self, records: HashMap<String, Option<Vec<u8>>>) -> anyhow::Result<()> {
        let txn = self.database().begin_write()?;
        {
            let mut table = txn.open_table(COORD)?;
            for (key, value) in &records {
                match value {
                    Some(v) => table.insert(key.as_str(), v.as_slice())?,
                    None => table.remove(key.as_str())?,
                };
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Writes the coordination changes, in order, one commit at a time.
///
/// A request whose change is not yet durable and finds no write under way
/// writes the commit itself, on its own thread ([`Writer::try_write`]):
/// everything changed so far, its own change and every other, in one
/// transaction. Requests that find a write under way wait for it to be
/// announced, then the first of them to find the writer free writes what
/// gathered meanwhile, so the group commit needs no thread between a
/// request and its commit, and an uncontended call pays for no wake-ups of
/// other threads. Changes no request waits for (a lease that ran out, a
/// grant given back by a call that ended) are written by the committer
/// thread ([`start_committer`]) when kicked, and within
/// [`ORPHANS_WRITTEN_WITHIN`] whatever happens.
pub(crate) struct Writer {
    state: Arc<Mutex<CoordState>>,
    store: Arc<dyn Store>,
    /// Held while one commit is taken from the state and written, so
    /// commits are written in the order of their numbers.
    writing: Mutex<()>,
    done: watch::Sender<CommitState>,
    events: broadcast::Sender<Arc<pb::KvEvent>>,
    kicks: std::sync::mpsc::Sender<()>,
    shutdown: CancellationToken,
}

/// The longest a change no request waits for stays unwritten.
pub(crate) const ORPHANS_WRITTEN_WITHIN: Duration = Duration::from_millis(100);

impl Writer {
    /// A writer of `state`'s changes to `store`, which must keep
    /// coordination records; with the receiver of its kicks, for
    /// [`start_committer`].
    pub(crate) fn new(
        state: Arc<Mutex<CoordState>>,
        store: Arc<dyn Store>,
        events: broadcast::Sender<Arc<pb::KvEvent>>,
        shutdown: CancellationToken,
    ) -> (Arc<Writer>, Receiver<()>) {
        assert!(
            store.coord().is_some(),
            "a durable store keeps coordination records"
        );
        let (kicks, rx) = std::sync::mpsc::channel();
        let (done, _) = watch::channel(CommitState::default());
        let writer = Writer {
            state,
            store,
            writing: Mutex::new(()),
            done,
            events,
            kicks,
            shutdown,
        };
        (Arc::new(writer), rx)
    }

    /// The store written to.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What has been written, to wait on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<CommitState> {
        self.done.subscribe()
    }

    /// Asks the committer thread to write changes no request waits for.
    pub(crate) fn kick(&self) {
        let _ = self.kicks.send(());
    }

    /// Writes everything changed so far here, unless a write is under way
    /// (then returns false, and the caller waits for its announcement).
    /// On a multi-threaded runtime the worker's other tasks move to
    /// another thread for the write.
    pub(crate) fn try_write(&self) -> bool {
        let Some(guard) = self.writing.try_lock() else {
            return false;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.write(guard))
            }
            _ => self.write(guard),
        }
        true
    }

    /// Writes everything changed so far, after any write under way.
    fn write_waiting(&self) {
        self.write(self.writing.lock());
    }

    /// Takes the changes and writes them, holding `guard` of `writing`.
    /// The commit is announced after the guard is dropped, so a request
    /// that found the writer busy and waits for this announcement finds it
    /// free when it wakes. A failed write stops the master (as the job
    /// committer does): nothing after it is written or acknowledged.
    fn write(&self, guard: parking_lot::MutexGuard<'_, ()>) {
        if self.done.borrow().failed.is_some() {
            return;
        }
        let taken = self.state.lock().take_changes();
        let mut number = None;
        if let Some((n, dirty)) = taken {
            let coord = self.store.coord().expect("checked in Writer::new");
            match coord.write_coord(dirty.records) {
                Ok(()) => {
                    // In commit order: the next write waits for the guard.
                    for e in dirty.events {
                        let _ = self.events.send(Arc::new(e));
                    }
                    number = Some(n);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "coordination store write failed; stopping the master");
                    self.done
                        .send_modify(|s| s.failed = Some(Arc::from(format!("{e:#}"))));
                    self.shutdown.cancel();
                    return;
                }
            }
        }
        drop(guard);
        // Announced even when nothing was taken (another write took this
        // caller's change): a waiter may be waiting for the writer to be free.
        // A later commit may be announced first; the number never goes back.
        self.done.send_modify(|s| {
            if let Some(n) = number {
                s.committed = s.committed.max(n);
            }
        });
    }
}

/// Starts the thread that writes the changes no request waits for: when
/// kicked, and every [`ORPHANS_WRITTEN_WITHIN`] if any are left; at
/// shutdown it writes what is left and returns.
pub(crate) fn start_committer(
    writer: Arc<Writer>,
    kicks: Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("drover-coord-committer".into())
        .spawn(move || {
            loop {
                let stopping = match kicks.recv_timeout(ORPHANS_WRITTEN_WITHIN) {
                    Ok(()) => false,
                    Err(RecvTimeoutError::Timeout) => writer.shutdown.is_cancelled(),
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                while kicks.try_recv().is_ok() {}
                if writer.state.lock().has_changes() {
                    writer.write_waiting();
                }
                if stopping || writer.done.borrow().failed.is_some() {
                    return;
                }
            }
        })
        .expect("the coordination committer thread starts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let records = [
            Record::Kv {
                key: "a/b".into(),
                value: b"x".to_vec(),
                version: 7,
            },
            Record::Counter {
                name: "n".into(),
                value: -3,
            },
            Record::Event { name: "go".into() },
            Record::Session {
                id: 42,
                lease_ms: 1000,
                owner: "host:1".into(),
            },
            Record::Grant {
                token: 9,
                session: 42,
                permits: 4,
                name: "db".into(),
            },
            Record::Meta {
                revision: 7,
                token: 9,
                next_session: 43,
            },
        ];
        for r in records {
            assert_eq!(Record::decode(&record_key(&r), &r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn records_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record::Counter {
            name: "n".into(),
            value: 5,
        };
        {
            let store = crate::store::RedbStore::open(dir.path()).unwrap();
            let mut found = Vec::new();
            store.load_coord(&mut |r| found.push(r)).unwrap();
            assert!(found.is_empty());
            store
                .write_coord(HashMap::from([(record_key(&r), Some(r.encode()))]))
                .unwrap();
        }
        let store = crate::store::RedbStore::open(dir.path()).unwrap();
        let mut found = Vec::new();
        store.load_coord(&mut |r| found.push(r)).unwrap();
        assert_eq!(found, vec![r]);
    }
}
