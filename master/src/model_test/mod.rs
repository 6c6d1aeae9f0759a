//! A randomized model test of the queue state machine and its store.
//!
//! Each case generates a history of operations from a seed: submits (with
//! idempotency keys reused across submits, as a chunked map reuses them,
//! and now and then one over the length limit), worker sessions that grant
//! credit, report results, resend what was not acknowledged, send stale
//! results, drain and return jobs, lose their stream or their lease, or
//! restart; client cancels, retries and reads; retry backoff and retention
//! on a fake clock; group commits into a simulated store; and master
//! crashes, after which a new `State` is rebuilt from exactly what the
//! store had committed, the way `Master::open` does it.
//!
//! After every operation the state is compared with a reference model kept
//! beside it (`model`), which applies the same events under the rules of
//! ARCHITECTURE.md "Attempts", and with what clients and workers were told.
//! A reply or message with a commit ticket counts as told only once that
//! commit is written; the model is snapshotted at every commit, and a crash
//! rolls it back to the snapshot, so recovery is checked against what the
//! store should hold.
//!
//! # What it checks
//!
//! Each job's state, session, `attempts`, `counted`, `allowance`, output
//! and `attempt_errors` are the model's:
//!
//! - an assignment starts attempt `attempts + 1` (numbers only go up);
//! - a failure that is the job's counts: a failed run, an empty result, a
//!   lost worker, an expired lease (also when the session ended before the
//!   assignment reached the worker: a lost worker counts);
//! - a return by a draining worker and a master restart end the attempt
//!   without counting it ("(not counted)" in `attempt_errors`), the job
//!   queued at once; after a crash every job that was queued or running is
//!   QUEUED;
//! - the job is FAILED for a failure that is not retriable, or when
//!   `counted` reaches `allowance`; a retry of a FAILED job sets
//!   `allowance = counted + max_attempts`;
//! - a result is taken when the sending session holds that attempt, a
//!   success also when the job is QUEUED at that attempt (the master ended
//!   it and has not handed it out again); anything else is dropped, counted
//!   in `late_results_dropped`, and leaves what the session holds alone.
//!
//! Besides: the job table, counts, sessions' held jobs and credit, batches
//! and their finished lists (adopted jobs included), idempotency keys,
//! retention, lease expiry, the delay queue, and that nothing a client was
//! told is lost. Every check has a name in `SWITCHES`.
//!
//! # What the model assumes
//!
//! - Each assignment gets a nonce, which a success carries as its output,
//!   so an accepted result is traced to the run that made it.
//! - A worker gets a message once the commit of its ticket is written (in
//!   stream order). A closed stream loses what was not yet sent; a lease
//!   expiry still sends it, as the real stream drains before it ends. A
//!   worker keeps its jobs and unacknowledged results across sessions and
//!   master crashes, and sends those results again on each new session.
//! - A return names job ids, not attempts (as `Returned` does): it ends
//!   whatever attempt of the job the session holds.
//! - Only one session at a time holds credit per class (unless the option
//!   `shared-credit` is on): dispatch then does not depend on the order of
//!   a `HashMap`, and every history replays exactly from its seed. The
//!   clock only moves past every backoff at once, so the backoff's jitter
//!   never decides anything either.
//!
//! A failing history is shrunk (chunks and single operations dropped while
//! the same check still fails) and printed with the seed, one operation per
//! line, each with what it did.
//!
//! # Running it
//!
//! ```text
//! cargo test -p drover-master model_test                 # 2000 cases
//! DROVER_MODEL_CASES=50000 cargo test -p drover-master model_test
//! DROVER_MODEL_SEED=1234 DROVER_MODEL_CASES=1 cargo test -p drover-master model_test
//! DROVER_MODEL_OFF=crash,finality cargo test -p drover-master model_test
//! DROVER_MODEL_ON=shared-credit cargo test -p drover-master model_test
//! ```
//!
//! `DROVER_MODEL_OFF` and `DROVER_MODEL_ON` take names from `SWITCHES`:
//! operation kinds (skipped when off), checks (not run when off) and
//! options (off unless named in `DROVER_MODEL_ON`). All failing checks are
//! shrunk and reported together.
//!
//! # Layout
//!
//! - `ops`: the operations, their generation from a seed and how they print.
//! - `model`: the reference model and its rules.
//! - `world`: the simulation, applying each operation to the state and the
//!   model.
//! - `wire`: what passes between them and the workers and clients: replies
//!   and messages, commits, crashes.
//! - `checks`: the invariants, after every step.
//! - `sut`: the adapter, the only code that calls the state.

