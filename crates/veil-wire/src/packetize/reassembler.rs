//! Rebuilds encrypted frames from RTP payloads that arrive in any order, and reports frames that
//! can no longer complete instead of guessing (checks RTP-PKT-04..08).
//!
//! Packets are grouped by RTP timestamp (one frame per timestamp, or one frame per spatial layer
//! in SVC, where each layer's frame is its own start…end run). A frame is complete when every
//! sequence number from a start packet to the next end packet is present. Complete frames are
//! emitted as soon as they are complete, so a lost packet delays only its own frame. A frame is
//! reported [`Incomplete`] when:
//! - newer traffic has moved more than `reorder_window` packets past it (`Aged`),
//! - there are more pending frames than `max_pending_frames` (`Evicted`, oldest first),
//! - it exceeds `max_frame_bytes` or `max_packets_per_frame` (`TooLarge`), or
//! - on [`Reassembler::flush`] (`Flushed`).
//!
//! Once a timestamp is emitted or reported, it is closed. Late packets for it (a NACK
//! retransmission that lost the race, a duplicate) are counted and dropped, so a frame is never
//! reported twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{PacketFormat, SFRAME_E, SFRAME_S, SFRAME_T, Vp8Descriptor};
use crate::error::{Result, WireError};

/// How many recently closed timestamps are remembered to recognise late packets.
const CLOSED_MEMORY: usize = 1024;

/// One received RTP packet, as the reassembler needs it.
#[derive(Debug, Clone, Copy)]
pub struct RtpIn<'a> {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The RTP payload (after header, extensions and padding are removed).
    pub payload: &'a [u8],
    /// Start of frame from the dependency descriptor, if the packet has one (preferred over the
    /// VP8 descriptor's S/PID).
    pub start: Option<bool>,
    /// End of frame from the dependency descriptor, if present (preferred over the marker bit).
    pub end: Option<bool>,
}

/// Bounds of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblerConfig {
    /// Frames waiting for packets at once (default 64); the oldest is reported beyond that.
    pub max_pending_frames: usize,
    /// Largest frame in bytes (default 4 MiB).
    pub max_frame_bytes: usize,
    /// Most packets per frame (default 4096).
    pub max_packets_per_frame: usize,
    /// Packets of newer traffic after which a waiting frame is given up (default 1024).
    pub reorder_window: u64,
}

impl Default for ReassemblerConfig {
    fn default() -> Self {
        Self {
            max_pending_frames: 64,
            max_frame_bytes: super::DEFAULT_MAX_FRAME,
            max_packets_per_frame: 4096,
            reorder_window: 1024,
        }
    }
}

/// A complete encrypted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp.
    pub timestamp: u32,
    /// Sequence number of the first packet.
    pub first_seq: u16,
    /// Sequence number of the last packet.
    pub last_seq: u16,
    /// Packets the frame came in.
    pub packets: usize,
    /// Marker bit of the last packet.
    pub marker: bool,
    /// VP8 descriptor of the first packet (VP8 format only).
    pub vp8: Option<Vp8Descriptor>,
    /// The encrypted frame, descriptors removed.
    pub data: Vec<u8>,
}

/// Why a frame was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncompleteReason {
    /// Newer traffic moved more than the reorder window past it.
    Aged,
    /// Too many frames were pending; it was the oldest.
    Evicted,
    /// It exceeded the size or packet-count bound.
    TooLarge,
    /// [`Reassembler::flush`] was called.
    Flushed,
}

/// A frame that will not complete: what was received of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// RTP timestamp.
    pub timestamp: u32,
    /// Lowest sequence number received for it.
    pub first_seq: u16,
    /// Packets received.
    pub packets_received: usize,
    /// Why it was given up.
    pub reason: IncompleteReason,
}

/// What the reassembler hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A frame ready to decrypt.
    Complete(Frame),
    /// A frame that will not complete.
    Incomplete(Incomplete),
}

