//! `fib_1e6_ms`, `fib_1e7_ms`: the fib kind's own speed, in-process.
//!
//! Calls the worker's `fib_decimal` directly, timing the computation and the
//! conversion to decimal together, since a job's result is the decimal
//! string. The queue adds nothing interesting to a job this big, and GMP's
//! figure (bench/baselines/gmp_fib.py) is measured the same way.

use std::time::Instant;

use anyhow::{Result, bail};

/// The last digits of F(10^7), from research/bignum.md (every library
/// agreed on them).
const FIB_1E7_SUFFIX: &str = "86998673686380546875";

/// Computes F(n) once and returns the time taken in milliseconds, after
/// checking the answer's size (and, for 10^7, its last digits).
pub(crate) fn time_fib(n: u64) -> Result<f64> {
    let start = Instant::now();
    let digits = drover_worker::kinds::fib::fib_decimal(n);
    let ms = start.elapsed().as_secs_f64() * 1e3;

    let want = decimal_digits(n);
    if digits.len() != want {
        bail!("F({n}) has {} digits, expected {want}", digits.len());
    }
    if n == 10_000_000 && !digits.ends_with(FIB_1E7_SUFFIX) {
        bail!("F(10^7) does not end in {FIB_1E7_SUFFIX}");
    }
    Ok(ms)
}

/// The number of decimal digits of F(n), from Binet's formula:
/// F(n) = round(phi^n / sqrt 5). The fractional parts involved are far from
/// integers for the sizes benchmarked, so f64 is exact enough.
fn decimal_digits(n: u64) -> usize {
    if n < 7 {
        return 1; // F(0..=6) = 0, 1, 1, 2, 3, 5, 8
    }
    let phi = (1.0 + 5f64.sqrt()) / 2.0;
    let log = n as f64 * phi.log10() - 5f64.log10() / 2.0;
    log.floor() as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_counts() {
        assert_eq!(decimal_digits(6), 1); // 8
        assert_eq!(decimal_digits(7), 2); // 13
        assert_eq!(decimal_digits(12), 3); // 144
        assert_eq!(decimal_digits(100), 21);
        assert_eq!(decimal_digits(1_000_000), 208_988);
        assert_eq!(decimal_digits(10_000_000), 2_089_877);
    }
}