mod checks;
mod model;
mod ops;
mod sut;
mod wire;
mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::time::Instant;

use ops::{Case, Op};
use world::World;

/// Every switch, with what turning it off does. A name shared by an
/// operation and a check turns off both.
const SWITCHES: &[(&str, &str)] = &[
    // Operation kinds.
    (
        "submit",
        "op: submit a batch (then dispatch, as the handler does)",
    ),
    (
        "keys",
        "op: idempotency keys on submitted jobs (one at the length limit, one over it)",
    ),
    (
        "connect",
        "op: a worker (re)connects; it resends unacknowledged results",
    ),
    ("credit", "op: a worker grants credit"),
    ("result", "op: a worker reports results of jobs it holds"),
    (
        "resend",
        "op: a worker resends its unacknowledged results on its session",
    ),
    (
        "stale",
        "op: a worker sends again a result it reported before",
    ),
    (
        "close",
        "op: a worker's stream closes (end_session \"stream closed\")",
    ),
    (
        "expire",
        "op: the others heartbeat, the clock passes the lease, expired_sessions, end_session",
    ),
    (
        "restart",
        "op: a worker process restarts, losing what it held",
    ),
    ("drain", "op: a worker starts draining (set_draining)"),
    (
        "return",
        "op: a draining worker returns jobs it has not started",
    ),
    ("cancel", "op: a client cancels a job"),
    ("retry", "op: a client retries failed jobs (retry_jobs)"),
    ("tick", "op: the timer releases due retries (promote_due)"),
    (
        "advance",
        "op: the clock passes every backoff, then promote_due",
    ),
    (
        "purge",
        "op: the clock passes (half) the retention, then purge_expired",
    ),
    (
        "read",
        "op: a client reads a committed result; the reply waits for State::ticket",
    ),
    (
        "dirty-read",
        "op: a client reads a result not yet committed; the reply waits for State::ticket",
    ),
    (
        "crash",
        "op: the master crashes and recovers from the store",
    ),
    (
        "burn",
        "op: 256 commits in a row (backdated jobs, purged after), to reach the assignment log's compaction",
    ),
    // Checks.
    (
        "panic",
        "check: no step panics (the state's own assertions)",
    ),
    (
        "table",
        "check: the job table holds exactly the submitted, unpurged jobs",
    ),
    ("counts", "check: State::count matches a recount"),
    ("legal", "check: each job's fields fit its state"),
    (
        "held",
        "check: RUNNING iff held by exactly one live session",
    ),
    (
        "state",
        "check: each job's state and session are the model's",
    ),
    (
        "attempts",
        "check: attempts, counted and allowance are the model's; counted <= allowance; assignments number attempts up by one",
    ),
    (
        "exhausted",
        "check: FAILED without a fatal failure only when counted == allowance",
    ),
    (
        "errors-once",
        "check: attempt_errors has at most one entry per attempt, in order",
    ),
    (
        "attempt-errors",
        "check: attempt_errors are the model's: counted failures, and \"(not counted)\" returns and restarts",
    ),
    (
        "finality",
        "check: a finished job's result never changes (except by retry)",
    ),
    (
        "result-attempt",
        "check: a result is taken per (job, attempt) as the model says; the others are counted as dropped",
    ),
    (
        "recovered-queued",
        "check: recovery queues every job that was queued or running",
    ),
    (
        "recovered-matches",
        "check: recovery gives back exactly the committed jobs and batches",
    ),
    (
        "told",
        "check: nothing a client was told is lost, even after a crash",
    ),
    (
        "batches",
        "check: batches list the jobs their submit returned",
    ),
    (
        "finished-lists",
        "check: a batch's finished list names each finished job it lists once, no other (jobs named again by key too)",
    ),
    (
        "idempotency",
        "check: a key reused while its job lives returns that job; an overlong key is refused",
    ),
    (
        "batch-retention",
        "check: a batch is purged only when all the jobs it lists are",
    ),
    (
        "purge",
        "check: a job is purged only once finished longer than the retention",
    ),
    (
        "credit",
        "check: a session is never sent more jobs than the credit it granted",
    ),
    (
        "idle-credit",
        "check: no ready job waits while a session has credit for it",
    ),
    ("delayed-due", "check: promote_due releases every due retry"),
    (
        "lease",
        "check: expired_sessions names exactly the sessions not heard from within the lease",
    ),
    // Options.
    (
        "shared-credit",
        "option: several sessions hold credit at once (dispatch order then depends on HashMap order, so a history may not replay exactly)",
    ),
];

