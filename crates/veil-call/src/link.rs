//! A participant's two links to the server, the SFU session and the key service's room
//! stream, and how they come back after a loss: [`LinkStatus`] (what the application sees in
//! the stats) and [`Backoff`], the reconnection schedule (specs/sfu.md, "Reconnecting";
//! specs/member.md §4).
//!
//! [`Backoff`] is plain arithmetic: the caller passes the random number for the jitter, so
//! the schedule is deterministic under test.

use std::time::Duration;

/// Which link to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// The media session with the SFU (signalling stream and WebRTC connection).
    Sfu,
    /// The key service's `Subscribe` stream of the room's commits and proposals.
    KeyService,
}

impl core::fmt::Display for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Sfu => "SFU",
            Self::KeyService => "key service",
        })
    }
}

/// A link was lost, or is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link was lost; reconnection has started.
    Lost {
        /// What was seen (the stream's error, the connection's state).
        reason: String,
    },
    /// The link is back.
    Restored {
        /// Reconnection attempts it took (the last one succeeded).
        attempts: u32,
        /// How long it was down.
        down_for: Duration,
    },
}

/// The state of one link, for the statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// `None` while the link is up; while it is down, why it was lost (the reason of the loss;
    /// the failed attempts' are in `last_error`).
    pub lost: Option<String>,
    /// Failed reconnection attempts since the loss (0 while up).
    pub attempts: u32,
    /// Why the last attempt failed (`None` while up, or before the first attempt failed):
    /// e.g. an expired token, which no number of attempts will fix.
    pub last_error: Option<String>,
    /// How many times the link was lost since joining.
    pub losses: u32,
}

impl LinkStatus {
    /// Whether the link is up.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.lost.is_none()
    }

    /// Record a loss.
    pub fn lose(&mut self, reason: String) {
        if self.lost.is_none() {
            self.losses += 1;
            self.attempts = 0;
            self.last_error = None;
            self.lost = Some(reason);
        }
    }

    /// Record a failed attempt.
    pub fn failed(&mut self, error: String) {
        self.attempts += 1;
        self.last_error = Some(error);
    }

    /// Record that the link is back.
    pub fn restore(&mut self) {
        self.lost = None;
        self.attempts = 0;
        self.last_error = None;
    }
}

/// Capped exponential back-off with jitter: the `n`-th delay (from 0) is
/// `min(cap, first · 2ⁿ)`, scaled by a factor in `[0.5, 1.0)` ("equal jitter"), so that
/// participants who lost the same server do not come back in lock-step, and no delay is ever
/// more than `cap`. It never gives up: the caller decides when to stop.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// The SFU's schedule: 250 ms doubling to 2 s (the first retry 125–250 ms after the
    /// loss; a server that answers again is tried within 2 s).
    pub const SFU: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));
    /// The key service's schedule: 100 ms doubling to 2 s, well inside its 10 s departure
    /// grace.
    pub const KEY_SERVICE: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(2));

    /// A schedule starting at `first`, never above `cap`.
    #[must_use]
    pub fn new((first, cap): (Duration, Duration)) -> Self {
        Self {
            first,
            cap: cap.max(first),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)` (clamped).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let full = self
            .first
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Delays handed out since the last [`reset`](Self::reset).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Start again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Backoff::SFU);
        let full: Vec<Duration> = (0..8).map(|_| b.next_delay(0.999_999)).collect();
        let ms: Vec<u128> = full.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [249, 499, 999, 1999, 1999, 1999, 1999, 1999]);
        let mut b = Backoff::new(Backoff::SFU);
        let low: Vec<u128> = (0..5).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(low, [125, 250, 500, 1000, 1000]);
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(125));
    }

    #[test]
    fn many_attempts_neither_overflow_nor_pass_the_cap() {
        let mut b = Backoff::new(Backoff::KEY_SERVICE);
        for i in 0..10_000 {
            assert!(b.next_delay(f64::from(i % 100) / 100.0) <= Duration::from_secs(2));
        }
        // Out-of-range randomness is clamped.
        assert_eq!(b.next_delay(7.0), Duration::from_secs(2));
    }

    #[test]
    fn a_loss_counts_once_until_the_link_is_back() {
        let mut s = LinkStatus::default();
        assert!(s.is_up());
        s.lose("stream ended".into());
        s.failed("refused".into());
        s.failed("token expired".into());
        s.lose("again".into());
        assert_eq!((s.losses, s.attempts), (1, 2));
        assert_eq!(s.lost.as_deref(), Some("stream ended"));
        assert_eq!(s.last_error.as_deref(), Some("token expired"));
        s.restore();
        assert!(s.is_up());
        assert_eq!((s.losses, s.attempts, s.last_error), (1, 0, None));
    }
}
