//! The operations of a history, their generation from a seed, and how they
//! print in a shrunk history.

use std::collections::HashSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Workers in a history (each has at most one session at a time).
pub(super) const WORKERS: u8 = 2;
/// Distinct idempotency keys in a history; the last is exactly as long as
/// a key may be.
const KEYS: u8 = 6;
/// A key one byte over the limit: a submit naming it is refused.
pub(super) const OVERLONG_KEY: u8 = KEYS;
/// The longest idempotency key the master takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// The idempotency key numbered `k`.
pub(super) fn key_name(k: u8) -> String {
    let name = format!("k{k}");
    match k {
        OVERLONG_KEY => format!("{name:x<width$}", width = MAX_KEY_BYTES + 1),
        k if k == KEYS - 1 => format!("{name:x<MAX_KEY_BYTES$}"),
        _ => name,
    }
}

/// One step of a history. Operands are abstract (which worker, which of
/// its jobs modulo how many it has) and resolved when the step runs, so a
/// history stays meaningful when shrinking drops steps before it.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Submit(Vec<Spec>),
    Connect(u8),
    Credit {
        w: u8,
        cpu: u8,
        io: u8,
    },
    Result {
        w: u8,
        pick: u8,
        out: Out,
        two: bool,
    },
    Resend(u8),
    Stale {
        w: u8,
        pick: u8,
    },
    Close(u8),
    Expire(u8),
    Restart(u8),
    Drain(u8),
    Return {
        w: u8,
        n: u8,
    },
    Cancel(u8),
    Retry(Option<u8>),
    Tick,
    Advance,
    Purge {
        full: bool,
    },
    Read(u8),
    DirtyRead(u8),
    Commit,
    Crash,
    Burn,
}

/// A job to submit.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    /// A sleep job (IO class) rather than fib (CPU class).
    pub(super) io: bool,
    pub(super) max_attempts: u8,
    pub(super) key: Option<u8>,
    pub(super) priority: u8,
}

/// What a worker reports for a job.
#[derive(Clone, Copy, Debug)]
pub(super) enum Out {
    Ok,
    Retryable,
    Fatal,
    Empty,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Submit(specs) => {
                write!(f, "Submit [")?;
                for (i, s) in specs.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    let class = if s.io { "io" } else { "cpu" };
                    write!(f, "{sep}{class} max{}", s.max_attempts)?;
                    match s.key {
                        Some(OVERLONG_KEY) => write!(f, " key k{OVERLONG_KEY} (overlong)")?,
                        Some(k) => write!(f, " key k{k}")?,
                        None => {}
                    }
                    if s.priority > 0 {
                        write!(f, " pri{}", s.priority)?;
                    }
                }
                write!(f, "]")
            }
            Op::Connect(w) => write!(f, "Connect w{w}"),
            Op::Credit { w, cpu, io } => write!(f, "Credit w{w} cpu {cpu} io {io}"),
            Op::Result { w, pick, out, two } => {
                let n = if *two { "two results" } else { "result" };
                write!(f, "Result w{w} {n} {out:?} (pick {pick})")
            }
            Op::Resend(w) => write!(f, "Resend w{w}"),
            Op::Stale { w, pick } => write!(f, "Stale w{w} (pick {pick})"),
            Op::Close(w) => write!(f, "Close w{w}"),
            Op::Expire(w) => write!(f, "Expire w{w}"),
            Op::Restart(w) => write!(f, "Restart w{w}"),
            Op::Drain(w) => write!(f, "Drain w{w}"),
            Op::Return { w, n } => write!(f, "Return w{w} up to {n}"),
            Op::Cancel(p) => write!(f, "Cancel (pick {p})"),
            Op::Retry(None) => write!(f, "Retry all failed"),
            Op::Retry(Some(p)) => write!(f, "Retry one failed (pick {p})"),
            Op::Tick => write!(f, "Tick"),
            Op::Advance => write!(f, "Advance past backoff"),
            Op::Purge { full } => {
                let by = if *full {
                    "retention"
                } else {
                    "half the retention"
                };
                write!(f, "Purge after {by}")
            }
            Op::Read(p) => write!(f, "Read (pick {p})"),
            Op::DirtyRead(p) => write!(f, "DirtyRead (pick {p})"),
            Op::Commit => write!(f, "Commit"),
            Op::Crash => write!(f, "Crash"),
            Op::Burn => write!(f, "Burn"),
        }
    }
}

