//! The `fib` job: F(n), exact, as a decimal string.
//!
//! Fast doubling, computed in decimal. In binary, F(10^7) costs dashu-int
//! about 0.1 s, and its conversion to 2 million decimal digits about 0.6 s:
//! a tree of divisions by powers of ten, which a divide-and-conquer
//! conversion of our own on dashu's division made only 10% faster. So the
//! doubling runs on base-10^16 limbs instead, and nothing is left to
//! convert at the end.
//!
//! Products of 96 limbs and more go through a number-theoretic transform
//! over two primes ([`ntt`]): F(10^7) then takes about 50 ms where GMP takes
//! 180, nearly all of it in the last product and the last two squarings
//! (bench/README.md, "where the time goes"). Smaller ones, and those too
//! long for the two primes, are one binary product on dashu (Kronecker
//! substitution: the limbs are spread into bit fields wide enough that no
//! column of the product overflows its field).

use dashu_int::UBig;

mod ntt;

/// Returns F(n) in decimal, with F(0) = 0 and F(1) = 1.
///
/// F(10^7), 2,089,877 digits, takes about 50 ms in a release build, and a
/// process of 11 MiB at its peak; the master caps n, so the time and memory
/// stay bounded.
pub fn fib_decimal(n: u64) -> String {
    if n <= DECIMAL_MAX_N {
        fib_limbs(n).to_digits()
    } else {
        fib_binary(n).to_string()
    }
}

/// The largest n computed in decimal: F(n)'s operands stay below 2^20 limbs,
/// the size up to which a column of a Kronecker product fits in a u128.
const DECIMAL_MAX_N: u64 = 100_000_000;

/// Returns F(n) in decimal limbs.
fn fib_limbs(n: u64) -> Decimal {
    if n < 2 {
        return Decimal::from_small(n);
    }
    // GMP's formulation of fast doubling: the pair (F(k), F(k-1)) costs two
    // squarings per bit, where the textbook (F(k), F(k+1)) costs a product
    // and two squarings, and a squaring is two thirds of a product.
    let half = n >> 1;
    let (mut a, mut b) = (Decimal::from_small(1), Decimal::from_small(0));
    let mut k_odd = true;
    for bit in (0..half.ilog2()).rev() {
        let a2 = a.sqr();
        let b2 = b.sqr();
        // F(2k+1) = 4F(k)^2 - F(k-1)^2 + 2(-1)^k, F(2k-1) = F(k)^2 + F(k-1)^2,
        // and F(2k) is their difference; only two of the three are kept.
        let c = if k_odd { -2 } else { 2 };
        let f2k = a2.linear(3, &b2, -2, c);
        k_odd = (half >> bit) & 1 == 1;
        (a, b) = if k_odd {
            (a2.linear(4, &b2, -1, c), f2k)
        } else {
            (f2k, a2.linear(1, &b2, 1, 0))
        };
    }
    // The last step needs only one of the pair: one product instead of two
    // squarings.
    if n & 1 == 0 {
        // F(2k) = F(k) (F(k) + 2F(k-1))
        a.mul(&a.linear(1, &b, 2, 0))
    } else {
        // F(2k+1) = (2F(k) + F(k-1)) (2F(k) - F(k-1)) + 2(-1)^k
        let p = a.linear(2, &b, 1, 0).mul(&a.linear(2, &b, -1, 0));
        p.linear(1, &Decimal(Vec::new()), 0, if k_odd { -2 } else { 2 })
    }
}

