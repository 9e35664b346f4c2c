//! Per-KID anti-replay window (checks SF-RPL-01..04).
//!
//! A sliding bitmap over the highest accepted counter, as SRTP (RFC 3711 §3.3.2) and libsrtp
//! keep one. A receiver first **screens** a counter ([`ReplayWindow::check`]), which yields a
//! [`ReplayToken`]; only after the AEAD tag verified does it **record** the token
//! ([`ReplayWindow::record`]). The token is the proof type that keeps the order honest: a
//! forged frame never gets as far as `record`, so it can never move the window (SF-RPL-04).

use crate::error::SframeError;

/// Default window: the 128 most recent counters (libsrtp's default).
pub const DEFAULT_REPLAY_WINDOW: u32 = 128;
/// Largest supported window (the bitmap is a `u128`).
pub const MAX_REPLAY_WINDOW: u32 = 128;

/// Proof that a counter passed the replay screen; consumed by [`ReplayWindow::record`].
#[derive(Debug)]
#[must_use = "record the token once the tag verified, or drop it if the frame was rejected"]
pub struct ReplayToken {
    ctr: u64,
}

impl ReplayToken {
    /// The screened counter.
    #[must_use]
    pub fn counter(&self) -> u64 {
        self.ctr
    }
}

/// Sliding replay window over 64-bit counters.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest recorded counter, if any.
    highest: Option<u64>,
    /// Bit `i` set: counter `highest - i` was recorded.
    seen: u128,
    size: u32,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_WINDOW)
    }
}

impl ReplayWindow {
    /// A window remembering the `size` most recent counters, clamped to `1..=128`.
    #[must_use]
    pub fn new(size: u32) -> Self {
        Self {
            highest: None,
            seen: 0,
            size: size.clamp(1, MAX_REPLAY_WINDOW),
        }
    }

    /// The window size.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The highest recorded counter.
    #[must_use]
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Screen `ctr` for key `kid` (only used in the error).
    ///
    /// # Errors
    /// [`SframeError::Replayed`] for a counter already recorded (SF-RPL-01),
    /// [`SframeError::TooOld`] for one below the window (SF-RPL-02).
    pub fn check(&self, kid: u64, ctr: u64) -> Result<ReplayToken, SframeError> {
        let Some(h) = self.highest else {
            return Ok(ReplayToken { ctr });
        };
        if ctr > h {
            return Ok(ReplayToken { ctr });
        }
        let age = h - ctr;
        if age >= u64::from(self.size) {
            return Err(SframeError::TooOld {
                kid,
                ctr,
                oldest: h - u64::from(self.size - 1),
            });
        }
        if self.seen >> age & 1 == 1 {
            return Err(SframeError::Replayed { kid, ctr });
        }
        Ok(ReplayToken { ctr })
    }

    /// Record a screened counter. Re-screens, so two tokens for one counter cannot both land.
    ///
    /// # Errors
    /// As [`check`](Self::check), if the window moved since the token was issued.
    pub fn record(&mut self, kid: u64, token: ReplayToken) -> Result<(), SframeError> {
        let ctr = self.check(kid, token.ctr)?.ctr;
        match self.highest {
            Some(h) if ctr <= h => self.seen |= 1 << (h - ctr),
            Some(h) => {
                let shift = ctr - h;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(ctr);
            }
            None => {
                self.seen = 1;
                self.highest = Some(ctr);
            }
        }
        // Forget bits beyond the window so a smaller window behaves exactly as configured.
        if self.size < 128 {
            self.seen &= (1u128 << self.size) - 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, ctr: u64) -> Result<(), SframeError> {
        let t = w.check(1, ctr)?;
        w.record(1, t)
    }

    #[test]
    fn fresh_counters_are_accepted_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        for c in [5, 3, 4, 10, 6, 200, 73, 199] {
            accept(&mut w, c).unwrap();
        }
        assert_eq!(w.highest(), Some(200));
    }

    #[test]
    fn duplicates_and_too_old_are_rejected() {
        let mut w = ReplayWindow::default();
        for c in 0..300 {
            accept(&mut w, c).unwrap();
        }
        for c in 172..300 {
            assert!(
                matches!(w.check(1, c), Err(SframeError::Replayed { .. })),
                "{c}"
            );
        }
        for c in [0, 100, 171] {
            assert!(
                matches!(w.check(1, c), Err(SframeError::TooOld { oldest: 172, .. })),
                "{c}"
            );
        }
    }

    #[test]
    fn two_tokens_for_one_counter_cannot_both_be_recorded() {
        let mut w = ReplayWindow::default();
        let a = w.check(1, 7).unwrap();
        let b = w.check(1, 7).unwrap();
        w.record(1, a).unwrap();
        assert!(w.record(1, b).is_err());
    }

    #[test]
    fn counter_zero_and_max_work() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 0).unwrap();
        accept(&mut w, u64::MAX).unwrap();
        assert!(w.check(1, u64::MAX).is_err());
        assert!(w.check(1, 0).is_err());
        accept(&mut w, u64::MAX - 63).unwrap();
        assert!(matches!(
            w.check(1, u64::MAX - 64),
            Err(SframeError::TooOld { .. })
        ));
    }

    // Caller input never panics (issue 19): any size is clamped to 1..=128 (specs/sframe.md
    // §5), and a window of a valid size refuses replays as before.
    proptest::proptest! {
        #[test]
        fn any_size_is_clamped_and_the_window_works(
            size: u32,
            ctrs in proptest::collection::vec(proptest::num::u64::ANY, 1..64),
        ) {
            let mut w = ReplayWindow::new(size);
            proptest::prop_assert_eq!(w.size(), size.clamp(1, MAX_REPLAY_WINDOW));
            for c in ctrs {
                if accept(&mut w, c).is_ok() {
                    proptest::prop_assert!(w.check(1, c).is_err());
                }
            }
        }
    }
}
