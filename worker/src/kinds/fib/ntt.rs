//! Products of base-10^16 numbers by a number-theoretic transform.
//!
//! The limbs are multiplied as polynomials modulo two primes just below
//! 2^62 by a cyclic transform of a power-of-two length, and each column is
//! rebuilt by the Chinese remainder theorem. A column of a product of two
//! numbers whose shorter one has `s` limbs is at most s (10^16 - 1)^2, which
//! stays below the primes' product (about 2^124) while s <= [`MAX_SHORTER`]:
//! the columns are exact, and the carries are done in decimal, so nothing
//! is ever converted from binary.
//!
//! The transform is the usual one with Cooley-Tukey butterflies forward
//! (natural order in, bit-reversed out) and Gentleman-Sande butterflies back
//! (bit-reversed in, natural out), so that no reordering pass is needed; the
//! product of two transforms is taken in the bit-reversed order. The
//! butterflies keep their values in [0, 4p) and multiply by a twiddle with
//! Shoup's method (a precomputed floor(w 2^64 / p)), as in Harvey's "Faster
//! arithmetic for number-theoretic transforms". The recursion finishes each
//! half before the next, so the small levels run in the L1 cache.

use std::sync::{Arc, Mutex, PoisonError};

use super::{BASE, push_carry};

/// The two primes, c 2^30 + 1 just below 2^62: below 2^62 so that values up
/// to 4p fit in a u64, and with 2^30 dividing p - 1 so that transforms up to
/// that length exist.
const PRIMES: [u64; 2] = [4_611_685_944_339_202_049, 4_611_685_941_117_976_577];

/// A generator of the multiplicative group of each prime.
const GENERATORS: [u64; 2] = [3, 3];

/// The longest shorter factor, in limbs, whose product's columns stay below
/// PRIMES[0] * PRIMES[1]: F(n) up to n = 3 10^7 or so.
pub(super) const MAX_SHORTER: usize = 200_000;

// A column is a sum of at most MAX_SHORTER products of two limbs.
const _: () = assert!(
    MAX_SHORTER as u128 * (BASE as u128 - 1) * (BASE as u128 - 1)
        < PRIMES[0] as u128 * PRIMES[1] as u128
);

/// The longest transform: 2^20 values, 8 MiB per prime and factor; a
/// product holds three such buffers at once (24 MiB at this length).
pub(super) const MAX_LEN: usize = 1 << 20;

/// Returns `a * b` in base-10^16 limbs, with high zero limbs possibly left.
///
/// Both must be non-empty, the shorter at most [`MAX_SHORTER`] limbs and
/// `a.len() + b.len()` at most [`MAX_LEN`].
pub(super) fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    product(a, Some(b))
}

/// Returns `a * a`, like [`mul`] but with one forward transform less.
pub(super) fn sqr(a: &[u64]) -> Vec<u64> {
    product(a, None)
}

/// Multiplies `a` by `b`, or squares it when `b` is `None`.
fn product(a: &[u64], b: Option<&[u64]>) -> Vec<u64> {
    let b_len = b.map_or(a.len(), <[u64]>::len);
    let columns = a.len() + b_len - 1;
    assert!(
        !a.is_empty() && b_len > 0 && a.len().min(b_len) <= MAX_SHORTER,
        "transform product of {} by {b_len} limbs out of range",
        a.len()
    );
    let len = columns.next_power_of_two().max(2);
    assert!(len <= MAX_LEN, "transform of {len} values too long");
    let tables = tables(len);
    let mut residues = PRIMES.map(|_| Vec::new());
    for (k, prime) in tables.primes.iter().enumerate() {
        let mut x = padded(a, len);
        prime.forward(&mut x);
        match b {
            Some(b) => {
                let mut y = padded(b, len);
                prime.forward(&mut y);
                for (x, y) in x.iter_mut().zip(&y) {
                    *x = prime.mont_mul(prime.reduce_2p(*x), prime.reduce_2p(*y));
                }
            }
            None => {
                for x in &mut x {
                    let v = prime.reduce_2p(*x);
                    *x = prime.mont_mul(v, v);
                }
            }
        }
        prime.inverse(&mut x);
        x.truncate(columns);
        residues[k] = x;
    }
    let [r0, r1] = residues;
    combine(&tables.primes, &r0, &r1, len)
}

