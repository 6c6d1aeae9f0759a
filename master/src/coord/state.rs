//! The coordination state: key-value entries, counters, events, sessions,
//! lock grants and their waiters, and barriers. Pure: no I/O and no await;
//! the service locks it, changes it, and waits for the change's commit
//! after the lock is released.
//!
//! Every durable change is recorded in [`Dirty`] under its record key (see
//! [`super::persist`]) and gets a ticket, the number of the commit that
//! will hold it, as the queue's state does.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use drover_common::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;

use super::persist::{Record, record_key};

/// What the service accepts; every refusal names the field and the limit.
#[derive(Debug, Clone, Copy)]
pub struct CoordLimits {
    /// The longest name of a key, counter, lock, event or barrier.
    pub max_name_bytes: usize,
    /// The largest value of a key.
    pub max_value_bytes: usize,
    /// The most keys set at once.
    pub max_keys: usize,
    /// The most counters at once.
    pub max_counters: usize,
    /// The most sessions open at once.
    pub max_sessions: usize,
    /// The most waiters of one lock, event or barrier.
    pub max_waiters: usize,
    /// The most locks and semaphores held or waited for at once.
    pub max_locks: usize,
    /// The largest semaphore.
    pub max_permits: u32,
}

impl Default for CoordLimits {
    fn default() -> Self {
        CoordLimits {
            max_name_bytes: 256,
            max_value_bytes: 1 << 20,
            max_keys: 1_000_000,
            max_counters: 1_000_000,
            max_sessions: 100_000,
            max_waiters: 10_000,
            max_locks: 100_000,
            max_permits: 100_000,
        }
    }
}

/// The lease of a session that does not ask for one.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The shortest and longest lease a session may ask for.
pub(crate) const LEASE_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// The longest timeout of a wait.
pub(crate) const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// The most bytes of values in one list page.
const LIST_PAGE_BYTES: usize = 1 << 20;

/// A grant handed to a waiter: its fencing token and the commit that holds it.
pub(crate) type Granted = (u64, Option<u64>);
/// What a barrier tells a waiting party: its index, or why it broke.
pub(crate) type BarrierOutcome = Result<u32, String>;

/// Durable changes not yet taken by the committer, by record key
/// (`None`: delete).
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    /// Records to write or delete.
    pub(crate) records: HashMap<String, Option<Vec<u8>>>,
    /// Key-value changes to announce to watchers once committed.
    pub(crate) events: Vec<pb::KvEvent>,
}

struct Entry {
    value: Vec<u8>,
    version: u64,
}

struct Session {
    lease: Duration,
    deadline: Instant,
    owner: String,
    /// Fencing tokens of the grants it holds.
    grants: HashSet<u64>,
}

impl Session {
    fn new(lease: Duration, owner: String, now: Instant) -> Session {
        Session {
            lease,
            deadline: now + lease,
            owner,
            grants: HashSet::new(),
        }
    }
}

struct Waiter {
    id: u64,
    session: u64,
    tx: oneshot::Sender<Granted>,
}

struct Semaphore {
    permits: u32,
    /// Fencing tokens of the grants held now.
    holders: HashSet<u64>,
    waiters: VecDeque<Waiter>,
}

struct Grant {
    name: String,
    session: u64,
}

#[derive(Default)]
struct Event {
    set: bool,
    waiters: Vec<oneshot::Sender<Option<u64>>>,
}

struct Party {
    id: u64,
    session: u64,
    tx: oneshot::Sender<BarrierOutcome>,
}

struct Barrier {
    parties: u32,
    arrived: Vec<Party>,
}

/// The outcome of an acquire that was not granted at once.
pub(crate) enum Acquired {
    /// Granted now: the token and its ticket.
    Now(Granted),
    /// Queued: the waiter's id, and where the grant will arrive.
    Queued(u64, oneshot::Receiver<Granted>),
}

