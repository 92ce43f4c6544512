//! Keyed, deterministic 64-bit hashing for flow keys and names.
//!
//! The routing core hashes in two places, and both go through the one mixer in this module:
//!
//! - **Placement** ([`hash_bytes`], [`hash_u64s`], [`hash_u64`]): the Maglev table
//!   ([`crate::maglev`]) derives each host server's permutation from its name, and a router maps
//!   a flow to a table slot from its flow hash. Several routers must compute the *same* result
//!   from the same seed (a per-instance result would move flows when traffic shifts between
//!   routers), so these functions are pure functions of `(seed, input)`: the same on every run,
//!   process, platform and endianness (words are read little-endian, lengths as `u64`).
//! - **The flow table** ([`SeededState`]): a [`BuildHasher`] for `std::collections::HashMap`,
//!   keyed by a seed the caller draws at start-up. During a SYN flood the attacker chooses the
//!   source addresses and ports, that is the keys; without the seed they cannot precompute keys
//!   that collide, because every multiplication below has secret material in *both* operands.
//!
//! The construction is a wyhash-style folded multiply (the full 128-bit product of two 64-bit
//! words, high half XOR low half), written here from the idea, not from any implementation.
//! It is fast (one multiply per 16 bytes) and passes the avalanche tests below, but it is not a
//! cryptographic MAC: it makes collision hunting without the seed impractical, it does not
//! make recovering the seed from observed *hash values* hard, and no hash value leaves the
//! core. Where a proof matters more than speed, use std's SipHash `RandomState` instead.

use core::fmt;
use core::hash::{BuildHasher, Hasher};

/// Odd constants with balanced bit patterns (digits of well-known irrationals rounded to odd);
/// they only need to be fixed forever, because changing one changes every Maglev table.
const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;

/// Multiplies to 128 bits and folds the halves together: every input bit reaches many output
/// bits in one instruction pair.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The splitmix64 finaliser: a bijection, so distinct seeds always give distinct keys.
#[inline(always)]
const fn splitmix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The two secret words expanded from a seed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    /// Starting state, and the length operand of the finaliser.
    k0: u64,
    /// Blinds the second word of every block.
    k1: u64,
}

impl Key {
    #[inline(always)]
    const fn new(seed: u64) -> Key {
        Key {
            k0: splitmix(seed ^ P0),
            k1: splitmix(seed ^ P1),
        }
    }

    /// Absorbs one 16-byte block `(a, b)`. Both operands carry secret material (`state` and
    /// `k1`), so an attacker cannot choose input that zeroes one of them, the classic way to make
    /// a multiply-based hash forget its input.
    #[inline(always)]
    fn absorb(self, state: u64, a: u64, b: u64) -> u64 {
        fold_mul(a ^ state, b ^ self.k1)
    }

    /// Mixes the total input length in last, so inputs that differ only by trailing zero
    /// padding still differ.
    #[inline(always)]
    fn finish(self, state: u64, len: u64) -> u64 {
        fold_mul(state ^ P2, len ^ self.k0 ^ P3)
    }

    /// Absorbs `bytes` as blocks of 16, the last 1..=16 bytes zero-padded (an empty input is one
    /// all-zero block). Does not mix in the length: callers do, through [`Key::finish`].
    #[inline]
    fn absorb_bytes(self, mut state: u64, bytes: &[u8]) -> u64 {
        let mut rest = bytes;
        while rest.len() > 16 {
            let (block, tail) = rest.split_at(16);
            state = self.absorb(state, read_full(&block[..8]), read_full(&block[8..]));
            rest = tail;
        }
        let (a, b) = if rest.len() > 8 {
            (read_full(&rest[..8]), read_u64(&rest[8..]))
        } else {
            (read_u64(rest), 0)
        };
        self.absorb(state, a, b)
    }
}

