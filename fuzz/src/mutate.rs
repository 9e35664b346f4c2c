//! The stable driver's mutator: seeded, small, and blind (no coverage feedback). It makes
//! what libFuzzer's default mutators make most often: bit flips, interesting bytes, byte
//! inserts and deletes, copied runs, splices with another corpus entry, truncations and
//! fresh random inputs.

/// A small seeded generator (SplitMix64): the same seed gives the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Bytes that break parsers more often than random ones: boundaries of 8-, 16- and 32-bit
/// fields, and length-like values.
const INTERESTING: [u8; 12] = [
    0, 1, 2, 0x0F, 0x10, 0x3F, 0x40, 0x7F, 0x80, 0xFE, 0xFF, 0x20,
];

/// Apply 1 to 4 random mutations to `data`, keeping it at most `max_len` bytes. `other` is
/// another corpus entry to splice from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(10) {
            0 | 1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            2 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.byte();
            }
            4 => {
                let i = rng.below(data.len() + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    data.insert(i, rng.byte());
                }
            }
            5 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = (1 + rng.below(16)).min(data.len() - i);
                data.drain(i..i + n);
            }
            6 if !data.is_empty() => {
                // Copy a run of the input elsewhere in it (repeated fields, lengths).
                let from = rng.below(data.len());
                let n = (1 + rng.below(32)).min(data.len() - from);
                let run = data[from..from + n].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, run);
            }
            7 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if !data.is_empty() => {
                data.truncate(rng.below(data.len()));
            }
            9 if rng.below(8) == 0 => {
                // Now and then a fresh input of a random length.
                let n = rng.below(max_len.min(512) + 1);
                data.clear();
                data.extend((0..n).map(|_| rng.byte()));
            }
            _ => {
                let i = rng.below(data.len() + 1);
                data.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
        }
    }
    data.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs_within_the_length_cap() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut d = b"a seed input".to_vec();
            let mut seen = Vec::new();
            for _ in 0..200 {
                mutate(&mut rng, &mut d, b"other", 64);
                assert!(d.len() <= 64);
                seen.push(d.clone());
            }
            seen
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
