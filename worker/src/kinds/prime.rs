//! The `prime` job: is n prime, and how sure is the answer.
//!
//! Below 2^64 the `machine-prime` crate answers deterministically. Above,
//! Baillie-PSW on `dashu-int`'s Montgomery arithmetic: trial division, a
//! strong Fermat test to base 2 and a strong Lucas test with Selfridge's
//! parameters. No composite passing both is known, but none is proven not to
//! exist, hence [`Certainty::Probable`].

use std::sync::OnceLock;

use dashu_int::{
    UBig,
    monty::MontgomeryRepr,
    ops::{BitTest, SquareRoot},
};
use drover_common::pb::Certainty;

/// Returns whether `n` is prime, and how sure that answer is.
///
/// `n` is decimal digits, as validated by the master (no sign, no spaces).
/// Below 2^64 the answer is [`Certainty::Proven`]; above, it comes from
/// Baillie-PSW and is [`Certainty::Probable`]. Anything that is not digits
/// is reported as not prime with [`Certainty::Unspecified`], rather than
/// panicking and taking the worker's child process down with it.
///
/// In a release build a 4,000-digit prime takes about 2 s (GMP's test:
/// 1 s) and a 4,000-digit composite without small factors 0.6 s; nine in ten
/// composites of that size have a factor below 2^16 and take milliseconds.
pub fn is_prime_decimal(n: &str) -> (bool, Certainty) {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return (false, Certainty::Unspecified);
    }
    match n.parse::<u64>() {
        Ok(small) => (machine_prime::is_prime(small), Certainty::Proven),
        // Digits only, so the only possible error is overflow.
        Err(_) => match UBig::from_str_radix(n, 10) {
            Ok(big) => (is_probable_prime(&big), Certainty::Probable),
            Err(_) => (false, Certainty::Unspecified),
        },
    }
}

/// Returns the Baillie-PSW verdict on `n`; exact for every n < 2^64.
pub(crate) fn is_probable_prime(n: &UBig) -> bool {
    match trial_division(n) {
        Some(verdict) => verdict,
        None => {
            let ring = MontgomeryRepr::new(n.clone());
            strong_fermat_base2(n, &ring) && !is_square(n) && strong_lucas(n, &ring)
        }
    }
}

/// Primes below this are sieved once and tried as divisors of large n.
const SIEVE_LIMIT: u32 = 1 << 16;

/// Returns the odd primes below [`SIEVE_LIMIT`].
fn small_primes() -> &'static [u32] {
    static PRIMES: OnceLock<Vec<u32>> = OnceLock::new();
    PRIMES.get_or_init(|| {
        let limit = SIEVE_LIMIT as usize;
        let mut composite = vec![false; limit];
        let mut primes = Vec::new();
        for i in 3..limit {
            if !composite[i] {
                primes.push(i as u32);
                for j in (i * i..limit).step_by(2 * i) {
                    composite[j] = true;
                }
            }
        }
        primes
    })
}

/// Divides `n` by small primes: returns the verdict when that settles it,
/// `None` when `n` has no factor below the bound and is above its square.
fn trial_division(n: &UBig) -> Option<bool> {
    if *n < UBig::from(4u8) {
        return Some(*n >= UBig::from(2u8));
    }
    if !n.bit(0) {
        return Some(false);
    }
    // A Fermat test costs about bits^2.6 word operations and a round of trial
    // division about bits / 64 * (number of primes) / 4: trying more primes
    // pays while they still remove a useful share of the composites.
    let bound = (n.bit_len() * 8).clamp(256, SIEVE_LIMIT as usize) as u64;
    let small = n.bit_len() <= 64;
    let primes = small_primes();
    let mut i = 0;
    while i < primes.len() && u64::from(primes[i]) < bound {
        // One remainder by a product of several primes, then the primes one
        // by one on the remainder: one pass over n's words per group.
        let start = i;
        let mut product = u64::from(primes[i]);
        i += 1;
        while i < primes.len()
            && let Some(p) = product.checked_mul(u64::from(primes[i]))
        {
            product = p;
            i += 1;
        }
        let rem: u64 = n % product;
        for &p in &primes[start..i] {
            let p = u64::from(p);
            if rem.is_multiple_of(p) {
                return Some(small && *n == UBig::from(p));
            }
            if small && UBig::from(p * p) > *n {
                return Some(true);
            }
        }
    }
    None
}

