//! Fuzzes the job-argument parser the master checks every submit with
//! (fib n, prime digits, sleep ms): it must never panic, accept only what
//! is within the limits, and keep its error messages short whatever the
//! input's length.

#![no_main]

use drover_common::job::JobArgs;
use drover_common::{Limits, pb::JobKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(arg) = std::str::from_utf8(rest) else {
        return;
    };
    // Mostly the real kinds, sometimes others.
    let kind = i32::from(kind % 5) - 1;
    let limits = Limits {
        max_fib_n: 100_000,
        max_prime_digits: 64,
        max_sleep_ms: 1_000,
        max_batch_jobs: 10,
    };
    match JobArgs::parse(kind, arg, &limits) {
        Ok(JobArgs::Fib(n)) => {
            assert_eq!(kind, JobKind::Fib as i32);
            assert!(n <= limits.max_fib_n);
            assert_eq!(arg.parse::<u64>().ok(), Some(n));
        }
        Ok(JobArgs::Prime(n)) => {
            assert_eq!(kind, JobKind::Prime as i32);
            assert!(arg.len() <= limits.max_prime_digits);
            assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            assert!(n == "0" || !n.starts_with('0'), "{n}");
        }
        Ok(JobArgs::Sleep(ms)) => {
            assert_eq!(kind, JobKind::Sleep as i32);
            assert!(ms <= limits.max_sleep_ms);
        }
        Err(e) => assert!(e.len() < 400, "a {}-byte error", e.len()),
    }
});
