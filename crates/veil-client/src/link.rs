//! A participant's two links to the server (the SFU session and the key service's room
//! stream): the states and the back-off live in the call core ([`veil_call::link`]); the one
//! thing a shell adds is the randomness for the jitter.

use std::hash::{BuildHasher as _, Hasher as _};

pub use veil_call::link::{Backoff, Link, LinkEvent, LinkStatus};

/// 64 random bits from the standard library's randomly keyed hasher: good enough to spread
/// retries (the jitter, the call core's seed), and no dependency. Never for keys.
pub(crate) fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A random number in `[0, 1)` for the jitter (from the standard library's randomly keyed
/// hasher: good enough to spread retries, and no dependency).
#[must_use]
pub fn jitter() -> f64 {
    // 53 random bits make an exact f64 in [0, 1).
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let v: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|x| (x - v[0]).abs() > 1e-9));
    }
}
