//! Dropping silent audio (DTX at the SFU, SFU-DTX-01..03).
//!
//! Chromium sends the RFC 6464 audio level in the clear on every Opus packet, also under
//! end-to-end encryption. A packet whose level says "no voice" and "this quiet or quieter" is
//! silence; once a stream has been silent for the hangover, its packets are not forwarded. The
//! forwarder renumbers across them ([`LayerForwarder::skip`]), so subscribers see contiguous
//! sequence numbers and ask for nothing; timestamps keep their gap, which is how a receiver
//! learns how long the silence lasted (as with a sender's own DTX). The first packet with voice
//! (or louder than the threshold) ends the silence and is forwarded at once.
//!
//! Silence is measured in the stream's own RTP time, not arrival time: a burst or a stall on
//! the publisher's leg does not change what is dropped. Packets without an audio level are
//! always forwarded: nothing says they are silent.
//!
//! [`LayerForwarder::skip`]: crate::routing::LayerForwarder::skip

use std::collections::HashMap;
use std::time::Duration;

use veil_wire::audio_level::AudioLevel;

/// When silent audio is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtx {
    /// A packet is silent if its voice flag is clear and its level is this or quieter, in −dBov
    /// (level ≥ this). 127, the default, is digital silence only.
    pub silence_level: u8,
    /// Silent packets are still forwarded until the silence has lasted this long (in RTP time),
    /// so a decoder hears the start of it and speech tails are never cut.
    pub hangover: Duration,
}

impl Default for Dtx {
    fn default() -> Self {
        Self {
            silence_level: AudioLevel::SILENCE,
            hangover: Duration::from_millis(200),
        }
    }
}

impl Dtx {
    /// Whether `level` counts as silence.
    #[must_use]
    pub fn is_silent(&self, level: AudioLevel) -> bool {
        !level.voice && level.level >= self.silence_level
    }
}

/// Silence state of every audio stream of a room, by publisher SSRC.
#[derive(Debug, Clone)]
pub struct SilenceGate {
    dtx: Dtx,
    /// RTP timestamp of the first packet of the current silence, per SSRC.
    silent_since: HashMap<u32, u32>,
}

impl SilenceGate {
    /// A gate with these thresholds.
    #[must_use]
    pub fn new(dtx: Dtx) -> Self {
        Self {
            dtx,
            silent_since: HashMap::new(),
        }
    }

    /// Whether the packet of `ssrc` with this audio level and RTP `timestamp` is to be dropped
    /// (SFU-DTX-01): silent, and at least the hangover after the silence began. A packet that is
    /// not silent ends the silence (SFU-DTX-02).
    pub fn drop_packet(
        &mut self,
        ssrc: u32,
        level: Option<AudioLevel>,
        timestamp: u32,
        clock_rate: u32,
    ) -> bool {
        if !level.is_some_and(|l| self.dtx.is_silent(l)) {
            self.silent_since.remove(&ssrc);
            return false;
        }
        let since = *self.silent_since.entry(ssrc).or_insert(timestamp);
        // A packet older than the silence's start (reordered) reads as negative: forwarded.
        let elapsed = i64::from(timestamp.wrapping_sub(since) as i32);
        let hangover = self.dtx.hangover.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
        elapsed >= 0 && elapsed as u128 >= hangover
    }

    /// The stream is gone (its track ended).
    pub fn remove(&mut self, ssrc: u32) {
        self.silent_since.remove(&ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENT: AudioLevel = AudioLevel {
        voice: false,
        level: 127,
    };
    const TALK: AudioLevel = AudioLevel {
        voice: true,
        level: 30,
    };

    #[test]
    fn silence_is_dropped_after_the_hangover_and_voice_passes_at_once() {
        let mut g = SilenceGate::new(Dtx::default());
        let mut dropped = Vec::new();
        // 20 ms Opus packets at 48 kHz: 10 talk, 30 silent, 10 talk.
        for i in 0..50u32 {
            let level = if (10..40).contains(&i) { SILENT } else { TALK };
            if g.drop_packet(7, Some(level), 1_000 + 960 * i, 48_000) {
                dropped.push(i);
            }
        }
        // Silence starts at packet 10; 200 ms = 10 packets are still forwarded.
        assert_eq!(dropped, (20..40).collect::<Vec<_>>());
    }

    #[test]
    fn only_packets_without_voice_and_at_the_threshold_count_as_silent() {
        let dtx = Dtx {
            silence_level: 100,
            hangover: Duration::ZERO,
        };
        let mut g = SilenceGate::new(dtx);
        let lvl = |voice, level| Some(AudioLevel { voice, level });
        assert!(g.drop_packet(1, lvl(false, 100), 0, 48_000));
        assert!(g.drop_packet(1, lvl(false, 127), 960, 48_000));
        // Voice flag set, or louder than the threshold, or no level at all: forwarded.
        assert!(!g.drop_packet(1, lvl(true, 127), 1920, 48_000));
        assert!(!g.drop_packet(1, lvl(false, 99), 2880, 48_000));
        assert!(!g.drop_packet(1, None, 3840, 48_000));
    }

    #[test]
    fn streams_are_gated_separately_and_timestamps_may_wrap() {
        let mut g = SilenceGate::new(Dtx::default());
        let start = u32::MAX - 960 * 5;
        let mut dropped = 0;
        for i in 0..30u32 {
            let ts = start.wrapping_add(960 * i);
            dropped += u32::from(g.drop_packet(1, Some(SILENT), ts, 48_000));
            // Stream 2 talks throughout.
            assert!(!g.drop_packet(2, Some(TALK), ts, 48_000));
        }
        assert_eq!(dropped, 20);
        // A reordered packet from before the silence began is not dropped.
        assert!(!g.drop_packet(1, Some(SILENT), start.wrapping_sub(960), 48_000));
    }
}