/// Returns `limbs` followed by zeros up to `len`.
fn padded(limbs: &[u64], len: usize) -> Vec<u64> {
    let mut x = Vec::with_capacity(len);
    x.extend_from_slice(limbs);
    x.resize(len, 0);
    x
}

/// Rebuilds each column from its two residues (each still scaled by the
/// transform's length and the Montgomery factor), and carries the columns
/// into base-10^16 limbs.
fn combine(primes: &[Prime; 2], r0: &[u64], r1: &[u64], len: usize) -> Vec<u64> {
    let [p0, p1] = primes;
    // c = r len^-1 R mod p undoes both factors.
    let unscale = |prime: &Prime| {
        let len_inv = pow_mod(len as u64, prime.p - 2, prime.p);
        Shoup::new(mul_mod(len_inv, r_mod(prime.p), prime.p), prime.p)
    };
    let (s0, s1) = (unscale(p0), unscale(p1));
    // Garner: c = c0 + p0 t with t = (c1 - c0) / p0 mod p1.
    let p0_inv = Shoup::new(pow_mod(p0.p % p1.p, p1.p - 2, p1.p), p1.p);
    let mut out = Vec::with_capacity(r0.len() + 3);
    let mut carry: u128 = 0;
    for (&x0, &x1) in r0.iter().zip(r1) {
        let c0 = p0.reduce_p(s0.mul(x0, p0.p));
        let c1 = p1.reduce_p(s1.mul(x1, p1.p));
        // c0 < p0 < 2 p1, so this is positive and below 3 p1 < 2^64.
        let t = p1.reduce_p(p0_inv.mul(c1 + 2 * p1.p - c0, p1.p));
        // Below p0 p1 + 2^72: no overflow. (A division of two words by one
        // with a precomputed reciprocal, and splitting each column into
        // three limbs so that the divisions overlap, both measured slower
        // than the library's u128 division here.)
        let v = u128::from(c0) + u128::from(p0.p) * u128::from(t) + carry;
        out.push((v % u128::from(BASE)) as u64);
        carry = v / u128::from(BASE);
    }
    push_carry(&mut out, carry);
    out
}

/// Returns 2^64 mod p, the Montgomery factor R.
fn r_mod(p: u64) -> u64 {
    ((1u128 << 64) % u128::from(p)) as u64
}

/// Returns a b mod p, for setting up constants.
fn mul_mod(a: u64, b: u64, p: u64) -> u64 {
    (u128::from(a) * u128::from(b) % u128::from(p)) as u64
}

/// Returns a^e mod p, for setting up constants.
fn pow_mod(mut a: u64, mut e: u64, p: u64) -> u64 {
    let mut r = 1;
    a %= p;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, a, p);
        }
        a = mul_mod(a, a, p);
        e >>= 1;
    }
    r
}

/// A constant w mod p prepared for Shoup's multiplication.
#[derive(Clone, Copy, Debug)]
struct Shoup {
    /// w itself, below p.
    w: u64,
    /// floor(w 2^64 / p).
    quotient: u64,
}

impl Shoup {
    /// Prepares `w` (below `p`).
    fn new(w: u64, p: u64) -> Self {
        let quotient = ((u128::from(w) << 64) / u128::from(p)) as u64;
        Self { w, quotient }
    }

    /// Prepares `w` like [`Shoup::new`], but by Barrett's method rather
    /// than a division: `reciprocal` is floor(2^125 / p), p in (2^61, 2^62).
    fn with_reciprocal(w: u64, p: u64, reciprocal: u64) -> Self {
        // An estimate of floor(w 2^64 / p) short by at most 2.
        let mut quotient = ((u128::from(w) * u128::from(reciprocal)) >> 61) as u64;
        let mut rest = (u128::from(w) << 64) - u128::from(quotient) * u128::from(p);
        while rest >= u128::from(p) {
            quotient += 1;
            rest -= u128::from(p);
        }
        Self { w, quotient }
    }

