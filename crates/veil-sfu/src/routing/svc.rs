//! Thinning a scalable stream by dependency-descriptor decode target (SFU-SVC-01..08).
//!
//! Chromium sends VP9 and AV1 SVC (e.g. `L3T3_KEY`) with all spatial and temporal layers on one
//! SSRC, and VP8 `L1T3` with its temporal layers on one SSRC per simulcast layer. The dependency
//! descriptor (DD, AV1 RTP spec appendix A) says, for every frame, which *decode targets* (a
//! spatial and temporal fidelity) it is part of, which frames it references and where the
//! chains that protect each decode target run. [`SvcSelector`] uses that alone, per subscriber
//! and track, to forward only the frames of one decode target:
//!
//! - a frame is forwarded iff its decode-target indication (DTI) for the decode target in use is
//!   not "not present", and every frame it references was forwarded (SFU-SVC-01);
//! - the decision is taken once per frame, at whichever of its packets arrives first, so a frame
//!   is never half forwarded (SFU-SVC-02);
//! - the decode target changes at a frame with a *switch* indication for the new one and an
//!   intact chain, or, towards a decode target whose frames the current one already carries
//!   (a lower temporal layer, or a lower spatial layer of a full-SVC structure), at any frame
//!   whose chain for it is intact (SFU-SVC-03);
//! - a decode target whose chain is broken (a frame the chain protects never reached the
//!   subscriber) is not used until a switch point repairs it; with nothing usable, frames are
//!   dropped and [`SvcSelector::needs_key_frame`] says so (SFU-SVC-04);
//! - dropped packets leave no gap in the subscriber's sequence numbers; a real loss still does,
//!   and no number is ever used twice (SFU-SVC-05);
//! - the last forwarded frame of a temporal unit carries the marker bit (SFU-SVC-06);
//! - only active decode targets are chosen (SFU-SVC-07).
//!
//! [`SvcRates`] measures each decode target's bitrate and [`ScalableChoice`] picks, with the
//! hysteresis of [`LayerChoice`], the best rung of a ladder that drops temporal layers before
//! spatial ones, and both before a simulcast layer (SFU-SVC-08).
//!
//! Sans-I/O: time is passed in, nothing here reads a clock or a payload byte.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use veil_wire::dd::{DependencyDescriptor, Dti, TemplateStructure};

use crate::routing::{LayerChoice, LayerPolicy, RateMeter};

/// Frames whose decision a [`SvcSelector`] remembers (about 11 s of 30 fps L3T3).
const HISTORY: usize = 1024;
/// How far behind the newest input sequence number a packet may arrive and still be numbered.
const SEQ_WINDOW: u16 = 1024;

/// A spatial and a temporal layer: the fidelity of a decode target, or a cap on it. Ordered
/// spatial first, so a ladder sorted by it drops temporal layers before spatial ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcLayer {
    /// Spatial layer (0 = lowest resolution).
    pub spatial: u8,
    /// Temporal layer (0 = lowest frame rate).
    pub temporal: u8,
}

impl SvcLayer {
    /// No cap: the best decode target the stream has.
    pub const ALL: Self = Self {
        spatial: u8::MAX,
        temporal: u8::MAX,
    };

    /// The layer `spatial`, `temporal`.
    #[must_use]
    pub const fn new(spatial: u8, temporal: u8) -> Self {
        Self { spatial, temporal }
    }

    /// Whether this layer is at or below `cap` in both dimensions.
    #[must_use]
    pub fn within(self, cap: Self) -> bool {
        self.spatial <= cap.spatial && self.temporal <= cap.temporal
    }
}

/// Why a [`SvcSelector`] did not forward a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvcDrop {
    /// The frame is not part of the decode target in use (its DTI is "not present").
    NotInTarget,
    /// No decode target is usable yet: before the first switch point, or its chain broke
    /// (SFU-SVC-04). A key frame repairs it.
    WaitingForSwitch,
    /// A frame the frame references was not forwarded (lost upstream, or withheld), so the
    /// subscriber could not decode it.
    Undecodable,
    /// The frame or packet is older than the selector remembers.
    TooOld,
    /// The descriptor has no template structure to read it against.
    NoStructure,
}

/// A [`SvcSelector`]'s verdict on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvcDecision {
    /// Send it, with these header fields.
    Forward {
        /// Sequence number for the subscriber: contiguous over the forwarded packets.
        seq: u16,
        /// Marker bit for the subscriber: the packet's own, or set on the end of the last frame
        /// of a temporal unit the subscriber gets (SFU-SVC-06).
        marker: bool,
        /// Whether the decode target changed at this packet's frame (first packet decided).
        switched: bool,
    },
    /// Do not send it.
    Drop(SvcDrop),
}

/// Counters of a [`SvcSelector`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcStats {
    /// Frames forwarded.
    pub frames_forwarded: u64,
    /// Frames dropped, any reason.
    pub frames_dropped: u64,
    /// Frames dropped because a reference was not forwarded.
    pub frames_undecodable: u64,
    /// Packets forwarded.
    pub packets_forwarded: u64,
    /// Packets dropped.
    pub packets_dropped: u64,
    /// Decode-target changes, the first start included.
    pub switches: u64,
    /// Chains found broken under the decode target in use.
    pub chain_breaks: u64,
}

/// The decode targets of one template structure.
#[derive(Debug, Clone)]
struct Targets {
    structure: Arc<TemplateStructure>,
    /// Fidelity of each decode target (`decode_target_layer`).
    layers: Vec<SvcLayer>,
    /// Bit `c` of `contained_in[d]`: every template part of `d` is part of `c` too, so a
    /// subscriber at `c` has been sent every frame of `d`.
    contained_in: Vec<u32>,
    /// Decode targets by fidelity, best first.
    by_layer: Vec<usize>,
}

impl Targets {
    fn new(structure: Arc<TemplateStructure>) -> Self {
        let n = usize::from(structure.decode_target_count).min(32);
        let layers: Vec<SvcLayer> = (0..n)
            .map(|d| {
                let (s, t) = structure.decode_target_layer(d).unwrap_or((0, 0));
                SvcLayer::new(s, t)
            })
            .collect();
        let part = |t: &veil_wire::dd::FrameDependencies, d: usize| {
            t.dtis.get(d).is_some_and(|x| *x != Dti::NotPresent)
        };
        let contained_in = (0..n)
            .map(|d| {
                (0..n)
                    .filter(|&c| {
                        structure
                            .templates
                            .iter()
                            .all(|t| !part(t, d) || part(t, c))
                    })
                    .fold(0u32, |m, c| m | (1 << c))
            })
            .collect();
        let mut by_layer: Vec<usize> = (0..n).collect();
        by_layer.sort_by(|a, b| layers[*b].cmp(&layers[*a]).then(b.cmp(a)));
        Self {
            structure,
            layers,
            contained_in,
            by_layer,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    frame: u16,
    seen: bool,
    /// `None`: forwarded.
    dropped: Option<SvcDrop>,
}

/// Forwards one decode target of a scalable stream to one subscriber (SFU-SVC-01..07).
///
/// Feed it every packet of the stream (one SSRC) with its descriptor, as
/// [`StreamRegistry`](crate::routing::StreamRegistry) read it; it answers with the packet's
/// verdict and the subscriber's sequence number. Choose the fidelity with
/// [`set_target`](Self::set_target).
///
/// ```
/// use std::sync::Arc;
/// use veil_sfu::routing::{SvcDecision, SvcLayer, SvcSelector};
/// use veil_wire::dd::{ChainDiffs, DependencyDescriptor, Dti, Dtis, Fdiffs, FrameDependencies,
///     TemplateStructure};
///
/// // L1T2: decode target 0 = T0 only, 1 = T0 and T1.
/// let t = |tid: u8, dtis: &[Dti], fdiffs: &[u16]| FrameDependencies {
///     spatial_id: 0, temporal_id: tid, dtis: Dtis::from_slice(dtis).unwrap(),
///     fdiffs: Fdiffs::from_slice(fdiffs).unwrap(), chain_diffs: ChainDiffs::default(),
/// };
/// let s = Arc::new(TemplateStructure {
///     template_id_offset: 0, decode_target_count: 2, chain_count: 0,
///     templates: vec![
///         t(0, &[Dti::Switch, Dti::Switch], &[]),
///         t(0, &[Dti::Switch, Dti::Switch], &[2]),
///         t(1, &[Dti::NotPresent, Dti::Discardable], &[1]),
///     ],
///     decode_target_protected_by: vec![], resolutions: None,
/// });
/// let mut sel = SvcSelector::new(SvcLayer::new(0, 0));
/// let key = DependencyDescriptor::new(true, true, 0, 10, &s)?.with_structure(s.clone());
/// let t1 = DependencyDescriptor::new(true, true, 2, 11, &s)?;
/// let t0 = DependencyDescriptor::new(true, true, 1, 12, &s)?;
/// assert!(matches!(sel.on_packet(500, true, &key), SvcDecision::Forward { seq: 500, .. }));
/// assert!(matches!(sel.on_packet(501, true, &t1), SvcDecision::Drop(_)));
/// // The subscriber sees no gap where the T1 frame was.
/// assert!(matches!(sel.on_packet(502, true, &t0), SvcDecision::Forward { seq: 501, .. }));
/// # Ok::<(), veil_wire::WireError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SvcSelector {
    want: SvcLayer,
    targets: Option<Targets>,
    active: u32,
    /// Decode target in use, and whether its chain broke.
    current: Option<usize>,
    broken: bool,
    frames: Vec<Slot>,
    newest_frame: Option<u16>,
    seq: SeqRewriter,
    stats: SvcStats,
}

impl SvcSelector {
    /// A selector that forwards the best decode target within `want` (use [`SvcLayer::ALL`]
    /// for no cap).
    #[must_use]
    pub fn new(want: SvcLayer) -> Self {
        Self {
            want,
            targets: None,
            active: 0,
            current: None,
            broken: false,
            frames: Vec::new(),
            newest_frame: None,
            seq: SeqRewriter::default(),
            stats: SvcStats::default(),
        }
    }

