//! Per-subscriber layer selection and rewriting (SFU-FWD-01..06).

use std::time::Duration;

use veil_wire::dd::DependencyDescriptor;

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Its layer is neither forwarded nor the target.
    NotSelected,
    /// It is on the target layer, which may start only at a key frame's first packet.
    WaitingForKeyFrame,
    /// A switch was wanted, but the packet has no dependency descriptor, so key frames cannot
    /// be recognised: the SFU keeps forwarding the current layer.
    NoDependencyDescriptor,
    /// Silent audio, dropped on purpose (DTX, SFU-DTX-01); later packets are renumbered.
    Silence,
    /// A packet older than one dropped as silence arrived late: later packets were renumbered
    /// across the dropped one, so this one's number would collide (SFU-FWD-05). Likewise a
    /// packet of the current layer from before the key frame it was switched at (a late repair,
    /// or a publisher's probe of redundant retransmissions): its number would be one the
    /// previous layer's packets had (SFU-FWD-06).
    LateAfterSkip,
}

/// The forwarder's verdict on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to the subscriber with these rewritten header fields.
    Forward {
        /// The subscriber-side SSRC of this track.
        ssrc: u32,
        /// Rewritten sequence number (continuous across switches).
        seq: u16,
        /// Rewritten timestamp (continuous across switches).
        timestamp: u32,
        /// Whether this packet starts a new layer.
        switched: bool,
    },
    /// Do not send it.
    Drop(DropReason),
}

/// Counters of a [`LayerForwarder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Packets forwarded.
    pub forwarded: u64,
    /// Layer switches (including the first start).
    pub switches: u64,
    /// Packets dropped, by reason.
    pub dropped_not_selected: u64,
    /// Target-layer packets dropped while waiting for a key frame.
    pub waiting_for_key_frame: u64,
    /// Switches refused because the stream has no dependency descriptor.
    pub switch_refused_no_dd: u64,
    /// Streams started without a dependency descriptor (at an arbitrary packet).
    pub started_without_dd: u64,
    /// Packets dropped on purpose with [`LayerForwarder::skip`] (e.g. silent audio).
    pub skipped: u64,
    /// Packets dropped because they arrived after a later packet was skipped.
    pub late_after_skip: u64,
}

/// Where an output stream stopped: its newest sequence number and timestamp, and when that
/// packet went out. A forwarder started from it continues the numbering (SFU-FWD-07).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    seq: u16,
    ts: u32,
    at: Duration,
}

/// Forwards one of a track's simulcast layers to one subscriber as a single continuous stream.
#[derive(Debug, Clone)]
pub struct LayerForwarder {
    out_ssrc: u32,
    clock_rate: u32,
    target: Option<u8>,
    current: Option<u8>,
    seq_offset: u16,
    ts_offset: u32,
    last: Option<Continuation>,
    last_frame_number: Option<u16>,
    /// Newest input sequence number handled on the current layer (forwarded or skipped).
    newest_in: Option<u16>,
    /// Input sequence number of the newest skipped packet: older packets are not forwarded.
    skip_floor: Option<u16>,
    stats: ForwarderStats,
}

impl LayerForwarder {
    /// A forwarder writing `out_ssrc` with an RTP clock of `clock_rate` Hz.
    #[must_use]
    pub fn new(out_ssrc: u32, clock_rate: u32) -> Self {
        Self {
            out_ssrc,
            clock_rate,
            target: None,
            current: None,
            seq_offset: 0,
            ts_offset: 0,
            last: None,
            last_frame_number: None,
            newest_in: None,
            skip_floor: None,
            stats: ForwarderStats::default(),
        }
    }

    /// A forwarder writing `out_ssrc` that continues the output another forwarder stopped at
    /// (SFU-FWD-07): its first packet takes the next sequence number, and a timestamp moved on
    /// by the time since, as at a layer switch (SFU-FWD-03).
    #[must_use]
    pub fn continuing(out_ssrc: u32, clock_rate: u32, from: Continuation) -> Self {
        Self {
            last: Some(from),
            ..Self::new(out_ssrc, clock_rate)
        }
    }

    /// The SSRC it writes.
    #[must_use]
    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// Where the output stands now, for a forwarder that takes over its SSRC; `None` before
    /// the first packet.
    #[must_use]
    pub fn continuation(&self) -> Option<Continuation> {
        self.last
    }

    /// Ask for `layer` (None: forward nothing new; the current layer continues until a switch).
    pub fn set_target(&mut self, layer: Option<u8>) {
        self.target = layer;
    }

    /// The layer being forwarded.
    #[must_use]
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The requested layer.
    #[must_use]
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ForwarderStats {
        self.stats
    }