    /// Returns a value congruent to w x mod p in [0, 2p), for any x.
    #[inline(always)]
    fn mul(self, x: u64, p: u64) -> u64 {
        let q = ((u128::from(self.quotient) * u128::from(x)) >> 64) as u64;
        self.w.wrapping_mul(x).wrapping_sub(q.wrapping_mul(p))
    }
}

/// One prime's constants and twiddle factors.
#[derive(Clone)]
struct Prime {
    /// The prime.
    p: u64,
    /// A generator of the multiplicative group mod p.
    generator: u64,
    /// p^-1 mod 2^64, for Montgomery's reduction.
    p_inv: u64,
    /// floor(2^125 / p), for preparing twiddles without a division.
    reciprocal: u64,
    /// The forward transform's twiddles: with 2^k entries, entry i is
    /// w^bitrev(i), w a root of unity of order 2^(k+1) and bitrev over k
    /// bits. Block i of every level of a transform of up to 2^(k+1) values
    /// uses entry i (see [`Prime::forward`]).
    forward: Vec<Shoup>,
    /// The inverses of the same twiddles, for the inverse transform.
    inverse: Vec<Shoup>,
}

/// The twiddles of both primes.
#[derive(Clone)]
struct Tables {
    /// One per entry of [`PRIMES`].
    primes: [Prime; 2],
}

/// The largest tables built so far. The entries for a shorter transform are
/// a prefix of a longer one's, so one set serves every length up to its
/// own, and a longer one extends it. Four tables (forward and inverse, for
/// each prime) of at most 2^19 entries of 16 bytes (a transform of
/// [`MAX_LEN`]): 32 MiB at most, 4 MiB for F(10^7).
static TABLES: Mutex<Option<Arc<Tables>>> = Mutex::new(None);

/// Returns tables for transforms of `len` values.
fn tables(len: usize) -> Arc<Tables> {
    let mut cached = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = cached
        .as_ref()
        .filter(|t| t.primes[0].forward.len() >= len / 2)
    {
        return Arc::clone(t);
    }
    let mut t = match cached.as_deref() {
        Some(t) => t.clone(),
        None => Tables {
            primes: [0, 1].map(|k| Prime::new(PRIMES[k], GENERATORS[k])),
        },
    };
    for prime in &mut t.primes {
        prime.grow(len / 2);
    }
    let t = Arc::new(t);
    *cached = Some(Arc::clone(&t));
    t
}

