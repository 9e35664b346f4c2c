//! Requests per second per token holder (LIM-RATE-01..03, specs/limits.md): one token bucket
//! per key (the servers use the verified token's room and identity), in a map whose size is
//! bounded. Sans-I/O: every call takes the time as an argument, so the tests run in virtual
//! time; the key service and the SFU's signalling each hold one behind a mutex.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many requests a key may make: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    /// Requests per second, on average. Zero turns the limit off.
    pub per_second: u32,
    /// Requests at once after a quiet spell (the bucket's size); at least 1 is used.
    pub burst: u32,
}

impl RequestRate {
    /// No limit.
    pub const OFF: Self = Self {
        per_second: 0,
        burst: 0,
    };

    /// Whether the limit is on.
    #[must_use]
    pub const fn is_on(self) -> bool {
        self.per_second > 0
    }
}

impl Default for RequestRate {
    /// 50 requests per second, bursts of 100: a member's join is a handful of calls, a
    /// committer adding 20 joiners at once makes 20 claims and a commit, and a client's
    /// retries are spaced by at least 100 ms.
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 100,
        }
    }
}

/// A refused request: when the key may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowDown {
    /// Until the bucket holds one request again.
    pub retry_after: Duration,
    /// The limit that refused it.
    pub rate: RequestRate,
}

impl core::fmt::Display for SlowDown {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "too many requests for this token: at most {} per second (bursts of {}); slow down and retry in {} ms",
            self.rate.per_second,
            self.rate.burst.max(1),
            self.retry_after.as_millis().max(1)
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests available, in millionths of a request.
    micros: u64,
    /// When `micros` was last brought up to date.
    at: Instant,
}

/// Token buckets by key, at most `max_keys` of them (LIM-RATE-03).
///
/// A bucket that has refilled to full holds no information (a fresh one would be the same), so
/// it may be dropped: when the map is full, the full buckets go first. If every bucket is still
/// draining (more than `max_keys` keys busy within one refill time), a new key is refused as if
/// its bucket were empty, rather than forgetting a busy key's debt.
#[derive(Debug)]
pub struct RateLimiter {
    rate: RequestRate,
    max_keys: usize,
    buckets: HashMap<String, Bucket>,
}

const MICROS: u64 = 1_000_000;

impl RateLimiter {
    /// Buckets kept unless told otherwise ([`RateLimiter::with_max_keys`]).
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    /// A limiter allowing `rate` per key.
    #[must_use]
    pub fn new(rate: RequestRate) -> Self {
        Self::with_max_keys(rate, Self::DEFAULT_MAX_KEYS)
    }

    /// A limiter allowing `rate` per key that keeps at most `max_keys` buckets (at least 1).
    #[must_use]
    pub fn with_max_keys(rate: RequestRate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// The limit.
    #[must_use]
    pub const fn rate(&self) -> RequestRate {
        self.rate
    }

    /// Buckets held now.
    #[must_use]
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }

    fn capacity(&self) -> u64 {
        u64::from(self.rate.burst.max(1)) * MICROS
    }