/// Switches off by default.
const DEFAULT_OFF: &[&str] = &["shared-credit"];

/// A cheap hasher for the test's own maps, keyed by UUIDs (random low
/// bits) and small numbers: SipHash dominated the run time in debug builds.
#[derive(Default, Clone, Copy)]
struct Fast(u64);

impl std::hash::Hasher for Fast {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Ids are 16 bytes: one step, not a loop, in a debug build.
        if let Ok(id) = <[u8; 16]>::try_from(bytes) {
            let n = u128::from_le_bytes(id);
            self.write_u64(n as u64 ^ (n >> 64) as u64);
            return;
        }
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.write_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<Fast>>;
type Set<K> = HashSet<K, BuildHasherDefault<Fast>>;

/// Cases per run unless `DROVER_MODEL_CASES` says otherwise.
const DEFAULT_CASES: u64 = 2000;

/// Which switches are on.
struct Switches {
    off: HashSet<&'static str>,
}

impl Switches {
    /// Reads `DROVER_MODEL_OFF` and `DROVER_MODEL_ON`; an unknown name is
    /// refused, so a typo cannot silently test less.
    fn from_env() -> Switches {
        let mut off: HashSet<&'static str> = DEFAULT_OFF.iter().copied().collect();
        let names = |var: &str| -> Vec<&'static str> {
            let raw = std::env::var(var).unwrap_or_default();
            let mut out = Vec::new();
            for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((n, _)) = SWITCHES.iter().find(|(n, _)| *n == name) else {
                    panic!("{var}: unknown switch {name:?}; the switches are: {SWITCHES:#?}");
                };
                out.push(*n);
            }
            out
        };
        off.extend(names("DROVER_MODEL_OFF"));
        for n in names("DROVER_MODEL_ON") {
            off.remove(n);
        }
        Switches { off }
    }

    fn on(&self, name: &str) -> bool {
        debug_assert!(SWITCHES.iter().any(|(n, _)| *n == name), "{name}");
        !self.off.contains(name)
    }
}

/// A broken invariant.
#[derive(Debug, Clone)]
struct Violation {
    check: &'static str,
    msg: String,
}

fn bad<T>(check: &'static str, msg: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        check,
        msg: msg.into(),
    })
}

/// Runs a history; returns the first broken invariant and what each step
/// did.
///
/// A panic in the state is a broken invariant like any other: it is
/// caught, and the history shrunk and printed.
fn run(case: &Case, ops: &[Op], sw: &Switches, verbose: bool) -> (Option<Violation>, Vec<String>) {
    quiet_panics();
    let mut world = World::new(case, sw, verbose);
    let mut notes = Vec::with_capacity(ops.len());
    for op in ops {
        CATCHING.with(|c| c.set(true));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.step(op)));
        CATCHING.with(|c| c.set(false));
        notes.push(world.take_note());
        let r = match r {
            Ok(r) => r,
            // A state that panicked cannot go on either way.
            Err(_) if !sw.on("panic") => return (None, notes),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                bad("panic", format!("the step panicked: {msg}"))
            }
        };
        if let Err(v) = r {
            return (Some(v), notes);
        }
    }
    (None, notes)
}

thread_local! {
    /// Set while `run` catches panics, so the hook keeps them quiet.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps the panics `run` catches (hundreds while shrinking) out of the
/// output; any other panic is reported as usual.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
}

fn fails_with(case: &Case, ops: &[Op], sw: &Switches, check: &str) -> bool {
    run(case, ops, sw, false)
        .0
        .is_some_and(|v| v.check == check)
}