impl Prime {
    /// Sets up `p`, with the twiddles of a transform of 2 values.
    fn new(p: u64, generator: u64) -> Self {
        let mut p_inv: u64 = 1;
        for _ in 0..6 {
            // Newton's iteration doubles the correct low bits each time.
            p_inv = p_inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(p_inv)));
        }
        let reciprocal = ((1u128 << 125) / u128::from(p)) as u64;
        let one = Shoup::new(1, p);
        Self {
            p,
            generator,
            p_inv,
            reciprocal,
            forward: vec![one],
            inverse: vec![one],
        }
    }

    /// Extends the twiddle tables to at least `entries` entries (a power of
    /// two): for transforms of up to 2 `entries` values.
    fn grow(&mut self, entries: usize) {
        while self.forward.len() < entries {
            // Doubling the table from 2^k entries: entry 2^k + i is
            // w^bitrev(2^k + i) = w^(1 + 2 bitrev'(i)) = w (w^2)^bitrev'(i),
            // where w^2 is the old table's root: w times old entry i.
            let order = 4 * self.forward.len() as u64;
            let w = pow_mod(self.generator, (self.p - 1) / order, self.p);
            let w_inv = pow_mod(w, self.p - 2, self.p);
            let (p, reciprocal) = (self.p, self.reciprocal);
            for (table, root) in [(&mut self.forward, w), (&mut self.inverse, w_inv)] {
                let root = Shoup::new(root, p);
                let old = table.len();
                for i in 0..old {
                    let v = root.mul(table[i].w, p);
                    let v = if v >= p { v - p } else { v };
                    table.push(Shoup::with_reciprocal(v, p, reciprocal));
                }
            }
        }
    }

    /// Returns x mod p for x in [0, 2p).
    #[inline(always)]
    fn reduce_p(&self, x: u64) -> u64 {
        if x >= self.p { x - self.p } else { x }
    }

    /// Returns x mod 2p for x in [0, 4p).
    #[inline(always)]
    fn reduce_2p(&self, x: u64) -> u64 {
        if x >= 2 * self.p { x - 2 * self.p } else { x }
    }

    /// Returns a value congruent to a b / 2^64 mod p in [0, 2p), for a and b
    /// below 2p (so that a b < p 2^64).
    #[inline(always)]
    fn mont_mul(&self, a: u64, b: u64) -> u64 {
        let t = u128::from(a) * u128::from(b);
        let m = (t as u64).wrapping_mul(self.p_inv);
        let mp = ((u128::from(m) * u128::from(self.p)) >> 64) as u64;
        // t - m p is a multiple of 2^64 in (-p 2^64, p 2^64).
        ((t >> 64) as u64).wrapping_sub(mp).wrapping_add(self.p)
    }

    /// Transforms `x` (values below 4p, power-of-two length) in place; the
    /// result is in bit-reversed order, values below 4p.
    fn forward(&self, x: &mut [u64]) {
        self.forward_block(x, 0);
    }

    /// The forward transform of block `i` of its level: two levels of
    /// butterflies (twiddle i across the halves, then 2i and 2i + 1 across
    /// the quarters), then each quarter as block 4i to 4i + 3 two levels
    /// down.
    fn forward_block(&self, x: &mut [u64], i: usize) {
        if x.len() <= LEAF {
            self.forward_leaf(x, i);
            return;
        }
        self.forward_radix4(x, i);
        let quarter = x.len() / 4;
        for (k, block) in x.chunks_exact_mut(quarter).enumerate() {
            self.forward_block(block, 4 * i + k);
        }
    }

    /// The levels of block `i` two by two, once it fits in the cache, and
    /// the last one alone if their number is odd.
    fn forward_leaf(&self, x: &mut [u64], i: usize) {
        let mut len = x.len();
        // The twiddle index of the level's first block.
        let mut first = i;
        while len >= 4 {
            for (b, block) in x.chunks_exact_mut(len).enumerate() {
                self.forward_radix4(block, first + b);
            }
            first *= 4;
            len /= 4;
        }
        if len == 2 {
            let p = self.p;
            for (pair, w) in x.chunks_exact_mut(2).zip(&self.forward[first..]) {
                let a = self.reduce_2p(pair[0]);
                let t = w.mul(pair[1], p);
                pair[0] = a + t;
                pair[1] = a + 2 * p - t;
            }
        }
    }

    /// Two levels of Cooley-Tukey butterflies on block `i` (at least 4
    /// values): (x, y) becomes (x + w y, x - w y), lazily reduced, inputs
    /// and outputs below 4p.
    #[inline(always)]
    fn forward_radix4(&self, block: &mut [u64], i: usize) {
        let p = self.p;
        let (w, w0, w1) = (
            self.forward[i],
            self.forward[2 * i],
            self.forward[2 * i + 1],
        );
        let [q0, q1, q2, q3] = quarters(block);
        for (((x0, x1), x2), x3) in q0.iter_mut().zip(q1).zip(q2).zip(q3) {
            // Across the halves: (x0, x2) and (x1, x3).
            let a0 = self.reduce_2p(*x0);
            let t = w.mul(*x2, p);
            let (y0, y2) = (a0 + t, a0 + 2 * p - t);
            let a1 = self.reduce_2p(*x1);
            let t = w.mul(*x3, p);
            let (y1, y3) = (a1 + t, a1 + 2 * p - t);
            // Within each half: (y0, y1) and (y2, y3).
            let b0 = self.reduce_2p(y0);
            let t = w0.mul(y1, p);
            (*x0, *x1) = (b0 + t, b0 + 2 * p - t);
            let b2 = self.reduce_2p(y2);
            let t = w1.mul(y3, p);
            (*x2, *x3) = (b2 + t, b2 + 2 * p - t);
        }
    }

    /// Undoes [`Prime::forward`] up to a factor of the length: values below
    /// 2p in, bit-reversed, and out, in natural order.
    fn inverse(&self, x: &mut [u64]) {
        self.inverse_block(x, 0);
    }

    /// The inverse of [`Prime::forward_block`]: the quarters first, then
    /// the two levels across them.
    fn inverse_block(&self, x: &mut [u64], i: usize) {
        if x.len() <= LEAF {
            self.inverse_leaf(x, i);
            return;
        }
        let quarter = x.len() / 4;
        for (k, block) in x.chunks_exact_mut(quarter).enumerate() {
            self.inverse_block(block, 4 * i + k);
        }
        self.inverse_radix4(x, i);
    }

    /// The inverse of [`Prime::forward_leaf`]: its levels in reverse order.
    fn inverse_leaf(&self, x: &mut [u64], i: usize) {
        let levels = x.len().trailing_zeros();
        let mut len = if levels % 2 == 1 {
            let first = i * (x.len() / 2);
            let p = self.p;
            for (pair, w_inv) in x.chunks_exact_mut(2).zip(&self.inverse[first..]) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = self.reduce_2p(a + b);
                pair[1] = w_inv.mul(a + 2 * p - b, p);
            }
            8
        } else {
            4
        };
        while len <= x.len() {
            let first = i * (x.len() / len);
            for (b, block) in x.chunks_exact_mut(len).enumerate() {
                self.inverse_radix4(block, first + b);
            }
            len *= 4;
        }
    }

    /// Undoes [`Prime::forward_radix4`] up to a factor of 4 with
    /// Gentleman-Sande butterflies: (x, y) becomes (x + y, (x - y) / w),
    /// inputs and outputs below 2p.
    #[inline(always)]
    fn inverse_radix4(&self, block: &mut [u64], i: usize) {
        let p = self.p;
        let (v, v0, v1) = (
            self.inverse[i],
            self.inverse[2 * i],
            self.inverse[2 * i + 1],
        );
        let [q0, q1, q2, q3] = quarters(block);
        for (((x0, x1), x2), x3) in q0.iter_mut().zip(q1).zip(q2).zip(q3) {
            let (a0, a1, a2, a3) = (*x0, *x1, *x2, *x3);
            // Within each half: (x0, x1) and (x2, x3).
            let y0 = self.reduce_2p(a0 + a1);
            let y1 = v0.mul(a0 + 2 * p - a1, p);
            let y2 = self.reduce_2p(a2 + a3);
            let y3 = v1.mul(a2 + 2 * p - a3, p);
            // Across the halves: (y0, y2) and (y1, y3).
            *x0 = self.reduce_2p(y0 + y2);
            *x2 = v.mul(y0 + 2 * p - y2, p);
            *x1 = self.reduce_2p(y1 + y3);
            *x3 = v.mul(y1 + 2 * p - y3, p);
        }
    }
}