    /// `b` refilled up to `now` (a clock that went back refills nothing).
    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at);
        let added = elapsed
            .as_micros()
            .saturating_mul(u128::from(self.rate.per_second));
        let added = u64::try_from(added).unwrap_or(u64::MAX);
        b.micros = b.micros.saturating_add(added).min(self.capacity());
        b.at = b.at.max(now);
    }

    /// One request by `key` at `now`: allowed (and counted), or refused with when to retry.
    ///
    /// # Errors
    /// [`SlowDown`] when `key` has used its burst and not yet earned another request.
    pub fn check(&mut self, key: &str, now: Instant) -> Result<(), SlowDown> {
        if !self.rate.is_on() {
            return Ok(());
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict_full(now);
            if self.buckets.len() >= self.max_keys {
                return Err(self.slow_down(0));
            }
        }
        let full = Bucket {
            micros: self.capacity(),
            at: now,
        };
        let mut b = self.buckets.get(key).copied().unwrap_or(full);
        self.refill(&mut b, now);
        let result = if b.micros >= MICROS {
            b.micros -= MICROS;
            Ok(())
        } else {
            Err(self.slow_down(b.micros))
        };
        self.buckets.insert(key.to_owned(), b);
        result
    }

    fn slow_down(&self, micros: u64) -> SlowDown {
        let missing = MICROS - micros.min(MICROS);
        let per_second = u64::from(self.rate.per_second.max(1));
        SlowDown {
            retry_after: Duration::from_micros(missing.div_ceil(per_second)),
            rate: self.rate,
        }
    }

    /// Drop every bucket that has refilled to full by `now` (nothing is lost: a new bucket
    /// starts full). The servers call it now and then; [`RateLimiter::check`] calls it when
    /// the map is full.
    pub fn evict_full(&mut self, now: Instant) {
        let cap = self.capacity();
        let per_second = u128::from(self.rate.per_second);
        self.buckets.retain(|_, b| {
            let earned = now.saturating_duration_since(b.at).as_micros() * per_second;
            u128::from(b.micros) + earned < u128::from(cap)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: RequestRate = RequestRate {
        per_second: 10,
        burst: 5,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lim_rate_01_a_burst_then_the_rate_and_other_keys_are_unaffected() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(RATE);
        for _ in 0..5 {
            l.check("room/alice", t0).expect("within the burst");
        }
        let e = l.check("room/alice", t0).expect_err("burst used");
        assert_eq!(e.retry_after, ms(100));
        assert!(e.to_string().contains("slow down"), "{e}");
        // Bob, at the same moment, has his whole burst.
        for _ in 0..5 {
            l.check("room/bob", t0).expect("another key is unaffected");
        }
        // 10 per second: one more every 100 ms, not before.
        assert!(l.check("room/alice", t0 + ms(99)).is_err());
        l.check("room/alice", t0 + ms(100)).expect("refilled one");
        assert!(l.check("room/alice", t0 + ms(100)).is_err());
        // Over 10 s at a steady 20/s, alice gets 10/s.
        let mut allowed = 0;
        for i in 1..=200 {
            if l.check("room/alice", t0 + ms(100 + i * 50)).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn lim_rate_01_refill_stops_at_the_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(RATE);
        l.check("k", t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            l.check("k", later).unwrap();
        }
        assert!(l.check("k", later).is_err());
    }

    #[test]
    fn lim_rate_02_off_allows_everything_and_keeps_nothing() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(RequestRate::OFF);
        for _ in 0..10_000 {
            l.check("k", t0).unwrap();
        }
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn lim_rate_03_the_map_is_bounded_and_busy_keys_keep_their_debt() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_max_keys(RATE, 3);
        for k in ["a", "b", "c"] {
            for _ in 0..5 {
                l.check(k, t0).unwrap();
            }
        }
        // Full of draining buckets: a fourth key is refused, nobody is forgotten.
        assert!(l.check("d", t0).is_err());
        assert_eq!(l.keys(), 3);
        assert!(l.check("a", t0).is_err(), "a's debt was kept");
        // Half a second later every bucket is full again: they go, and d gets in.
        l.check("d", t0 + ms(500))
            .expect("full buckets were evicted");
        assert_eq!(l.keys(), 1);
        // Ten thousand one-off keys never hold more than the cap.
        let mut l = RateLimiter::with_max_keys(RATE, 100);
        for i in 0..10_000u64 {
            let _ = l.check(&i.to_string(), t0 + ms(i * 10));
            assert!(l.keys() <= 100);
        }
    }

    #[test]
    fn a_clock_going_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = RateLimiter::new(RATE);
        for _ in 0..5 {
            l.check("k", t0).unwrap();
        }
        assert!(l.check("k", t0 - Duration::from_secs(5)).is_err());
    }
}