/// Reads exactly 8 bytes as a little-endian word.
#[inline(always)]
fn read_full(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// Reads up to 8 bytes as a little-endian word, zero-padded (the first 8 if there are more).
///
/// Built from fixed-size reads that may overlap: the overlapping bytes land in the same bit
/// positions with the same values, so OR-ing them is exact, and no variable-length copy (a
/// `memcpy` call, slower than the whole hash for a 13-byte key) is needed.
#[inline(always)]
fn read_u64(bytes: &[u8]) -> u64 {
    let n = bytes.len().min(8);
    if n >= 4 {
        let lo = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        let hi = u64::from(u32::from_le_bytes([
            bytes[n - 4],
            bytes[n - 3],
            bytes[n - 2],
            bytes[n - 1],
        ]));
        lo | hi << (8 * (n - 4))
    } else if n > 0 {
        u64::from(bytes[0])
            | u64::from(bytes[n / 2]) << (8 * (n / 2))
            | u64::from(bytes[n - 1]) << (8 * (n - 1))
    } else {
        0
    }
}

/// Hashes `bytes` under `seed`: the same value on every router, run and platform.
///
/// Use it for names (Maglev permutations) and any byte-string identity that several routers
/// must agree on.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let key = Key::new(seed);
    key.finish(key.absorb_bytes(key.k0, bytes), bytes.len() as u64)
}

/// Hashes a sequence of words under `seed`.
///
/// Equal to [`hash_bytes`] over the words' little-endian bytes, without building them: a flow
/// key packed into words hashes the same on every platform.
pub fn hash_u64s(seed: u64, words: &[u64]) -> u64 {
    let key = Key::new(seed);
    let mut state = key.k0;
    let mut rest = words;
    // Same block boundaries as `absorb_bytes`: full blocks while more than 16 bytes remain.
    while rest.len() > 2 {
        state = key.absorb(state, rest[0], rest[1]);
        rest = &rest[2..];
    }
    let a = rest.first().copied().unwrap_or(0);
    let b = rest.get(1).copied().unwrap_or(0);
    state = key.absorb(state, a, b);
    key.finish(state, 8 * words.len() as u64)
}

/// Hashes one word under `seed` (as [`hash_u64s`] of `[word]`).
pub fn hash_u64(seed: u64, word: u64) -> u64 {
    hash_u64s(seed, &[word])
}

/// A [`BuildHasher`] keyed by a seed, for the hash maps of the flow table.
///
/// Draw the seed once per process from a random source outside the core and keep it secret;
/// its purpose is that keys chosen by an attacker (SYN flood source addresses and ports) do not
/// collide in the table. `Debug` does not print the key.
///
/// ```
/// use std::collections::HashMap;
/// use slr_core::hash::SeededState;
///
/// let mut flows: HashMap<u64, u32, SeededState> = HashMap::with_hasher(SeededState::new(42));
/// flows.insert(7, 1);
/// assert_eq!(flows.get(&7), Some(&1));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SeededState {
    key: Key,
}

impl SeededState {
    /// A hasher factory keyed by `seed`.
    pub const fn new(seed: u64) -> Self {
        SeededState {
            key: Key::new(seed),
        }
    }
}

impl fmt::Debug for SeededState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededState").finish_non_exhaustive()
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;

    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            key: self.key,
            state: self.key.k0,
            pending: 0,
            pending_bits: 0,
            len: 0,
        }
    }
}

/// The streaming [`Hasher`] made by [`SeededState`].
///
/// Small writes (integers, short byte strings: the fields of a 5-tuple) are packed into a
/// 128-bit buffer and absorbed one block at a time, so a whole IPv4 5-tuple costs two
/// multiplications. Results are stable for a given seed but are meant for in-process tables;
/// use [`hash_bytes`] or [`hash_u64s`] for values routers must agree on.
#[derive(Clone)]
pub struct SeededHasher {
    key: Key,
    state: u64,
    /// Bits written but not yet absorbed, packed from the low end.
    pending: u128,
    pending_bits: u32,
    /// Total bytes written, mixed in by `finish`.
    len: u64,
}

impl SeededHasher {
    /// Appends the low `bits` bits of `value` (at most 64) to the pending block.
    #[inline(always)]
    fn push(&mut self, value: u64, bits: u32) {
        if self.pending_bits + bits > 128 {
            self.flush();
        }
        self.pending |= u128::from(value) << self.pending_bits;
        self.pending_bits += bits;
        self.len += u64::from(bits / 8);
    }

    #[inline(always)]
    fn flush(&mut self) {
        self.state = self
            .key
            .absorb(self.state, self.pending as u64, (self.pending >> 64) as u64);
        self.pending = 0;
        self.pending_bits = 0;
    }
}

