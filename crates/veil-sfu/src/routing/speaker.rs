//! Active speaker from the RFC 6464 audio level, which Chromium sends in the clear on every Opus
//! packet even under end-to-end encryption (SFU-SPK-01..02).
//!
//! Each participant's loudness is the mean of `127 − level` (so louder is larger) over the last
//! `window`. Silent packets count as 0. The loudest participant becomes the active speaker only
//! after being loudest by at least `margin` for `hold`, so one cough does not steal the floor.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use veil_wire::audio_level::AudioLevel;

/// Active-speaker detection for one room.
#[derive(Debug, Clone)]
pub struct ActiveSpeaker {
    window: Duration,
    margin: f64,
    hold: Duration,
    levels: HashMap<u64, VecDeque<(Duration, u8)>>,
    current: Option<u64>,
    challenger: Option<(u64, Duration)>,
}

impl ActiveSpeaker {
    /// Loudness averaged over `window`; a challenger must be louder by `margin` (in the 0..=127
    /// loudness scale) for `hold` to take over.
    #[must_use]
    pub fn new(window: Duration, margin: f64, hold: Duration) -> Self {
        Self {
            window,
            margin,
            hold,
            levels: HashMap::new(),
            current: None,
            challenger: None,
        }
    }

    /// Record one audio packet of `participant` at `now`.
    pub fn on_audio(&mut self, participant: u64, level: AudioLevel, now: Duration) {
        let loudness = if level.is_silent() {
            0
        } else {
            127 - level.level.min(127)
        };
        let q = self.levels.entry(participant).or_default();
        q.push_back((now, loudness));
        while q
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > self.window)
        {
            q.pop_front();
        }
    }

    /// A participant left: forget it (and hand the floor on at the next `update`).
    pub fn remove(&mut self, participant: u64) {
        self.levels.remove(&participant);
        if self.current == Some(participant) {
            self.current = None;
        }
    }

    fn loudness(&self, p: u64, now: Duration) -> f64 {
        let Some(q) = self.levels.get(&p) else {
            return 0.0;
        };
        let recent: Vec<u8> = q
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= self.window)
            .map(|(_, l)| *l)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().map(|&l| f64::from(l)).sum::<f64>() / recent.len() as f64
        }
    }

    /// Re-evaluate at `now`; returns the new active speaker when it changes (SFU-SPK-01).
    pub fn update(&mut self, now: Duration) -> Option<u64> {
        let loudest = self
            .levels
            .keys()
            .map(|&p| (p, self.loudness(p, now)))
            .filter(|(_, l)| *l > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
        let Some(cur) = self.current else {
            self.current = Some(loudest.0);
            return self.current;
        };
        if loudest.0 == cur || loudest.1 < self.loudness(cur, now) + self.margin {
            self.challenger = None;
            return None;
        }
        // Hysteresis: the challenger must stay ahead for `hold` (SFU-SPK-02).
        match self.challenger {
            Some((p, since)) if p == loudest.0 && now.saturating_sub(since) >= self.hold => {
                self.current = Some(p);
                self.challenger = None;
                self.current
            }
            Some((p, _)) if p == loudest.0 => None,
            _ => {
                self.challenger = Some((loudest.0, now));
                None
            }
        }
    }

    /// The active speaker.
    #[must_use]
    pub fn current(&self) -> Option<u64> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvl(level: u8) -> AudioLevel {
        AudioLevel {
            voice: level < 127,
            level,
        }
    }

    #[test]
    fn the_loudest_sustained_speaker_wins_and_a_cough_does_not() {
        let mut s = ActiveSpeaker::new(Duration::from_millis(500), 5.0, Duration::from_millis(300));
        let mut changes = Vec::new();
        for ms in (0..4000u64).step_by(20) {
            let now = Duration::from_millis(ms);
            // Alice talks for the first 2 s; Bob coughs once at 1 s (60 ms); Bob talks after 2 s.
            s.on_audio(1, lvl(if ms < 2000 { 20 } else { 127 }), now);
            let bob = if (1000..1060).contains(&ms) || ms >= 2000 {
                15
            } else {
                127
            };
            s.on_audio(2, lvl(bob), now);
            s.on_audio(3, lvl(127), now); // Carol is silent throughout.
            if let Some(p) = s.update(now) {
                changes.push((ms, p));
            }
        }
        assert_eq!(changes.first(), Some(&(0, 1)), "alice speaks first");
        assert_eq!(changes.len(), 2, "no switch for the cough: {changes:?}");
        let (at, who) = changes[1];
        assert_eq!(who, 2);
        assert!(
            (2000..=2900).contains(&at),
            "bob takes over after the hold: {at} ms"
        );
    }

    #[test]
    fn nobody_speaks_in_a_silent_room_and_leavers_are_forgotten() {
        let mut s = ActiveSpeaker::new(Duration::from_millis(500), 5.0, Duration::ZERO);
        s.on_audio(1, lvl(127), Duration::ZERO);
        assert_eq!(s.update(Duration::ZERO), None);
        s.on_audio(2, lvl(30), Duration::ZERO);
        assert_eq!(s.update(Duration::ZERO), Some(2));
        s.remove(2);
        assert_eq!(s.current(), None);
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
        fn any_window_margin_and_hold(
            window in any_duration(),
            margin in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), 0.0f64..50.0],
            hold in any_duration(),
            packets in proptest::collection::vec((0u64..4, 0u8..=127, any_duration()), 0..40),
        ) {
            let mut s = ActiveSpeaker::new(window, margin, hold);
            for (p, level, now) in packets {
                s.on_audio(p, AudioLevel { voice: level < 127, level }, now);
                if let Some(w) = s.update(now) {
                    prop_assert!(w < 4);
                }
                if level == 0 {
                    s.remove(p);
                }
            }
        }
    }
}
