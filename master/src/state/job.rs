//! The job table: compact job records, their cold fields behind one
//! pointer, and how a job becomes a store record and a client's view.

use super::*;

/// A job: what the queue needs of it on every step. The rest, which most
/// queued jobs do not have yet, sits behind one pointer in [`JobExtra`]:
/// a million queued jobs must fit in a few hundred megabytes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: JobId,
    pub(crate) batch: BatchId,
    pub(crate) arg: Box<str>,
    /// Submission order across the whole master: FIFO within a priority.
    pub(crate) seq: u64,
    pub(crate) timeout_ms: u64,
    /// A retried job waits in the delay queue until then (unix ms).
    pub(crate) not_before_ms: u64,
    /// The session running it, while RUNNING.
    pub(crate) session: Option<SessionId>,
    pub(super) extra: Option<Box<JobExtra>>,
    /// Position in its batch.
    pub(crate) index: u32,
    pub(crate) priority: i32,
    /// The allowance each run of the job gets (its spec's `max_attempts`).
    pub(crate) max_attempts: u32,
    /// Counted attempts at which the job is FAILED: `max_attempts` at
    /// first, raised by `max_attempts` with each retry of a dead letter.
    pub(crate) allowance: u32,
    /// Attempts started; never goes down. The attempt a worker reports
    /// must be this one.
    pub(crate) attempts: u32,
    /// Attempts that count toward the allowance (see the module docs).
    pub(crate) counted: u32,
    pub(crate) kind: JobKind,
    pub(crate) state: JobState,
    /// Changed since the last commit, and listed in `State::dirty_jobs`
    /// (with its slot).
    pub(super) dirty: bool,
    /// The length of the record last encoded for it by this master, as
    /// the store holds it once that commit is written; 0 if none was (a
    /// job read from the store, or one only in its batch's record).
    pub(super) record_len: u32,
}

/// Jobs by id: a slab of records and an index from id to slot, so that a
/// hash table's spare capacity doubles only the small index, not the
/// records.
#[derive(Debug, Default)]
pub(crate) struct JobTable {
    slots: Vec<Option<Job>>,
    index: IdMap<JobId, u32>,
    free: Vec<u32>,
}

