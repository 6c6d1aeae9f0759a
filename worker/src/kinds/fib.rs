//! The `fib` job: F(n), exact, as a decimal string.
//!
//! F(n) comes from fast doubling on `dashu-int`; the decimal conversion, which
//! dominates for large n, is a divide and conquer of our own.

use dashu_int::{
    UBig,
    ops::{BitTest, DivRem},
};

/// Returns F(n) in decimal, with F(0) = 0 and F(1) = 1.
///
/// F(10^7) has 2,089,877 digits and takes about half a second in a release
/// build; the master caps n, so the time and memory stay bounded.
pub fn fib_decimal(n: u64) -> String {
    to_decimal(&fib(n))
}

/// Returns F(n).
pub(crate) fn fib(n: u64) -> UBig {
    if n < 2 {
        return UBig::from(n);
    }
    // GMP's formulation of fast doubling: the pair (F(k), F(k-1)) costs two
    // squarings per bit, where the textbook (F(k), F(k+1)) costs a
    // multiplication and two squarings; squaring is about 30% cheaper here.
    let half = n >> 1;
    let (mut a, mut b) = (UBig::ONE, UBig::ZERO);
    let mut k_odd = true;
    for bit in (0..half.ilog2()).rev() {
        let a2 = a.sqr();
        let b2 = b.sqr();
        // F(2k+1) = 4F(k)^2 - F(k-1)^2 + 2(-1)^k, F(2k-1) = F(k)^2 + F(k-1)^2.
        let f2k1 = if k_odd {
            (&a2 << 2) - &b2 - 2u8
        } else {
            (&a2 << 2) - &b2 + 2u8
        };
        let f2km1 = a2 + b2;
        let f2k = &f2k1 - &f2km1;
        k_odd = (half >> bit) & 1 == 1;
        (a, b) = if k_odd { (f2k1, f2k) } else { (f2k, f2km1) };
    }
    // The last step needs only one of the pair: one multiplication instead
    // of two squarings.
    if n & 1 == 0 {
        // F(2k) = F(k) (F(k) + 2F(k-1))
        let t = &a + (b << 1);
        a * t
    } else {
        // F(2k+1) = (2F(k) + F(k-1)) (2F(k) - F(k-1)) + 2(-1)^k
        let a2 = a << 1;
        let p = (&a2 + &b) * (a2 - b);
        if k_odd { p - 2u8 } else { p + 2u8 }
    }
}

/// Decimal digits per leaf of the conversion: a leaf is at most this many
/// digits, converted with word arithmetic.
const LEAF_DIGITS: usize = 19 * 16;

/// 10^19, the largest power of ten in a u64: the base of the leaf conversion.
const TEN19: u64 = 10_000_000_000_000_000_000;

/// Numbers of at most this many bits (about 150 digits) are left to dashu's
/// conversion.
const SMALL_BITS: usize = 512;

/// Returns the decimal digits of `x`.
///
/// Divide and conquer: `x` is split by 10^(LEAF_DIGITS * 2^i) into a high
/// part and a low part padded with zeros, recursively, down to leaves
/// converted with word arithmetic.
pub(crate) fn to_decimal(x: &UBig) -> String {
    // dashu's own conversion is faster below a few hundred digits (measured
    // crossover: 150 to 300); above, this one is 5 to 15% faster, its
    // divisions by 5^e after a shift being smaller than dashu's by 10^e.
    if x.as_words().len() * (dashu_int::Word::BITS as usize) <= SMALL_BITS {
        x.to_string()
    } else {
        divide_and_conquer(x)
    }
}

/// Returns the decimal digits of `x`, by [`to_decimal`]'s divide and conquer
/// whatever its size.
fn divide_and_conquer(x: &UBig) -> String {
    let powers = Powers::new(x);
    let mut out = Vec::new();
    powers.write_top(x.clone(), &mut out);
    // Only ASCII digits were written.
    String::from_utf8(out).expect("decimal digits are ASCII")
}

/// The powers of ten the conversion splits by.
struct Powers {
    /// `pow5[i]` is 5^(LEAF_DIGITS * 2^i): 10^e = 5^e * 2^e, and dividing by
    /// the odd factor after a shift is cheaper than dividing by 10^e.
    pow5: Vec<UBig>,
}

impl Powers {
    /// Computes the powers needed to convert `x`: those of the splits not
    /// above it.
    fn new(x: &UBig) -> Self {
        let mut pow5 = Vec::new();
        let mut p = UBig::from(5u8).pow(LEAF_DIGITS);
        let mut e = LEAF_DIGITS;
        while ten_pow_le(&p, e, x) {
            // The next square costs as much as a split at the top: skip it
            // when its bit length alone puts it above x.
            let too_big = 2 * p.bit_len() - 1 + 2 * e > x.bit_len();
            let next = if too_big { None } else { Some(p.sqr()) };
            pow5.push(p);
            match next {
                Some(next) => p = next,
                None => break,
            }
            e *= 2;
        }
        Self { pow5 }
    }

