//! Outbound retransmission, sans I/O: one history of what a connection sent, and the answer to a
//! NACK from it (specs/sfu.md §"RTX per hop", SFU-RTX-01, SFU-RTX-05).
//!
//! webrtc-rs 0.21.1's NACK responder clones every packet it sends into its own buffer and answers
//! with RTX packets that carry no header extension, so Veil used to keep a second history of each
//! packet's extensions to dress them. [`RtxResponder`] is the one history: it keeps a sent
//! packet's fields, its extension elements (inline, without allocating, in the common case) and
//! a reference to its payload, and builds the retransmission whole. [`super::RtxInterceptor`]
//! takes webrtc-rs's responder's place in the chain.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use rtc::interceptor::StreamInfo;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension};
use rtc::shared::marshal::MarshalSize;

use super::{HISTORY_PACKETS, PROBE_PACKETS, StreamIdExtensions, repad};

/// Elements a history slot holds without allocating: a video packet's mid/rid, DD and audio
/// level fit; a key frame's DD with its template structure usually does not.
const INLINE_ELEMENTS: usize = 6;
/// Element bytes a history slot holds without allocating.
const INLINE_BYTES: usize = 40;

/// The elements of a saved extension block. Every forwarded video packet passes through
/// [`RtxResponder::on_send`], so the common case copies bytes into the ring slot and allocates
/// nothing; only a block too big for it goes to the heap.
#[derive(Debug, Clone)]
enum Elements {
    Inline {
        n: u8,
        ids: [u8; INLINE_ELEMENTS],
        lens: [u8; INLINE_ELEMENTS],
        bytes: [u8; INLINE_BYTES],
    },
    Heap(Vec<Extension>),
}

impl Elements {
    fn of(extensions: &[Extension]) -> Self {
        let total: usize = extensions.iter().map(|e| e.payload.len()).sum();
        if extensions.len() > INLINE_ELEMENTS || total > INLINE_BYTES {
            return Self::Heap(extensions.to_vec());
        }
        let mut ids = [0; INLINE_ELEMENTS];
        let mut lens = [0; INLINE_ELEMENTS];
        let mut bytes = [0; INLINE_BYTES];
        let mut at = 0;
        for (i, e) in extensions.iter().enumerate() {
            let len = e.payload.len();
            ids[i] = e.id;
            // At most INLINE_BYTES (checked above), so it fits a u8.
            lens[i] = len as u8;
            bytes[at..at + len].copy_from_slice(&e.payload);
            at += len;
        }
        Self::Inline {
            n: extensions.len() as u8,
            ids,
            lens,
            bytes,
        }
    }

    /// The elements again, for a retransmission (allocates; retransmissions are rare).
    fn to_vec(&self) -> Vec<Extension> {
        match self {
            Self::Heap(v) => v.clone(),
            Self::Inline {
                n,
                ids,
                lens,
                bytes,
            } => {
                let mut at = 0;
                (0..usize::from(*n))
                    .map(|i| {
                        let len = usize::from(lens[i]);
                        let payload = Bytes::copy_from_slice(&bytes[at..at + len]);
                        at += len;
                        Extension {
                            id: ids[i],
                            payload,
                        }
                    })
                    .collect()
            }
        }
    }
}

/// One sent packet: everything its retransmission needs.
#[derive(Debug, Clone)]
struct Saved {
    seq: u16,
    timestamp: u32,
    marker: bool,
    padding: bool,
    payload_type: u8,
    csrc: Vec<u32>,
    /// The extension block, if the packet had one: profile, padding bytes, elements.
    extensions: Option<(u16, usize, Elements)>,
    payload: Bytes,
}

impl Saved {
    fn of(packet: &rtp::Packet) -> Self {
        let h = &packet.header;
        Self {
            seq: h.sequence_number,
            timestamp: h.timestamp,
            marker: h.marker,
            padding: h.padding,
            payload_type: h.payload_type,
            csrc: h.csrc.clone(),
            extensions: h.extension.then(|| {
                (
                    h.extension_profile,
                    h.extensions_padding,
                    Elements::of(&h.extensions),
                )
            }),
            payload: packet.payload.clone(),
        }
    }