    fn forward(
        &mut self,
        seq: u16,
        ts: u32,
        dd: Option<&DependencyDescriptor>,
        now: Duration,
        switched: bool,
    ) -> Decision {
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if let Some(d) = dd.filter(|d| d.start_of_frame) {
            self.last_frame_number = Some(d.frame_number);
        }
        if self.newest_in.is_none_or(|n| is_newer(seq, n)) {
            // SFU-FWD-06: the next switch continues from the newest number sent, never from a
            // late packet's.
            self.last = Some(Continuation {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
            self.newest_in = Some(seq);
            // A floor half a sequence cycle behind would read as ahead: forget it long before.
            if self
                .skip_floor
                .is_some_and(|f| seq.wrapping_sub(f) >= 0x4000)
            {
                self.skip_floor = None;
            }
        }
        self.stats.forwarded += 1;
        Decision::Forward {
            ssrc: self.out_ssrc,
            seq: out_seq,
            timestamp: out_ts,
            switched,
        }
    }

    /// Start forwarding `layer` at this packet: continue the output's sequence numbers, and move
    /// its timestamps on by the wall-clock time since the last forwarded packet (SFU-FWD-03).
    fn switch(
        &mut self,
        layer: u8,
        seq: u16,
        ts: u32,
        dd: Option<&DependencyDescriptor>,
        now: Duration,
    ) -> Decision {
        match self.last {
            Some(l) => {
                let elapsed = now.saturating_sub(l.at);
                let ticks =
                    (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000).max(1);
                let next_ts = l.ts.wrapping_add(ticks as u32);
                self.seq_offset = l.seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_offset = next_ts.wrapping_sub(ts);
            }
            None => {
                self.seq_offset = 0;
                self.ts_offset = 0;
            }
        }
        self.current = Some(layer);
        self.newest_in = None;
        // SFU-FWD-06: this layer's packets from before the switch would take numbers the
        // previous layer's packets had.
        self.skip_floor = Some(seq.wrapping_sub(1));
        self.stats.switches += 1;
        self.forward(seq, ts, dd, now, true)
    }

    /// Decide for one packet of `layer` (SFU-FWD-01..06). `dd` is its dependency descriptor, if
    /// the stream has DD; `now` is the caller's monotonic time.
    pub fn on_packet(
        &mut self,
        layer: u8,
        seq: u16,
        ts: u32,
        dd: Option<&DependencyDescriptor>,
        now: Duration,
    ) -> Decision {
        if self.current == Some(layer) {
            if self.skip_floor.is_some_and(|f| !is_newer(seq, f)) {
                self.stats.late_after_skip += 1;
                return Decision::Drop(DropReason::LateAfterSkip);
            }
            return self.forward(seq, ts, dd, now, false);
        }
        if self.target != Some(layer) {
            self.stats.dropped_not_selected += 1;
            return Decision::Drop(DropReason::NotSelected);
        }
        match dd {
            // Switch only at a key frame's first packet, and only if its frame number continues
            // the output (Chromium numbers frames with one counter across layers) (SFU-FWD-02).
            Some(d) if d.is_key_frame_start() && self.continues_frame_numbers(d.frame_number) => {
                self.switch(layer, seq, ts, dd, now)
            }
            Some(_) => {
                self.stats.waiting_for_key_frame += 1;
                Decision::Drop(DropReason::WaitingForKeyFrame)
            }
            None if self.current.is_none() => {
                // Nothing forwarded yet and no DD: start here; the subscriber asks for a key frame.
                self.stats.started_without_dd += 1;
                self.switch(layer, seq, ts, dd, now)
            }
            None => {
                self.stats.switch_refused_no_dd += 1;
                Decision::Drop(DropReason::NoDependencyDescriptor)
            }
        }
    }

    /// Drop packet `seq` of `layer` on purpose (silent audio under DTX, SFU-FWD-05, SFU-DTX-01)
    /// without leaving a gap: later packets are renumbered so the subscriber sees contiguous
    /// sequence numbers and sends no NACK for the dropped one. A skipped packet that is not newer
    /// than the newest one handled (reordered) renumbers nothing. Packets older than a skipped
    /// one that arrive later are dropped ([`DropReason::LateAfterSkip`]): their numbers would
    /// collide.
    pub fn skip(&mut self, layer: u8, seq: u16) -> Decision {
        self.stats.skipped += 1;
        if self.current == Some(layer) && self.newest_in.is_none_or(|n| is_newer(seq, n)) {
            self.seq_offset = self.seq_offset.wrapping_sub(1);
            self.newest_in = Some(seq);
            self.skip_floor = Some(seq);
        }
        Decision::Drop(DropReason::Silence)
    }

    fn continues_frame_numbers(&self, n: u16) -> bool {
        self.last_frame_number
            .is_none_or(|last| (n.wrapping_sub(last) as i16) > 0)
    }
}

/// Whether sequence number `a` is newer than `b` (RFC 3550 wrap-around).
fn is_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_silent_packets_keeps_sequence_numbers_contiguous() {
        let mut f = LayerForwarder::new(9, 48_000);
        f.set_target(Some(0));
        let mut out = Vec::new();
        // 100 audio packets starting near the wrap; every third is silence and is skipped.
        for i in 0..100u16 {
            let seq = 65_500u16.wrapping_add(i);
            let now = Duration::from_millis(20 * u64::from(i));
            if i % 3 == 1 {
                assert_eq!(f.skip(0, seq), Decision::Drop(DropReason::Silence));
                continue;
            }
            match f.on_packet(0, seq, 960 * u32::from(i), None, now) {
                Decision::Forward { seq, .. } => out.push(seq),
                Decision::Drop(r) => panic!("dropped {r:?}"),
            }
        }
        assert_eq!(out.len(), 67);
        assert!(
            out.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{out:?}"
        );
        assert_eq!(f.stats().skipped, 33);
    }

    #[test]
    fn packets_reordered_around_a_skip_never_reuse_a_sequence_number() {
        let mut f = LayerForwarder::new(9, 48_000);
        f.set_target(Some(0));
        // Arrival order; `true` = silent (skipped).
        let arrivals = [
            (0, false),
            (1, false),
            (3, true),
            (2, false), // late, older than the skipped 3: its number would collide
            (4, false),
            (5, true),
            (6, true),
            (5, true), // a duplicate of a skipped packet renumbers nothing
            (7, false),
        ];
        let mut out = Vec::new();
        let mut late = 0;
        for (i, (seq, silent)) in arrivals.into_iter().enumerate() {
            let now = Duration::from_millis(20 * i as u64);
            let d = if silent {
                f.skip(0, seq)
            } else {
                f.on_packet(0, seq, 960 * u32::from(seq), None, now)
            };
            match d {
                Decision::Forward { seq, .. } => out.push(seq),
                Decision::Drop(DropReason::LateAfterSkip) => late += 1,
                Decision::Drop(DropReason::Silence) => assert!(silent),
                Decision::Drop(r) => panic!("dropped {r:?}"),
            }
        }
        // 2 is lost as late; its slot stays a gap (as if lost on the wire), nothing repeats.
        assert_eq!(out, [0, 1, 3, 4]);
        assert_eq!(
            (late, f.stats().late_after_skip, f.stats().skipped),
            (1, 1, 4)
        );
    }
}

#[cfg(test)]
mod late {
    use std::sync::Arc;