impl JobTable {
    pub(crate) fn get(&self, id: &JobId) -> Option<&Job> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_mut()
    }

    pub(crate) fn contains_key(&self, id: &JobId) -> bool {
        self.index.contains_key(id)
    }

    /// Where a job sits, as a hint for [`JobTable::get_hinted`].
    pub(crate) fn slot_of(&self, id: &JobId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The job at `hint` if that slot still holds `id` (slots are reused
    /// once their job leaves), else the job found by its id. Walking a
    /// batch's jobs by their slots reads the table in order instead of
    /// hashing each id into a table of hundreds of thousands (cache misses
    /// that were a quarter of the master's CPU, bench/README.md).
    pub(crate) fn get_hinted(&self, id: &JobId, hint: Option<&u32>) -> Option<&Job> {
        self.slots[self.hinted_slot(id, hint)? as usize].as_ref()
    }

    /// [`JobTable::get_hinted`], to change the job.
    pub(crate) fn get_mut_hinted(&mut self, id: &JobId, hint: Option<&u32>) -> Option<&mut Job> {
        let slot = self.hinted_slot(id, hint)?;
        self.slots[slot as usize].as_mut()
    }

    /// The slot of job `id`: `hint` if that slot still holds it, else the
    /// index's.
    pub(crate) fn hinted_slot(&self, id: &JobId, hint: Option<&u32>) -> Option<u32> {
        match hint {
            Some(&slot)
                if self
                    .slots
                    .get(slot as usize)
                    .is_some_and(|j| j.as_ref().is_some_and(|j| j.id == *id)) =>
            {
                Some(slot)
            }
            _ => self.slot_of(id),
        }
    }

    /// The job at `index` in a batch, if in the table (found by the
    /// batch's slot hint when that slot still holds it).
    pub(crate) fn in_batch(&self, b: &Batch, index: usize) -> Option<&Job> {
        self.get_hinted(&b.jobs[index], b.slot(index))
    }

    /// Each job a batch lists, in order: `None` for one not in the table.
    pub(crate) fn of_batch<'a>(&'a self, b: &'a Batch) -> impl Iterator<Item = Option<&'a Job>> {
        (0..b.jobs.len()).map(move |i| self.in_batch(b, i))
    }

    /// Inserts (or replaces) a job; returns its slot. The id is hashed and
    /// looked for once: in a table of millions, each look is a cache miss
    /// (recovery inserts every job).
    pub(crate) fn insert(&mut self, id: JobId, job: Job) -> u32 {
        use std::collections::hash_map::Entry;
        match self.index.entry(id) {
            Entry::Occupied(e) => {
                let slot = *e.get();
                self.slots[slot as usize] = Some(job);
                slot
            }
            Entry::Vacant(e) => {
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = Some(job);
                        slot
                    }
                    None => {
                        self.slots.push(Some(job));
                        (self.slots.len() - 1) as u32
                    }
                };
                e.insert(slot);
                slot
            }
        }
    }

    /// Takes the job `id` out if `take` says so of it, found at `hint` if
    /// that slot still holds it (see [`JobTable::get_hinted`]).
    pub(crate) fn take_if_hinted(
        &mut self,
        id: &JobId,
        hint: Option<&u32>,
        take: impl FnOnce(&Job) -> bool,
    ) -> Option<Job> {
        let slot = self.hinted_slot(id, hint)?;
        if !self.slots[slot as usize].as_ref().is_some_and(take) {
            return None;
        }
        self.index.remove(id);
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Job> {
        self.slots.iter().flatten()
    }

    /// The slots there are, taken or free: every slot is below this.
    pub(crate) fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The job in `slot`, if any.
    pub(crate) fn at(&self, slot: u32) -> Option<&Job> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// How many jobs the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

impl std::ops::Index<&JobId> for JobTable {
    type Output = Job;

    fn index(&self, id: &JobId) -> &Job {
        self.get(id).expect("job is in the table")
    }
}

/// What a job gains once it runs or finishes.
#[derive(Debug, Default)]
pub(crate) struct JobExtra {
    /// The name of the worker that ran it last.
    pub(crate) worker: Option<Arc<str>>,
    pub(crate) output: Option<pb::JobOutput>,
    pub(crate) error: Option<String>,
    pub(crate) attempt_errors: Vec<String>,
    pub(crate) run_us: u64,
    /// When it finished (unix ms), for retention.
    pub(crate) finished_at_ms: u64,
    pub(crate) idempotency_key: Option<Box<str>>,
    /// Its concurrency limits (name, permits).
    pub(crate) limits: super::limits::JobLimits,
    /// When the master last handed it to a worker (unix ms).
    pub(crate) started_at_ms: u64,
}

/// A job record's fields that every job has (not its argument, which the
/// caller moves or copies, nor those of [`JobExtra`]), borrowed from a
/// message or read from the record's bytes (`encode.rs`).
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    pub(super) id: &'a [u8],
    pub(super) batch: &'a [u8],
    pub(super) index: u32,
    pub(super) kind: i32,
    pub(super) priority: i32,
    pub(super) timeout_ms: u64,
    pub(super) max_attempts: u32,
    pub(super) state: i32,
    pub(super) attempts: u32,
    pub(super) seq: u64,
    pub(super) not_before_ms: u64,
    pub(super) counted: Option<u32>,
    pub(super) allowance: Option<u32>,
}

impl<'a> Fields<'a> {
    fn of(r: &'a pb::JobRecord) -> Fields<'a> {
        Fields {
            id: &r.id,
            batch: &r.batch,
            index: r.index,
            kind: r.kind,
            priority: r.priority,
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts,
            state: r.state,
            attempts: r.attempts,
            seq: r.seq,
            not_before_ms: r.not_before_ms,
            counted: r.counted,
            allowance: r.allowance,
        }
    }
}

impl JobExtra {
    /// The extra fields of a job's record.
    fn from_record(r: pb::JobRecord) -> JobExtra {
        JobExtra {
            worker: (!r.worker.is_empty()).then(|| Arc::from(r.worker.as_str())),
            output: r.output,
            error: (!r.error.is_empty()).then_some(r.error),
            attempt_errors: r.attempt_errors,
            run_us: r.run_us,
            finished_at_ms: r.finished_at_ms,
            idempotency_key: (!r.idempotency_key.is_empty())
                .then(|| r.idempotency_key.into_boxed_str()),
            limits: super::limits::from_pb(r.limits),
            started_at_ms: r.started_at_ms,
        }
    }
}

/// Whether a record has nothing for [`JobExtra`], as a job just submitted
/// (a run time is only ever set beside a start time).
fn is_bare(r: &pb::JobRecord) -> bool {
    r.worker.is_empty()
        && r.output.is_none()
        && r.error.is_empty()
        && r.attempt_errors.is_empty()
        && r.idempotency_key.is_empty()
        && r.finished_at_ms == 0
        && r.limits.is_empty()
        && r.started_at_ms == 0
}

static NO_EXTRA: JobExtra = JobExtra {
    worker: None,
    output: None,
    error: None,
    attempt_errors: Vec::new(),
    run_us: 0,
    finished_at_ms: 0,
    idempotency_key: None,
    limits: Vec::new(),
    started_at_ms: 0,
};

impl Job {
    /// The job's extra fields (empty ones if it has none yet).
    /// About the bytes of the job's stored record: its argument, output
    /// and errors, and a constant for the rest (the memory store's byte
    /// budget).
    pub(crate) fn stored_bytes(&self) -> u64 {
        let x = self.x();
        let text = self.arg.len()
            + x.output.as_ref().map_or(0, prost::Message::encoded_len)
            + x.error.as_ref().map_or(0, String::len)
            + x.attempt_errors.iter().map(String::len).sum::<usize>();
        text as u64 + 96
    }