    /// The original's header again, with its own extensions.
    fn header(&self, ssrc: u32) -> rtp::header::Header {
        let mut h = rtp::header::Header {
            version: 2,
            padding: self.padding,
            marker: self.marker,
            payload_type: self.payload_type,
            sequence_number: self.seq,
            timestamp: self.timestamp,
            ssrc,
            csrc: self.csrc.clone(),
            ..Default::default()
        };
        if let Some((profile, padding, elements)) = &self.extensions {
            h.extension = true;
            h.extension_profile = *profile;
            h.extensions = elements.to_vec();
            h.extensions_padding = *padding;
        }
        h
    }
}

/// The RTX stream that repairs a primary stream (`a=ssrc-group:FID`).
#[derive(Debug, Clone, Copy)]
struct RtxStream {
    ssrc: u32,
    payload_type: u8,
    /// The RTX stream's own sequence number for its next packet.
    next_seq: u16,
}

#[derive(Debug)]
struct LocalStream {
    ids: StreamIdExtensions,
    rtx: Option<RtxStream>,
    ring: Vec<Option<Saved>>,
    /// The sequence number of the newest packet sent, once one was.
    newest: Option<u16>,
    /// Retransmissions this stream may still send (SFU-RTX-06): one more per packet sent, at
    /// most [`HISTORY_PACKETS`], one fewer per retransmission.
    budget: usize,
}

/// What [`RtxResponder::resend`] made of one sequence number a NACK named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// The retransmission: an RTX packet if the stream has an RTX SSRC, else the original again.
    Packet(rtp::Packet),
    /// The stream keeps a history, but not of this packet: older than the history, never sent,
    /// or overwritten. Nothing is sent.
    Missing,
    /// The NACK names no stream this connection sends with NACK negotiated.
    Untracked,
    /// The stream has resent as many packets as it sent (SFU-RTX-06). Nothing is sent.
    Limited,
}

/// What [`RtxResponder`] did about one sequence number a NACK asked for, as
/// [`super::RtxObserver::outbound`] hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Retransmitted, with the original's header extensions.
    Resent,
    /// No longer (or never) in the history: not retransmitted.
    Missing,
    /// In the history, but the stream has resent as many packets as it sent (SFU-RTX-06): not
    /// retransmitted.
    Limited,
}

/// Outbound retransmission, sans I/O: a history of the last [`HISTORY_PACKETS`] packets of each
/// local stream that negotiated NACK, and the retransmissions a NACK asks for.
#[derive(Debug, Default)]
pub struct RtxResponder {
    /// Primary SSRC → its history.
    streams: HashMap<u32, LocalStream>,
    /// The stream with an RTX stream that sent last: where probes go.
    last: Option<u32>,
}

/// Whether a stream negotiated generic NACK (`a=rtcp-fb:* nack`), as webrtc-rs's responder
/// decides it.
fn supports_nack(info: &StreamInfo) -> bool {
    info.rtcp_feedback
        .iter()
        .any(|fb| fb.typ == "nack" && fb.parameter.is_empty())
}

impl RtxResponder {
    /// webrtc-rs bound a local stream: keep a history for it if it negotiated NACK.
    pub fn bind(&mut self, info: &StreamInfo) {
        if !supports_nack(info) {
            return;
        }
        let rtx = match (info.ssrc_rtx, info.payload_type_rtx) {
            (Some(ssrc), Some(payload_type)) => Some(RtxStream {
                ssrc,
                payload_type,
                next_seq: 0,
            }),
            _ => None,
        };
        self.streams.insert(
            info.ssrc,
            LocalStream {
                ids: StreamIdExtensions::of(info),
                rtx,
                ring: vec![None; HISTORY_PACKETS],
                newest: None,
                budget: 0,
            },
        );
    }

    /// webrtc-rs unbound a local stream.
    pub fn unbind(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
        if self.last == Some(info.ssrc) {
            self.last = None;
        }
    }

