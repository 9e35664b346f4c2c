//! A packet-rate limit per participant (SFU-LIVE-04): a flooding publisher is cut to its
//! limit at the door, before its packets cost any routing, so it cannot starve the others of
//! the SFU's CPU. A token bucket: `burst` packets at once, refilled at `packets_per_second`.

use std::time::Duration;

/// How many packets a participant may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained packets per second.
    pub packets_per_second: f64,
    /// Packets allowed at once above that (a key frame's burst).
    pub burst: f64,
}

impl Default for RateLimit {
    /// 5,000 packets/s with bursts of 1,000: a publisher of three 1080p simulcast layers and
    /// audio sends a few hundred per second, and its largest key frame about 200 at once, so
    /// only a flood meets it.
    fn default() -> Self {
        Self {
            packets_per_second: 5_000.0,
            burst: 1_000.0,
        }
    }
}

/// One participant's bucket.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    /// `(tokens, when they were counted)`; full before the first packet.
    state: Option<(f64, Duration)>,
}

impl TokenBucket {
    /// Take one packet's token at `now` (any clock that does not go back): false when the
    /// participant is over its limit and the packet must be dropped.
    pub fn take(&mut self, limit: RateLimit, now: Duration) -> bool {
        let (tokens, then) = self.state.unwrap_or((limit.burst, now));
        let refilled = (tokens + now.saturating_sub(then).as_secs_f64() * limit.packets_per_second)
            .min(limit.burst);
        let ok = refilled >= 1.0;
        self.state = Some((if ok { refilled - 1.0 } else { refilled }, now));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        packets_per_second: 100.0,
        burst: 10.0,
    };

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut b = TokenBucket::default();
        let t0 = Duration::from_secs(5);
        // The burst at once, then nothing more at the same instant.
        assert_eq!((0..15).filter(|_| b.take(LIMIT, t0)).count(), 10);
        // One second at 1,000 packets/s offered: 100 pass.
        let passed = (1..=1000u64)
            .filter(|i| b.take(LIMIT, t0 + Duration::from_millis(*i)))
            .count();
        assert!((99..=101).contains(&passed), "{passed}");
    }

    #[test]
    fn a_sender_under_the_limit_never_loses_a_packet() {
        let mut b = TokenBucket::default();
        // 90 packets/s for 10 s, with a 10-packet burst every second.
        for s in 0..10u64 {
            for i in 0..80u64 {
                assert!(b.take(LIMIT, Duration::from_millis(s * 1000 + i * 12)));
            }
            for _ in 0..10 {
                assert!(b.take(LIMIT, Duration::from_millis(s * 1000 + 990)));
            }
        }
    }
}

// Caller input never panics (issue 19): any value the constructor takes, however far out
// of range, gives a working object; ordinary values behave as the unit tests above show.
#[cfg(test)]
mod caller_input {
    use proptest::prelude::*;

    use super::*;
    use crate::routing::caller_input::any_duration;

    proptest! {
        #[test]
        fn any_rate_and_burst(
            packets_per_second in prop_oneof![
                Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), 0.0f64..1e6
            ],
            burst in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), 0.0f64..1e4],
            times in proptest::collection::vec(any_duration(), 1..40),
        ) {
            let limit = RateLimit { packets_per_second, burst };
            let mut b = TokenBucket::default();
            for now in times {
                b.take(limit, now);
            }
        }
    }
}
