//! Key-frame requests toward publishers (SFU-KF-01..02).
//!
//! Subscribers' PLI/FIR end at the SFU. Browsers cannot make a key frame from the encoded
//! transform; a PLI/FIR from the far end (the SFU) is the only lever. So the SFU asks the
//! publisher itself: on a subscriber's request, on subscribe, and on a layer switch. It sends
//! at most one request per publisher stream per `min_interval`, however many subscribers ask.

use std::collections::HashMap;
use std::time::Duration;

/// Counters of a [`KeyFrameRequests`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFrameStats {
    /// Requests received (from subscribers or the forwarder).
    pub requested: u64,
    /// Requests sent to publishers.
    pub sent: u64,
    /// Requests absorbed by the throttle.
    pub suppressed: u64,
}

/// Deduplicates and throttles key-frame requests per publisher SSRC.
#[derive(Debug, Clone)]
pub struct KeyFrameRequests {
    min_interval: Duration,
    last_sent: HashMap<u32, Duration>,
    stats: KeyFrameStats,
}

impl KeyFrameRequests {
    /// At most one request per publisher stream per `min_interval`.
    #[must_use]
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: HashMap::new(),
            stats: KeyFrameStats::default(),
        }
    }

    /// Something wants a key frame on `publisher_ssrc` at `now`. Returns whether the SFU should
    /// send a PLI to the publisher now (SFU-KF-01).
    pub fn request(&mut self, publisher_ssrc: u32, now: Duration) -> bool {
        self.stats.requested += 1;
        let due = self
            .last_sent
            .get(&publisher_ssrc)
            .is_none_or(|&t| now.saturating_sub(t) >= self.min_interval);
        if due {
            self.last_sent.insert(publisher_ssrc, now);
            self.stats.sent += 1;
        } else {
            self.stats.suppressed += 1;
        }
        due
    }

    /// A key frame arrived on `publisher_ssrc`: a request made after this is for a new need
    /// and may go at once (SFU-KF-02).
    pub fn key_frame_seen(&mut self, publisher_ssrc: u32) {
        self.last_sent.remove(&publisher_ssrc);
    }

    /// Forget a publisher stream that ended.
    pub fn remove(&mut self, publisher_ssrc: u32) {
        self.last_sent.remove(&publisher_ssrc);
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> KeyFrameStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn many_subscribers_asking_at_once_give_one_request_per_interval() {
        let mut k = KeyFrameRequests::new(500 * MS);
        let mut sent = 0;
        // 20 subscribers send a PLI every 10 ms for 2 s.
        for t in (0..2000).step_by(10) {
            for _ in 0..20 {
                sent += usize::from(k.request(7, t * MS));
            }
        }
        assert_eq!(sent, 4, "at t = 0, 500, 1000, 1500 ms");
        assert_eq!(k.stats().sent, 4);
        assert_eq!(k.stats().suppressed, 200 * 20 - 4);
    }

    #[test]
    fn streams_are_throttled_separately_and_a_key_frame_resets_the_throttle() {
        let mut k = KeyFrameRequests::new(500 * MS);
        assert!(k.request(1, Duration::ZERO));
        assert!(k.request(2, Duration::ZERO));
        assert!(!k.request(1, 100 * MS));
        k.key_frame_seen(1);
        assert!(
            k.request(1, 200 * MS),
            "a new need after the key frame goes at once"
        );
        assert!(!k.request(2, 499 * MS));
        assert!(k.request(2, 500 * MS));
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
        fn any_min_interval(
            min_interval in any_duration(),
            asks in proptest::collection::vec((0u32..3, any_duration()), 1..40),
        ) {
            let mut k = KeyFrameRequests::new(min_interval);
            let first = asks[0];
            prop_assert!(k.request(first.0, first.1));
            for (ssrc, now) in asks {
                k.request(ssrc, now);
            }
            let s = k.stats();
            prop_assert_eq!(s.requested, s.sent + s.suppressed);
        }
    }
}
