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
mod tests;

// Caller input never panics (issue 19), and whatever the descriptors say, two packets never
// leave on the same number.
#[cfg(test)]
mod caller_input;