    pub(crate) fn x(&self) -> &JobExtra {
        self.extra.as_deref().unwrap_or(&NO_EXTRA)
    }

    /// The job's extra fields, made if need be.
    pub(super) fn xm(&mut self) -> &mut JobExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub(super) fn class(&self) -> JobClass {
        JobClass::of(self.kind)
    }

    /// The record the store keeps, as prost's message: the reference that
    /// [`Job::encode_record`] (what the committer writes) is tested against.
    #[cfg(test)]
    pub(super) fn record(&self) -> pb::JobRecord {
        pb::JobRecord {
            id: self.id.as_bytes().to_vec(),
            batch: self.batch.as_bytes().to_vec(),
            index: self.index,
            kind: self.kind as i32,
            arg: self.arg.to_string(),
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            state: self.state as i32,
            attempts: self.attempts,
            counted: Some(self.counted),
            allowance: Some(self.allowance),
            seq: self.seq,
            worker: self.x().worker.as_deref().unwrap_or_default().to_string(),
            output: self.x().output.clone(),
            error: self.x().error.clone().unwrap_or_default(),
            attempt_errors: self.x().attempt_errors.clone(),
            run_us: self.x().run_us,
            finished_at_ms: self.x().finished_at_ms,
            not_before_ms: self.not_before_ms,
            idempotency_key: self
                .x()
                .idempotency_key
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            running: self.state == JobState::Running,
            limits: super::limits::to_pb(&self.x().limits),
            started_at_ms: self.x().started_at_ms,
        }
    }

    /// Rebuilds a job from its record.
    pub(super) fn from_record(mut r: pb::JobRecord) -> Result<Job, String> {
        let arg = std::mem::take(&mut r.arg).into_boxed_str();
        let mut job = Job::from_fields(&Fields::of(&r), arg)?;
        if !is_bare(&r) {
            job.extra = Some(Box::new(JobExtra::from_record(r)));
        }
        Ok(job)
    }

    /// A job from its record's fields but the extra ones, with `arg`.
    pub(super) fn from_fields(r: &Fields<'_>, arg: Box<str>) -> Result<Job, String> {
        let id = JobId::from_slice(r.id).ok_or("a job record has a malformed id")?;
        let batch = BatchId::from_slice(r.batch)
            .ok_or_else(|| format!("job {id} has a malformed batch id"))?;
        let kind = JobKind::try_from(r.kind)
            .map_err(|_| format!("job {id} has unknown kind {}", r.kind))?;
        let state = JobState::try_from(r.state)
            .map_err(|_| format!("job {id} has unknown state {}", r.state))?;
        Ok(Job {
            id,
            batch,
            index: r.index,
            kind,
            arg,
            priority: r.priority,
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts.max(1),
            // Records written before attempts were split say only how many
            // were started, and counted every one.
            allowance: r.allowance.unwrap_or(r.max_attempts).max(1),
            counted: r.counted.unwrap_or(r.attempts),
            state,
            attempts: r.attempts,
            seq: r.seq,
            session: None,
            not_before_ms: r.not_before_ms,
            extra: None,
            dirty: false,
            record_len: 0,
        })
    }

    /// Renders the job for a client reading the batch that lists it at
    /// `index` (a job named again by key sits at another place in a later
    /// batch than in its own).
    pub(crate) fn info_at(&self, index: usize) -> pb::JobInfo {
        let mut info = self.info();
        info.index = index as u32;
        info
    }