    /// Cap the fidelity at `want`. The decode target follows at the next frame where the
    /// switch is allowed (SFU-SVC-03).
    pub fn set_target(&mut self, want: SvcLayer) {
        self.want = want;
    }

    /// The cap asked for.
    #[must_use]
    pub fn target(&self) -> SvcLayer {
        self.want
    }

    /// The decode target in use (its index in the structure), if it is usable.
    #[must_use]
    pub fn decode_target(&self) -> Option<usize> {
        self.current.filter(|_| !self.broken)
    }

    /// The fidelity being forwarded, if any.
    #[must_use]
    pub fn current(&self) -> Option<SvcLayer> {
        let d = self.decode_target()?;
        self.targets.as_ref()?.layers.get(d).copied()
    }

    /// The latest structure's decode-target fidelities, by index.
    #[must_use]
    pub fn decode_target_layers(&self) -> &[SvcLayer] {
        self.targets.as_ref().map_or(&[], |t| &t.layers)
    }

    /// The active decode targets (bit `i` = decode target `i`).
    #[must_use]
    pub fn active_decode_targets(&self) -> u32 {
        self.active
    }

    /// Whether nothing decodable can be forwarded until a switch point (a key frame): no
    /// structure yet, or the chain of the decode target in use broke (SFU-SVC-04). The caller
    /// asks the publisher for a key frame (throttled).
    #[must_use]
    pub fn needs_key_frame(&self) -> bool {
        self.decode_target().is_none()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SvcStats {
        self.stats
    }

    /// The best active decode target within the cap, when it is not the one in use: a switch
    /// is waiting for a switch point. In a `_KEY` structure a spatial switch waits for a key
    /// frame, which the caller asks the publisher for (throttled).
    #[must_use]
    pub fn switch_pending(&self) -> Option<SvcLayer> {
        let t = self.targets.as_ref()?;
        let best = t
            .by_layer
            .iter()
            .copied()
            .find(|&d| t.layers[d].within(self.want) && self.active & (1 << d) != 0)?;
        (self.decode_target() != Some(best)).then(|| t.layers[best])
    }

    /// Start over for a new stream (e.g. the subscriber moved to another simulcast layer,
    /// whose frames number differently). Sequence numbering continues.
    pub fn reset_stream(&mut self) {
        self.targets = None;
        self.active = 0;
        self.current = None;
        self.broken = false;
        self.frames.clear();
        self.newest_frame = None;
    }

    /// Decide for one packet of the stream: `seq` and `marker` as received, `dd` its
    /// descriptor (SFU-SVC-01..07).
    pub fn on_packet(&mut self, seq: u16, marker: bool, dd: &DependencyDescriptor) -> SvcDecision {
        let decision = self.frame_decision(dd);
        let out = self.seq.on(SeqIn {
            seq,
            start_of_frame: dd.start_of_frame,
            end_of_frame: dd.end_of_frame,
            dropped: decision.is_err(),
        });
        let (switched, out) = match (decision, out) {
            (Err(reason), _) => {
                self.stats.packets_dropped += 1;
                return SvcDecision::Drop(reason);
            }
            (Ok(_), None) => {
                self.stats.packets_dropped += 1;
                return SvcDecision::Drop(SvcDrop::TooOld);
            }
            (Ok(switched), Some(out)) => (switched, out),
        };
        self.stats.packets_forwarded += 1;
        // The subscriber's temporal unit ends with its highest spatial layer's frame.
        let top = self.current().is_some_and(|l| dd.spatial_id() >= l.spatial);
        SvcDecision::Forward {
            seq: out,
            marker: marker || (dd.end_of_frame && top),
            switched,
        }
    }

    /// Drop a packet of the stream that has no descriptor (e.g. padding): it is never
    /// forwarded to a thinned stream, and leaves no gap.
    pub fn skip(&mut self, seq: u16) -> SvcDecision {
        self.seq.on(SeqIn {
            seq,
            start_of_frame: true,
            end_of_frame: true,
            dropped: true,
        });
        self.stats.packets_dropped += 1;
        SvcDecision::Drop(SvcDrop::NoStructure)
    }

    fn slot(&self, frame: u16) -> Option<&Slot> {
        self.frames
            .get(usize::from(frame) % HISTORY)
            .filter(|s| s.seen && s.frame == frame)
    }

    fn was_forwarded(&self, frame: u16) -> bool {
        self.slot(frame).is_some_and(|s| s.dropped.is_none())
    }

    fn record(&mut self, frame: u16, dropped: Option<SvcDrop>) {
        if self.frames.is_empty() {
            self.frames = vec![Slot::default(); HISTORY];
        }
        self.frames[usize::from(frame) % HISTORY] = Slot {
            frame,
            seen: true,
            dropped,
        };
        match dropped {
            None => self.stats.frames_forwarded += 1,
            Some(r) => {
                self.stats.frames_dropped += 1;
                if r == SvcDrop::Undecodable {
                    self.stats.frames_undecodable += 1;
                }
            }
        }
    }

    /// `Ok(switched)` to forward the packet's frame, or why not.
    fn frame_decision(&mut self, dd: &DependencyDescriptor) -> Result<bool, SvcDrop> {
        let f = dd.frame_number;
        let newer = self.newest_frame.is_none_or(|n| is_newer(f, n));
        if let Some(n) = self.newest_frame
            && !newer
            && usize::from(n.wrapping_sub(f)) >= HISTORY
        {
            return Err(SvcDrop::TooOld);
        }
        let Some(structure) = dd.structure() else {
            return Err(SvcDrop::NoStructure);
        };
        if newer || f == self.newest_frame.unwrap_or(f) {
            self.adopt(dd, structure);
        }
        if let Some(s) = self.slot(f) {
            return match s.dropped {
                None => Ok(false),
                Some(r) => Err(r),
            };
        }
        let switched = if newer { self.choose(dd) } else { false };
        if newer {
            self.newest_frame = Some(f);
        }
        let verdict = self.verdict(dd);
        self.record(f, verdict.err());
        verdict.map(|()| switched)
    }

    /// Take up a new structure and the active decode targets (AV1 RTP spec A.4, as `DdLatch`).
    fn adopt(&mut self, dd: &DependencyDescriptor, structure: &Arc<TemplateStructure>) {
        let same = self
            .targets
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.structure, structure) || t.structure == *structure);
        if !same {
            // Decode-target indices mean something else now: start again at a switch point.
            self.targets = Some(Targets::new(structure.clone()));
            self.current = None;
            self.broken = false;
            self.active = all_targets(structure.decode_target_count);
        }
        if dd.attached_structure.is_some() && dd.active_decode_targets.is_none() {
            self.active = all_targets(structure.decode_target_count);
        }
        if let Some(mask) = dd.active_decode_targets {
            self.active = mask;
        }
    }