/// Returns F(n), by the same doubling in binary: for n beyond
/// [`DECIMAL_MAX_N`], and as an independent check in tests.
fn fib_binary(n: u64) -> UBig {
    if n < 2 {
        return UBig::from(n);
    }
    let half = n >> 1;
    let (mut a, mut b) = (UBig::ONE, UBig::ZERO);
    let mut k_odd = true;
    for bit in (0..half.ilog2()).rev() {
        let a2 = a.sqr();
        let b2 = b.sqr();
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
    if n & 1 == 0 {
        let t = &a + (b << 1);
        a * t
    } else {
        let a2 = a << 1;
        let p = (&a2 + &b) * (a2 - b);
        if k_odd { p - 2u8 } else { p + 2u8 }
    }
}

/// The base of [`Decimal`]'s limbs. 10^16 rather than 10^19: a column of a
/// product then fits in a u128 (see [`column_bits`]), for less than 2% more
/// bits than 10^19 would take.
const BASE: u64 = 10_000_000_000_000_000;

/// Decimal digits per limb.
const BASE_DIGITS: usize = 16;

/// Bits in one of dashu's words.
const WORD_BITS: usize = dashu_int::Word::BITS as usize;

/// A natural number in base 10^16: little-endian limbs, each below [`BASE`],
/// without high zero limbs (zero has none).
#[derive(Debug, PartialEq, Eq)]
struct Decimal(Vec<u64>);

impl Decimal {
    /// Returns `v`.
    fn from_small(v: u64) -> Self {
        let mut limbs = vec![v % BASE, v / BASE];
        trim(&mut limbs);
        Self(limbs)
    }

    /// Returns `self * other`.
    fn mul(&self, other: &Self) -> Self {
        Self::product(&self.0, Some(&other.0))
    }

    /// Returns `self * self`, cheaper than [`Decimal::mul`].
    fn sqr(&self) -> Self {
        Self::product(&self.0, None)
    }

    /// Returns `a * b`, or `a * a` when `b` is `None`: by the transform when
    /// it is the faster, else by dashu.
    fn product(a: &[u64], b: Option<&[u64]>) -> Self {
        let b_len = b.map_or(a.len(), <[u64]>::len);
        if a.is_empty() || b_len == 0 {
            return Self(Vec::new());
        }
        let shorter = a.len().min(b_len);
        let use_ntt =
            (NTT_MIN..=ntt::MAX_SHORTER).contains(&shorter) && a.len() + b_len <= ntt::MAX_LEN;
        let mut limbs = match (use_ntt, b) {
            (true, Some(b)) => ntt::mul(a, b),
            (true, None) => ntt::sqr(a),
            (false, _) => kronecker(a, b),
        };
        trim(&mut limbs);
        Self(limbs)
    }

    /// Returns `x self + y other + c`, which must not be negative, in one
    /// pass; |x| and |y| at most 4, |c| below [`BASE`].
    fn linear(&self, x: i64, other: &Self, y: i64, c: i64) -> Self {
        const B: i64 = BASE as i64;
        debug_assert!(x.abs() <= 4 && y.abs() <= 4 && c.abs() < B);
        let len = self.0.len().max(other.0.len());
        let limb = |d: &Self, i: usize| d.0.get(i).map_or(0, |&v| v as i64);
        let mut out = Vec::with_capacity(len + 1);
        let mut carry = c;
        for i in 0..len {
            // |t| < 9 B + B < 2^63.
            let t = x * limb(self, i) + y * limb(other, i) + carry;
            out.push(t.rem_euclid(B) as u64);
            carry = t.div_euclid(B);
        }
        // The limbs are below B^len, so a negative result leaves a negative
        // carry: a bug in the doubling formulas, never an input error, so
        // stop rather than print a wrong number.
        assert!(carry >= 0, "decimal combination went negative");
        out.push(carry as u64);
        trim(&mut out);
        Self(out)
    }
}

impl Decimal {
    /// Returns the number in decimal digits.
    fn to_digits(&self) -> String {
        let Some((top, rest)) = self.0.split_last() else {
            return "0".to_string();
        };
        // By hand rather than `{:016}` per limb: F(10^7) has 130,000 limbs.
        let mut digits = top.to_string().into_bytes();
        let start = digits.len();
        digits.resize(start + rest.len() * BASE_DIGITS, b'0');
        for (chunk, &limb) in digits[start..]
            .chunks_exact_mut(BASE_DIGITS)
            .zip(rest.iter().rev())
        {
            // Two digits at a time from a table, as itoa does: a fifth of
            // the time of a division by 10 per digit.
            let (high, low) = ((limb / 100_000_000) as u32, (limb % 100_000_000) as u32);
            for (quad, v) in chunk.chunks_exact_mut(4).zip([
                high / 10_000,
                high % 10_000,
                low / 10_000,
                low % 10_000,
            ]) {
                let (a, b) = (2 * (v / 100) as usize, 2 * (v % 100) as usize);
                quad.copy_from_slice(&[PAIRS[a], PAIRS[a + 1], PAIRS[b], PAIRS[b + 1]]);
            }
        }
        // Only ASCII digits were written.
        String::from_utf8(digits).expect("ASCII digits")
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_digits())
    }
}