/// The strong probable-prime test to base 2 (Miller-Rabin with one base).
fn strong_fermat_base2(n: &UBig, ring: &MontgomeryRepr) -> bool {
    let n_minus_1 = n - UBig::ONE;
    let s = n_minus_1.trailing_zeros().unwrap_or(0);
    let d = &n_minus_1 >> s;
    let one = ring.reduce(1u8);
    let minus_one = -&one;
    // Square and double: with base 2 the multiplications of a generic
    // modular power become doublings.
    let mut x = one.clone();
    for bit in (0..d.bit_len()).rev() {
        x = x.sqr();
        if d.bit(bit) {
            x = x.dbl();
        }
    }
    if x == one || x == minus_one {
        return true;
    }
    for _ in 1..s {
        x = x.sqr();
        if x == minus_one {
            return true;
        }
        if x == one {
            return false;
        }
    }
    false
}

/// Returns whether `n` is a perfect square, for which no Selfridge D exists.
fn is_square(n: &UBig) -> bool {
    let r = n.sqrt();
    r.sqr() == *n
}

/// The strong Lucas probable-prime test with Selfridge's method A: the first
/// D in 5, -7, 9, -11, ... with Jacobi symbol (D/n) = -1, P = 1,
/// Q = (1 - D) / 4. `n` is odd and not a square.
///
/// It runs on the sequence with Q = 1 instead, which costs two modular
/// products per bit of n where (P, Q) costs three (the powers of Q). With
/// a = alpha / beta for the roots alpha, beta of x^2 - x + Q, let
/// W_j = a^j + a^-j, the V sequence of (P', 1) with P' = 1/Q - 2. Writing
/// n + 1 = d 2^s, d odd, d = 2j + 1, the conditions of the strong test become,
/// up to factors of Q and 2 (units mod n):
///
/// - U_d = 0 iff W_(j+1) = W_j,
/// - V_d = 0 iff W_(j+1) = -W_j,
/// - V_(d 2^r) = 0 iff W_(d 2^(r-1)) = 0, for 1 <= r < s,
///
/// from V_(2k) = Q^k W_k, alpha^d = Q^j alpha a^j, and
/// 2 W_(j+1) = P' W_j + D' U'_j with D' = D / Q^2.
fn strong_lucas(n: &UBig, ring: &MontgomeryRepr) -> bool {
    let mut disc: i64 = 5;
    loop {
        match jacobi(disc, n) {
            -1 => break,
            // A common factor, and a proper one unless n = |D|.
            0 if UBig::from(disc.unsigned_abs()) != *n => return false,
            _ => {}
        }
        disc = if disc > 0 { -(disc + 2) } else { -disc + 2 };
    }
    let q = (1 - disc) / 4;
    // Q shares a factor with n: composite (n > |Q| after trial division).
    let Some(q_inv) = ring.reduce(q).inv() else {
        return UBig::from(q.unsigned_abs()) == *n;
    };
    let two = ring.reduce(2u8);
    let p1 = q_inv - &two;

    let n_plus_1 = n + UBig::ONE;
    let s = n_plus_1.trailing_zeros().unwrap_or(0);
    let j = &n_plus_1 >> (s + 1);

    // Ladder on (W_i, W_(i+1)) from i = 0 over the bits of j, with
    // W_(2i) = W_i^2 - 2 and W_(2i+1) = W_i W_(i+1) - P'.
    let mut w = two.clone();
    let mut w1 = p1.clone();
    for bit in (0..j.bit_len()).rev() {
        let cross = &w * &w1 - &p1;
        if j.bit(bit) {
            w1 = w1.sqr() - &two;
            w = cross;
        } else {
            w = w.sqr() - &two;
            w1 = cross;
        }
    }
    if w1 == w || w1 == -&w {
        return true;
    }
    // W_d, then W_(2d), ... W_(d 2^(s-2)).
    let zero = ring.reduce(0u8);
    let mut w = &w * &w1 - &p1;
    for r in 1..s {
        if w == zero {
            return true;
        }
        if r + 1 < s {
            w = w.sqr() - &two;
        }
    }
    false
}