impl fmt::Debug for SeededHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededHasher").finish_non_exhaustive()
    }
}

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() <= 8 {
            self.push(read_u64(bytes), 8 * bytes.len() as u32);
            return;
        }
        if self.pending_bits > 0 {
            self.flush();
        }
        self.state = self.key.absorb_bytes(self.state, bytes);
        self.len += bytes.len() as u64;
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.push(u64::from(i), 8);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.push(u64::from(i), 16);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.push(u64::from(i), 32);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.push(i, 64);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.push(i as u64, 64);
        self.push((i >> 64) as u64, 64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        // As u64 on every platform, so the hash does not depend on the pointer width.
        self.push(i as u64, 64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let state = if self.pending_bits > 0 {
            self.key
                .absorb(self.state, self.pending as u64, (self.pending >> 64) as u64)
        } else {
            self.state
        };
        self.key.finish(state, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};
    use std::hash::Hash;

    /// Pinned outputs: a change here changes every Maglev table in a deployed cluster, so it
    /// must be deliberate.
    #[test]
    fn outputs_are_pinned() {
        let golden = [
            hash_bytes(0, b""),
            hash_bytes(0, b"host-server-1"),
            hash_bytes(1, b"host-server-1"),
            hash_bytes(7, &[0xab; 40]),
            hash_u64s(7, &[1, 2, 3]),
        ];
        println!("golden: {golden:#018x?}");
        assert_eq!(golden, PINNED);
    }

    const PINNED: [u64; 5] = [
        0xb9f2_9e95_4208_68ee,
        0x8ed0_0f8e_f41a_d4dc,
        0xc3c1_1faf_cea8_adb0,
        0xd888_c44d_e3db_1af5,
        0x15ac_7484_02ec_9acd,
    ];

    #[test]
    fn partial_reads_are_zero_padded() {
        let bytes: Vec<u8> = (1..=9).collect();
        for n in 0..=9 {
            let mut padded = [0u8; 8];
            let k = n.min(8);
            padded[..k].copy_from_slice(&bytes[..k]);
            assert_eq!(
                read_u64(&bytes[..n]),
                u64::from_le_bytes(padded),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn deterministic() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len as u8).collect();
            assert_eq!(hash_bytes(99, &bytes), hash_bytes(99, &bytes));
        }
        let state = SeededState::new(5);
        assert_eq!(
            state.hash_one((1u32, 2u16, "x")),
            state.hash_one((1u32, 2u16, "x"))
        );
        assert_eq!(
            SeededState::new(5).hash_one(17u64),
            SeededState::new(5).hash_one(17u64)
        );
    }

    #[test]
    fn words_hash_like_their_little_endian_bytes() {
        let mut rng = SmallRng::seed_from_u64(1);
        for n in 0..12 {
            let words: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let seed = rng.gen();
            assert_eq!(
                hash_u64s(seed, &words),
                hash_bytes(seed, &bytes),
                "{n} words"
            );
        }
        assert_eq!(hash_u64(3, 9), hash_u64s(3, &[9]));
    }

    #[test]
    fn seed_changes_output() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..1000 {
            let a: u64 = rng.gen();
            let b = a ^ (1 << rng.gen_range(0..64));
            assert_ne!(hash_bytes(a, b"name"), hash_bytes(b, b"name"));
            assert_ne!(hash_u64(a, 0), hash_u64(b, 0));
            assert_ne!(
                SeededState::new(a).hash_one(0u64),
                SeededState::new(b).hash_one(0u64)
            );
        }
    }

    #[test]
    fn trailing_zeros_and_lengths_are_distinguished() {
        let mut seen = HashSet::new();
        for len in 0..40 {
            assert!(seen.insert(hash_bytes(0, &vec![0u8; len])), "len {len}");
        }
        let state = SeededState::new(0);
        assert_ne!(
            state.hash_one([0u8; 0].as_slice()),
            state.hash_one([0u8].as_slice())
        );
        assert_ne!(state.hash_one(0u8), state.hash_one((0u8, 0u8)));
    }

    /// Flipping one input bit should flip each output bit with probability about 1/2. Measured
    /// as the mean number of flipped output bits (ideal 32) per input bit, and per (input bit,
    /// output bit) pair the flip rate (ideal 0.5), over random inputs and seeds.
    fn avalanche(name: &str, input_bits: usize, samples: usize, f: impl Fn(u64, &[u8]) -> u64) {
        let mut rng = SmallRng::seed_from_u64(3);
        let input_len = input_bits / 8;
        let mut flips = vec![[0u32; 64]; input_bits];
        for _ in 0..samples {
            let seed: u64 = rng.gen();
            let mut input = vec![0u8; input_len];
            rng.fill(&mut input[..]);
            let base = f(seed, &input);
            for (bit, counts) in flips.iter_mut().enumerate() {
                input[bit / 8] ^= 1 << (bit % 8);
                let diff = base ^ f(seed, &input);
                input[bit / 8] ^= 1 << (bit % 8);
                for (out, count) in counts.iter_mut().enumerate() {
                    *count += ((diff >> out) & 1) as u32;
                }
            }
        }
        let mut worst_mean = 32.0f64;
        let (mut lo, mut hi) = (1.0f64, 0.0f64);
        let mut total = 0u64;
        for counts in &flips {
            let sum: u32 = counts.iter().sum();
            total += u64::from(sum);
            let mean = f64::from(sum) / samples as f64;
            if (mean - 32.0).abs() > (worst_mean - 32.0).abs() {
                worst_mean = mean;
            }
            for &c in counts {
                let rate = f64::from(c) / samples as f64;
                lo = lo.min(rate);
                hi = hi.max(rate);
            }
        }
        let overall = total as f64 / (samples * input_bits) as f64;
        println!(
            "avalanche {name}: {input_bits} input bits x {samples} samples: mean flipped output \
             bits {overall:.2}/64 (worst input bit {worst_mean:.2}); per-pair flip rate in \
             [{lo:.3}, {hi:.3}]"
        );
        assert!((31.0..=33.0).contains(&overall), "overall {overall}");
        assert!((29.0..=35.0).contains(&worst_mean), "worst {worst_mean}");
        // 2000 samples: one standard deviation of a fair rate is 0.011; allow ~6.
        assert!(lo > 0.43 && hi < 0.57, "pair rates [{lo}, {hi}]");
    }

    #[test]
    fn avalanche_hash_bytes() {
        avalanche("hash_bytes/13B", 13 * 8, 2000, hash_bytes);
        avalanche("hash_bytes/40B", 40 * 8, 2000, hash_bytes);
    }

    #[test]
    fn avalanche_seed() {
        // The seed is an input too: routers with different seeds must not produce related
        // tables.
        avalanche("seed", 64, 2000, |seed, bytes| {
            hash_bytes(
                u64::from_le_bytes(bytes.try_into().unwrap()),
                &seed.to_le_bytes(),
            )
        });
    }

    #[test]
    fn avalanche_seeded_hasher_five_tuple() {
        avalanche("SeededHasher/5-tuple", 13 * 8, 2000, |seed, b| {
            let state = SeededState::new(seed);
            let src = u32::from_le_bytes(b[0..4].try_into().unwrap());
            let dst = u32::from_le_bytes(b[4..8].try_into().unwrap());
            let sport = u16::from_le_bytes(b[8..10].try_into().unwrap());
            let dport = u16::from_le_bytes(b[10..12].try_into().unwrap());
            state.hash_one((src, dst, sport, dport, b[12]))
        });
    }

    /// Keys that differ only in the fields an attacker controls still spread evenly over the
    /// buckets a table would use (low bits for the bucket, high bits for hashbrown's tag).
    #[test]
    fn flood_keys_spread_over_buckets() {
        #[derive(Hash)]
        struct FlowKey {
            src: [u8; 4],
            dst: [u8; 4],
            sport: u16,
            dport: u16,
            proto: u8,
        }
        let state = SeededState::new(0x5eed);
        let buckets = 1 << 10;
        let keys = 64 * buckets;
        let (mut low, mut high) = (vec![0u32; buckets], vec![0u32; buckets]);
        for i in 0..keys as u32 {
            let key = FlowKey {
                src: [10, 0, (i >> 8) as u8, i as u8],
                dst: [10, 99, 0, 1],
                sport: (i >> 16) as u16 + 1024,
                dport: 80,
                proto: 6,
            };
            let h = state.hash_one(&key);
            low[(h as usize) % buckets] += 1;
            high[(h >> 54) as usize] += 1;
        }
        let max_low = *low.iter().max().unwrap();
        let max_high = *high.iter().max().unwrap();
        println!("flood keys: {keys} keys in {buckets} buckets (mean 64): max by low bits {max_low}, by high bits {max_high}");
        // Poisson(64): the maximum of 1024 buckets is about 90; 110 is far outside chance.
        assert!(max_low < 110 && max_high < 110);

        let mut map: HashMap<u32, u32, SeededState> = HashMap::with_hasher(state.clone());
        map.extend((0..1000).map(|i| (i, i)));
        assert_eq!(map.get(&999), Some(&999));
        assert_eq!(format!("{state:?}"), "SeededState { .. }");
    }
}