/// "00", "01", ..., "99".
const PAIRS: [u8; 200] = {
    let mut pairs = [0; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// The shorter factor's length from which the transform beats dashu's
/// product.
const NTT_MIN: usize = 96;

/// Drops high zero limbs.
fn trim(limbs: &mut Vec<u64>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
}

/// Returns `a * b`, or `a * a` when `b` is `None`, by one product on dashu
/// (Kronecker substitution), with high zero limbs possibly left. Both must
/// be non-empty.
fn kronecker(a: &[u64], b: Option<&[u64]>) -> Vec<u64> {
    let b_len = b.map_or(a.len(), <[u64]>::len);
    let bits = column_bits(a.len().min(b_len));
    let x = spread(a, bits);
    let product = match b {
        Some(b) => x * spread(b, bits),
        None => x.sqr(),
    };
    gather(&product, bits, a.len() + b_len - 1)
}

/// Returns the width of the bit fields for a product whose shorter factor
/// has `shorter` limbs: a column sums at most `shorter` products of two
/// limbs, each below (10^16)^2 < 2^107.
fn column_bits(shorter: usize) -> usize {
    let bits = 107 + (usize::BITS - shorter.leading_zeros()) as usize;
    // A column plus the carry into it must fit in a u128; DECIMAL_MAX_N
    // keeps the factors short enough.
    assert!(
        bits < 128,
        "factor of {shorter} limbs too long for u128 columns"
    );
    bits
}

/// Returns the sum of `limbs[i] * 2^(bits * i)`: the limbs spread into bit
/// fields.
fn spread(limbs: &[u64], bits: usize) -> UBig {
    let mut words = Vec::with_capacity((limbs.len() * bits).div_ceil(WORD_BITS) + 1);
    // The pending bits, low first; the gap above each limb is all zeros, so
    // at most WORD_BITS - 1 + 54 bits are ever pending.
    let mut pending: u128 = 0;
    let mut pending_bits = 0;
    for &limb in limbs {
        pending |= u128::from(limb) << pending_bits;
        pending_bits += bits;
        while pending_bits >= WORD_BITS {
            words.push(pending as dashu_int::Word);
            pending >>= WORD_BITS;
            pending_bits -= WORD_BITS;
        }
    }
    words.push(pending as dashu_int::Word);
    UBig::from_words(&words)
}

/// Reads `columns` bit fields of `bits` bits from `product` and carries them
/// into base-10^16 limbs.
fn gather(product: &UBig, bits: usize, columns: usize) -> Vec<u64> {
    let words = product.as_words();
    let mask = (1u128 << bits) - 1;
    let mut out = Vec::with_capacity(columns + 3);
    let mut carry: u128 = 0;
    for column in 0..columns {
        let start = column * bits;
        let mut i = start / WORD_BITS;
        let mut field: u128 = 0;
        if let Some(&w) = words.get(i) {
            let offset = start % WORD_BITS;
            field = u128::from(w) >> offset;
            let mut got = WORD_BITS - offset;
            i += 1;
            while got < bits
                && let Some(&w) = words.get(i)
            {
                field |= u128::from(w) << got;
                got += WORD_BITS;
                i += 1;
            }
        }
        // field < 2^bits and carry < 2^(bits - 53): the sum fits in bits + 1
        // <= 128 bits.
        let t = (field & mask) + carry;
        out.push((t % u128::from(BASE)) as u64);
        carry = t / u128::from(BASE);
    }
    push_carry(&mut out, carry);
    out
}

/// Appends what is left of a carry out of the top column, as limbs.
fn push_carry(out: &mut Vec<u64>, mut carry: u128) {
    while carry > 0 {
        out.push((carry % u128::from(BASE)) as u64);
        carry /= u128::from(BASE);
    }
}

#[cfg(test)]
mod tests {
    use dashu_int::IBig;

    use super::*;

    /// F(0), F(1), ... in decimal by schoolbook addition in base 10^9,
    /// sharing no code with the functions under test.
    fn fib_by_addition(up_to: usize) -> Vec<String> {
        const LIMB: u32 = 1_000_000_000;
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
                sum.push(t % LIMB);
                carry = t / LIMB;
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

        /// Digits in runs of zeros, nines and noise: the runs make long
        /// carry and borrow chains and all-zero limbs.
        fn digits(&mut self, len: usize) -> String {
            let mut s = String::with_capacity(len);
            while s.len() < len {
                let max_run = if self.below(4) == 0 { 200 } else { 20 };
                let run = (1 + self.below(max_run) as usize).min(len - s.len());
                match self.below(3) {
                    0 => s.extend(std::iter::repeat_n('0', run)),
                    1 => s.extend(std::iter::repeat_n('9', run)),
                    _ => s.extend((0..run).map(|_| char::from(b'0' + self.below(10) as u8))),
                }
            }
            s
        }
    }

    /// Parses decimal digits into limbs, 16 digits at a time from the
    /// right, keeping high zero limbs.
    fn parse_limbs(digits: &str) -> Vec<u64> {
        digits
            .as_bytes()
            .rchunks(BASE_DIGITS)
            .map(|c| {
                std::str::from_utf8(c)
                    .expect("ASCII")
                    .parse()
                    .expect("digits")
            })
            .collect()
    }

    /// Parses decimal digits into a [`Decimal`].
    fn decimal(digits: &str) -> Decimal {
        let mut limbs = parse_limbs(digits);
        trim(&mut limbs);
        Decimal(limbs)
    }

    fn big(digits: &str) -> UBig {
        UBig::from_str_radix(digits, 10).expect("digits")
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
            assert_eq!(&fib_binary(n as u64).to_string(), want, "binary F({n})");
        }
    }

    #[test]
    fn large_value_digits_and_ends() {
        // About 60 ms in a debug build.
        let f = fib_decimal(1_000_000);
        assert_eq!(f.len(), 208_988);
        assert!(f.starts_with("19532821287077577316"), "{}", &f[..20]);
        assert!(
            f.ends_with("68996526838242546875"),
            "{}",
            &f[f.len() - 20..]
        );
    }

    #[test]
    fn decimal_and_binary_doubling_agree() {
        // Both parities of the last step and of k, around powers of two
        // where the number of doubling steps changes.
        let mut ns: Vec<u64> = (4..18)
            .flat_map(|k| [(1 << k) - 1, 1 << k, (1 << k) + 1])
            .collect();
        let mut rng = Rng(11);
        ns.extend((0..20).map(|_| 1_000 + rng.below(150_000)));
        // Where the last products' factors cross NTT_MIN limbs (F(k) has
        // about 0.209 k digits), and larger ones, all through the transform.
        let crossing = (2 * NTT_MIN * BASE_DIGITS) as f64 / 0.209;
        ns.extend((0..20).map(|i| (crossing * (0.8 + 0.02 * i as f64)) as u64));
        ns.extend((0..10).map(|_| 150_000 + rng.below(1_000_000)));
        for n in ns {
            assert_eq!(fib_decimal(n), fib_binary(n).to_string(), "F({n})");
        }
    }

    #[test]
    fn small_values_match_u128() {
        // F(0) to F(186), the last that fits in a u128.
        let mut f = vec![0u128, 1];
        while let Some(next) = f[f.len() - 1].checked_add(f[f.len() - 2]) {
            f.push(next);
        }
        assert_eq!(f.len(), 187);
        for (n, want) in f.iter().enumerate() {
            assert_eq!(fib_decimal(n as u64), want.to_string(), "F({n})");
        }
    }

    #[test]
    fn f_1e7_matches_binary() {
        // About 2 s at the tests' opt-level, most of it dashu's conversion.
        let f = fib_decimal(10_000_000);
        assert_eq!(f.len(), 2_089_877);
        assert!(
            f.ends_with("86998673686380546875"),
            "{}",
            &f[f.len() - 20..]
        );
        assert!(f == fib_binary(10_000_000).to_string(), "F(10^7) differs");
    }

    /// Returns `len` limbs (the high ones possibly zero) of digits in runs.
    fn limbs(rng: &mut Rng, len: usize) -> Vec<u64> {
        let limbs = parse_limbs(&rng.digits(len * BASE_DIGITS));
        assert_eq!(limbs.len(), len);
        limbs
    }

    fn trimmed(mut limbs: Vec<u64>) -> Vec<u64> {
        trim(&mut limbs);
        limbs
    }

    #[test]
    fn transform_products_match_kronecker() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // Products of a + b - 1 columns on both sides of each transform
        // length, balanced and lopsided, then random sizes.
        let mut sizes = Vec::new();
        for k in 1..=15 {
            for columns in [(1usize << k) - 1, 1 << k, (1 << k) + 1] {
                let lopsided = 1 + rng.below(columns as u64) as usize;
                let balanced = columns.div_ceil(2);
                sizes.push((lopsided, columns + 1 - lopsided));
                sizes.push((balanced, columns + 1 - balanced));
            }
        }
        sizes.extend(
            (0..100).map(|_| (1 + rng.below(5_000) as usize, 1 + rng.below(5_000) as usize)),
        );
        for (la, lb) in sizes {
            let (a, b) = (limbs(&mut rng, la), limbs(&mut rng, lb));
            assert_eq!(
                trimmed(ntt::mul(&a, &b)),
                trimmed(kronecker(&a, Some(&b))),
                "{la} by {lb} limbs"
            );
            assert_eq!(
                trimmed(ntt::sqr(&a)),
                trimmed(kronecker(&a, None)),
                "square of {la} limbs"
            );
        }
        // Zeros below a single one: the product is the other factor shifted.
        let mut one = vec![0; 700];
        one.push(1);
        let b = limbs(&mut rng, 900);
        let mut shifted = vec![0; 700];
        shifted.extend_from_slice(&b);
        assert_eq!(trimmed(ntt::mul(&one, &b)), trimmed(shifted));
    }

    #[test]
    fn decimal_arithmetic_matches_dashu() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let (la, lb) = (1 + rng.below(3_000) as usize, 1 + rng.below(3_000) as usize);
            let (sa, sb) = (rng.digits(la), rng.digits(lb));
            let (a, b) = (decimal(&sa), decimal(&sb));
            let (x, y) = (big(&sa), big(&sb));
            assert_eq!(a.to_string(), x.to_string(), "display");
            assert_eq!(a.mul(&b).to_string(), (&x * &y).to_string(), "mul");
            assert_eq!(a.sqr().to_string(), x.sqr().to_string(), "sqr");
            for _ in 0..4 {
                let (m, k) = (rng.below(9) as i64 - 4, rng.below(9) as i64 - 4);
                let c = rng.below(2 * BASE - 1) as i64 - (BASE as i64 - 1);
                let want = IBig::from(x.clone()) * m + IBig::from(y.clone()) * k + c;
                if want >= IBig::ZERO {
                    assert_eq!(
                        a.linear(m, &b, k, c).to_string(),
                        want.to_string(),
                        "{m} a + {k} b + {c}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "decimal combination went negative")]
    fn negative_combination_stops() {
        let (a, b) = (decimal("10000000000000000000000"), decimal("1"));
        let _ = b.linear(1, &a, -1, 0);
    }

    #[test]
    fn widest_columns() {
        // All limbs 10^16 - 1 make every column as large as it can be, at
        // lengths on both sides of each change of field width.
        for len in [
            1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025,
        ] {
            let nines = "9".repeat(len * BASE_DIGITS);
            let (a, x) = (decimal(&nines), big(&nines));
            assert_eq!(a.sqr().to_string(), x.sqr().to_string(), "{len} limbs");
            let longer = "9".repeat((len + 1) * BASE_DIGITS);
            assert_eq!(
                a.mul(&decimal(&longer)).to_string(),
                (&x * big(&longer)).to_string(),
                "{len} limbs"
            );
        }
    }

    #[test]
    fn powers_of_ten_and_zero() {
        for k in [0, 1, 15, 16, 17, 31, 32, 33, 160, 1000] {
            let p = decimal(&format!("1{}", "0".repeat(k)));
            assert_eq!(p.to_string(), format!("1{}", "0".repeat(k)));
            assert_eq!(p.sqr().to_string(), format!("1{}", "0".repeat(2 * k)));
            assert_eq!(p.linear(1, &p, -1, 0).to_string(), "0");
            assert_eq!(p.linear(-1, &p, 1, 1).to_string(), "1");
        }
        let zero = Decimal::from_small(0);
        assert_eq!(zero.to_string(), "0");
        assert_eq!(zero.sqr(), zero);
        assert_eq!(zero.mul(&decimal("123")), zero);
        assert_eq!(
            Decimal::from_small(u64::MAX).to_string(),
            u64::MAX.to_string()
        );
    }
}