    /// Whether the chain protecting decode target `d` is intact at this frame: the previous
    /// frame of the chain was forwarded, or the chain starts here (SFU-SVC-04).
    fn chain_intact(&self, t: &Targets, dd: &DependencyDescriptor, d: usize) -> bool {
        let Some(&chain) = t.structure.decode_target_protected_by.get(d) else {
            return true; // no chains: nothing to check beyond references
        };
        match dd.frame.chain_diffs.get(usize::from(chain)) {
            None | Some(0) => true,
            Some(&diff) => self.was_forwarded(dd.frame_number.wrapping_sub(u16::from(diff))),
        }
    }

    /// Move the decode target where this (newest) frame allows; returns whether it moved.
    fn choose(&mut self, dd: &DependencyDescriptor) -> bool {
        let Some(t) = self.targets.take() else {
            return false;
        };
        let dti = |d: usize| dd.dti(d).unwrap_or(Dti::NotPresent);
        if let Some(c) = self.current
            && !self.broken
            && !self.chain_intact(&t, dd, c)
        {
            self.broken = true;
            self.stats.chain_breaks += 1;
        }
        let mut moved = false;
        for &d in &t.by_layer {
            if !t.layers[d].within(self.want) || self.active & (1 << d) == 0 {
                continue;
            }
            if self.current == Some(d) && !self.broken {
                break; // nothing better is reachable here; never go below a usable one
            }
            let carried = self
                .current
                .is_some_and(|c| t.contained_in[d] & (1 << c) != 0);
            if self.chain_intact(&t, dd, d) && (dti(d) == Dti::Switch || carried) {
                moved = self.current != Some(d) || self.broken;
                self.current = Some(d);
                self.broken = false;
                break;
            }
        }
        // The wanted targets are all out of reach, but the current one is usable and active
        // (e.g. a spatial step down that needs a key frame): keep it meanwhile.
        if moved {
            self.stats.switches += 1;
        }
        self.targets = Some(t);
        moved
    }

    fn verdict(&self, dd: &DependencyDescriptor) -> Result<(), SvcDrop> {
        let d = self.decode_target().ok_or(SvcDrop::WaitingForSwitch)?;
        if dd.dti(d).unwrap_or(Dti::NotPresent) == Dti::NotPresent {
            return Err(SvcDrop::NotInTarget);
        }
        let newest = self.newest_frame.unwrap_or(dd.frame_number);
        for r in dd.referenced_frames() {
            // Beyond the history nothing is known: let the decoder judge.
            let known = usize::from(newest.wrapping_sub(r)) < HISTORY;
            if known && !self.was_forwarded(r) {
                return Err(SvcDrop::Undecodable);
            }
        }
        Ok(())
    }
}

/// The mask of all `n` decode targets.
fn all_targets(n: u8) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

/// Whether sequence or frame number `a` is newer than `b` (16-bit serial arithmetic).
fn is_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// Renumbers a stream with packets dropped on purpose so the output has no gap for them
/// (SFU-SVC-05). A packet's output number is its input number minus the number of dropped
/// packets before it. Only drops newer than every packet seen shift numbers: a late packet of
/// a dropped frame changes nothing already sent, so no number is ever used twice.
///
/// A gap in the input (packets not arrived yet, or lost) is counted as dropped when the frame
/// boundaries show it belongs to dropped frames only: the rest of the newest packet's frame
/// when that frame was dropped, and the start of the new packet's frame when that one is
/// dropped. A gap between the end of one frame and the start of another may hold whole frames
/// of any kind, and stays a gap (as a loss would). A packet that arrives after its number was
/// counted as dropped is not forwarded.
#[derive(Debug, Clone, Default)]
struct SeqRewriter {
    /// The newest packet seen.
    highest: Option<Newest>,
    /// Dropped input numbers within the window, oldest first.
    drops: VecDeque<u16>,
    /// Dropped numbers before the window.
    base: u16,
}

#[derive(Debug, Clone, Copy)]
struct Newest {
    seq: u16,
    end_of_frame: bool,
    dropped: bool,
}

/// One packet as the rewriter sees it.
#[derive(Debug, Clone, Copy)]
struct SeqIn {
    seq: u16,
    start_of_frame: bool,
    end_of_frame: bool,
    dropped: bool,
}

impl SeqRewriter {
    /// Take a packet in; its output number if it is forwarded (`None` when it is dropped, too
    /// old, or its number was already counted as dropped).
    fn on(&mut self, p: SeqIn) -> Option<u16> {
        let newer = match self.highest {
            None => true,
            Some(h) => {
                if !is_newer(p.seq, h.seq) && h.seq.wrapping_sub(p.seq) >= SEQ_WINDOW {
                    return None;
                }
                is_newer(p.seq, h.seq)
            }
        };
        if newer {
            if let Some(h) = self.highest {
                let tail_dropped = h.end_of_frame || h.dropped;
                let head_dropped = p.start_of_frame || p.dropped;
                let whole_frames = h.end_of_frame && p.start_of_frame;
                let gap = p.seq.wrapping_sub(h.seq);
                if tail_dropped && head_dropped && !whole_frames && gap < SEQ_WINDOW {
                    let mut s = h.seq.wrapping_add(1);
                    while s != p.seq {
                        self.drops.push_back(s);
                        s = s.wrapping_add(1);
                    }
                }
            }
            self.highest = Some(Newest {
                seq: p.seq,
                end_of_frame: p.end_of_frame,
                dropped: p.dropped,
            });
            if p.dropped {
                self.drops.push_back(p.seq);
            }
            self.trim(p.seq);
        }
        if p.dropped {
            return None;
        }
        let mut later = 0u16;
        for &d in self.drops.iter().rev() {
            if d == p.seq {
                return None; // counted as dropped while it was missing
            }
            if !is_newer(d, p.seq) {
                break;
            }
            later += 1;
        }
        let before = self
            .base
            .wrapping_add(self.drops.len() as u16)
            .wrapping_sub(later);
        Some(p.seq.wrapping_sub(before))
    }

    fn trim(&mut self, newest: u16) {
        while let Some(&d) = self.drops.front() {
            if newest.wrapping_sub(d) < SEQ_WINDOW {
                break;
            }
            self.drops.pop_front();
            self.base = self.base.wrapping_add(1);
        }
    }
}

/// Each decode target's bitrate, from the sizes of the packets of the frames that are part of
/// it (SFU-SVC-08). One per stream (SSRC).
#[derive(Debug, Clone, Default)]
pub struct SvcRates {
    structure: Option<Arc<TemplateStructure>>,
    meters: Vec<RateMeter>,
}

impl SvcRates {
    /// Count a packet of `bytes` at `now`, in every decode target its frame is part of. A new
    /// structure starts the meters again.
    pub fn add(&mut self, dd: &DependencyDescriptor, now: Duration, bytes: usize) {
        let Some(s) = dd.structure() else {
            return;
        };
        if self
            .structure
            .as_ref()
            .is_none_or(|x| !Arc::ptr_eq(x, s) && **x != **s)
        {
            self.structure = Some(s.clone());
            self.meters = vec![RateMeter::default(); usize::from(s.decode_target_count)];
        }
        for (d, m) in self.meters.iter_mut().enumerate() {
            if dd.dti(d).is_some_and(|x| x != Dti::NotPresent) {
                m.add(now, bytes);
            }
        }
    }

    /// The bitrate of decode target `dt` over the last second, in bits per second.
    #[must_use]
    pub fn bits_per_second(&self, dt: usize, now: Duration) -> u64 {
        self.meters.get(dt).map_or(0, |m| m.bits_per_second(now))
    }

    /// One rung per distinct fidelity of the latest structure, lowest first (temporal layers
    /// within a spatial layer), with its bitrate; `simulcast` names the stream's layer.
    #[must_use]
    pub fn rungs(&self, simulcast: u8, now: Duration) -> Vec<Rung> {
        let Some(s) = &self.structure else {
            return Vec::new();
        };
        let mut rungs: Vec<Rung> = (0..usize::from(s.decode_target_count))
            .map(|d| {
                let (sp, tp) = s.decode_target_layer(d).unwrap_or((0, 0));
                Rung {
                    simulcast,
                    layer: SvcLayer::new(sp, tp),
                    bits_per_second: self.bits_per_second(d, now),
                }
            })
            .collect();
        rungs.sort_by_key(|r| r.layer);
        rungs.dedup_by_key(|r| r.layer);
        rungs
    }
}

