//! Per-KID anti-replay window (checks SF-RPL-01..04).
//!
//! A sliding bitmap over the highest accepted counter, as SRTP (RFC 3711 §3.3.2) and libsrtp
//! keep one. A receiver first **screens** a counter ([`ReplayWindow::check`]), which yields a
//! [`ReplayToken`]; only after the AEAD tag verified does it **record** the token
//! ([`ReplayWindow::record`]). The token is the proof type that keeps the order honest: a
//! forged frame never gets as far as `record`, so it can never move the window (SF-RPL-04).

use crate::error::SframeError;

/// Default window: the 1024 most recent counters (SF-LIM-02).
///
/// Larger than libsrtp's 128 on purpose: an SRTP window covers the packets of one stream, but
/// one SFrame KID covers every frame a sender sends in an epoch (audio, video, each simulcast
/// layer) under one counter. A video frame repaired by retransmission completes late, while the
/// sender's audio keeps moving the window: at 50 audio and 17 video frames a second, 128
/// counters are 1.9 s, and a frame repaired after a second of heavy loss fell out of it
/// (`tests/tests/e2e/impaired.rs`). 1024 counters are 7 s at 140 frames a second (audio and
/// three simulcast layers at 30 fps), longer than any receiver waits for a frame.
pub const DEFAULT_REPLAY_WINDOW: u32 = 1024;
/// Largest supported window (the bitmap is 16 64-bit words).
pub const MAX_REPLAY_WINDOW: u32 = 1024;

/// 64-bit words of the bitmap.
const WORDS: usize = MAX_REPLAY_WINDOW as usize / 64;

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
    /// Bit `i` (word `i / 64`, bit `i % 64`) set: counter `highest - i` was recorded.
    seen: [u64; WORDS],
    size: u32,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_WINDOW)
    }
}

impl ReplayWindow {
    /// A window remembering the `size` most recent counters, clamped to
    /// `1..=`[`MAX_REPLAY_WINDOW`].
    #[must_use]
    pub fn new(size: u32) -> Self {
        Self {
            highest: None,
            seen: [0; WORDS],
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
        if self.bit(age) {
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
            Some(h) if ctr <= h => self.set(h - ctr),
            Some(h) => {
                self.shift(ctr - h);
                self.set(0);
                self.highest = Some(ctr);
            }
            None => {
                self.set(0);
                self.highest = Some(ctr);
            }
        }
        // Forget bits beyond the window so a smaller window behaves exactly as configured.
        let size = self.size as usize;
        for (w, word) in self.seen.iter_mut().enumerate() {
            let first = w * 64;
            if first >= size {
                *word = 0;
            } else if size - first < 64 {
                *word &= (1u64 << (size - first)) - 1;
            }
        }
        Ok(())
    }

    /// Whether age `i` (counter `highest - i`) is recorded; `i` is below the window size.
    fn bit(&self, i: u64) -> bool {
        let i = i as usize; // below MAX_REPLAY_WINDOW: check tested `age < size`
        self.seen[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: u64) {
        let i = i as usize;
        self.seen[i / 64] |= 1 << (i % 64);
    }

    /// Age every recorded counter by `by` (a new highest counter `by` above the old one).
    fn shift(&mut self, by: u64) {
        let Ok(by) = usize::try_from(by) else {
            self.seen = [0; WORDS];
            return;
        };
        let (words, bits) = (by / 64, by % 64);
        for w in (0..WORDS).rev() {
            let lo = w.checked_sub(words).map_or(0, |src| self.seen[src]);
            let below = w.checked_sub(words + 1).map_or(0, |src| self.seen[src]);
            self.seen[w] = if bits == 0 {
                lo
            } else {
                lo << bits | below >> (64 - bits)
            };
        }
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
        let mut w = ReplayWindow::new(128);
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

    #[test]
    fn the_default_window_spans_1024_counters_across_its_words() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.size(), 1024);
        for c in (0..3000).step_by(3) {
            accept(&mut w, c).unwrap();
        }
        // Highest 2997: 1974..=2997 are in the window; those recorded are replays, the others
        // (not multiples of 3) are new, and 1973 is too old.
        assert!(matches!(
            w.check(1, 1974),
            Err(SframeError::Replayed { .. })
        ));
        accept(&mut w, 1975).unwrap();
        assert!(matches!(
            w.check(1, 1975),
            Err(SframeError::Replayed { .. })
        ));
        assert!(matches!(
            w.check(1, 1973),
            Err(SframeError::TooOld { oldest: 1974, .. })
        ));
        // A jump of 64 × k + r moves every recorded bit across words: 2997 is still recorded
        // until it leaves the window.
        accept(&mut w, 2997 + 130).unwrap();
        assert!(matches!(
            w.check(1, 2997),
            Err(SframeError::Replayed { .. })
        ));
        accept(&mut w, 2998).unwrap();
        accept(&mut w, 2997 + 1023).unwrap();
        assert!(matches!(
            w.check(1, 2997),
            Err(SframeError::Replayed { .. })
        ));
        accept(&mut w, 2997 + 1024).unwrap();
        assert!(matches!(w.check(1, 2997), Err(SframeError::TooOld { .. })));
    }

    /// The window against a plain model: the set of every recorded counter, any of which
    /// within `size` of the highest is a replay and anything older too old.
    fn model_accepts(seen: &std::collections::BTreeSet<u64>, size: u32, ctr: u64) -> bool {
        match seen.last() {
            None => true,
            Some(&h) if ctr > h => true,
            Some(&h) => h - ctr < u64::from(size) && !seen.contains(&ctr),
        }
    }

    // Caller input never panics (issue 19): any size is clamped to 1..=1024 (specs/sframe.md
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

        #[test]
        fn the_window_accepts_exactly_what_the_model_accepts(
            size in 1u32..=1024,
            offsets in proptest::collection::vec(0u64..3_000, 1..400),
        ) {
            let mut w = ReplayWindow::new(size);
            let mut seen = std::collections::BTreeSet::new();
            for c in offsets {
                let expect = model_accepts(&seen, size, c);
                proptest::prop_assert_eq!(accept(&mut w, c).is_ok(), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                }
            }
        }
    }
}