/// Splits `block` into its four quarters.
fn quarters(block: &mut [u64]) -> [&mut [u64]; 4] {
    let quarter = block.len() / 4;
    let (q0, rest) = block.split_at_mut(quarter);
    let (q1, rest) = rest.split_at_mut(quarter);
    let (q2, q3) = rest.split_at_mut(quarter);
    [q0, q1, q2, q3]
}

/// The block length below which a transform goes level by level: 8 KiB,
/// well inside the L1 cache.
const LEAF: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_have_the_roots_used() {
        for (&p, &g) in PRIMES.iter().zip(&GENERATORS) {
            assert!(machine_prime::is_prime(p), "{p}");
            assert!(p < 1 << 62, "{p}: 4p must fit in a u64");
            assert_eq!((p - 1) % MAX_LEN as u64, 0, "{p}");
            // A quadratic non-residue: g^((p-1)/len) then has order exactly
            // len for every power of two len dividing p - 1.
            assert_eq!(pow_mod(g, (p - 1) / 2, p), p - 1, "{p}");
        }
        assert!(PRIMES[0] < 2 * PRIMES[1], "combine's c1 - c0 + 2 p1 > 0");
    }

    #[test]
    fn twiddles_are_bit_reversed_powers() {
        let entries = 1 << 11;
        let t = tables(2 * entries);
        for prime in &t.primes {
            let p = prime.p;
            let w = pow_mod(prime.generator, (p - 1) / (2 * entries) as u64, p);
            for i in 0..entries {
                let e = i.reverse_bits() >> (usize::BITS - 11);
                let (f, inv) = (prime.forward[i], prime.inverse[i]);
                assert_eq!(f.w, pow_mod(w, e as u64, p), "entry {i}");
                assert_eq!(mul_mod(f.w, inv.w, p), 1, "entry {i}");
                assert_eq!(f.quotient, Shoup::new(f.w, p).quotient, "entry {i}");
                assert_eq!(inv.quotient, Shoup::new(inv.w, p).quotient, "entry {i}");
            }
        }
    }

    #[test]
    fn transform_round_trip() {
        // Forward then inverse gives back len times the input, at every
        // length, on both sides of the leaf size.
        let mut seed = 7u64;
        for bits in 1..=12 {
            let len = 1usize << bits;
            let t = tables(len);
            for prime in &t.primes {
                let p = prime.p;
                let input: Vec<u64> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        (seed >> 2) % p
                    })
                    .collect();
                let mut x = input.clone();
                prime.forward(&mut x);
                for v in &mut x {
                    *v = prime.reduce_2p(*v);
                }
                prime.inverse(&mut x);
                for (got, want) in x.iter().zip(&input) {
                    assert_eq!(prime.reduce_p(*got), mul_mod(*want, len as u64, p));
                }
            }
        }
    }

    #[test]
    fn montgomery_and_shoup_products() {
        let mut seed = 3u64;
        for &p in &PRIMES {
            let prime = Prime::new(p, 3);
            let r_inv = pow_mod(r_mod(p), p - 2, p);
            for i in 0..10_000u64 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                // Extremes first, then random values in range.
                let (a, b) = match i {
                    0 => (0, 0),
                    1 => (2 * p - 1, 2 * p - 1),
                    2 => (2 * p - 1, 0),
                    _ => (seed % (2 * p), (seed >> 1) % (2 * p)),
                };
                let m = prime.mont_mul(a, b);
                assert!(m < 2 * p);
                assert_eq!(m % p, mul_mod(mul_mod(a, b, p), r_inv, p));
                let w = b % p;
                let x = if i == 3 { u64::MAX } else { seed };
                let shoup = Shoup::new(w, p);
                let fast = Shoup::with_reciprocal(w, p, prime.reciprocal);
                assert_eq!(fast.quotient, shoup.quotient, "{w}");
                let s = shoup.mul(x, p);
                assert!(s < 2 * p);
                assert_eq!(s % p, mul_mod(w, x % p, p));
            }
        }
    }

    /// Returns k limbs of 10^16 - 1: 10^(16k) - 1.
    fn nines(k: usize) -> Vec<u64> {
        vec![BASE - 1; k]
    }

    #[test]
    fn widest_columns_at_the_limit() {
        // All nines make every column as large as it can be; at
        // MAX_SHORTER limbs the middle column is the bound itself.
        // (10^m - 1)^2 = 10^2m - 2 10^m + 1, and
        // (10^m - 1)(10^(m+16) - 1) = 10^m (10^(m+16) - 10^16 - 1) + 1.
        for k in [1, 2, 3, 1000, MAX_SHORTER] {
            let mut square = vec![1];
            square.resize(k, 0);
            square.push(BASE - 2);
            square.extend(std::iter::repeat_n(BASE - 1, k - 1));
            let mut got = sqr(&nines(k));
            super::super::trim(&mut got);
            assert_eq!(got, square, "square of {k} limbs");

            let mut product = vec![1];
            product.resize(k, 0);
            product.extend([BASE - 1, BASE - 2]);
            product.extend(std::iter::repeat_n(BASE - 1, k - 1));
            let mut got = mul(&nines(k), &nines(k + 1));
            super::super::trim(&mut got);
            assert_eq!(got, product, "{k} by {} limbs", k + 1);
        }
    }
}