/// One step of a subscriber's quality ladder: a simulcast layer and a fidelity within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// The simulcast layer (0 for a stream without simulcast).
    pub simulcast: u8,
    /// The fidelity within it.
    pub layer: SvcLayer,
    /// Its measured bitrate (0: nothing measured in the window).
    pub bits_per_second: u64,
}

/// One subscriber's choice of rung for one track (SFU-SVC-08): the best rung at or below the
/// request whose bitrate fits the subscriber's share of the estimate, with [`LayerChoice`]'s
/// hysteresis. Give it the rungs lowest first, simulcast layer by simulcast layer and, within
/// one, temporal layer by temporal layer ([`SvcRates::rungs`] does): a congested subscriber then
/// loses temporal layers first, then spatial ones, and a simulcast layer last.
#[derive(Debug, Clone)]
pub struct ScalableChoice {
    choice: LayerChoice,
}

impl ScalableChoice {
    /// A choice following `policy`.
    #[must_use]
    pub fn new(policy: LayerPolicy) -> Self {
        Self {
            choice: LayerChoice::new(u8::MAX, policy),
        }
    }

    /// Decide at `now`: the index in `rungs` of the rung to forward, given the subscriber's
    /// request `cap` (simulcast layer, fidelity) and its share of the estimate (None: follow
    /// the request). `None` if `rungs` is empty.
    pub fn update(
        &mut self,
        now: Duration,
        estimate: Option<u64>,
        rungs: &[Rung],
        cap: (u8, SvcLayer),
    ) -> Option<usize> {
        let rungs = &rungs[..rungs.len().min(usize::from(u8::MAX))];
        let requested = rungs
            .iter()
            .rposition(|r| r.simulcast < cap.0 || (r.simulcast == cap.0 && r.layer.within(cap.1)))
            .or((!rungs.is_empty()).then_some(0))?;
        if usize::from(self.choice.requested()) != requested {
            self.choice.request(requested as u8);
        }
        let rates: Vec<u64> = rungs.iter().map(|r| r.bits_per_second).collect();
        Some(usize::from(self.choice.update(now, estimate, &rates)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use veil_wire::dd::{ChainDiffs, Dtis, Fdiffs, FrameDependencies, Resolution};

    use super::*;

    /// DTIs written as libwebrtc writes them: `-` not present, `D`, `S`, `R`.
    fn tpl(s: u8, t: u8, dtis: &str, fdiffs: &[u16], chains: &[u8]) -> FrameDependencies {
        let d: Vec<Dti> = dtis
            .chars()
            .map(|c| match c {
                '-' => Dti::NotPresent,
                'D' => Dti::Discardable,
                'S' => Dti::Switch,
                _ => Dti::Required,
            })
            .collect();
        FrameDependencies {
            spatial_id: s,
            temporal_id: t,
            dtis: Dtis::from_slice(&d).unwrap(),
            fdiffs: Fdiffs::from_slice(fdiffs).unwrap(),
            chain_diffs: ChainDiffs::from_slice(chains).unwrap(),
        }
    }

    /// VP8 L1T3 as Chromium describes it: decode targets T0, T0+T1, all; no chains.
    fn l1t3() -> Arc<TemplateStructure> {
        let s = TemplateStructure {
            template_id_offset: 0,
            decode_target_count: 3,
            chain_count: 0,
            templates: vec![
                tpl(0, 0, "SSS", &[], &[]),
                tpl(0, 0, "SSS", &[4], &[]),
                tpl(0, 1, "-SS", &[2], &[]),
                tpl(0, 2, "--D", &[1], &[]),
            ],
            decode_target_protected_by: vec![],
            resolutions: Some(vec![Resolution {
                width: 640,
                height: 360,
            }]),
        };
        s.validate().unwrap();
        Arc::new(s)
    }

    /// L2T2_KEY: decode targets S0T0, S0T1, S1T0, S1T1; chain 0 protects S0, chain 1 S1; the
    /// upper spatial layer depends on the lower one only at key frames.
    fn l2t2_key() -> Arc<TemplateStructure> {
        let s = TemplateStructure {
            template_id_offset: 0,
            decode_target_count: 4,
            chain_count: 2,
            templates: vec![
                tpl(0, 0, "SSSS", &[], &[0, 0]),
                tpl(0, 0, "SS--", &[4], &[4, 3]),
                tpl(0, 1, "-D--", &[2], &[2, 1]),
                tpl(1, 0, "--SS", &[1], &[1, 1]),
                tpl(1, 0, "--SS", &[4], &[1, 4]),
                tpl(1, 1, "---D", &[2], &[3, 2]),
            ],
            decode_target_protected_by: vec![0, 0, 1, 1],
            resolutions: Some(vec![
                Resolution {
                    width: 320,
                    height: 180,
                },
                Resolution {
                    width: 640,
                    height: 360,
                },
            ]),
        };
        s.validate().unwrap();
        Arc::new(s)
    }

    /// One packet of a hand-built stream.
    #[derive(Debug, Clone)]
    struct Pkt {
        seq: u16,
        marker: bool,
        dd: DependencyDescriptor,
    }

    /// `packets` packets of frame `fnum` on template `tid`; the structure on the first packet if
    /// `key`; the marker on the last packet if `marker`.
    fn frame(
        s: &Arc<TemplateStructure>,
        seq: &mut u16,
        fnum: u16,
        tid: u8,
        packets: u16,
        key: bool,
        marker: bool,
    ) -> Vec<Pkt> {
        (0..packets)
            .map(|i| {
                let last = i + 1 == packets;
                let mut dd = DependencyDescriptor::new(i == 0, last, tid, fnum, s).unwrap();
                if key && i == 0 {
                    dd = dd.with_structure(s.clone());
                }
                let p = Pkt {
                    seq: *seq,
                    marker: marker && last,
                    dd,
                };
                *seq = seq.wrapping_add(1);
                p
            })
            .collect()
    }

    /// `frames` frames of L1T3 (T0 T2 T1 T2 …) from frame number `first`, key frame first,
    /// 1 to 3 packets each.
    fn l1t3_stream(first: u16, frames: u16, seq: &mut u16) -> Vec<Pkt> {
        let s = l1t3();
        (0..frames)
            .flat_map(|i| {
                let tid = match (i, i % 4) {
                    (0, _) => 0,
                    (_, 0) => 1,
                    (_, 2) => 2,
                    _ => 3,
                };
                frame(&s, seq, first.wrapping_add(i), tid, 1 + i % 3, i == 0, true)
            })
            .collect()
    }

    /// `tus` temporal units of L2T2_KEY from frame number `first` (S0 then S1 per unit), a key
    /// unit first if `key` (else the units continue a T0 unit two frames back), the marker only
    /// at the end of the unit (as VP9), 2 packets per S1 frame.
    fn l2t2_stream(first: u16, tus: u16, seq: &mut u16, key: bool) -> Vec<Pkt> {
        let s = l2t2_key();
        (0..tus)
            .flat_map(|k| {
                let (t0, t1) = match (k == 0 && key, k % 2) {
                    (true, _) => (0, 3),
                    (_, 0) => (1, 4),
                    _ => (2, 5),
                };
                let f = first.wrapping_add(2 * k);
                let mut v = frame(&s, seq, f, t0, 1, k == 0 && key, false);
                v.extend(frame(&s, seq, f.wrapping_add(1), t1, 2, false, true));
                v
            })
            .collect()
    }

    /// What a subscriber got: (input packet index, output seq, marker, switched).
    fn run(sel: &mut SvcSelector, pkts: &[Pkt]) -> Vec<(usize, u16, bool, bool)> {
        pkts.iter()
            .enumerate()
            .filter_map(|(i, p)| match sel.on_packet(p.seq, p.marker, &p.dd) {
                SvcDecision::Forward {
                    seq,
                    marker,
                    switched,
                } => Some((i, seq, marker, switched)),
                SvcDecision::Drop(_) => None,
            })
            .collect()
    }

    fn contiguous(out: &[(usize, u16, bool, bool)]) -> bool {
        out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1))
    }

    /// Frame numbers of the forwarded packets, with how many packets each.
    fn frames_of(pkts: &[Pkt], out: &[(usize, u16, bool, bool)]) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for o in out {
            *m.entry(pkts[o.0].dd.frame_number).or_default() += 1;
        }
        m
    }