/// A generated case: the settings and the history.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) seed: u64,
    /// The first retry's backoff: 0 (retried jobs are queued at once) or
    /// 1 s (they wait in the delay queue until the clock moves).
    pub(super) retry_base_ms: u64,
    pub(super) ops: Vec<Op>,
}

impl Case {
    pub(super) fn generate(seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let retry_base_ms = if rng.random_bool(0.5) { 0 } else { 1000 };
        let len = rng.random_range(10..=80);
        let mut burned = false;
        let ops = (0..len)
            .map(|_| match gen_op(&mut rng) {
                // One burn is enough to reach the compaction, and each costs
                // as much as a whole history.
                Op::Burn if std::mem::replace(&mut burned, true) => Op::Commit,
                op => op,
            })
            .collect();
        Case {
            seed,
            retry_base_ms,
            ops,
        }
    }
}

fn gen_op(rng: &mut StdRng) -> Op {
    let w = rng.random_range(0..WORKERS);
    let pick = rng.random();
    // Weights: dense in the steps that move jobs, with enough commits that
    // most changes become durable, and crashes often enough that a
    // history usually has one or two.
    let table: &[(u32, u8)] = &[
        (100, 0), // submit
        (60, 1),  // connect
        (125, 2), // credit
        (150, 3), // result
        (30, 4),  // resend
        (25, 5),  // stale
        (25, 6),  // close
        (20, 7),  // expire
        (20, 8),  // restart
        (40, 9),  // drain
        (55, 10), // return
        (30, 11), // cancel
        (40, 12), // retry
        (15, 13), // tick
        (40, 14), // advance
        (20, 15), // purge
        (40, 16), // read
        (20, 17), // dirty read
        (89, 18), // commit
        (55, 19), // crash
        (1, 20),  // burn
    ];
    let roll = rng.random_range(0..table.iter().map(|(w, _)| w).sum::<u32>());
    let mut acc = 0;
    let mut kind = 18;
    for &(weight, k) in table {
        acc += weight;
        if roll < acc {
            kind = k;
            break;
        }
    }
    match kind {
        0 => {
            let n = rng.random_range(1..=4);
            let mut used = HashSet::new();
            let specs = (0..n)
                .map(|_| {
                    // Keys come from a small pool, distinct within a
                    // submit, as overlapping chunks of a map would have;
                    // now and then one is over the limit.
                    let key = rng
                        .random_bool(0.4)
                        .then(|| {
                            if rng.random_bool(0.02) {
                                OVERLONG_KEY
                            } else {
                                rng.random_range(0..KEYS)
                            }
                        })
                        .filter(|k| used.insert(*k));
                    Spec {
                        io: rng.random_bool(0.3),
                        max_attempts: rng.random_range(1..=3),
                        key,
                        priority: rng.random_range(0..=1),
                    }
                })
                .collect();
            Op::Submit(specs)
        }
        1 => Op::Connect(w),
        2 => {
            let (cpu, io) = loop {
                let (c, i) = (rng.random_range(0..=3), rng.random_range(0..=2));
                if c + i > 0 {
                    break (c, i);
                }
            };
            Op::Credit { w, cpu, io }
        }
        3 => {
            let out = match rng.random_range(0..100) {
                0..60 => Out::Ok,
                60..85 => Out::Retryable,
                85..95 => Out::Fatal,
                _ => Out::Empty,
            };
            Op::Result {
                w,
                pick,
                out,
                two: rng.random_bool(0.3),
            }
        }
        4 => Op::Resend(w),
        5 => Op::Stale { w, pick },
        6 => Op::Close(w),
        7 => Op::Expire(w),
        8 => Op::Restart(w),
        9 => Op::Drain(w),
        10 => Op::Return {
            w,
            n: rng.random_range(1..=3),
        },
        11 => Op::Cancel(pick),
        12 => Op::Retry(rng.random_bool(0.5).then_some(pick)),
        13 => Op::Tick,
        14 => Op::Advance,
        15 => Op::Purge {
            full: rng.random_bool(0.7),
        },
        16 => Op::Read(pick),
        17 => Op::DirtyRead(pick),
        19 => Op::Crash,
        20 => Op::Burn,
        _ => Op::Commit,
    }
}

#[test]
fn keys_are_at_and_over_the_limit() {
    assert_eq!(key_name(0), "k0");
    assert_eq!(key_name(KEYS - 1).len(), MAX_KEY_BYTES);
    assert_eq!(key_name(OVERLONG_KEY).len(), MAX_KEY_BYTES + 1);
}
