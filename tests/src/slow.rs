//! Jobs slow enough to catch in their child process, and the wait that
//! catches them there.
//!
//! F(10^7) took seconds before fib moved to a number-theoretic transform;
//! it now ends in about 0.1 s, too soon for a test to find it running. A
//! prime of a few thousand digits keeps a child busy for a time that does
//! not depend on fib's speed: Baillie-PSW on it is thousands of modular
//! squarings, and no shortcut (trial division, the Fermat test) ends it
//! early. The primes came from `openssl prime -generate -bits N`.

use std::time::Duration;

use crate::{Master, Worker, sys, wait_for};

/// A 3,914-digit prime (13,000 bits): about 2 s of one core in the
/// worker's child (the test profile builds the worker at opt-level 2), under
/// the master's default `--max-prime-digits` of 4,000.
pub const SLOW_PRIME: &str = include_str!("../data/prime-13000-bits.txt");

/// A 1,506-digit prime (5,000 bits): a few hundred milliseconds, for maps
/// that must still be in progress while the test looks at them.
pub const MEDIUM_PRIME: &str = include_str!("../data/prime-5000-bits.txt");

/// Waits up to a minute until job `id` is running in the child process of
/// `worker` (which has one process) and that child is computing (state R,
/// not merely alive, or killing or stopping it would not hit the job), and
/// returns the child's pid.
#[track_caller]
pub fn busy_child(master: &Master, worker: &Worker, id: &str) -> u32 {
    wait_for(
        Duration::from_secs(60),
        "the job's child to be computing",
        || {
            if master.job(id).state != "running" {
                return None;
            }
            let status = master.status();
            let pids = &status.worker(worker.name())?.child_pids;
            assert!(
                pids.len() <= 1,
                "a worker with --processes 1 lists children {pids:?}"
            );
            (pids.len() == 1 && sys::proc_state(pids[0]) == Some('R')).then_some(pids[0])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_jobs_are_primes_of_the_sizes_they_claim() {
        for (p, digits) in [(SLOW_PRIME, 3_914), (MEDIUM_PRIME, 1_506)] {
            assert_eq!(p.len(), digits);
            assert!(p.bytes().all(|b| b.is_ascii_digit()), "digits only");
            // Odd, and not a multiple of 3 or 5: a prime, not a typo.
            let sum: u32 = p.bytes().map(|b| u32::from(b - b'0')).sum();
            assert!(
                p.ends_with(['1', '3', '7', '9']) && !sum.is_multiple_of(3),
                "{p}"
            );
        }
    }
}