    /// SFU-SVC-01, -02, -05: each decode target of L1T3 gets exactly its frames, every packet
    /// of them, renumbered without gaps across the sequence-number wrap.
    #[test]
    fn each_temporal_target_gets_exactly_its_frames_whole_and_contiguous() {
        let mut seq = 65_500;
        let pkts = l1t3_stream(65_530, 40, &mut seq);
        for t in 0..3u8 {
            let mut sel = SvcSelector::new(SvcLayer::new(0, t));
            let out = run(&mut sel, &pkts);
            assert!(contiguous(&out), "T{t}: {out:?}");
            let got = frames_of(&pkts, &out);
            let mut want = BTreeMap::new();
            for p in &pkts {
                if p.dd.temporal_id() <= t {
                    *want.entry(p.dd.frame_number).or_default() += 1;
                }
            }
            assert_eq!(got, want, "T{t}");
            assert_eq!(sel.current(), Some(SvcLayer::new(0, t)));
            assert_eq!(sel.stats().switches, 1);
            assert_eq!(sel.stats().packets_forwarded as usize, out.len());
            assert!(out.iter().all(|o| o.2 == pkts[o.0].dd.end_of_frame));
        }
    }

    /// SFU-SVC-03: going up waits for a frame whose DTI for the new target is Switch; going
    /// down takes effect at the next frame.
    #[test]
    fn up_waits_for_a_switch_indication_and_down_is_immediate() {
        let mut seq = 0;
        let pkts = l1t3_stream(100, 24, &mut seq);
        let mut sel = SvcSelector::new(SvcLayer::new(0, 0));
        let mut got = Vec::new();
        for p in &pkts {
            let f = p.dd.frame_number - 100;
            // Ask for everything just before frame 5 (T2), and for T0 again before frame 17.
            if p.dd.start_of_frame && f == 5 {
                sel.set_target(SvcLayer::ALL);
            }
            if p.dd.start_of_frame && f == 17 {
                sel.set_target(SvcLayer::new(0, 0));
            }
            if let SvcDecision::Forward { switched, .. } = sel.on_packet(p.seq, p.marker, &p.dd)
                && p.dd.start_of_frame
            {
                got.push((f, p.dd.temporal_id(), switched));
            }
        }
        let frames: Vec<u16> = got.iter().map(|g| g.0).collect();
        // 5 (T2) is dropped: T2 has no switch point there; 6 (T1, DTI S for T2) switches.
        assert_eq!(frames, [0, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20]);
        let switches: Vec<u16> = got.iter().filter(|g| g.2).map(|g| g.0).collect();
        assert_eq!(switches, [0, 6]);
        // The step down happened at frame 17 (dropped, T2) without waiting for a switch point.
        assert_eq!(sel.current(), Some(SvcLayer::new(0, 0)));
        assert_eq!(sel.stats().switches, 3);
    }