/// Drops chunks, then single steps, then jobs within submits, while the
/// same check still fails.
fn shrink(case: &Case, sw: &Switches, check: &str) -> Vec<Op> {
    let mut ops = case.ops.clone();
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progress = false;
        while i < ops.len() {
            let end = (i + chunk).min(ops.len());
            let mut candidate = ops[..i].to_vec();
            candidate.extend_from_slice(&ops[end..]);
            if fails_with(case, &candidate, sw, check) {
                ops = candidate;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !progress {
            break;
        }
        if !progress {
            chunk = (chunk / 2).max(1);
        }
    }
    for i in 0..ops.len() {
        let Op::Submit(specs) = &ops[i] else {
            continue;
        };
        let mut specs = specs.clone();
        let mut k = 0;
        while k < specs.len() && specs.len() > 1 {
            let mut fewer = specs.clone();
            fewer.remove(k);
            let mut candidate = ops.clone();
            candidate[i] = Op::Submit(fewer.clone());
            if fails_with(case, &candidate, sw, check) {
                specs = fewer;
                ops = candidate;
            } else {
                k += 1;
            }
        }
    }
    ops
}

/// One failing check, shrunk.
struct Found {
    first: Violation,
    seed: u64,
    retry_base_ms: u64,
    cases: u64,
    shrunk: Vec<Op>,
    notes: Vec<String>,
    replays: bool,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "check `{}` broken in {} case(s); first at seed {} (retry base {} ms): {}",
            self.first.check, self.cases, self.seed, self.retry_base_ms, self.first.msg
        )?;
        if !self.replays {
            writeln!(
                f,
                "  (the shrunk history did not replay the failure the same way)"
            )?;
        }
        writeln!(
            f,
            "  reproduce: DROVER_MODEL_SEED={} DROVER_MODEL_CASES=1 cargo test -p drover-master model_test",
            self.seed
        )?;
        writeln!(f, "  shrunk history ({} steps):", self.shrunk.len())?;
        for (i, (op, note)) in self.shrunk.iter().zip(&self.notes).enumerate() {
            writeln!(f, "    {i:>3}. {op:<36} | {note}")?;
        }
        Ok(())
    }
}

#[test]
fn random_histories_keep_the_invariants() {
    let sw = Switches::from_env();
    let env_u64 = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
    };
    let seed_given = env_u64("DROVER_MODEL_SEED");
    let first = seed_given.unwrap_or(0);
    let cases = env_u64("DROVER_MODEL_CASES").unwrap_or(if seed_given.is_some() {
        1
    } else {
        DEFAULT_CASES
    });
    let started = Instant::now();
    let mut found: BTreeMap<&'static str, Found> = BTreeMap::new();
    let mut steps = 0usize;
    for seed in first..first + cases {
        let case = Case::generate(seed);
        steps += case.ops.len();
        let Some(v) = run(&case, &case.ops, &sw, false).0 else {
            continue;
        };
        if let Some(f) = found.get_mut(v.check) {
            f.cases += 1;
            continue;
        }
        let shrunk = shrink(&case, &sw, v.check);
        let (again, notes) = run(&case, &shrunk, &sw, true);
        let replays = again.as_ref().is_some_and(|a| a.check == v.check);
        found.insert(
            v.check,
            Found {
                replays,
                // The shrunk history's message names its own jobs.
                first: again.filter(|_| replays).unwrap_or(v),
                seed: case.seed,
                retry_base_ms: case.retry_base_ms,
                cases: 1,
                shrunk,
                notes,
            },
        );
    }
    let elapsed = started.elapsed();
    eprintln!(
        "model test: {cases} cases, {steps} steps in {:.2} s ({:.0} cases/s); off: {:?}",
        elapsed.as_secs_f64(),
        cases as f64 / elapsed.as_secs_f64(),
        {
            let mut off: Vec<_> = sw.off.iter().collect();
            off.sort();
            off
        }
    );
    if !found.is_empty() {
        let report: String = found.values().map(|f| format!("{f}\n")).collect();
        panic!(
            "the state machine broke {} invariant(s):\n\n{report}\
             a check or an operation is turned off with DROVER_MODEL_OFF=<name>,...",
            found.len(),
        );
    }
}