/// The coordination state of one master.
pub(crate) struct CoordState {
    limits: CoordLimits,
    durable: bool,
    kv: BTreeMap<String, Entry>,
    /// The version of the last key-value change.
    revision: u64,
    counters: HashMap<String, i64>,
    events: HashMap<String, Event>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    semaphores: HashMap<String, Semaphore>,
    grants: HashMap<u64, Grant>,
    /// The last fencing token handed out.
    token: u64,
    barriers: HashMap<String, Barrier>,
    /// Ids of waiters and barrier parties.
    next_waiter: u64,
    dirty: Dirty,
    /// The number of the commit being filled.
    commit: u64,
    /// Wakes the committer when the state turns dirty.
    kick: Option<std::sync::mpsc::Sender<()>>,
}

/// Checks a name (`field` says which) against the limits.
pub(crate) fn check_name(field: &str, name: &str, limits: &CoordLimits) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if name.len() > limits.max_name_bytes {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes is over the limit of {}",
            name.len(),
            limits.max_name_bytes
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{field}: holds the control character {c:?}; names are printable UTF-8"
        )));
    }
    Ok(())
}

/// Checks a wait's timeout.
pub(crate) fn check_timeout(timeout_ms: Option<u64>) -> Result<Option<Duration>, Status> {
    match timeout_ms {
        Some(ms) if ms > MAX_TIMEOUT_MS => Err(Status::invalid_argument(format!(
            "timeout_ms: {ms} is over the limit of {MAX_TIMEOUT_MS} (7 days)"
        ))),
        t => Ok(t.map(Duration::from_millis)),
    }
}

fn exhausted(what: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!("{what}: the limit of {limit} is reached"))
}

fn session_gone(session: u64) -> Status {
    Status::not_found(format!(
        "session {session} is not open: it was closed, or it expired and its grants were released"
    ))
}