    /// Splits `x` into `x / 10^e` and `x % 10^e`, e = LEAF_DIGITS * 2^i.
    fn split(&self, x: UBig, i: usize) -> (UBig, UBig) {
        let e = LEAF_DIGITS << i;
        let (lo, hi) = x.split_bits(e);
        let (q, r) = hi.div_rem(&self.pow5[i]);
        (q, (r << e) | lo)
    }

    /// Appends the digits of `x`, without leading zeros.
    fn write_top(&self, x: UBig, out: &mut Vec<u8>) {
        // The largest split below x: x < 10^(2e), so both halves fit in e
        // digits.
        match self
            .pow5
            .iter()
            .enumerate()
            .rev()
            .find(|(i, p)| ten_pow_le(p, LEAF_DIGITS << i, &x))
        {
            None => {
                let mut leaf = [0u8; LEAF_DIGITS];
                write_leaf(&x, &mut leaf);
                let start = leaf
                    .iter()
                    .position(|&d| d != b'0')
                    .unwrap_or(LEAF_DIGITS - 1);
                out.extend_from_slice(&leaf[start..]);
            }
            Some((i, _)) => {
                let (q, r) = self.split(x, i);
                self.write_top(q, out);
                let start = out.len();
                out.resize(start + (LEAF_DIGITS << i), 0);
                self.write_padded(r, i, &mut out[start..]);
            }
        }
    }

    /// Writes `x < 10^out.len()` into `out`, padded with leading zeros;
    /// `out.len()` is LEAF_DIGITS * 2^i.
    fn write_padded(&self, x: UBig, i: usize, out: &mut [u8]) {
        if x.is_zero() {
            // Long runs of zeros cost no divisions.
            out.fill(b'0');
        } else if i == 0 {
            write_leaf(&x, out);
        } else {
            let (q, r) = self.split(x, i - 1);
            let (high, low) = out.split_at_mut(out.len() / 2);
            self.write_padded(q, i - 1, high);
            self.write_padded(r, i - 1, low);
        }
    }
}

/// Returns whether 10^e <= x, given `pow5` = 5^e.
fn ten_pow_le(pow5: &UBig, e: usize, x: &UBig) -> bool {
    // Bit lengths decide but for one length in about log2(10) = 3.3.
    let bits = pow5.bit_len() + e;
    match bits.cmp(&x.bit_len()) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => (pow5 << e) <= *x,
    }
}

/// Writes `x < 10^out.len()` into `out`, padded with leading zeros, by
/// repeated division of its words by 10^19.
fn write_leaf(x: &UBig, out: &mut [u8]) {
    let mut words = words_u64(x);
    let div = Ten19Divider::new();
    for chunk in out.rchunks_mut(19) {
        while words.last() == Some(&0) {
            words.pop();
        }
        let mut rem = 0u64;
        for w in words.iter_mut().rev() {
            (*w, rem) = div.div_rem(rem, *w);
        }
        write_chunk(rem, chunk);
    }
}

