//! Expected answers computed here, independently of drover's code, so that
//! a test never checks drover against itself.

/// F(n), exactly, for n <= 186 (F(186) is the largest that fits in u128).
///
/// # Panics
///
/// When n > 186.
pub fn fib_u128(n: u32) -> u128 {
    assert!(n <= 186, "F({n}) does not fit in u128");
    let (mut a, mut b) = (0u128, 1u128);
    for _ in 0..n {
        // b runs one ahead and may wrap on the last step; it is not returned.
        let next = a.wrapping_add(b);
        a = b;
        b = next;
    }
    a
}

/// F(n) mod 10^18: the last 18 decimal digits of F(n), by fast doubling.
pub fn fib_mod_1e18(n: u64) -> u128 {
    const M: u128 = 1_000_000_000_000_000_000;
    // (F(k), F(k+1)) mod M; every product is below 10^36 < 2^128.
    fn go(n: u64) -> (u128, u128) {
        if n == 0 {
            return (0, 1);
        }
        let (a, b) = go(n / 2);
        let c = a * ((2 * b + M - a) % M) % M;
        let d = (a * a % M + b * b % M) % M;
        if n.is_multiple_of(2) {
            (c, d)
        } else {
            (d, (c + d) % M)
        }
    }
    go(n).0
}

/// The number of decimal digits of F(n), for n >= 2: F(n) is the integer
/// nearest phi^n / sqrt(5).
pub fn fib_digits(n: u64) -> u64 {
    let phi = (1.0 + 5f64.sqrt()) / 2.0;
    let log = n as f64 * phi.log10() - 5f64.sqrt().log10();
    log.floor() as u64 + 1
}

/// Whether n is prime, by trial division (for the small n of the tests).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Checks that a job succeeded with F(n): its digit count and its last 18
/// digits.
#[track_caller]
pub fn assert_fib(job: &crate::model::JobLine, n: u64) {
    assert_eq!(job.state, "succeeded", "{job:?}");
    let digits = job.result.as_str().expect("fib's result is a string");
    assert_eq!(
        digits.len() as u64,
        fib_digits(n),
        "F({n}) of {}",
        job.job_id
    );
    assert_eq!(
        digits[digits.len() - 18..].parse::<u128>().ok(),
        Some(fib_mod_1e18(n)),
        "F({n}) of {}",
        job.job_id
    );
}

/// The most `[start, end]` spans open at once. One that ends at the
/// instant another starts does not overlap it: at one instant, ends are
/// counted before starts.
pub fn max_overlap(spans: impl IntoIterator<Item = (u128, u128)>) -> usize {
    let mut edges: Vec<(u128, i32)> = spans
        .into_iter()
        .flat_map(|(s, e)| [(s, 1), (e, -1)])
        .collect();
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_agree_with_known_values() {
        assert_eq!(fib_u128(0), 0);
        assert_eq!(fib_u128(20), 6765);
        assert_eq!(
            fib_u128(186),
            332_825_110_087_067_562_321_196_029_789_634_457_848
        );
        for n in [2u64, 20, 90, 186] {
            assert_eq!(
                fib_mod_1e18(n),
                fib_u128(n as u32) % 1_000_000_000_000_000_000
            );
            assert_eq!(fib_digits(n), fib_u128(n as u32).to_string().len() as u64);
        }
        assert!(is_prime(1_000_003));
        assert!(!is_prime(1_000_001));
    }
}