    use veil_wire::dd::TemplateStructure;

    use super::*;

    /// SFU-FWD-06: after a switch, a packet of the new layer from before its key frame (a late
    /// repair, or a publisher's probe re-sending old packets) is dropped rather than numbered into
    /// the previous layer's range, and a late packet never moves the base the next switch
    /// continues from.
    #[test]
    fn a_late_packet_neither_collides_across_a_switch_nor_rewinds_the_next() {
        let structure = Arc::new(TemplateStructure::single_layer(640, 360, 1));
        let dd = |n: u16, key: bool| {
            let d = DependencyDescriptor::new(true, true, u8::from(!key), n, &structure).unwrap();
            if key {
                d.with_structure(structure.clone())
            } else {
                d
            }
        };
        let mut f = LayerForwarder::new(9, 90_000);
        f.set_target(Some(0));
        let mut out = Vec::new();
        let mut step = |f: &mut LayerForwarder, layer: u8, seq: u16, frame: u16, key: bool| {
            let now = Duration::from_millis(u64::from(frame) * 30);
            match f.on_packet(
                layer,
                seq,
                3000 * u32::from(frame),
                Some(&dd(frame, key)),
                now,
            ) {
                Decision::Forward { seq, .. } => {
                    out.push(seq);
                    true
                }
                Decision::Drop(_) => false,
            }
        };
        // Layer 0: 100..=104 (frames 0..=4), out 100..=104.
        for i in 0..5 {
            assert!(step(&mut f, 0, 100 + i, i, i == 0));
        }
        // Switch to layer 1 at its key frame 500 (frame 5): out 105.
        f.set_target(Some(1));
        assert!(step(&mut f, 1, 500, 5, true));
        // Layer 1's 497 (before the switch) arrives late: it would be out 102, layer 0's.
        assert!(!step(&mut f, 1, 497, 6, false));
        assert_eq!(f.stats().late_after_skip, 1);
        assert!(step(&mut f, 1, 502, 7, false));
        // 501 is late but after the switch: forwarded into its own gap, out 106.
        assert!(step(&mut f, 1, 501, 8, false));
        // The next switch continues from 107 (502's), not from the late 501's 106.
        f.set_target(Some(0));
        assert!(step(&mut f, 0, 110, 9, true));
        assert_eq!(out, [100, 101, 102, 103, 104, 105, 107, 106, 108]);
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
        fn any_clock_rate_and_gap(
            out_ssrc: u32,
            clock_rate: u32,
            packets in proptest::collection::vec(
                (0u8..3, any::<u16>(), any::<u32>(), any_duration()),
                1..40,
            ),
        ) {
            let mut f = LayerForwarder::new(out_ssrc, clock_rate);
            for (i, (layer, seq, ts, now)) in packets.into_iter().enumerate() {
                f.set_target(Some(layer));
                if let Decision::Forward { ssrc, .. } = f.on_packet(layer, seq, ts, None, now) {
                    prop_assert_eq!(ssrc, out_ssrc);
                }
                if i % 5 == 4 {
                    f.skip(layer, seq);
                }
            }
        }
    }
}