/// Writes the low `out.len()` decimal digits of `v`, padded with zeros.
fn write_chunk(mut v: u64, out: &mut [u8]) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The little-endian 64-bit words of `x`, whatever dashu's word size.
fn words_u64(x: &UBig) -> Vec<u64> {
    x.to_le_bytes()
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// Division of a two-word number by 10^19 with a precomputed reciprocal
/// (Möller and Granlund, "Improved division by invariant integers", 2011):
/// a u128 division is a libcall several times slower.
struct Ten19Divider {
    /// floor((2^128 - 1) / 10^19) - 2^64; 10^19 has its top bit set, so no
    /// normalising shift is needed.
    inv: u64,
}

impl Ten19Divider {
    fn new() -> Self {
        // The quotient is below 2^65, so the truncation drops only the 2^64.
        let inv = (u128::MAX / u128::from(TEN19)) as u64;
        Self { inv }
    }

    /// Returns `(hi * 2^64 + lo) / 10^19` and the remainder; needs hi < 10^19.
    #[inline]
    fn div_rem(&self, hi: u64, lo: u64) -> (u64, u64) {
        let d = TEN19;
        let q = (u128::from(self.inv) * u128::from(hi))
            .wrapping_add((u128::from(hi) << 64) | u128::from(lo));
        let mut q1 = ((q >> 64) as u64).wrapping_add(1);
        let q0 = q as u64;
        let mut r = lo.wrapping_sub(q1.wrapping_mul(d));
        if r > q0 {
            q1 = q1.wrapping_sub(1);
            r = r.wrapping_add(d);
        }
        if r >= d {
            q1 += 1;
            r -= d;
        }
        (q1, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F(0), F(1), ... in decimal by schoolbook addition in base 10^9,
    /// sharing no code with the functions under test.
    fn fib_by_addition(up_to: usize) -> Vec<String> {
        const BASE: u32 = 1_000_000_000;
        let (mut a, mut b) = (vec![0u32], vec![1u32]);
        let mut out = Vec::with_capacity(up_to + 1);
        for _ in 0..=up_to {
            let mut s = a.last().expect("never empty").to_string();
            for limb in a.iter().rev().skip(1) {
                s.push_str(&format!("{limb:09}"));
            }
            out.push(s);
            let mut sum = Vec::with_capacity(b.len() + 1);
            let mut carry = 0;
            for (i, &limb) in b.iter().enumerate() {
                let t = a.get(i).copied().unwrap_or(0) + limb + carry;
                sum.push(t % BASE);
                carry = t / BASE;
            }
            if carry > 0 {
                sum.push(carry);
            }
            (a, b) = (b, sum);
        }
        out
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn small_values_match_the_table() {
        let table = [
            1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765,
        ];
        assert_eq!(fib_decimal(0), "0");
        assert_eq!(fib_decimal(1), "1");
        for (n, want) in (2..=20).zip(table) {
            assert_eq!(fib_decimal(n), want.to_string(), "F({n})");
        }
    }

    #[test]
    fn u64_boundary() {
        // F(93) is the largest Fibonacci number in a u64.
        assert_eq!(fib_decimal(93), "12200160415121876738");
        assert_eq!(fib_decimal(94), "19740274219868223167");
    }

    #[test]
    fn up_to_1000_match_addition() {
        for (n, want) in fib_by_addition(1000).iter().enumerate() {
            assert_eq!(&fib_decimal(n as u64), want, "F({n})");
        }
    }

    #[test]
    fn large_value_digits_and_ends() {
        let f = fib_decimal(100_000);
        assert_eq!(f.len(), 20_899);
        assert!(f.starts_with("25974069347221724166"), "{}", &f[..20]);
        assert!(
            f.ends_with("49895374653428746875"),
            "{}",
            &f[f.len() - 20..]
        );
    }

    /// Checks the conversion both against dashu's and as the inverse of
    /// dashu's parser, which shares no code with it.
    fn check(digits: &str) {
        let x = UBig::from_str_radix(digits, 10).expect("digits");
        let ours = to_decimal(&x);
        assert_eq!(divide_and_conquer(&x), ours, "{} digits", digits.len());
        assert_eq!(
            ours,
            x.to_string(),
            "against dashu, {} digits",
            digits.len()
        );
        let trimmed = digits.trim_start_matches('0');
        let want = if trimmed.is_empty() { "0" } else { trimmed };
        assert_eq!(ours, want, "round trip, {} digits", digits.len());
    }

    #[test]
    fn conversion_of_powers_of_ten_and_their_neighbours() {
        // Around every split size, where an off-by-one in padding would show.
        let sizes = [
            1, 18, 19, 20, 37, 38, 39, 303, 304, 305, 607, 608, 609, 1216, 1217, 2432, 2433,
        ];
        for k in sizes {
            let power = format!("1{}", "0".repeat(k));
            check(&power);
            check(&"9".repeat(k));
            check(&format!("1{}1", "0".repeat(k)));
        }
        check("0");
    }

    #[test]
    fn conversion_of_random_numbers_with_zero_runs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let len = 1 + rng.below(6000) as usize;
            let mut s = String::with_capacity(len);
            while s.len() < len {
                // Mostly short runs, some long enough to span a leaf.
                let max_run = if rng.below(4) == 0 { 800 } else { 40 };
                let run = (1 + rng.below(max_run) as usize).min(len - s.len());
                match rng.below(3) {
                    0 => s.extend(std::iter::repeat_n('0', run)),
                    1 => s.extend(std::iter::repeat_n('9', run)),
                    _ => s.extend((0..run).map(|_| char::from(b'0' + rng.below(10) as u8))),
                }
            }
            check(&s);
        }
    }

    #[test]
    fn conversion_of_a_deep_tree() {
        // Five levels of splits below the top.
        let mut rng = Rng(7);
        let s: String = (0..40_000)
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect();
        check(&s);
        check(&format!("7{}", "0".repeat(39_999)));
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let div = Ten19Divider::new();
        let mut rng = Rng(3);
        let edges = [0, 1, TEN19 - 1, u64::MAX, 1 << 63];
        for _ in 0..10_000 {
            let hi = if rng.below(2) == 0 {
                rng.below(TEN19)
            } else {
                TEN19 - 1 - rng.below(3)
            };
            let lo = if rng.below(4) == 0 {
                edges[rng.below(5) as usize]
            } else {
                rng.next()
            };
            let n = (u128::from(hi) << 64) | u128::from(lo);
            let want = (
                (n / u128::from(TEN19)) as u64,
                (n % u128::from(TEN19)) as u64,
            );
            assert_eq!(div.div_rem(hi, lo), want, "{n}");
        }
    }
}
