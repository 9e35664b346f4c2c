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
//! the publisher's connection does not change what is dropped. Packets without an audio level are
//! always forwarded: nothing says they are silent.
//!
//! A publisher may already do DTX itself (Opus DTX: one comfort-noise packet every 400 ms
//! instead of one per 20 ms). Its packets then come with RTP time skipped before them, more per
//! sequence number than any Opus packet lasts. Those are forwarded even when silent
//! (SFU-DTX-04): the sender already removed the silence, and what it still sends keeps the
//! receiver's comfort noise going. The SFU sees this from the RTP header alone.
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

/// The longest audio a packet may carry: 120 ms, Opus's longest packet (RFC 6716 §3.2.5).
/// RTP time skipped beyond this per sequence number means the sender paused (its own DTX).
pub const MAX_PACKET_DURATION: Duration = Duration::from_millis(120);

/// Silence state of every audio stream of a room, by publisher SSRC.
#[derive(Debug, Clone)]
pub struct SilenceGate {
    dtx: Dtx,
    streams: HashMap<u32, Stream>,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// RTP timestamp of the first packet of the current silence.
    silent_since: Option<u32>,
    /// Sequence number and RTP timestamp of the newest packet.
    newest: (u16, u32),
}

impl SilenceGate {
    /// A gate with these thresholds.
    #[must_use]
    pub fn new(dtx: Dtx) -> Self {
        Self {
            dtx,
            streams: HashMap::new(),
        }
    }

    /// Whether the packet of `ssrc` with this audio level, sequence number `seq` and RTP
    /// `timestamp` is to be dropped (SFU-DTX-01): silent, and at least the hangover after the
    /// silence began. A packet that is not silent ends the silence (SFU-DTX-02). A silent packet
    /// that follows a pause of the sender's own (its DTX) is forwarded (SFU-DTX-04).
    pub fn drop_packet(
        &mut self,
        ssrc: u32,
        level: Option<AudioLevel>,
        seq: u16,
        timestamp: u32,
        clock_rate: u32,
    ) -> bool {
        let st = self.streams.entry(ssrc).or_insert(Stream {
            silent_since: None,
            newest: (seq.wrapping_sub(1), timestamp),
        });
        // Sequence numbers and RTP time since the newest packet; a reordered packet (no newer
        // than it) says nothing about pauses.
        let steps = seq.wrapping_sub(st.newest.0) as i16;
        let skipped = timestamp.wrapping_sub(st.newest.1) as i32;
        let after_pause = steps > 0
            && i64::from(skipped)
                > i64::from(steps) * ticks(MAX_PACKET_DURATION, clock_rate) as i64;
        if steps > 0 {
            st.newest = (seq, timestamp);
        }
        if !level.is_some_and(|l| self.dtx.is_silent(l)) {
            st.silent_since = None;
            return false;
        }
        let since = *st.silent_since.get_or_insert(timestamp);
        if after_pause {
            return false;
        }
        // A packet older than the silence's start (reordered) reads as negative: forwarded.
        let elapsed = i64::from(timestamp.wrapping_sub(since) as i32);
        elapsed >= 0 && elapsed as u128 >= ticks(self.dtx.hangover, clock_rate)
    }

    /// The stream is gone (its track ended).
    pub fn remove(&mut self, ssrc: u32) {
        self.streams.remove(&ssrc);
    }
}

