//! How the coordination state is kept: one record per key, counter, set
//! event, session and grant, plus one meta record (the last version, the
//! last fencing token, the next session id), in a redb table of the
//! master's own database; and the thread that group-commits them.
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

    /// One redb transaction with quick repair, as the job store's commits:
    /// without it the commit drops the allocator snapshot the job commits
    /// save, and a master killed right after a coordination commit repairs
    /// the whole file when it opens again (measured: 1.3 s instead of 0.5 s
    /// after 5 million finished jobs, growing with the file), which breaks
    /// the promise that a restart does not slow down with history. Quick
    /// repair makes the commit 2-phase, two fdatasyncs where one would do:
    /// most of a coordination call's latency (bench/README.md, "Where the
    /// time goes: coord").
    fn write_coord(&self, records: HashMap<String, Option<Vec<u8>>>) -> anyhow::Result<()> {
        let mut txn = self.database().begin_write()?;
        txn.set_quick_repair(true);
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

/// Starts the thread that writes the coordination changes, many requests
/// to one transaction, then announces the commit and its key-value events.
/// A failed write stops the master, as the job committer does.
pub(crate) fn start_committer(
    state: Arc<Mutex<CoordState>>,
    store: Arc<dyn Store>,
    kicks: Receiver<()>,
    done: watch::Sender<CommitState>,
    events: broadcast::Sender<Arc<pb::KvEvent>>,
    shutdown: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("drover-coord-committer".into())
        .spawn(move || {
            let coord = store
                .coord()
                .expect("a durable store keeps coordination records");
            loop {
                let stopping = match kicks.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) => false,
                    Err(RecvTimeoutError::Timeout) => shutdown.is_cancelled(),
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                while kicks.try_recv().is_ok() {}
                let taken = state.lock().take_changes();
                if let Some((number, dirty)) = taken {
                    match coord.write_coord(dirty.records) {
                        Ok(()) => {
                            done.send_modify(|s| s.committed = number);
                            for e in dirty.events {
                                let _ = events.send(Arc::new(e));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "coordination store write failed; stopping the master");
                            done.send_modify(|s| s.failed = Some(Arc::from(format!("{e:#}"))));
                            shutdown.cancel();
                            return;
                        }
                    }
                }
                if stopping {
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