    /// Remember one outbound packet. Returns whether it was kept: its stream keeps a history,
    /// and the packet is not older than the last [`HISTORY_PACKETS`] numbers sent. Costs one
    /// copy of the header's fields and elements into a ring slot, and one reference to the
    /// payload.
    pub fn on_send(&mut self, packet: &rtp::Packet) -> bool {
        let Some(stream) = self.streams.get_mut(&packet.header.ssrc) else {
            return false;
        };
        let seq = packet.header.sequence_number;
        if let Some(newest) = stream.newest {
            let ahead = seq.wrapping_sub(newest);
            if ahead != 0 && ahead < 0x8000 {
                // Newer (RFC 3550 order). SFU-RTX-05: slots the numbering skipped hold packets
                // from before the jump; they go, so that none is taken for a later number.
                let skipped = usize::from(ahead - 1).min(HISTORY_PACKETS);
                for i in 0..skipped {
                    let at = usize::from(newest.wrapping_add(1).wrapping_add(i as u16));
                    stream.ring[at % HISTORY_PACKETS] = None;
                }
                stream.newest = Some(seq);
            } else if usize::from(newest.wrapping_sub(seq)) >= HISTORY_PACKETS {
                // Older than the window: keeping it would evict a packet inside it.
                return false;
            }
        } else {
            stream.newest = Some(seq);
        }
        stream.ring[usize::from(seq) % HISTORY_PACKETS] = Some(Saved::of(packet));
        if stream.rtx.is_some() {
            self.last = Some(packet.header.ssrc);
        }
        stream.budget = (stream.budget + 1).min(HISTORY_PACKETS);
        true
    }

    /// The retransmission of packet `seq` of stream `ssrc` (SFU-RTX-01): with the RTX SSRC, the
    /// RTX stream's next sequence number and payload type, the original sequence number (OSN)
    /// in front of the payload (RFC 4588 §4), and the original's timestamp, marker and header
    /// extensions, `rid` renamed `rrid` (RFC 8852 §3.2) or dropped where the connection has no
    /// `rrid`.
    pub fn resend(&mut self, ssrc: u32, seq: u16) -> Resend {
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            return Resend::Untracked;
        };
        // SFU-RTX-05: only the last HISTORY_PACKETS numbers can be in the ring (a slot whose
        // number matches one 65 536 back was cleared when the numbering skipped past it).
        let recent = stream
            .newest
            .is_some_and(|n| usize::from(n.wrapping_sub(seq)) < HISTORY_PACKETS);
        let Some(saved) = stream.ring[usize::from(seq) % HISTORY_PACKETS]
            .as_ref()
            .filter(|s| recent && s.seq == seq)
        else {
            return Resend::Missing;
        };
        // SFU-RTX-06: a receiver that NACKs the same packets over and over gets at most as many
        // retransmissions as packets were sent, not an amplifier on the SFU's one thread.
        let Some(budget) = stream.budget.checked_sub(1) else {
            return Resend::Limited;
        };
        stream.budget = budget;
        let Some(rtx) = stream.rtx.as_mut() else {
            return Resend::Packet(rtp::Packet {
                header: saved.header(ssrc),
                payload: saved.payload.clone(),
            });
        };
        Resend::Packet(as_rtx(saved, rtx, stream.ids))
    }

    /// Redundant retransmissions of recently sent packets, at least `bytes` of them on the wire
    /// (payload and header) where the history holds that many, newest first, at most
    /// [`PROBE_PACKETS`]: a bandwidth probe (SFU-BWE-06) whose packets carry real sizes, as
    /// libwebrtc's are. They go on the RTX stream of the stream sent on last, numbered like any
    /// retransmission, and the receiver drops each as a repair of a packet it has
    /// ([`super::RtxDemux`], SFU-RTX-07). They do not spend the NACK budget (SFU-RTX-06): the
    /// sender decides how many, not the receiver. Nothing is sent for a connection with no RTX
    /// stream or an empty history.
    pub fn probe(&mut self, bytes: usize, mut each: impl FnMut(rtp::Packet)) {
        let Some(stream) = self.last.and_then(|ssrc| self.streams.get_mut(&ssrc)) else {
            return;
        };
        let (Some(rtx), Some(newest)) = (stream.rtx.as_mut(), stream.newest) else {
            return;
        };
        let (mut sent, mut packets) = (0, 0);
        // Twice round the newest PROBE_PACKETS if they are too few or too small for `bytes`.
        for back in (0..PROBE_PACKETS as u16).cycle().take(2 * PROBE_PACKETS) {
            if sent >= bytes || packets >= PROBE_PACKETS {
                break;
            }
            let seq = newest.wrapping_sub(back);
            let Some(saved) = stream.ring[usize::from(seq) % HISTORY_PACKETS]
                .as_ref()
                .filter(|s| s.seq == seq)
            else {
                continue;
            };
            let p = as_rtx(saved, rtx, stream.ids);
            sent += p.header.marshal_size() + p.payload.len();
            packets += 1;
            each(p);
        }
    }

    /// Every retransmission `nack` asks for, in the order it names them, and what became of
    /// each number it named (for streams this connection keeps a history of). A NACK can name some
    /// 6 000 numbers; each costs a map lookup and a slot check, and a packet only within the
    /// budget (SFU-RTX-06).
    pub fn answer(
        &mut self,
        nack: &TransportLayerNack,
        mut each: impl FnMut(Sent, Option<rtp::Packet>),
    ) {
        for pair in &nack.nacks {
            for seq in *pair {
                match self.resend(nack.media_ssrc, seq) {
                    Resend::Packet(p) => each(Sent::Resent, Some(p)),
                    Resend::Missing => each(Sent::Missing, None),
                    Resend::Limited => each(Sent::Limited, None),
                    Resend::Untracked => return,
                }
            }
        }
    }
}