/// `d` in RTP ticks at `clock_rate`.
fn ticks(d: Duration, clock_rate: u32) -> u128 {
    d.as_nanos() * u128::from(clock_rate) / 1_000_000_000
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
            if g.drop_packet(7, Some(level), i as u16, 1_000 + 960 * i, 48_000) {
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
        assert!(g.drop_packet(1, lvl(false, 100), 0, 0, 48_000));
        assert!(g.drop_packet(1, lvl(false, 127), 1, 960, 48_000));
        // Voice flag set, or louder than the threshold, or no level at all: forwarded.
        assert!(!g.drop_packet(1, lvl(true, 127), 2, 1920, 48_000));
        assert!(!g.drop_packet(1, lvl(false, 99), 3, 2880, 48_000));
        assert!(!g.drop_packet(1, None, 4, 3840, 48_000));
    }

    #[test]
    fn streams_are_gated_separately_and_timestamps_may_wrap() {
        let mut g = SilenceGate::new(Dtx::default());
        let start = u32::MAX - 960 * 5;
        let mut dropped = 0;
        for i in 0..30u32 {
            let ts = start.wrapping_add(960 * i);
            let seq = 65_530u16.wrapping_add(i as u16);
            dropped += u32::from(g.drop_packet(1, Some(SILENT), seq, ts, 48_000));
            // Stream 2 talks throughout.
            assert!(!g.drop_packet(2, Some(TALK), seq, ts, 48_000));
        }
        assert_eq!(dropped, 20);
        // A reordered packet from before the silence began is not dropped.
        assert!(!g.drop_packet(1, Some(SILENT), 65_529, start.wrapping_sub(960), 48_000));
    }

    /// Opus DTX at the sender: after 200 ms of continuous silence (dropped past the hangover),
    /// the sender pauses and sends one silent packet per 400 ms. Those pass; so does a silent
    /// packet after a seq gap whose RTP time is only the lost packets' (no pause: dropped).
    #[test]
    fn a_senders_own_dtx_packets_are_forwarded_though_silent() {
        let mut g = SilenceGate::new(Dtx::default());
        let mut forwarded = Vec::new();
        let (mut seq, mut ts) = (100u16, 5_000u32);
        let mut send = |g: &mut SilenceGate, level, step_seq: u16, step_ts: u32, tag: &str| {
            seq = seq.wrapping_add(step_seq);
            ts = ts.wrapping_add(step_ts);
            if !g.drop_packet(3, Some(level), seq, ts, 48_000) {
                forwarded.push(tag.to_owned());
            }
        };
        send(&mut g, TALK, 1, 960, "talk");
        for _ in 0..20 {
            send(&mut g, SILENT, 1, 960, "silence");
        }
        // Three packets lost on the publisher's connection: 4 numbers, 4 × 20 ms. Still silence.
        send(&mut g, SILENT, 4, 4 * 960, "after loss");
        // The sender's DTX: one packet per 400 ms (19,200 ticks).
        for _ in 0..5 {
            send(&mut g, SILENT, 1, 19_200, "sender dtx");
        }
        // Exactly the longest packet per number is not a pause.
        send(&mut g, SILENT, 1, 5_760, "120 ms");
        send(&mut g, SILENT, 1, 960, "silence");
        send(&mut g, TALK, 1, 960, "talk");
        let count = |tag: &str| forwarded.iter().filter(|t| *t == tag).count();
        // The first 10 silent packets (200 ms) are the hangover.
        assert_eq!(count("silence"), 10);
        assert_eq!(count("after loss"), 0);
        assert_eq!(count("sender dtx"), 5);
        assert_eq!(count("120 ms"), 0);
        assert_eq!(count("talk"), 2);
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
        fn any_threshold_hangover_and_clock_rate(
            silence_level: u8,
            hangover in any_duration(),
            clock_rate: u32,
            packets in proptest::collection::vec(
                (any::<bool>(), any::<u8>(), any::<u16>(), any::<u32>()),
                1..40,
            ),
        ) {
            let mut g = SilenceGate::new(Dtx { silence_level, hangover });
            for (voice, level, seq, ts) in packets {
                let level = AudioLevel { voice, level };
                let dropped = g.drop_packet(7, Some(level), seq, ts, clock_rate);
                // Voice, or anything louder than the threshold, is never dropped (SFU-DTX-02).
                prop_assert!(!dropped || !(voice || level.level < silence_level));
            }
        }
    }
}