    /// SFU-SVC-03, -04: in an L2T2_KEY stream the upper spatial layer cannot be joined at a
    /// delta frame, even one marked Switch, because its chain was not forwarded; only the
    /// next key frame lets it up. A step down to S0 needs a key frame too, and until then the
    /// selector keeps S1 rather than send S0 frames the subscriber could not decode.
    #[test]
    fn spatial_switches_in_a_key_structure_need_the_chain() {
        let mut seq = 1000;
        let mut pkts = l2t2_stream(0, 10, &mut seq, true);
        pkts.extend(l2t2_stream(20, 6, &mut seq, true));
        let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
        let mut first_s1 = None;
        let mut out = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if p.dd.frame_number == 4 && p.dd.start_of_frame {
                sel.set_target(SvcLayer::ALL);
            }
            if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
                out.push((i, seq, false, false));
                if p.dd.spatial_id() == 1 && first_s1.is_none() {
                    first_s1 = Some(p.dd.frame_number);
                }
            }
        }
        // S1T0 deltas (frames 5, 9, …) say Switch, but chain 1 runs through S1 frames that
        // were never sent: the first S1 frame forwarded is the second key unit's (21).
        assert_eq!(first_s1, Some(21));
        assert!(contiguous(&out));
        assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
        // Every forwarded frame's references were forwarded (decodable).
        let sent: BTreeSet<u16> = out.iter().map(|o| pkts[o.0].dd.frame_number).collect();
        for f in &sent {
            let p = pkts.iter().find(|p| p.dd.frame_number == *f).unwrap();
            assert!(p.dd.referenced_frames().all(|r| sent.contains(&r)), "{f}");
        }

        // Down to S0 from S1: S0's chain was not forwarded, so the selector keeps S1 until a
        // key frame, and then moves.
        sel.set_target(SvcLayer::new(0, 1));
        let more = l2t2_stream(32, 4, &mut seq, false);
        let out = run(&mut sel, &more);
        assert!(
            out.iter().all(|o| more[o.0].dd.spatial_id() == 1),
            "{out:?}"
        );
        assert_eq!(out.len(), 8);
        assert!(!sel.needs_key_frame(), "S1 is still usable");
        assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
        let key = l2t2_stream(40, 3, &mut seq, true);
        let out = run(&mut sel, &key);
        assert_eq!(sel.current(), Some(SvcLayer::new(0, 1)));
        let sent: Vec<u16> = out.iter().map(|o| key[o.0].dd.frame_number).collect();
        assert_eq!(sent, [40, 42, 44]);
        assert!(out[0].3, "switched at the key frame");
    }

    /// L2T1 full SVC: decode targets S0 and S0+S1; S1 references S0 in every unit, and S0
    /// frames are part of both chains.
    fn l2t1_full() -> Arc<TemplateStructure> {
        let s = TemplateStructure {
            template_id_offset: 0,
            decode_target_count: 2,
            chain_count: 2,
            templates: vec![
                tpl(0, 0, "SS", &[], &[0, 0]),
                tpl(0, 0, "SR", &[2], &[2, 1]),
                tpl(1, 0, "-S", &[1], &[1, 1]),
                tpl(1, 0, "-R", &[1, 2], &[1, 1]),
            ],
            decode_target_protected_by: vec![0, 1],
            resolutions: None,
        };
        s.validate().unwrap();
        Arc::new(s)
    }

    /// SFU-SVC-03, -04 in a full-SVC structure: S0's frames are all part of S1's target, so a
    /// step down needs no switch point, whether asked for or forced by a broken S1 chain (the
    /// selector then falls back to S0 instead of waiting, and a key frame brings S1 back).
    #[test]
    fn full_svc_steps_down_at_once_and_falls_back_on_a_broken_chain() {
        let s = l2t1_full();
        let mut seq = 0;
        let mut pkts = Vec::new();
        for k in 0..12u16 {
            let key = k == 0 || k == 9;
            pkts.extend(frame(&s, &mut seq, 2 * k, u8::from(!key), 1, key, false));
            pkts.extend(frame(
                &s,
                &mut seq,
                2 * k + 1,
                if key { 2 } else { 3 },
                2,
                false,
                true,
            ));
        }
        // Asked down at frame 6: S0 from frame 6 on, S1's frame 7 already dropped.
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        let mut sent = Vec::new();
        for p in &pkts {
            if p.dd.frame_number == 6 && p.dd.start_of_frame {
                sel.set_target(SvcLayer::new(0, 0));
            }
            if let SvcDecision::Forward { .. } = sel.on_packet(p.seq, p.marker, &p.dd)
                && p.dd.start_of_frame
            {
                sent.push(p.dd.frame_number);
            }
        }
        assert_eq!(sent, [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20, 22]);

        // S1's frame 9 lost: frame 10's chain 1 shows it; S0 goes on, S1 waits for the key
        // unit at 18, and the selector says a switch (a key frame) is pending meanwhile.
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        let mut sent = Vec::new();
        let mut pending_at_12 = None;
        for p in pkts.iter().filter(|p| p.dd.frame_number != 9) {
            if let SvcDecision::Forward { .. } = sel.on_packet(p.seq, p.marker, &p.dd)
                && p.dd.start_of_frame
            {
                sent.push(p.dd.frame_number);
            }
            if p.dd.frame_number == 12 {
                pending_at_12 = Some((sel.switch_pending(), sel.needs_key_frame()));
            }
        }
        assert_eq!(
            sent,
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 19, 20, 21, 22, 23
            ]
        );
        assert_eq!(pending_at_12, Some((Some(SvcLayer::new(1, 0)), false)));
        assert_eq!(sel.current(), Some(SvcLayer::new(1, 0)));
        assert_eq!(sel.stats().chain_breaks, 1);
    }

    /// SFU-SVC-04: a frame of the decode target's chain lost upstream breaks the target: later
    /// frames are dropped (not sent undecodable) and a key frame is asked for; the next key
    /// frame repairs it.
    #[test]
    fn a_broken_chain_stops_the_target_until_a_key_frame() {
        let mut seq = 0;
        let mut pkts = l2t2_stream(0, 8, &mut seq, true);
        pkts.extend(l2t2_stream(16, 4, &mut seq, true));
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        // Frame 9 (S1T0 of unit 4) never arrives.
        let lost: Vec<Pkt> = pkts
            .iter()
            .filter(|p| p.dd.frame_number != 9)
            .cloned()
            .collect();
        let mut broke_at = None;
        let mut out = Vec::new();
        for (i, p) in lost.iter().enumerate() {
            if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
                out.push((i, seq, false, false));
            }
            if sel.needs_key_frame() && broke_at.is_none() {
                broke_at = Some(p.dd.frame_number);
            }
        }
        // Frame 10 (S0T1) already shows chain 1 running through 9: the target is broken
        // there. Nothing of S1 goes out until the key unit at 16.
        assert_eq!(broke_at, Some(10));
        let sent: Vec<u16> = out
            .iter()
            .map(|o| lost[o.0].dd.frame_number)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            sent,
            [0, 1, 3, 5, 7, 16, 17, 19, 21, 23],
            "S1T1 includes S1 frames and the key frame only"
        );
        assert!(!sel.needs_key_frame());
        assert_eq!(sel.stats().chain_breaks, 1);
        // The gap of the lost frame's 2 packets shows as a gap (a real loss); dropped frames
        // leave none.
        let gaps: Vec<u16> = out
            .windows(2)
            .map(|w| w[1].1.wrapping_sub(w[0].1))
            .filter(|d| *d != 1)
            .collect();
        assert_eq!(gaps, [3], "one gap, of the two lost packets");
    }

    /// SFU-SVC-07: decode targets the publisher marks inactive are not chosen; when they come
    /// back, the selector goes up at the next switch point.
    #[test]
    fn inactive_decode_targets_are_not_chosen() {
        let mut seq = 0;
        let mut pkts = l2t2_stream(0, 6, &mut seq, true);
        // Only S0 active on the key frame (as Chromium's first key frame: mask 63 of 511).
        pkts[0].dd.active_decode_targets = Some(0b0011);
        pkts.extend(l2t2_stream(12, 4, &mut seq, true));
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        let out = run(&mut sel, &pkts[..9]);
        assert!(out.iter().all(|o| pkts[o.0].dd.spatial_id() == 0));
        assert_eq!(sel.current(), Some(SvcLayer::new(0, 1)));
        assert_eq!(sel.active_decode_targets(), 0b0011);
        run(&mut sel, &pkts[9..]);
        assert_eq!(sel.active_decode_targets(), 0b1111);
        assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
    }

    /// SFU-SVC-06: with the marker only at the end of the temporal unit (the S1 frame), a
    /// subscriber at S0 gets it on its S0 frames' last packets.
    #[test]
    fn the_marker_ends_the_subscribers_temporal_unit() {
        let mut seq = 0;
        let pkts = l2t2_stream(0, 6, &mut seq, true);
        let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
        let out = run(&mut sel, &pkts);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|o| o.2), "every S0 frame ends a unit here");
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        let out = run(&mut sel, &pkts);
        // At S1 the unit ends with the S1 frame: the S0 key frame forwarded gets no marker.
        assert!(out.iter().all(|o| o.2 == pkts[o.0].marker));
        assert!(out.iter().any(|o| !o.2) && out.iter().any(|o| o.2));
    }

    /// SFU-SVC-02, -05: reordered packets: a late packet of a forwarded frame gets its own
    /// slot; one of a dropped frame changes nothing; a packet lost inside a dropped frame
    /// leaves no gap; no number is used twice.
    #[test]
    fn reordering_and_loss_never_reuse_a_number() {
        let s = l1t3();
        let mut seq = 10;
        let mut pkts = frame(&s, &mut seq, 0, 0, 2, true, true); // 10 11
        pkts.extend(frame(&s, &mut seq, 1, 3, 3, false, true)); // 12 13 14 (T2)
        pkts.extend(frame(&s, &mut seq, 2, 2, 2, false, true)); // 15 16 (T1)
        pkts.extend(frame(&s, &mut seq, 3, 3, 2, false, true)); // 17 18 (T2)
        pkts.extend(frame(&s, &mut seq, 4, 1, 2, false, true)); // 19 20
        let by_seq = |n: u16| pkts.iter().find(|p| p.seq == n).unwrap().clone();
        // Arrival: 13 lost (inside a dropped T2 frame), 16 overtaken by 17, 18 late after 19.
        let order = [10, 11, 12, 14, 15, 17, 16, 19, 18, 20];
        let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
        let mut out = BTreeMap::new();
        for n in order {
            let p = by_seq(n);
            if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
                assert!(out.insert(seq, n).is_none(), "{seq} used twice");
            }
        }
        // 10 11 | 15 16 | 19 20 → 10 11 12 13 14 15, 16 in its own slot although late.
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            [(10, 10), (11, 11), (12, 15), (13, 16), (14, 19), (15, 20)]
        );
    }

    /// SFU-SVC-08: the ladder drops temporal layers before spatial ones, and both before a
    /// simulcast layer; the choice has `LayerChoice`'s hysteresis.
    #[test]
    fn congestion_drops_temporal_layers_first() {
        const K: u64 = 1000;
        // L3T3: per spatial layer, T0 = half, T1 = three quarters of the layer's rate.
        let mut rungs = Vec::new();
        for (sim, base) in [(0u8, 600 * K), (1, 2400 * K)] {
            for (s, full) in [(0u8, base / 6), (1, base / 3), (2, base)] {
                for (t, share) in [(0u8, 2u64), (1, 3), (2, 4)] {
                    rungs.push(Rung {
                        simulcast: sim,
                        layer: SvcLayer::new(s, t),
                        bits_per_second: full * share / 4,
                    });
                }
            }
        }
        let mut c = ScalableChoice::new(LayerPolicy::default());
        let cap = (1, SvcLayer::ALL);
        let at = |ms: u64| Duration::from_millis(ms);
        assert_eq!(c.update(at(0), None, &rungs, cap), Some(17));
        // 1.5 Mbit/s: simulcast layer 1's S2T2 (2.4M) and S2T1 (1.8M) do not fit, S2T0 (1.2M)
        // does: the temporal layers go, the resolution stays.
        let mut last = 17;
        for ms in (0..2000).step_by(100) {
            last = c.update(at(ms), Some(1500 * K), &rungs, cap).unwrap();
        }
        assert_eq!(
            (rungs[last].simulcast, rungs[last].layer),
            (1, SvcLayer::new(2, 0))
        );
        // 700 kbit/s: no S2 fits; S1T2 (800k) does not either, S1T1 (600k) does.
        for ms in (2000..4000).step_by(100) {
            last = c.update(at(ms), Some(700 * K), &rungs, cap).unwrap();
        }
        assert_eq!(
            (rungs[last].simulcast, rungs[last].layer),
            (1, SvcLayer::new(1, 1))
        );
        // A cap at simulcast layer 0's S1T0 is followed at once.
        let i = c
            .update(at(4000), Some(700 * K), &rungs, (0, SvcLayer::new(1, 0)))
            .unwrap();
        assert_eq!(
            (rungs[i].simulcast, rungs[i].layer),
            (0, SvcLayer::new(1, 0))
        );
        assert_eq!(c.update(at(4000), None, &[], cap), None);
    }

    /// SFU-SVC-08: each decode target's rate counts the frames that are part of it.
    #[test]
    fn decode_target_rates_count_their_frames() {
        let mut seq = 0;
        let pkts = l1t3_stream(0, 400, &mut seq);
        let mut r = SvcRates::default();
        let mut now = Duration::ZERO;
        for p in &pkts {
            if p.dd.start_of_frame {
                now += Duration::from_millis(10);
            }
            r.add(&p.dd, now, 100);
        }
        let rates: Vec<u64> = (0..3).map(|d| r.bits_per_second(d, now)).collect();
        assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
        let rungs = r.rungs(2, now);
        assert_eq!(rungs.len(), 3);
        assert!(rungs.iter().all(|g| g.simulcast == 2));
        assert_eq!(rungs[2].bits_per_second, rates[2]);
    }

    // --- Chromium 156's own SVC and temporal-layer streams ---

    const DD_URI: &str =
        "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

    /// The packets of the capture's `codec` streams, each with its SSRC and rid, in capture
    /// order, their descriptors read as the SFU reads them.
    fn capture(file: &str, codec: &str) -> Vec<(u32, Option<Vec<u8>>, Pkt)> {
        use crate::routing::{ExtIds, PacketMeta, StreamRegistry};
        let v = veil_vectors::chromium(file);
        let id = |uri: &str| veil_vectors::ext_id(&v, uri);
        let mut reg = StreamRegistry::new(ExtIds {
            mid: id("urn:ietf:params:rtp-hdrext:sdes:mid"),
            rid: id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
            rrid: id("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
            dd: id(DD_URI),
            audio_level: None,
        });
        let pts: Vec<u64> = v["rtpmap"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.as_str().unwrap().starts_with(codec))
            .map(|(pt, _)| pt.parse().unwrap())
            .collect();
        let mut out = Vec::new();
        for p in v["packets"].as_array().unwrap() {
            if !pts.contains(&p["pt"].as_u64().unwrap()) {
                continue;
            }
            let profile = u16::from_str_radix(
                p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
                16,
            )
            .unwrap();
            let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
            let ssrc = p["ssrc"].as_u64().unwrap() as u32;
            let seq = p["seq"].as_u64().unwrap() as u16;
            let marker = p["marker"].as_u64() == Some(1);
            let ing = reg
                .ingest(&PacketMeta {
                    ssrc,
                    seq,
                    timestamp: p["ts"].as_u64().unwrap() as u32,
                    marker,
                    ext_profile: Some(profile),
                    ext_body: &body,
                    len: 1200,
                })
                .unwrap();
            let dd = ing.dd.expect("Chromium puts DD on every video packet");
            out.push((ssrc, ing.rid, Pkt { seq, marker, dd }));
        }
        assert!(!out.is_empty(), "{file} has {codec} packets");
        out
    }

    /// Run `pkts` (one stream) through a selector capped at `want`, and check what a subscriber
    /// at that decode target must get: from the frame where the selector reached it on, exactly
    /// the frames whose DTI for it is present, every packet of them; before, nothing above the
    /// cap; every forwarded frame's references forwarded; contiguous numbers; the target's
    /// spatial layer and frame rate. Returns the forwarded frames' (spatial, temporal) counts.
    fn check_target(pkts: &[Pkt], d: usize, what: &str) -> BTreeMap<(u8, u8), usize> {
        let s = pkts[0].dd.structure().unwrap().clone();
        let (sp, tp) = s.decode_target_layer(d).unwrap();
        let want = SvcLayer::new(sp, tp);
        let mut sel = SvcSelector::new(want);
        let mut reached: Option<u16> = None;
        let mut out = Vec::new();
        let mut sent = BTreeSet::new();
        for (i, p) in pkts.iter().enumerate() {
            let verdict = sel.on_packet(p.seq, p.marker, &p.dd);
            if reached.is_none() && sel.decode_target() == Some(d) {
                reached = Some(p.dd.frame_number);
            }
            let present = p.dd.dti(d).is_some_and(|x| x != Dti::NotPresent);
            match verdict {
                SvcDecision::Forward {
                    seq,
                    marker,
                    switched,
                } => {
                    out.push((i, seq, marker, switched));
                    sent.insert(p.dd.frame_number);
                    let layer = SvcLayer::new(p.dd.spatial_id(), p.dd.temporal_id());
                    assert!(layer.within(want), "{what}: {layer:?} above the cap");
                    if reached.is_some() {
                        assert!(present, "{what}: frame {} not in DT {d}", p.dd.frame_number);
                    }
                }
                SvcDecision::Drop(r) => {
                    assert!(
                        reached.is_none() || !present,
                        "{what}: frame {} of DT {d} dropped ({r:?})",
                        p.dd.frame_number
                    );
                }
            }
        }
        let reached = reached.unwrap_or_else(|| panic!("{what}: DT {d} never reached"));
        assert!(contiguous(&out), "{what}: numbers not contiguous");
        assert_eq!(sel.current(), Some(want), "{what}");
        assert!(sel.switch_pending().is_none() && !sel.needs_key_frame());
        for p in pkts.iter().filter(|p| sent.contains(&p.dd.frame_number)) {
            assert!(
                p.dd.referenced_frames().all(|r| sent.contains(&r)),
                "{what}: frame {} sent without its references",
                p.dd.frame_number
            );
            if p.dd.spatial_id() == sp && p.dd.start_of_frame {
                assert_eq!(p.dd.resolution(), s.resolution(sp), "{what}");
            }
        }
        let mut layers = BTreeMap::new();
        let (mut top_all, mut top_upto) = (0usize, 0usize);
        for p in pkts.iter().filter(|p| p.dd.start_of_frame) {
            let f = p.dd.frame_number;
            if is_newer(reached, f) {
                continue;
            }
            if p.dd.spatial_id() == sp {
                top_all += 1;
                if p.dd.temporal_id() <= tp {
                    top_upto += 1;
                }
            }
            if sent.contains(&f) {
                *layers
                    .entry((p.dd.spatial_id(), p.dd.temporal_id()))
                    .or_default() += 1;
            }
        }
        // Frame rate: every frame of the target's spatial layer up to its temporal layer.
        let top_sent: usize = layers
            .iter()
            .filter(|((s, _), _)| *s == sp)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(top_sent, top_upto, "{what}: of {top_all} frames of S{sp}");
        assert_eq!(layers.keys().map(|k| k.0).max(), Some(sp), "{what}");
        assert_eq!(layers.keys().map(|k| k.1).max(), Some(tp), "{what}");
        layers
    }

    /// SFU-SVC-01..05, -07 on Chromium's AV1 L3T3_KEY: each of the 9 decode targets gets
    /// exactly its frames, decodable, at its resolution and frame rate, renumbered without a
    /// gap; the S2 targets only once the second key frame made them active.
    #[test]
    fn chromium_av1_l3t3_key_each_decode_target_gets_exactly_its_frames() {
        let pkts: Vec<Pkt> = capture("av1_l3t3key_sframe_raw_dd.json", "AV1/")
            .into_iter()
            .map(|(_, _, p)| p)
            .collect();
        let s = pkts[0].dd.structure().unwrap().clone();
        assert_eq!((s.decode_target_count, s.chain_count), (9, 3));
        assert_eq!(pkts[0].dd.active_decode_targets, Some(0b111111));
        for d in 0..9 {
            let layers = check_target(&pkts, d, &format!("AV1 DT {d}"));
            let (sp, _) = s.decode_target_layer(d).unwrap();
            // KEY structure: lower spatial layers only through the key frames.
            if sp > 0 {
                let lower: usize = layers
                    .iter()
                    .filter(|((s, _), _)| *s < sp)
                    .map(|(_, n)| n)
                    .sum();
                assert!(lower <= 2, "DT {d}: {layers:?}");
            }
        }
    }

    /// SFU-SVC-03..05 on Chromium's AV1 L3T3_KEY, switching: S2T2, then S2T0 (at the next
    /// frame), S2T2 again (at the next switch indication), then S1T2, which needs a key frame
    /// the capture does not have: the selector keeps S2T2, says the switch is pending, and
    /// never sends an S1 delta frame. Numbers stay contiguous throughout.
    #[test]
    fn chromium_av1_l3t3_key_switches_only_where_the_descriptor_allows() {
        let pkts: Vec<Pkt> = capture("av1_l3t3key_sframe_raw_dd.json", "AV1/")
            .into_iter()
            .map(|(_, _, p)| p)
            .collect();
        let n = pkts.len();
        let plan = [
            (n * 3 / 10, SvcLayer::new(2, 0)),
            (n * 6 / 10, SvcLayer::new(2, 2)),
            (n * 8 / 10, SvcLayer::new(1, 2)),
        ];
        let mut sel = SvcSelector::new(SvcLayer::ALL);
        let mut out = Vec::new();
        let mut layer_at = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if let Some((_, l)) = plan.iter().find(|(at, _)| *at == i) {
                sel.set_target(*l);
            }
            let before = sel.decode_target();
            if let SvcDecision::Forward {
                seq,
                marker,
                switched,
            } = sel.on_packet(p.seq, p.marker, &p.dd)
            {
                out.push((i, seq, marker, switched));
            }
            let after = sel.decode_target();
            if before != after
                && let (Some(b), Some(a)) = (before, after)
            {
                let l = sel.decode_target_layers().to_vec();
                // Up (anything not carried by the old target) only at a switch indication.
                if !l[a].within(l[b]) {
                    assert_eq!(
                        p.dd.dti(a),
                        Some(Dti::Switch),
                        "up at frame {}",
                        p.dd.frame_number
                    );
                }
                layer_at.push((i, l[a]));
            }
        }
        assert!(contiguous(&out));
        let layers: Vec<SvcLayer> = layer_at.iter().map(|x| x.1).collect();
        // S1T2 while Chromium's first key frame has only S0 and S1 active, S2T2 from its
        // second, then as asked.
        assert_eq!(
            layers,
            [
                SvcLayer::new(2, 2),
                SvcLayer::new(2, 0),
                SvcLayer::new(2, 2)
            ]
        );
        // Down at once: the first frame after the request.
        assert!(layer_at[1].0 - plan[0].0 <= 3, "{layer_at:?}");
        // S1T2 is pending: it needs a key frame.
        assert_eq!(sel.switch_pending(), Some(SvcLayer::new(1, 2)));
        assert_eq!(sel.current(), Some(SvcLayer::new(2, 2)));
        let s1_deltas = out
            .iter()
            .filter(|o| pkts[o.0].dd.spatial_id() == 1 && !pkts[o.0].dd.frame.fdiffs.is_empty())
            .filter(|o| pkts[o.0].dd.frame.fdiffs.iter().all(|f| *f != 1))
            .count();
        assert_eq!(s1_deltas, 0);
        // While at S2T0 only T0 frames went out.
        for o in out
            .iter()
            .filter(|o| o.0 > layer_at[1].0 && o.0 < layer_at[2].0)
        {
            assert_eq!(pkts[o.0].dd.temporal_id(), 0);
        }
    }

    /// SFU-SVC-01, -02, -05 on Chromium's VP8 simulcast L1T3: on each simulcast stream, each
    /// temporal decode target gets exactly its frames, whole, contiguous, at its frame rate.
    #[test]
    fn chromium_vp8_l1t3_each_stream_and_temporal_target() {
        let all = capture("sim_vp8_l1t3_sframe_dd.json", "VP8/");
        let ssrcs: BTreeSet<u32> = all.iter().map(|x| x.0).collect();
        assert_eq!(ssrcs.len(), 3);
        for ssrc in ssrcs {
            let pkts: Vec<Pkt> = all
                .iter()
                .filter(|x| x.0 == ssrc)
                .map(|x| x.2.clone())
                .collect();
            let s = pkts[0].dd.structure().unwrap().clone();
            assert_eq!(s.decode_target_count, 3);
            let mut counts = Vec::new();
            for d in 0..3 {
                let layers = check_target(&pkts, d, &format!("VP8 {ssrc} T{d}"));
                counts.push(layers.values().sum::<usize>());
            }
            assert!(counts[0] < counts[1] && counts[1] < counts[2], "{counts:?}");
        }
    }
}