/// `saved` as the next packet of its RTX stream (SFU-RTX-01): the RTX SSRC, payload type and
/// sequence number, the original sequence number (OSN) in front of the payload (RFC 4588 §4),
/// and the original's timestamp, marker and header extensions, `rid` renamed `rrid`
/// (RFC 8852 §3.2) or dropped where the connection has no `rrid`.
fn as_rtx(saved: &Saved, rtx: &mut RtxStream, ids: StreamIdExtensions) -> rtp::Packet {
    let mut h = saved.header(rtx.ssrc);
    h.payload_type = rtx.payload_type;
    h.sequence_number = rtx.next_seq;
    // An RTX payload is the OSN and the original payload, unpadded (RFC 4588 §4).
    h.padding = false;
    rtx.next_seq = rtx.next_seq.wrapping_add(1);
    if let Some(rid) = ids.rid
        && h.get_extension(rid).is_some()
    {
        let fits = |id: u8| h.extension_profile != EXTENSION_PROFILE_ONE_BYTE || id <= 14;
        match ids.rrid.filter(|&id| fits(id)) {
            // Same length, same padding: only the id changes.
            Some(rrid) => {
                for e in h.extensions.iter_mut().filter(|e| e.id == rid) {
                    e.id = rrid;
                }
            }
            None => {
                h.extensions.retain(|e| e.id != rid);
                repad(&mut h);
            }
        }
    }
    let mut payload = BytesMut::with_capacity(2 + saved.payload.len());
    payload.put_u16(saved.seq);
    payload.put_slice(&saved.payload);
    rtp::Packet {
        header: h,
        payload: payload.freeze(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtx::tests::{DD, MID, RID, RRID, info, on_the_wire, packet};
    use crate::rtx::{Demuxed, RtxDemux};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    fn nack(ssrc: u32, seqs: &[u16]) -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 9,
            media_ssrc: ssrc,
            nacks: seqs.iter().map(|&s| NackPair::new(s)).collect(),
        }
    }

    fn resent(r: &mut RtxResponder, ssrc: u32, seq: u16) -> rtp::Packet {
        match r.resend(ssrc, seq) {
            Resend::Packet(p) => p,
            other => panic!("{seq}: {other:?}"),
        }
    }

    #[test]
    fn a_retransmission_carries_its_originals_extensions_with_rid_renamed() {
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        let dd = [
            0xC0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ];
        let mut original = packet(1, 96, 40_000, &[(DD, &dd), (RID, b"h")], &[9, 9]);
        original.header.marker = true;
        assert!(r.on_send(&original));

        let rtx = resent(&mut r, 1, 40_000);
        assert_eq!(
            (
                rtx.header.ssrc,
                rtx.header.payload_type,
                rtx.header.sequence_number
            ),
            (2, 97, 0)
        );
        assert_eq!(rtx.header.timestamp, original.header.timestamp);
        assert!(rtx.header.marker);
        assert_eq!(&rtx.payload[..], &[0x9C, 0x40, 9, 9]);
        assert_eq!(rtx.header.get_extension(DD).as_deref(), Some(&dd[..]));
        assert_eq!(rtx.header.get_extension(RRID).as_deref(), Some(&b"h"[..]));
        assert_eq!(rtx.header.get_extension(RID), None);
        assert_eq!(on_the_wire(&rtx), rtx);
        // The RTX stream numbers its own packets.
        r.on_send(&packet(1, 96, 40_001, &[], &[8]));
        assert_eq!(resent(&mut r, 1, 40_001).header.sequence_number, 1);

        // Unwrapped at the other end, it is the original again (rid → rrid → removed).
        let mut back = rtx;
        let mut d = RtxDemux::default();
        d.bind(&info(1, Some(2)));
        assert!(matches!(d.process(&mut back), Demuxed::Unwrapped(_)));
        assert_eq!(back.header.sequence_number, 40_000);
        assert_eq!(back.header.get_extension(DD).as_deref(), Some(&dd[..]));
        assert_eq!(back.payload, original.payload);
    }

    #[test]
    fn only_the_last_history_packets_are_resent() {
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        let first = 65_000u16;
        for i in 0..=HISTORY_PACKETS as u16 {
            r.on_send(&packet(1, 96, first.wrapping_add(i), &[(DD, &[1])], &[]));
        }
        // The first was overwritten by the last; the second is the oldest kept.
        assert_eq!(r.resend(1, first), Resend::Missing);
        resent(&mut r, 1, first.wrapping_add(1));
        // Not sent yet.
        let newest = first.wrapping_add(HISTORY_PACKETS as u16);
        assert_eq!(r.resend(1, newest.wrapping_add(1)), Resend::Missing);

        // After a jump in numbering, a slot still holds a packet whose number matches the one
        // asked for, but it is older than the history reaches: not resent.
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        r.on_send(&packet(1, 96, 100, &[], &[1]));
        resent(&mut r, 1, 100);
        r.on_send(&packet(1, 96, 5_000, &[], &[2]));
        assert_eq!(r.resend(1, 100), Resend::Missing);
        // A late packet (older than the newest) is kept and does not move the newest back.
        assert!(r.on_send(&packet(1, 96, 4_990, &[], &[3])));
        assert_eq!(resent(&mut r, 1, 4_990).payload[2], 3);
        assert_eq!(resent(&mut r, 1, 5_000).payload[2], 2);
        // One older than the window is not kept: its slot is 5 000's.
        r.on_send(&packet(1, 96, 4_000, &[], &[4]));
        assert!(!r.on_send(&packet(1, 96, 5_000 - HISTORY_PACKETS as u16, &[], &[5])));
        assert_eq!(resent(&mut r, 1, 5_000).payload[2], 2);

        // Jumps that together wrap the numbering: the packet from before them is gone, not
        // taken for the number it shares 65 536 later.
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        for seq in [500, 33_000, 65_000, 600] {
            r.on_send(&packet(1, 96, seq, &[], &[1]));
        }
        assert_eq!(r.resend(1, 500), Resend::Missing);
        resent(&mut r, 1, 600);
    }

    /// A connection that negotiated no `rrid` gets its retransmissions without the `rid`, and the
    /// extension block still marshals.
    #[test]
    fn without_rrid_the_rid_is_dropped() {
        let mut r = RtxResponder::default();
        let mut no_rrid = info(1, Some(2));
        no_rrid
            .rtp_header_extensions
            .retain(|e| e.uri != crate::RRID_URI);
        r.bind(&no_rrid);
        r.on_send(&packet(1, 96, 7, &[(DD, &[0x80, 1, 2]), (RID, b"f")], &[1]));
        let rtx = resent(&mut r, 1, 7);
        assert_eq!(rtx.header.get_extension(RID), None);
        assert_eq!(rtx.header.get_extension(RRID), None);
        assert_eq!(
            rtx.header.get_extension(DD).as_deref(),
            Some(&[0x80, 1, 2][..])
        );
        assert_eq!(on_the_wire(&rtx), rtx);
    }

    #[test]
    fn streams_without_nack_or_rtx() {
        let mut r = RtxResponder::default();
        // No NACK negotiated: no history.
        let mut audio = info(3, None);
        audio.rtcp_feedback.clear();
        r.bind(&audio);
        assert!(!r.on_send(&packet(3, 111, 1, &[], &[1])));
        assert_eq!(r.resend(3, 1), Resend::Untracked);
        // NACK without RTX: the original again, padding and all.
        r.bind(&info(4, None));
        let mut original = packet(4, 96, 7, &[(DD, &[0x80, 1, 2])], &[5, 6]);
        original.header.padding = true;
        assert!(r.on_send(&original));
        assert_eq!(resent(&mut r, 4, 7), original);
    }

    #[test]
    fn a_nack_is_answered_number_by_number() {
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        for seq in 10..20 {
            r.on_send(&packet(1, 96, seq, &[], &[seq as u8]));
        }
        // 12, and 13..=15 by the bitmap; 30 was never sent.
        let mut n = nack(1, &[12, 30]);
        n.nacks[0].lost_packets = 0b111;
        let mut got = Vec::new();
        r.answer(&n, |what, p| got.push((what, p.map(|p| p.payload[2]))));
        assert_eq!(
            got,
            [
                (Sent::Resent, Some(12)),
                (Sent::Resent, Some(13)),
                (Sent::Resent, Some(14)),
                (Sent::Resent, Some(15)),
                (Sent::Missing, None),
            ]
        );
        let mut none = Vec::new();
        r.answer(&nack(5, &[12]), |what, _| none.push(what));
        assert!(none.is_empty());
    }

    /// SFU-RTX-06: NACKing the same packets again and again buys one retransmission per packet
    /// sent, and the budget comes back as packets are sent.
    #[test]
    fn retransmissions_never_outnumber_the_packets_sent() {
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        for seq in 0..20 {
            r.on_send(&packet(1, 96, seq, &[], &[1]));
        }
        let mut n = nack(1, &[0]);
        n.nacks[0].lost_packets = 0xFFFF;
        let count = |r: &mut RtxResponder, n: &TransportLayerNack| {
            let mut got = (0, 0);
            r.answer(n, |what, p| match what {
                Sent::Resent => got.0 += usize::from(p.is_some()),
                Sent::Limited => got.1 += 1,
                Sent::Missing => panic!("all of 0..=16 are in the history"),
            });
            got
        };
        assert_eq!(count(&mut r, &n), (17, 0));
        assert_eq!(count(&mut r, &n), (3, 14));
        assert_eq!(count(&mut r, &n), (0, 17));
        r.on_send(&packet(1, 96, 20, &[], &[1]));
        assert_eq!(count(&mut r, &n), (1, 16));
        // The budget never grows past the history, however long nothing is NACKed.
        for seq in 21..5000 {
            r.on_send(&packet(1, 96, seq, &[], &[1]));
        }
        assert_eq!(r.streams[&1].budget, HISTORY_PACKETS);
    }

    /// A key frame's DD (with its template structure) is too big for a slot's inline bytes,
    /// a delta frame's is not: both come back byte for byte, with their padding.
    #[test]
    fn small_and_large_extension_blocks_both_come_back_exactly() {
        let mut r = RtxResponder::default();
        r.bind(&info(1, Some(2)));
        let key_dd: Vec<u8> = (0..INLINE_BYTES as u8 + 20).collect();
        let cases: [&[(u8, &[u8])]; 4] = [
            &[(DD, &[0x80, 1, 2])],
            &[(DD, &key_dd), (MID, b"0")],
            // Exactly full, then one element too many (none of them the rid, which is renamed).
            &[(DD, &key_dd[..INLINE_BYTES])],
            &[
                (1, b"a"),
                (9, b"b"),
                (10, b"c"),
                (4, b"d"),
                (6, b"e"),
                (7, b"f"),
                (8, b"g"),
            ],
        ];
        for (i, exts) in cases.iter().enumerate() {
            let seq = 100 + i as u16;
            let original = packet(1, 96, seq, exts, &[i as u8]);
            assert!(r.on_send(&original));
            let rtx = resent(&mut r, 1, seq);
            let sent = &original.header;
            assert_eq!(rtx.header.extensions, sent.extensions, "case {i}");
            assert_eq!(
                (rtx.header.extension_profile, rtx.header.extensions_padding),
                (sent.extension_profile, sent.extensions_padding),
                "case {i}"
            );
            assert_eq!(on_the_wire(&rtx), rtx, "case {i}");
        }
    }
}