impl CoordState {
    /// An empty state; `durable` says whether changes get tickets.
    pub(crate) fn new(limits: CoordLimits, durable: bool) -> Self {
        CoordState {
            limits,
            durable,
            kv: BTreeMap::new(),
            revision: 0,
            counters: HashMap::new(),
            events: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            semaphores: HashMap::new(),
            grants: HashMap::new(),
            token: 0,
            barriers: HashMap::new(),
            next_waiter: 1,
            dirty: Dirty::default(),
            commit: 1,
            kick: None,
        }
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> &CoordLimits {
        &self.limits
    }

    /// Sets the channel that wakes the committer.
    pub(crate) fn set_kick(&mut self, kick: std::sync::mpsc::Sender<()>) {
        self.kick = Some(kick);
    }

    // ---- recovery and commits ----

    /// Takes one record read back from the store. Sessions get a whole
    /// lease from `now`: their holders had no way to renew while the
    /// master was down.
    pub(crate) fn recover(&mut self, record: Record, now: Instant) {
        match record {
            Record::Kv {
                key,
                value,
                version,
            } => {
                self.kv.insert(key, Entry { value, version });
            }
            Record::Counter { name, value } => {
                self.counters.insert(name, value);
            }
            Record::Event { name } => {
                self.events.entry(name).or_default().set = true;
            }
            Record::Session {
                id,
                lease_ms,
                owner,
            } => {
                let lease = Duration::from_millis(lease_ms);
                self.sessions.insert(id, Session::new(lease, owner, now));
            }
            Record::Grant {
                token,
                session,
                permits,
                name,
            } => {
                self.semaphores
                    .entry(name.clone())
                    .or_insert_with(|| Semaphore {
                        permits,
                        holders: HashSet::new(),
                        waiters: VecDeque::new(),
                    })
                    .holders
                    .insert(token);
                self.grants.insert(token, Grant { name, session });
            }
            Record::Meta {
                revision,
                token,
                next_session,
            } => {
                self.revision = revision;
                self.token = token;
                self.next_session = next_session;
            }
        }
    }

    /// Ties the recovered grants to their sessions; a grant whose session
    /// record is missing is released.
    pub(crate) fn finish_recovery(&mut self) {
        let grants: Vec<(u64, u64)> = self.grants.iter().map(|(t, g)| (*t, g.session)).collect();
        for (token, session) in grants {
            match self.sessions.get_mut(&session) {
                Some(s) => {
                    s.grants.insert(token);
                }
                None => {
                    self.release_token(token);
                }
            }
        }
        // Semaphore sizes come with each grant; these counts come from the
        // tables, and a key's version never exceeds the revision.
        self.revision = self
            .revision
            .max(self.kv.values().map(|e| e.version).max().unwrap_or(0));
        self.token = self
            .token
            .max(self.grants.keys().copied().max().unwrap_or(0));
    }

    /// How many items were recovered: (keys, counters, sessions, grants).
    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.kv.len(),
            self.counters.len(),
            self.sessions.len(),
            self.grants.len(),
        )
    }

    /// Records a durable change and returns its ticket.
    fn put_record(&mut self, key: String, value: Option<Vec<u8>>) {
        if !self.durable {
            return;
        }
        if self.dirty.records.is_empty()
            && let Some(kick) = &self.kick
        {
            let _ = kick.send(());
        }
        self.dirty.records.insert(key, value);
    }

    /// The ticket of every change made so far.
    fn ticket(&self) -> Option<u64> {
        self.durable.then_some(self.commit)
    }

    /// The commit that holds everything visible now, including a commit
    /// still being written: a read replies once it is done.
    pub(crate) fn visible(&self) -> Option<u64> {
        if !self.durable {
            None
        } else if self.dirty.records.is_empty() {
            Some(self.commit - 1)
        } else {
            Some(self.commit)
        }
    }

    fn put_meta(&mut self) {
        let meta = Record::Meta {
            revision: self.revision,
            token: self.token,
            next_session: self.next_session,
        };
        self.put_record(record_key(&meta), Some(meta.encode()));
    }

    /// Takes what changed since the last commit, with the commit's number.
    pub(crate) fn take_changes(&mut self) -> Option<(u64, Dirty)> {
        if self.dirty.records.is_empty() {
            return None;
        }
        let number = self.commit;
        self.commit += 1;
        Some((number, std::mem::take(&mut self.dirty)))
    }

    /// Takes the key-value events of changes (a store that keeps nothing
    /// announces them at once).
    pub(crate) fn take_events(&mut self) -> Vec<pb::KvEvent> {
        std::mem::take(&mut self.dirty.events)
    }

    // ---- key-value ----

    /// Reads a key.
    pub(crate) fn kv_get(&self, key: &str) -> Result<Option<pb::KvEntry>, Status> {
        check_name("key", key, &self.limits)?;
        Ok(self.kv.get(key).map(|e| pb::KvEntry {
            key: key.to_string(),
            value: e.value.clone(),
            version: e.version,
        }))
    }

    /// Writes a key, if its version is `expected` when one is given.
    /// Returns whether it was written, the key's version, and the ticket.
    pub(crate) fn kv_put(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<(bool, u64, Option<u64>), Status> {
        check_name("key", &key, &self.limits)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value: {} bytes is over the limit of {}",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        let current = self.kv.get(&key).map_or(0, |e| e.version);
        if expected.is_some_and(|v| v != current) {
            return Ok((false, current, None));
        }
        if current == 0 && self.kv.len() >= self.limits.max_keys {
            return Err(exhausted("keys", self.limits.max_keys));
        }
        self.revision += 1;
        let version = self.revision;
        let record = Record::Kv {
            key: key.clone(),
            value: value.clone(),
            version,
        };
        self.put_record(record_key(&record), Some(record.encode()));
        self.put_meta();
        self.dirty.events.push(pb::KvEvent {
            key: key.clone(),
            value: value.clone(),
            version,
            deleted: false,
        });
        self.kv.insert(key, Entry { value, version });
        Ok((true, version, self.ticket()))
    }

    /// Deletes a key, if its version is `expected` when one is given.
    pub(crate) fn kv_delete(
        &mut self,
        key: &str,
        expected: Option<u64>,
    ) -> Result<(bool, u64, Option<u64>), Status> {
        check_name("key", key, &self.limits)?;
        let current = self.kv.get(key).map_or(0, |e| e.version);
        if current == 0 || expected.is_some_and(|v| v != current) {
            return Ok((false, current, None));
        }
        self.kv.remove(key);
        self.revision += 1;
        let record = Record::Kv {
            key: key.to_string(),
            value: Vec::new(),
            version: 0,
        };
        self.put_record(record_key(&record), None);
        self.put_meta();
        self.dirty.events.push(pb::KvEvent {
            key: key.to_string(),
            value: Vec::new(),
            version: self.revision,
            deleted: true,
        });
        Ok((true, 0, self.ticket()))
    }

    /// Lists keys under `prefix` after `start_after`, at most `limit`
    /// entries and about a megabyte of values.
    pub(crate) fn kv_list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<pb::KvEntry>, bool), Status> {
        if prefix.len() > self.limits.max_name_bytes {
            return Err(Status::invalid_argument(format!(
                "prefix: {} bytes is over the limit of {}",
                prefix.len(),
                self.limits.max_name_bytes
            )));
        }
        let limit = if limit == 0 { 1000 } else { limit.min(10_000) } as usize;
        let start = if start_after.is_empty() || start_after < prefix {
            std::ops::Bound::Included(prefix.to_string())
        } else {
            std::ops::Bound::Excluded(start_after.to_string())
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (key, e) in self
            .kv
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if out.len() == limit || (!out.is_empty() && bytes + e.value.len() > LIST_PAGE_BYTES) {
                return Ok((out, true));
            }
            bytes += e.value.len() + key.len();
            out.push(pb::KvEntry {
                key: key.clone(),
                value: e.value.clone(),
                version: e.version,
            });
        }
        Ok((out, false))
    }

    // ---- counters ----

    /// Adds to a counter (a missing one is 0); returns the new value.
    pub(crate) fn counter_add(
        &mut self,
        name: String,
        delta: i64,
    ) -> Result<(i64, Option<u64>), Status> {
        check_name("name", &name, &self.limits)?;
        let current = self.counters.get(&name).copied();
        let value = current.unwrap_or(0).checked_add(delta).ok_or_else(|| {
            Status::out_of_range(format!(
                "counter {name}: {} + {delta} overflows a signed 64-bit integer",
                current.unwrap_or(0)
            ))
        })?;
        self.counter_set(name, value)
    }

    /// Sets a counter.
    pub(crate) fn counter_set(
        &mut self,
        name: String,
        value: i64,
    ) -> Result<(i64, Option<u64>), Status> {
        check_name("name", &name, &self.limits)?;
        if !self.counters.contains_key(&name) && self.counters.len() >= self.limits.max_counters {
            return Err(exhausted("counters", self.limits.max_counters));
        }
        let record = Record::Counter {
            name: name.clone(),
            value,
        };
        self.put_record(record_key(&record), Some(record.encode()));
        self.counters.insert(name, value);
        Ok((value, self.ticket()))
    }

    /// Reads a counter (a missing one is 0).
    pub(crate) fn counter_get(&self, name: &str) -> Result<i64, Status> {
        check_name("name", name, &self.limits)?;
        Ok(self.counters.get(name).copied().unwrap_or(0))
    }

    // ---- sessions ----

    /// Opens a session with a lease.
    pub(crate) fn open_session(
        &mut self,
        lease_ms: u64,
        owner: String,
        now: Instant,
    ) -> Result<(u64, Duration, Option<u64>), Status> {
        let lease_ms = if lease_ms == 0 {
            DEFAULT_LEASE.as_millis() as u64
        } else {
            lease_ms
        };
        if !LEASE_RANGE.contains(&lease_ms) {
            return Err(Status::invalid_argument(format!(
                "lease_ms: {lease_ms} is outside the range {}..={}",
                LEASE_RANGE.start(),
                LEASE_RANGE.end()
            )));
        }
        if owner.len() > self.limits.max_name_bytes {
            return Err(Status::invalid_argument(format!(
                "owner: {} bytes is over the limit of {}",
                owner.len(),
                self.limits.max_name_bytes
            )));
        }
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(exhausted("sessions", self.limits.max_sessions));
        }
        let id = self.next_session;
        self.next_session += 1;
        let lease = Duration::from_millis(lease_ms);
        let record = Record::Session {
            id,
            lease_ms,
            owner: owner.clone(),
        };
        self.put_record(record_key(&record), Some(record.encode()));
        self.put_meta();
        self.sessions.insert(id, Session::new(lease, owner, now));
        Ok((id, lease, self.ticket()))
    }

    /// Renews a session's lease.
    pub(crate) fn keep_alive(&mut self, session: u64, now: Instant) -> Result<Duration, Status> {
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or_else(|| session_gone(session))?;
        s.deadline = now + s.lease;
        Ok(s.lease)
    }

    /// Ends a session: its grants are released (and handed to waiters),
    /// its waits fail, and the barriers it waits at break. Returns how
    /// many grants it held and the ticket, or `None` if it was not open.
    pub(crate) fn end_session(&mut self, session: u64, why: &str) -> Option<(u32, Option<u64>)> {
        let s = self.sessions.remove(&session)?;
        let record = Record::Session {
            id: session,
            lease_ms: 0,
            owner: String::new(),
        };
        self.put_record(record_key(&record), None);
        let released = s.grants.len() as u32;
        for token in s.grants {
            self.release_token(token);
        }
        // Its waiters get nothing: dropping their senders ends their waits.
        let mut emptied = Vec::new();
        for (name, sem) in &mut self.semaphores {
            sem.waiters.retain(|w| w.session != session);
            if sem.holders.is_empty() && sem.waiters.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.semaphores.remove(&name);
        }
        let broken: Vec<String> = self
            .barriers
            .iter()
            .filter(|(_, b)| b.arrived.iter().any(|p| p.session == session))
            .map(|(n, _)| n.clone())
            .collect();
        for name in broken {
            self.break_barrier(
                &name,
                &format!(
                    "barrier {name} is broken: a party's session {session} ({}) ended: {why}",
                    s.owner
                ),
            );
        }
        Some((released, self.ticket()))
    }

    /// Ends the sessions whose lease has run out; returns their ids.
    pub(crate) fn expire_sessions(&mut self, now: Instant) -> Vec<(u64, String)> {
        let expired: Vec<(u64, String)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, s)| (*id, s.owner.clone()))
            .collect();
        for (id, _) in &expired {
            self.end_session(*id, "its lease expired");
        }
        expired
    }

    // ---- locks and semaphores ----

    /// Takes a permit of `name` for `session`, or queues the caller.
    pub(crate) fn acquire(
        &mut self,
        name: String,
        permits: u32,
        session: u64,
    ) -> Result<Acquired, Status> {
        check_name("name", &name, &self.limits)?;
        let permits = permits.max(1);
        if permits > self.limits.max_permits {
            return Err(Status::invalid_argument(format!(
                "permits: {permits} is over the limit of {}",
                self.limits.max_permits
            )));
        }
        if !self.sessions.contains_key(&session) {
            return Err(session_gone(session));
        }
        if !self.semaphores.contains_key(&name) && self.semaphores.len() >= self.limits.max_locks {
            return Err(exhausted("locks", self.limits.max_locks));
        }
        let max_waiters = self.limits.max_waiters;
        let sem = self
            .semaphores
            .entry(name.clone())
            .or_insert_with(|| Semaphore {
                permits,
                holders: HashSet::new(),
                waiters: VecDeque::new(),
            });
        if sem.permits != permits {
            return Err(Status::failed_precondition(format!(
                "lock {name} is a semaphore of {} permits, not {permits}: every holder must agree",
                sem.permits
            )));
        }
        if (sem.holders.len() as u32) < permits && sem.waiters.is_empty() {
            return Ok(Acquired::Now(self.grant(&name, session)));
        }
        if sem.waiters.len() >= max_waiters {
            return Err(Status::resource_exhausted(format!(
                "waiters of lock {name}: the limit of {max_waiters} is reached"
            )));
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        sem.waiters.push_back(Waiter { id, session, tx });
        Ok(Acquired::Queued(id, rx))
    }

    /// Makes a grant: a new fencing token, durable with its session.
    fn grant(&mut self, name: &str, session: u64) -> Granted {
        self.token += 1;
        let token = self.token;
        let sem = self.semaphores.get_mut(name).expect("the semaphore exists");
        sem.holders.insert(token);
        let record = Record::Grant {
            token,
            session,
            permits: sem.permits,
            name: name.to_string(),
        };
        self.put_record(record_key(&record), Some(record.encode()));
        self.put_meta();
        self.grants.insert(
            token,
            Grant {
                name: name.to_string(),
                session,
            },
        );
        if let Some(s) = self.sessions.get_mut(&session) {
            s.grants.insert(token);
        }
        (token, self.ticket())
    }

    /// Gives a permit back, checking it is held under that name.
    pub(crate) fn release(
        &mut self,
        name: &str,
        token: u64,
        session: Option<u64>,
    ) -> Result<Option<u64>, Status> {
        check_name("name", name, &self.limits)?;
        match self.grants.get(&token) {
            Some(g) if g.name == name => {
                if let Some(s) = session
                    && s != g.session
                {
                    return Err(Status::failed_precondition(format!(
                        "session: fencing token {token} of lock {name} is held by session {}, not session {s}; only the holder's session may release it",
                        g.session
                    )));
                }
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "fencing token {token} of lock {name} is not held: it was released, or its session's lease expired and the lock may have been granted again"
                )));
            }
        }
        let session = self.grants[&token].session;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.grants.remove(&token);
        }
        self.release_token(token);
        Ok(self.ticket())
    }

    /// Drops a grant and hands its permit to the next waiter.
    fn release_token(&mut self, token: u64) {
        let Some(grant) = self.grants.remove(&token) else {
            return;
        };
        let record = Record::Grant {
            token,
            session: 0,
            permits: 0,
            name: String::new(),
        };
        self.put_record(record_key(&record), None);
        let name = grant.name;
        let Some(sem) = self.semaphores.get_mut(&name) else {
            return;
        };
        sem.holders.remove(&token);
        self.grant_waiters(&name);
    }

    /// Grants free permits of `name` to its waiters, first come first served.
    fn grant_waiters(&mut self, name: &str) {
        loop {
            let Some(sem) = self.semaphores.get_mut(name) else {
                return;
            };
            if sem.holders.len() as u32 >= sem.permits {
                return;
            }
            let Some(waiter) = sem.waiters.pop_front() else {
                if sem.holders.is_empty() {
                    self.semaphores.remove(name);
                }
                return;
            };
            if waiter.tx.is_closed() || !self.sessions.contains_key(&waiter.session) {
                continue;
            }
            let granted = self.grant(name, waiter.session);
            if let Err(granted) = waiter.tx.send(granted) {
                self.release_token(granted.0);
            }
        }
    }

    /// Forgets a waiter that stopped waiting (timeout or a cancelled call).
    pub(crate) fn cancel_wait(&mut self, name: &str, waiter: u64) {
        if let Some(sem) = self.semaphores.get_mut(name) {
            sem.waiters.retain(|w| w.id != waiter);
        }
        // A waiter leaving may let those behind it go.
        self.grant_waiters(name);
    }

    /// The holders and waiters of a lock (for errors).
    pub(crate) fn lock_state(&self, name: &str) -> (usize, usize) {
        self.semaphores
            .get(name)
            .map_or((0, 0), |s| (s.holders.len(), s.waiters.len()))
    }

    /// What is held under a name: lock holders and waiters, barrier
    /// arrivals, the event's state.
    pub(crate) fn inspect(&self, name: &str) -> Result<pb::InspectResponse, Status> {
        check_name("name", name, &self.limits)?;
        let mut out = pb::InspectResponse::default();
        if let Some(s) = self.semaphores.get(name) {
            out.lock_permits = s.permits;
            out.lock_tokens = s.holders.iter().copied().collect();
            out.lock_tokens.sort_unstable();
            out.lock_waiters = s.waiters.len() as u32;
        }
        if let Some(b) = self.barriers.get(name) {
            out.barrier_parties = b.parties;
            out.barrier_arrived = b.arrived.len() as u32;
        }
        out.event_set = self.events.get(name).is_some_and(|e| e.set);
        Ok(out)
    }

    // ---- events ----

    /// Sets an event, waking its waiters once the change is committed.
    pub(crate) fn event_set(&mut self, name: String) -> Result<Option<u64>, Status> {
        check_name("name", &name, &self.limits)?;
        let record = Record::Event { name: name.clone() };
        let ticket = {
            self.put_record(record_key(&record), Some(Vec::new()));
            self.ticket()
        };
        let event = self.events.entry(name).or_default();
        event.set = true;
        for w in event.waiters.drain(..) {
            let _ = w.send(ticket);
        }
        Ok(ticket)
    }

    /// Clears an event.
    pub(crate) fn event_clear(&mut self, name: String) -> Result<Option<u64>, Status> {
        check_name("name", &name, &self.limits)?;
        if let Some(event) = self.events.get_mut(&name) {
            event.set = false;
            if event.waiters.is_empty() {
                self.events.remove(&name);
            }
            let record = Record::Event { name };
            self.put_record(record_key(&record), None);
        }
        Ok(self.ticket())
    }

    /// Whether an event is set, or a receiver that fires when it is.
    pub(crate) fn event_wait(
        &mut self,
        name: String,
    ) -> Result<Result<(), oneshot::Receiver<Option<u64>>>, Status> {
        check_name("name", &name, &self.limits)?;
        let max_waiters = self.limits.max_waiters;
        let event = self.events.entry(name.clone()).or_default();
        if event.set {
            return Ok(Ok(()));
        }
        event.waiters.retain(|w| !w.is_closed());
        if event.waiters.len() >= max_waiters {
            return Err(Status::resource_exhausted(format!(
                "waiters of event {name}: the limit of {max_waiters} is reached"
            )));
        }
        let (tx, rx) = oneshot::channel();
        event.waiters.push(tx);
        Ok(Err(rx))
    }

    // ---- barriers ----

    /// A party arrives at a barrier: the last one releases everybody.
    /// Returns the party's id and where its outcome arrives.
    pub(crate) fn barrier_wait(
        &mut self,
        name: String,
        parties: u32,
        session: u64,
    ) -> Result<(u64, oneshot::Receiver<BarrierOutcome>), Status> {
        check_name("name", &name, &self.limits)?;
        if parties == 0 || parties as usize > self.limits.max_waiters {
            return Err(Status::invalid_argument(format!(
                "parties: {parties} is outside the range 1..={}",
                self.limits.max_waiters
            )));
        }
        if session != 0 && !self.sessions.contains_key(&session) {
            return Err(session_gone(session));
        }
        let barrier = self
            .barriers
            .entry(name.clone())
            .or_insert_with(|| Barrier {
                parties,
                arrived: Vec::new(),
            });
        if barrier.parties != parties {
            return Err(Status::failed_precondition(format!(
                "barrier {name} waits for {} parties, not {parties}: every party must agree",
                barrier.parties
            )));
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        barrier.arrived.push(Party { id, session, tx });
        if barrier.arrived.len() as u32 == parties {
            let barrier = self.barriers.remove(&name).expect("present");
            for (i, p) in barrier.arrived.into_iter().enumerate() {
                let _ = p.tx.send(Ok(i as u32));
            }
        }
        Ok((id, rx))
    }

    /// A party leaves a barrier before it opened: the barrier breaks for
    /// every other party. Does nothing if the party is not waiting there.
    pub(crate) fn barrier_leave(&mut self, name: &str, party: u64, why: &str) {
        let waiting = self
            .barriers
            .get(name)
            .is_some_and(|b| b.arrived.iter().any(|p| p.id == party));
        if waiting {
            self.break_barrier(name, &format!("barrier {name} is broken: {why}"));
        }
    }

    fn break_barrier(&mut self, name: &str, reason: &str) {
        if let Some(barrier) = self.barriers.remove(name) {
            for p in barrier.arrived {
                let _ = p.tx.send(Err(reason.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CoordState {
        CoordState::new(CoordLimits::default(), true)
    }

    #[test]
    fn a_semaphore_never_grants_more_than_its_permits_and_tokens_grow() {
        let mut st = state();
        let now = Instant::now();
        let (a, _, _) = st.open_session(1000, "a".into(), now).unwrap();
        let (b, _, _) = st.open_session(1000, "b".into(), now).unwrap();
        let Acquired::Now((t1, _)) = st.acquire("db".into(), 2, a).unwrap() else {
            panic!("first grant waits")
        };
        let Acquired::Now((t2, _)) = st.acquire("db".into(), 2, b).unwrap() else {
            panic!("second grant waits")
        };
        assert!(t2 > t1);
        let Acquired::Queued(_, mut rx) = st.acquire("db".into(), 2, b).unwrap() else {
            panic!("third grant given beyond two permits")
        };
        assert!(rx.try_recv().is_err());
        assert_eq!(st.lock_state("db"), (2, 1));
        let mismatch = st.acquire("db".into(), 3, a).err().unwrap();
        assert_eq!(mismatch.code(), tonic::Code::FailedPrecondition);
        // Only the holder's session releases a grant.
        let theirs = st.release("db", t1, Some(b)).unwrap_err();
        assert_eq!(theirs.code(), tonic::Code::FailedPrecondition);
        assert!(
            theirs
                .message()
                .contains(&format!("held by session {a}, not session {b}")),
            "{theirs:?}"
        );
        assert_eq!(st.lock_state("db"), (2, 1));
        st.release("db", t1, Some(a)).unwrap();
        let (t3, _) = rx.try_recv().unwrap();
        assert!(t3 > t2);
        let stale = st.release("db", t1, Some(a)).unwrap_err();
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
        assert!(stale.message().contains("fencing token"), "{stale:?}");
    }

    #[test]
    fn an_expired_session_releases_its_grants_to_waiters() {
        let mut st = state();
        let now = Instant::now();
        let (a, _, _) = st.open_session(1000, "a".into(), now).unwrap();
        let (b, _, _) = st.open_session(5000, "b".into(), now).unwrap();
        let Acquired::Now((t1, _)) = st.acquire("l".into(), 1, a).unwrap() else {
            panic!()
        };
        let Acquired::Queued(_, mut rx) = st.acquire("l".into(), 1, b).unwrap() else {
            panic!()
        };
        assert!(
            st.expire_sessions(now + Duration::from_millis(999))
                .is_empty()
        );
        st.keep_alive(b, now + Duration::from_millis(900)).unwrap();
        let expired = st.expire_sessions(now + Duration::from_millis(1000));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, a);
        assert!(rx.try_recv().unwrap().0 > t1);
        assert_eq!(
            st.keep_alive(a, now).unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            st.release("l", t1, Some(a)).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn a_barrier_gives_indexes_and_breaks_when_a_party_leaves() {
        let mut st = state();
        let (_, mut r0) = st.barrier_wait("b".into(), 2, 0).unwrap();
        let (_, mut r1) = st.barrier_wait("b".into(), 2, 0).unwrap();
        assert_eq!(r0.try_recv().unwrap(), Ok(0));
        assert_eq!(r1.try_recv().unwrap(), Ok(1));
        let (p0, _r0) = st.barrier_wait("b".into(), 3, 0).unwrap();
        let (_, mut r1) = st.barrier_wait("b".into(), 3, 0).unwrap();
        st.barrier_leave("b", p0, "a party timed out");
        let err = r1.try_recv().unwrap().unwrap_err();
        assert!(err.contains("broken"), "{err}");
    }

    #[test]
    fn names_and_values_are_checked_naming_the_field_and_the_limit() {
        let mut st = state();
        let long = "k".repeat(257);
        let err = st.kv_put(long, vec![], None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "key: 257 bytes is over the limit of 256");
        let err = st
            .kv_put("k".into(), vec![0; (1 << 20) + 1], None)
            .unwrap_err();
        assert_eq!(
            err.message(),
            "value: 1048577 bytes is over the limit of 1048576"
        );
        let err = st.counter_add(String::new(), 1).unwrap_err();
        assert_eq!(err.message(), "name: must not be empty");
    }

    #[test]
    fn compare_and_swap_writes_only_on_the_expected_version() {
        let mut st = state();
        let (ok, v1, _) = st.kv_put("a".into(), b"1".to_vec(), Some(0)).unwrap();
        assert!(ok);
        let (ok, now, _) = st.kv_put("a".into(), b"2".to_vec(), Some(0)).unwrap();
        assert!(!ok);
        assert_eq!(now, v1);
        let (ok, v2, _) = st.kv_put("a".into(), b"2".to_vec(), Some(v1)).unwrap();
        assert!(ok && v2 > v1);
        st.kv_put("ab".into(), b"3".to_vec(), None).unwrap();
        st.kv_put("b".into(), b"4".to_vec(), None).unwrap();
        let (page, more) = st.kv_list("a", "", 1).unwrap();
        assert_eq!((page.len(), more), (1, true));
        let (page, more) = st.kv_list("a", &page[0].key, 10).unwrap();
        assert_eq!((page[0].key.as_str(), more), ("ab", false));
    }
}