// Caller input never panics (issue 19), and whatever the descriptors say, two packets never
// leave on the same number.
#[cfg(test)]
mod caller_input {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use veil_wire::dd::{ChainDiffs, Dtis, Fdiffs, FrameDependencies};

    use super::*;
    use crate::routing::caller_input::any_duration;

    fn structure(dts: u8, chains: u8) -> Arc<TemplateStructure> {
        let t = |s: u8, tid: u8| FrameDependencies {
            spatial_id: s,
            temporal_id: tid,
            dtis: Dtis::from_slice(&vec![Dti::Switch; usize::from(dts)]).unwrap(),
            fdiffs: Fdiffs::default(),
            chain_diffs: ChainDiffs::from_slice(&vec![0; usize::from(chains)]).unwrap(),
        };
        Arc::new(TemplateStructure {
            template_id_offset: 0,
            decode_target_count: dts,
            chain_count: chains,
            templates: vec![t(0, 0), t(0, 1), t(1, 0), t(1, 1)],
            decode_target_protected_by: if chains == 0 {
                Vec::new()
            } else {
                (0..dts).map(|d| d % chains).collect()
            },
            resolutions: None,
        })
    }

    fn dti(b: u8) -> Dti {
        [
            Dti::NotPresent,
            Dti::Discardable,
            Dti::Switch,
            Dti::Required,
        ][usize::from(b % 4)]
    }