/// Counters of a [`Reassembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblerStats {
    /// Packets accepted into a frame.
    pub packets: u64,
    /// Packets already held (same sequence number).
    pub duplicates: u64,
    /// Packets for a frame already emitted or reported, or older than the reorder window.
    pub late: u64,
    /// Payloads that failed to parse.
    pub malformed: u64,
    /// Complete frames emitted.
    pub frames: u64,
    /// Frames reported incomplete.
    pub incomplete: u64,
}

struct Held {
    start: bool,
    end: bool,
    marker: bool,
    vp8: Option<Vp8Descriptor>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    packets: BTreeMap<u64, Held>,
    bytes: usize,
}

/// Per-stream reassembly of one packetization format (sans-I/O: push packets, poll outputs).
pub struct Reassembler {
    format: PacketFormat,
    cfg: ReassemblerConfig,
    highest: Option<u64>,
    pending: HashMap<u32, Pending>,
    closed: VecDeque<u32>,
    closed_set: HashSet<u32>,
    out: VecDeque<Output>,
    stats: ReassemblerStats,
}

impl Reassembler {
    /// A reassembler with default bounds.
    #[must_use]
    pub fn new(format: PacketFormat) -> Self {
        Self::with_config(format, ReassemblerConfig::default())
    }

    /// A reassembler with `cfg`.
    #[must_use]
    pub fn with_config(format: PacketFormat, cfg: ReassemblerConfig) -> Self {
        Self {
            format,
            cfg,
            highest: None,
            pending: HashMap::new(),
            closed: VecDeque::new(),
            closed_set: HashSet::new(),
            out: VecDeque::new(),
            stats: ReassemblerStats::default(),
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> ReassemblerStats {
        self.stats
    }

    /// Frames waiting for packets.
    #[must_use]
    pub fn pending_frames(&self) -> usize {
        self.pending.len()
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Report every pending frame as incomplete (end of stream, or a stream reset).
    pub fn flush(&mut self) {
        let mut ts: Vec<(u64, u32)> = self
            .pending
            .iter()
            .map(|(t, p)| (*p.packets.keys().next().unwrap_or(&0), *t))
            .collect();
        ts.sort_unstable();
        for (_, t) in ts {
            self.give_up(t, IncompleteReason::Flushed);
        }
    }

    /// Split a payload into (start, end, descriptor, body) per format (RTP-PKT-03).
    fn depacketize<'p>(
        &self,
        p: &RtpIn<'p>,
    ) -> Result<(bool, bool, Option<Vp8Descriptor>, &'p [u8])> {
        match self.format {
            PacketFormat::Vp8 => {
                let (d, n) = Vp8Descriptor::parse(p.payload)?;
                Ok((
                    p.start.unwrap_or(d.starts_frame()),
                    p.end.unwrap_or(p.marker),
                    Some(d),
                    &p.payload[n..],
                ))
            }
            PacketFormat::Opus => Ok((true, true, None, p.payload)),
            PacketFormat::Sframe => {
                let &b = p.payload.first().ok_or(WireError::Truncated {
                    what: "SFrame payload descriptor",
                    needed: 1,
                    got: 0,
                })?;
                if b & SFRAME_T != 0 {
                    return Err(WireError::Malformed {
                        what: "SFrame payload descriptor",
                        reason: "T=1 (per-packet SFrame) is not supported; Veil uses per-frame mode",
                    });
                }
                Ok((b & SFRAME_S != 0, b & SFRAME_E != 0, None, &p.payload[1..]))
            }
        }
    }

    /// Unwrap a 16-bit sequence number to the 64-bit value closest to the highest seen.
    fn unwrap_seq(&mut self, seq: u16) -> u64 {
        let s = u64::from(seq);
        let ext = match self.highest {
            None => (1 << 16) | s,
            Some(h) => {
                let c = (h & !0xFFFF) | s;
                [c.saturating_sub(1 << 16), c, c + (1 << 16)]
                    .into_iter()
                    .min_by_key(|&x| x.abs_diff(h))
                    .unwrap_or(c)
            }
        };
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// Feed one packet.
    ///
    /// # Errors
    /// A payload that does not parse in this format (RTP-PKT-03); it is counted and dropped,
    /// and the reassembler stays usable.
    pub fn push(&mut self, p: RtpIn<'_>) -> Result<()> {
        let (start, end, vp8, body) = match self.depacketize(&p) {
            Ok(v) => v,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        let ext = self.unwrap_seq(p.seq);
        let highest = self.highest.unwrap_or(ext);
        if self.closed_set.contains(&p.timestamp) || highest - ext > self.cfg.reorder_window {
            self.stats.late += 1; // RTP-PKT-07
            return Ok(());
        }
        let group = self.pending.entry(p.timestamp).or_default();
        if group.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        group.bytes += body.len();
        group.packets.insert(
            ext,
            Held {
                start,
                end,
                marker: p.marker,
                vp8,
                body: body.to_vec(),
            },
        );
        self.stats.packets += 1;
        if group.bytes > self.cfg.max_frame_bytes
            || group.packets.len() > self.cfg.max_packets_per_frame
        {
            self.give_up(p.timestamp, IncompleteReason::TooLarge); // RTP-PKT-08
        } else {
            self.try_complete(p.timestamp);
        }
        self.age(highest);
        while self.pending.len() > self.cfg.max_pending_frames {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, g)| g.packets.keys().next().copied().unwrap_or(0))
                .map(|(t, _)| *t);
            match oldest {
                Some(t) => self.give_up(t, IncompleteReason::Evicted),
                None => break,
            }
        }
        Ok(())
    }

    /// Emit every complete start…end run of timestamp `ts` (RTP-PKT-04/05).
    fn try_complete(&mut self, ts: u32) {
        let Some(group) = self.pending.get_mut(&ts) else {
            return;
        };
        let mut runs = Vec::new();
        let mut run: Option<(u64, u64)> = None; // (first, last) of the run being walked
        for (&seq, h) in &group.packets {
            run = match run {
                _ if h.start => Some((seq, seq)),
                Some((first, last)) if seq == last + 1 => Some((first, seq)),
                _ => None,
            };
            if let (Some(r), true) = (run, h.end) {
                runs.push(r);
                run = None;
            }
        }
        for (first, last) in runs {
            let held: Vec<Held> = (first..=last)
                .filter_map(|s| group.packets.remove(&s))
                .collect();
            group.bytes -= held.iter().map(|h| h.body.len()).sum::<usize>();
            let mut data = Vec::with_capacity(held.iter().map(|h| h.body.len()).sum());
            for h in &held {
                data.extend_from_slice(&h.body);
            }
            self.stats.frames += 1;
            self.out.push_back(Output::Complete(Frame {
                timestamp: ts,
                first_seq: first as u16,
                last_seq: last as u16,
                packets: held.len(),
                marker: held.last().is_some_and(|h| h.marker),
                vp8: held.first().and_then(|h| h.vp8),
                data,
            }));
        }
        if group.packets.is_empty() {
            self.pending.remove(&ts);
            self.close(ts);
        }
    }

    /// Give up frames the reorder window has passed (RTP-PKT-06).
    fn age(&mut self, highest: u64) {
        let window = self.cfg.reorder_window;
        let mut old: Vec<(u64, u32)> = self
            .pending
            .iter()
            .filter_map(|(t, g)| {
                let newest = *g.packets.keys().next_back()?;
                (highest - newest > window).then_some((newest, *t))
            })
            .collect();
        old.sort_unstable();
        for (_, t) in old {
            self.give_up(t, IncompleteReason::Aged);
        }
    }

    fn give_up(&mut self, ts: u32, reason: IncompleteReason) {
        if let Some(g) = self.pending.remove(&ts) {
            self.stats.incomplete += 1;
            self.out.push_back(Output::Incomplete(Incomplete {
                timestamp: ts,
                first_seq: g.packets.keys().next().map_or(0, |&s| s as u16),
                packets_received: g.packets.len(),
                reason,
            }));
        }
        self.close(ts);
    }

    fn close(&mut self, ts: u32) {
        if self.closed_set.insert(ts) {
            self.closed.push_back(ts);
            if self.closed.len() > CLOSED_MEMORY
                && let Some(old) = self.closed.pop_front()
            {
                self.closed_set.remove(&old);
            }
        }
    }
}
