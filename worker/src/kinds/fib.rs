//! The `fib` job: F(n), exact, as a decimal string.
//!
//! Fast doubling, computed in decimal. In binary, F(10^7) costs dashu-int
//! about 0.1 s, and its conversion to 2 million decimal digits about 0.6 s:
//! a tree of divisions by powers of ten, which a divide-and-conquer
//! conversion of our own on dashu's division made only 10% faster. So the
//! doubling runs on base-10^16 limbs instead. A product of two such numbers
//! is one binary product on dashu (Kronecker substitution: the limbs are
//! spread into bit fields wide enough that no column of the product
//! overflows its field), about 2.3 times the size of the binary one, and
//! then nothing is left to convert: F(10^7) takes a third of the time.

use dashu_int::UBig;

/// Returns F(n) in decimal, with F(0) = 0 and F(1) = 1.
///
/// F(10^7), 2,089,877 digits, takes about a quarter of a second in a release
/// build; the master caps n, so the time and memory stay bounded.
pub fn fib_decimal(n: u64) -> String {
    if n <= DECIMAL_MAX_N {
        fib_limbs(n).to_string()
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
        // F(2k+1) = 4F(k)^2 - F(k-1)^2 + 2(-1)^k, F(2k-1) = F(k)^2 + F(k-1)^2.
        let f2k1 = if k_odd {
            a2.mul_add_small(4, 0).sub(&b2).sub(&Decimal::from_small(2))
        } else {
            a2.mul_add_small(4, 2).sub(&b2)
        };
        let f2km1 = a2.add(&b2);
        let f2k = f2k1.sub(&f2km1);
        k_odd = (half >> bit) & 1 == 1;
        (a, b) = if k_odd { (f2k1, f2k) } else { (f2k, f2km1) };
    }
    // The last step needs only one of the pair: one product instead of two
    // squarings.
    if n & 1 == 0 {
        // F(2k) = F(k) (F(k) + 2F(k-1))
        a.mul(&a.add(&b.mul_add_small(2, 0)))
    } else {
        // F(2k+1) = (2F(k) + F(k-1)) (2F(k) - F(k-1)) + 2(-1)^k
        let a2 = a.mul_add_small(2, 0);
        let p = a2.add(&b).mul(&a2.sub(&b));
        if k_odd {
            p.sub(&Decimal::from_small(2))
        } else {
            p.add(&Decimal::from_small(2))
        }
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
        if self.0.is_empty() || other.0.is_empty() {
            return Self(Vec::new());
        }
        let bits = column_bits(self.0.len().min(other.0.len()));
        let product = spread(&self.0, bits) * spread(&other.0, bits);
        gather(&product, bits, self.0.len() + other.0.len() - 1)
    }

    /// Returns `self * self`, cheaper than [`Decimal::mul`].
    fn sqr(&self) -> Self {
        if self.0.is_empty() {
            return Self(Vec::new());
        }
        let bits = column_bits(self.0.len());
        gather(&spread(&self.0, bits).sqr(), bits, 2 * self.0.len() - 1)
    }

    /// Returns `self * m + c`, for m <= 4 and c < [`BASE`].
    fn mul_add_small(&self, m: u64, c: u64) -> Self {
        debug_assert!(m <= 4 && c < BASE);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut carry = c;
        for &limb in &self.0 {
            // Below 5 * 10^16 + 10^16: no overflow.
            let t = limb * m + carry;
            out.push(t % BASE);
            carry = t / BASE;
        }
        out.push(carry);
        trim(&mut out);
        Self(out)
    }

    /// Returns `self + other`.
    fn add(&self, other: &Self) -> Self {
        let (long, short) = if self.0.len() >= other.0.len() {
            (&self.0, &other.0)
        } else {
            (&other.0, &self.0)
        };
        let mut out = Vec::with_capacity(long.len() + 1);
        let mut carry = 0;
        for (i, &limb) in long.iter().enumerate() {
            let mut t = limb + short.get(i).copied().unwrap_or(0) + carry;
            carry = u64::from(t >= BASE);
            t -= carry * BASE;
            out.push(t);
        }
        out.push(carry);
        trim(&mut out);
        Self(out)
    }

    /// Returns `self - other`; `other` must not exceed `self`.
    fn sub(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.0.len());
        let mut borrow = 0;
        for (i, &limb) in self.0.iter().enumerate() {
            let take = other.0.get(i).copied().unwrap_or(0) + borrow;
            borrow = u64::from(limb < take);
            out.push(limb + borrow * BASE - take);
        }
        // A negative difference is a bug in the doubling formulas, never
        // an input error: stop rather than print a wrong number.
        assert!(
            borrow == 0 && other.0.len() <= self.0.len(),
            "decimal subtraction went negative"
        );
        trim(&mut out);
        Self(out)
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((top, rest)) = self.0.split_last() else {
            return f.write_str("0");
        };
        // By hand rather than `{:016}` per limb: F(10^7) has 130,000 limbs.
        let mut digits = top.to_string().into_bytes();
        let start = digits.len();
        digits.resize(start + rest.len() * BASE_DIGITS, b'0');
        for (chunk, &limb) in digits[start..]
            .chunks_mut(BASE_DIGITS)
            .zip(rest.iter().rev())
        {
            let mut v = limb;
            for d in chunk.iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        // Only ASCII digits were written.
        f.write_str(std::str::from_utf8(&digits).expect("ASCII digits"))
    }
}

/// Drops high zero limbs.
fn trim(limbs: &mut Vec<u64>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
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
fn gather(product: &UBig, bits: usize, columns: usize) -> Decimal {
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
    while carry > 0 {
        out.push((carry % u128::from(BASE)) as u64);
        carry /= u128::from(BASE);
    }
    trim(&mut out);
    Decimal(out)
}

#[cfg(test)]
mod tests {
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

    /// Parses decimal digits into limbs, 16 digits at a time from the right.
    fn decimal(digits: &str) -> Decimal {
        let bytes = digits.as_bytes();
        let mut limbs: Vec<u64> = bytes
            .rchunks(BASE_DIGITS)
            .map(|c| {
                std::str::from_utf8(c)
                    .expect("ASCII")
                    .parse()
                    .expect("digits")
            })
            .collect();
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
        for n in ns {
            assert_eq!(fib_decimal(n), fib_binary(n).to_string(), "F({n})");
        }
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
            assert_eq!(a.add(&b).to_string(), (&x + &y).to_string(), "add");
            let (hi, lo, diff) = if x >= y {
                (&a, &b, &x - &y)
            } else {
                (&b, &a, &y - &x)
            };
            assert_eq!(hi.sub(lo).to_string(), diff.to_string(), "sub");
            let (m, c) = (rng.below(5), rng.below(BASE));
            assert_eq!(
                a.mul_add_small(m, c).to_string(),
                (&x * m + c).to_string(),
                "mul_add_small"
            );
        }
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
            assert_eq!(p.sub(&p).to_string(), "0");
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