/// The Jacobi symbol (a/n), for odd n > 0 and a small.
fn jacobi(a: i64, n: &UBig) -> i32 {
    let n_mod_8: u64 = n % 8u64;
    let mut result = 1;
    // (-1/n) = -1 exactly when n = 3 (mod 4).
    if a < 0 && n_mod_8 % 4 == 3 {
        result = -result;
    }
    let mut a = a.unsigned_abs();
    if a == 0 {
        return i32::from(*n == UBig::ONE);
    }
    // (2/n) = -1 exactly when n = 3 or 5 (mod 8).
    let twos = a.trailing_zeros();
    a >>= twos;
    if twos % 2 == 1 && (n_mod_8 == 3 || n_mod_8 == 5) {
        result = -result;
    }
    // Quadratic reciprocity, then the rest in u64.
    if a % 4 == 3 && n_mod_8 % 4 == 3 {
        result = -result;
    }
    let n_mod_a: u64 = n % a;
    result * jacobi_u64(n_mod_a, a)
}

/// The Jacobi symbol (a/n) for odd n > 0.
fn jacobi_u64(mut a: u64, mut n: u64) -> i32 {
    let mut result = 1;
    a %= n;
    while a != 0 {
        let twos = a.trailing_zeros();
        a >>= twos;
        if twos % 2 == 1 && (n % 8 == 3 || n % 8 == 5) {
            result = -result;
        }
        if a % 4 == 3 && n % 4 == 3 {
            result = -result;
        }
        (a, n) = (n % a, a);
    }
    if n == 1 { result } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Primality by trial division: slow, obvious, independent.
    fn reference(n: u64) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    fn big(n: &str) -> UBig {
        UBig::from_str_radix(n, 10).expect("digits")
    }

    fn pow2(k: usize) -> UBig {
        UBig::ONE << k
    }

    fn check(n: &str, prime: bool, certainty: Certainty) {
        assert_eq!(is_prime_decimal(n), (prime, certainty), "n = {n}");
    }

    #[test]
    fn numbers_of_the_python_notes() {
        check("1112272535095293", false, Certainty::Proven);
        check("1112582705942171", true, Certainty::Proven);
        check("1112272535095291", true, Certainty::Proven);
        check("1115280095190773", false, Certainty::Proven);
        check("1115797848077099", false, Certainty::Proven);
        check("11099726899285419", false, Certainty::Proven);
    }

    #[test]
    fn smallest_numbers() {
        check("0", false, Certainty::Proven);
        check("1", false, Certainty::Proven);
        check("2", true, Certainty::Proven);
        check("3", true, Certainty::Proven);
        check("4", false, Certainty::Proven);
    }

    #[test]
    fn not_digits_is_not_prime() {
        for n in ["", "+7", "-7", "7 ", "1e9", "٣"] {
            check(n, false, Certainty::Unspecified);
        }
    }

    #[test]
    fn agrees_with_trial_division_below_100000() {
        for n in 0..100_000u64 {
            let want = reference(n);
            assert_eq!(
                is_prime_decimal(&n.to_string()),
                (want, Certainty::Proven),
                "n = {n}"
            );
            assert_eq!(is_probable_prime(&UBig::from(n)), want, "bpsw, n = {n}");
        }
    }

    /// Odd composites below 100000 that pass each half of the test: the
    /// strong pseudoprimes to base 2 (OEIS A001262) and the strong Lucas
    /// pseudoprimes with Selfridge's parameters (OEIS A217255).
    const SPSP2: [u64; 16] = [
        2047, 3277, 4033, 4681, 8321, 15841, 29341, 42799, 49141, 52633, 65281, 74665, 80581,
        85489, 88357, 90751,
    ];
    const SLPSP: [u64; 12] = [
        5459, 5777, 10877, 16109, 18971, 22499, 24569, 25199, 40309, 58519, 75077, 97439,
    ];

    #[test]
    fn each_half_of_bpsw_fails_exactly_on_its_pseudoprimes() {
        // Without trial division in front, each test alone lets through
        // exactly its known pseudoprimes, so both are implemented as
        // published; together they let none through.
        for n in (5..100_000u64).step_by(2) {
            let x = UBig::from(n);
            let ring = MontgomeryRepr::new(x.clone());
            let prime = reference(n);
            assert_eq!(
                strong_fermat_base2(&x, &ring),
                prime || SPSP2.contains(&n),
                "sprp, n = {n}"
            );
            if !is_square(&x) {
                assert_eq!(
                    strong_lucas(&x, &ring),
                    prime || SLPSP.contains(&n),
                    "slprp, n = {n}"
                );
            }
        }
    }

    #[test]
    fn carmichael_numbers_and_base_2_pseudoprimes() {
        for n in ["561", "41041", "3215031751", "2047", "3277", "4033"] {
            check(n, false, Certainty::Proven);
        }
    }

    #[test]
    fn u64_edges() {
        // 2^64 - 59, the largest prime below 2^64.
        check("18446744073709551557", true, Certainty::Proven);
        check("18446744073709551615", false, Certainty::Proven);
        // 2^64 + 13, the smallest prime above 2^64 (checked with a Lucas
        // primality certificate: n - 1 = 2^2 * 7 * 658812288346769701, witness 2).
        check("18446744073709551629", true, Certainty::Probable);
        check("18446744073709551616", false, Certainty::Probable);
        check("18446744073709551617", false, Certainty::Probable);
        check("18446744073709551627", false, Certainty::Probable);
    }

    #[test]
    fn mersenne_and_fermat_numbers() {
        for (k, prime) in [
            (67, false),
            (89, true),
            (101, false),
            (127, true),
            (521, true),
        ] {
            let m = pow2(k) - UBig::ONE;
            let ring = MontgomeryRepr::new(m.clone());
            // Every 2^p - 1 with p prime is a strong probable prime to base
            // 2, so the composites among them are left to the Lucas test.
            assert!(strong_fermat_base2(&m, &ring), "2^{k} - 1");
            check(&m.to_string(), prime, Certainty::Probable);
        }
        // 2^128 + 1 = 59649589127497217 * 5704689200685129054721, also a
        // strong pseudoprime to base 2.
        let f7 = pow2(128) + UBig::ONE;
        assert!(strong_fermat_base2(&f7, &MontgomeryRepr::new(f7.clone())));
        check(&f7.to_string(), false, Certainty::Probable);
    }

    #[test]
    fn products_of_large_primes() {
        let p = big("10000000000000000000000000000000000000121");
        let q = big("1000000000000000000000000000000000000000000009");
        check(&p.to_string(), true, Certainty::Probable);
        check(&q.to_string(), true, Certainty::Probable);
        check(&(&p * &q).to_string(), false, Certainty::Probable);
        // A square passes neither test's preconditions; it must not hang the
        // search for D.
        check(&(&p * &p).to_string(), false, Certainty::Probable);
    }

    #[test]
    fn jacobi_symbol_matches_euler_criterion() {
        // For an odd prime p, (a/p) = a^((p-1)/2) mod p.
        for p in [3u64, 5, 7, 11, 13, 101, 65_537] {
            for a in -40i64..40 {
                let r = u128::from(a.rem_euclid(p as i64) as u64);
                let mut e = (p - 1) / 2;
                let (mut acc, mut base) = (1u128, r);
                while e > 0 {
                    if e & 1 == 1 {
                        acc = acc * base % u128::from(p);
                    }
                    base = base * base % u128::from(p);
                    e >>= 1;
                }
                let want = match acc as u64 {
                    0 => 0,
                    1 => 1,
                    _ => -1,
                };
                assert_eq!(jacobi(a, &UBig::from(p)), want, "({a}/{p})");
            }
        }
    }
}