    prop_compose! {
        /// One packet: a seq step back or forward (reordering, loss), frame number step, flags,
        /// custom DTIs, fdiffs and chain diffs, and now and then a structure or a mask.
        fn packet()(
            seq_step in -8i32..12,
            frame_step in -3i32..4,
            sof: bool, eof: bool, marker: bool,
            tid in 0u8..4,
            dtis in proptest::collection::vec(any::<u8>(), 0..6),
            fdiffs in proptest::collection::vec(1u16..40, 0..4),
            chains in proptest::collection::vec(any::<u8>(), 0..4),
            key in proptest::bool::weighted(0.05),
            mask in proptest::option::weighted(0.05, any::<u32>()),
        ) -> (i32, i32, bool, bool, bool, u8, Vec<u8>, Vec<u16>, Vec<u8>, bool, Option<u32>) {
            (seq_step, frame_step, sof, eof, marker, tid, dtis, fdiffs, chains, key, mask)
        }
    }

    proptest! {
        #[test]
        fn any_descriptors_never_reuse_a_number(
            dts in 1u8..5,
            chains in 0u8..3,
            start_seq: u16,
            start_frame: u16,
            cap in (any::<u8>(), any::<u8>()),
            packets in proptest::collection::vec(packet(), 1..200),
        ) {
            let s = structure(dts, chains.min(dts));
            let mut sel = SvcSelector::new(SvcLayer::new(cap.0 % 3, cap.1 % 3));
            let (mut seq, mut frame) = (start_seq, start_frame);
            let mut out: HashMap<u16, u16> = HashMap::new();
            for (i, p) in packets.into_iter().enumerate() {
                let (ss, fs, sof, eof, marker, tid, dtis, fdiffs, cd, key, mask) = p;
                seq = seq.wrapping_add(ss as u16);
                frame = frame.wrapping_add(fs as u16);
                let mut dd = DependencyDescriptor::new(sof, eof, tid, frame, &s).unwrap();
                if key || i == 0 {
                    dd = dd.with_structure(s.clone());
                } else {
                    dd.frame.fdiffs = Fdiffs::from_slice(&fdiffs).unwrap();
                }
                if !dtis.is_empty() {
                    let d: Vec<Dti> = dtis.iter().map(|b| dti(*b)).collect();
                    dd.frame.dtis = Dtis::from_slice(&d).unwrap();
                }
                if !cd.is_empty() {
                    dd.frame.chain_diffs = ChainDiffs::from_slice(&cd).unwrap();
                }
                dd.active_decode_targets = mask;
                if i % 37 == 36 {
                    sel.set_target(SvcLayer::new(cd.len() as u8, tid));
                }
                if let SvcDecision::Forward { seq: o, .. } = sel.on_packet(seq, marker, &dd)
                    && let Some(prev) = out.insert(o, seq)
                {
                    prop_assert_eq!(prev, seq, "input {} and {} both left as {}", prev, seq, o);
                }
                let _ = (sel.current(), sel.switch_pending(), sel.needs_key_frame());
            }
        }

        #[test]
        fn rates_and_choice_take_any_input(
            now in any_duration(),
            estimate: Option<u64>,
            rates in proptest::collection::vec((0u8..4, 0u8..3, 0u8..3, any::<u64>()), 0..12),
            cap in (any::<u8>(), any::<u8>(), any::<u8>()),
        ) {
            let rungs: Vec<Rung> = rates
                .iter()
                .map(|&(sim, s, t, bps)| Rung {
                    simulcast: sim,
                    layer: SvcLayer::new(s, t),
                    bits_per_second: bps,
                })
                .collect();
            let mut c = ScalableChoice::new(LayerPolicy::default());
            let cap = (cap.0, SvcLayer::new(cap.1, cap.2));
            match c.update(now, estimate, &rungs, cap) {
                Some(i) => prop_assert!(i < rungs.len()),
                None => prop_assert!(rungs.is_empty()),
            }
            let mut r = SvcRates::default();
            let s = structure(3, 1);
            let dd = DependencyDescriptor::new(true, true, 0, 1, &s).unwrap().with_structure(s.clone());
            r.add(&dd, now, 1200);
            prop_assert!(r.rungs(0, now).len() <= 4);
        }
    }
}