    /// Renders the job for a client.
    pub(crate) fn info(&self) -> pb::JobInfo {
        pb::JobInfo {
            job_id: self.id.to_string(),
            batch_id: self.batch.to_string(),
            index: self.index,
            kind: self.kind as i32,
            arg: self.arg.to_string(),
            state: self.state as i32,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.allowance,
            counted_attempts: self.counted,
            output: self.x().output.clone(),
            error: self.x().error.clone().unwrap_or_default(),
            worker: self.x().worker.as_deref().unwrap_or_default().to_string(),
            attempt_errors: self.x().attempt_errors.clone(),
            run_us: self.x().run_us,
            limits: super::limits::to_pb(&self.x().limits),
            started_at_ms: self.x().started_at_ms,
            finished_at_ms: self.x().finished_at_ms,
        }
    }
}

/// The jobs of one submit.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Job ids in submission order.
    pub(crate) jobs: Vec<JobId>,
    /// Where each of `jobs` sat in the job table when the batch was made:
    /// hints for [`JobTable::get_hinted`] (a slot since reused holds another
    /// job, and the lookup falls back to the id; `u32::MAX` for a job not
    /// in the table then). Recovery fills them; a closed batch read back
    /// from the store has none.
    pub(crate) slots: Vec<u32>,
    /// Indexes of finished jobs, in the order they finished.
    pub(crate) finished: Vec<u32>,
    /// Bumped on every finish, so waiters and watchers wake.
    pub(crate) notify: watch::Sender<u64>,
    /// Bumped when `finished` loses entries (a retry): a reader walking it
    /// by position starts again.
    pub(crate) rewinds: u64,
    /// The submit's request id: the same submit sent again gets this batch.
    pub(crate) request_id: Option<Box<str>>,
}

impl Batch {
    /// The slot hint of the job at `index` (see [`Batch::slots`]).
    pub(crate) fn slot(&self, index: usize) -> Option<&u32> {
        self.slots.get(index)
    }
}

/// Renders a job read from the store for a client, at `index` in the batch
/// read (or at its own place).
pub(crate) fn stored_info(
    record: pb::JobRecord,
    index: Option<usize>,
) -> Result<pb::JobInfo, Error> {
    let job = stored_job(record)?;
    Ok(match index {
        Some(i) => job.info_at(i),
        None => job.info(),
    })
}

/// A job as the store's record of it holds it.
pub(crate) fn stored_job(record: pb::JobRecord) -> Result<Job, Error> {
    Job::from_record(record).map_err(Error::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_stale_slot_hint_finds_the_job_by_its_id() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut job = || crate::state::encode::tests::job(&mut rng);
        let mut table = JobTable::default();
        let (a, b, c) = (job(), job(), job());
        let (a_id, b_id) = (a.id, b.id);
        let slot = table.insert(a_id, a);
        assert_eq!(table.get_hinted(&a_id, Some(&slot)).unwrap().id, a_id);
        assert_eq!(table.get_mut_hinted(&a_id, Some(&slot)).unwrap().id, a_id);
        // a leaves and b takes its slot: the hint now names b.
        assert!(
            table
                .take_if_hinted(&a_id, Some(&slot), |_| false)
                .is_none()
        );
        assert_eq!(
            table
                .take_if_hinted(&a_id, Some(&slot), |_| true)
                .unwrap()
                .id,
            a_id
        );
        assert!(table.get(&a_id).is_none());
        assert_eq!(table.insert(b_id, b), slot);
        assert!(table.get_hinted(&a_id, Some(&slot)).is_none());
        assert!(table.get_mut_hinted(&a_id, Some(&slot)).is_none());
        // a comes back (a retry reads it from the store) in another slot.
        let again = Job { id: a_id, ..c };
        let moved = table.insert(a_id, again);
        assert_ne!(moved, slot);
        assert_eq!(table.get_hinted(&a_id, Some(&slot)).unwrap().id, a_id);
        assert_eq!(table.get_mut_hinted(&a_id, Some(&slot)).unwrap().id, a_id);
        assert_eq!(table.get_hinted(&b_id, Some(&moved)).unwrap().id, b_id);
        // No hint, or one past the table.
        assert_eq!(table.get_hinted(&a_id, None).unwrap().id, a_id);
        assert_eq!(table.get_hinted(&b_id, Some(&u32::MAX)).unwrap().id, b_id);
        assert_eq!(table.get_mut_hinted(&a_id, None).unwrap().id, a_id);
        assert_eq!(
            table.get_mut_hinted(&b_id, Some(&u32::MAX)).unwrap().id,
            b_id
        );
        assert!(
            table
                .get_mut_hinted(&JobId::new(), Some(&u32::MAX))
                .is_none()
        );
        assert!(table.get_hinted(&JobId::new(), Some(&slot)).is_none());
        // A stale hint removes nothing of the job in that slot now.
        assert_eq!(
            table
                .take_if_hinted(&a_id, Some(&slot), |_| true)
                .unwrap()
                .id,
            a_id
        );
        assert_eq!(table.get_hinted(&b_id, Some(&slot)).unwrap().id, b_id);
        assert!(table.get(&a_id).is_none());
        assert!(table.take_if_hinted(&a_id, None, |_| true).is_none());
    }
}
