//! RTX (RFC 4588) on every hop, where webrtc-rs 0.21.1 falls short (specs/sfu.md §"RTX per
//! hop", SFU-RTX-01..04).
//!
//! webrtc-rs negotiates `video/rtx` and declares `a=ssrc-group:FID` for senders that have an RTX
//! SSRC. Three things are missing, and [`RtxInterceptor`] adds them, in the NACK responder's slot
//! ([`RTX_SLOT`]), where it replaces webrtc-rs's responder:
//!
//! - **Inbound, unwrap before the NACK generator.** webrtc-rs restores an RTX packet to its
//!   primary stream only after the interceptor chain, so its NACK generator never sees the
//!   repaired sequence number and asks for it again until it gives up. [`RtxDemux`] unwraps in
//!   the chain, at [`RTX_SLOT`], wire-ward of the generator.
//! - **Inbound, RTX named by rid only.** A browser that simulcasts declares no SSRCs, so its RTX
//!   packets name their stream with the `repaired-rtp-stream-id` extension, and webrtc-rs does not
//!   resolve that (its `bind_by_rid` gives up on `rrid`). [`RtxDemux`] learns each layer's SSRC
//!   from the `mid`/`rid` its first packets carry and latches an RTX SSRC the first time an
//!   `rrid` names it: Chromium stops sending `rrid` once the receiver reports on the stream.
//! - **Outbound, the header extensions.** webrtc-rs's responder builds RTX packets with no header
//!   extension at all, so a receiver that reads the dependency descriptor (a browser, or the
//!   SFU's core) would get a retransmitted packet it cannot place. [`RtxResponder`] keeps each
//!   recently sent packet (its extensions copied inline, its payload by reference) and answers
//!   NACKs itself, with the original's extensions and `rid` renamed to `rrid` (RFC 8852 §3.2),
//!   as Chromium sends them. It is the connection's only retransmission history: webrtc-rs's
//!   responder, which cloned every packet into a second one, is not in the chain
//!   ([`crate::interceptors_with`]).
//!
//! No payload byte is read beyond the 2-byte original sequence number (OSN) that RFC 4588 §4
//! puts in front of the repaired payload: the SFU links this module.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, Slot, StreamInfo, TaggedPacket,
    TwccReceiverBuilder, TwccReceiverInterceptor,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;

use crate::{MID_URI, RID_URI, RRID_URI};

/// Where [`RtxInterceptor`] sits: the NACK responder's slot (4 000), whose job it does.
/// Wire-ward of the NACK generator (7 000), so that it unwraps a retransmission on the way in
/// before the generator looks for gaps; app-ward of the transport-cc numbering (2 000) on the SFU's
/// connections, which numbers a retransmission like any packet once [`CountRtx`] binds the RTX SSRC
/// there (webrtc-rs binds only the primary streams).
pub const RTX_SLOT: usize = 4_000;

/// How many streams learned from packets (rid → SSRC, RTX SSRC → primary) one connection keeps.
/// A connection carries a few streams; the cap keeps a peer that invents rids from growing the
/// maps.
pub const MAX_LEARNED_STREAMS: usize = 64;

/// How many recently sent packets [`RtxResponder`] keeps per stream: webrtc-rs's NACK send
/// buffer's default size, about 3 s of a 3 Mbit/s layer in 1 200-byte packets.
pub const HISTORY_PACKETS: usize = 1024;

/// The most packets one probe request sends ([`RtxResponder::probe`]).
pub const PROBE_PACKETS: usize = 32;

mod counted;
mod dedup;
mod probe;
mod responder;
pub use counted::CountRtx;
pub use dedup::Arrivals;
pub use probe::{ProbeLink, ProbePacket, ProbeRequest};
pub use responder::{Resend, RtxResponder, Sent};

/// A primary stream an RTX packet repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primary {
    /// The primary stream's SSRC.
    pub ssrc: u32,
    /// The primary stream's payload type (the RTX codec's `apt`).
    pub payload_type: u8,
}

/// What [`RtxDemux::process`] made of an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demuxed {
    /// Not a retransmission: left as it was.
    Media,
    /// A retransmission, now the primary packet it repairs (SSRC, payload type, sequence number
    /// restored; OSN and `rrid` removed).
    Unwrapped(Primary),
    /// An RTX packet without an OSN: a padding-only bandwidth probe (RFC 4588 §4). Drop it.
    Probe,
    /// It names (by `rrid`, now or earlier) a stream that no packet has introduced yet: Chromium
    /// probes on a layer's RTX stream before the layer sends. Left as it was.
    Unresolved,
    /// A retransmission of a packet that has arrived already (a probe made of redundant RTX, or
    /// a repair that crossed its late original): drop it (SFU-RTX-07).
    Redundant(Primary),
}

/// The extension ids a connection negotiated for `mid`, `rid` and `rrid`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamIdExtensions {
    /// `urn:ietf:params:rtp-hdrext:sdes:mid`.
    pub mid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`.
    pub rid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id`.
    pub rrid: Option<u8>,
}

impl StreamIdExtensions {
    /// The ids in `info`'s negotiated extensions.
    #[must_use]
    pub fn of(info: &StreamInfo) -> Self {
        let id = |uri: &str| {
            info.rtp_header_extensions
                .iter()
                .find(|e| e.uri == uri)
                .and_then(|e| u8::try_from(e.id).ok())
        };
        Self {
            mid: id(MID_URI),
            rid: id(RID_URI),
            rrid: id(RRID_URI),
        }
    }

    fn merge(&mut self, other: Self) {
        self.mid = self.mid.or(other.mid);
        self.rid = self.rid.or(other.rid);
        self.rrid = self.rrid.or(other.rrid);
    }
}

/// A stream's `mid` (empty if its packets carry none) and `rid`.
type RidKey = (Vec<u8>, Vec<u8>);

/// Inbound RTX, sans I/O: which primary stream each retransmission repairs, and the unwrapping.
#[derive(Debug, Default)]
pub struct RtxDemux {
    ids: StreamIdExtensions,
    /// RTX SSRC → primary, declared by `a=ssrc-group:FID`.
    by_rtx_ssrc: HashMap<u32, Primary>,
    /// RTX SSRC → the (mid, rid) its `rrid` named, latched from its first such packet. Chromium
    /// probes on an RTX stream before the layer it repairs has sent anything, so the name is
    /// kept rather than the primary.
    rtx_names: HashMap<u32, RidKey>,
    /// (mid, rid) → primary, learned from the primary's own packets.
    by_rid: HashMap<RidKey, Primary>,
    /// What arrived of each stream (at most [`MAX_LEARNED_STREAMS`] of them), so that a
    /// redundant retransmission is dropped (SFU-RTX-07).
    arrived: HashMap<u32, Arrivals>,
}

impl RtxDemux {
    /// A demultiplexer for a connection with these extension ids (more are learned from bindings).
    #[must_use]
    pub fn new(ids: StreamIdExtensions) -> Self {
        Self {
            ids,
            ..Self::default()
        }
    }

    /// webrtc-rs bound a remote stream: learn its extension ids and, if the SDP declared an RTX
    /// SSRC for it (`a=ssrc-group:FID`), that association.
    pub fn bind(&mut self, info: &StreamInfo) {
        self.ids.merge(StreamIdExtensions::of(info));
        if let (Some(rtx), Some(_)) = (info.ssrc_rtx, info.payload_type_rtx) {
            self.by_rtx_ssrc.insert(
                rtx,
                Primary {
                    ssrc: info.ssrc,
                    payload_type: info.payload_type,
                },
            );
        }
    }

    /// webrtc-rs unbound a remote stream: forget every association that names it.
    pub fn unbind(&mut self, info: &StreamInfo) {
        self.by_rtx_ssrc
            .retain(|&rtx, p| rtx != info.ssrc && p.ssrc != info.ssrc);
        self.by_rid.retain(|_, p| p.ssrc != info.ssrc);
        self.rtx_names.remove(&info.ssrc);
        self.arrived.remove(&info.ssrc);
    }

    fn learned(&self) -> usize {
        self.by_rid.len() + self.rtx_names.len()
    }

    /// The primary a (mid, rid) names; without mid, the only stream with that rid.
    fn named(&self, key: &RidKey) -> Option<Primary> {
        if let Some(p) = self.by_rid.get(key) {
            return Some(*p);
        }
        let (mid, rid) = key;
        let mut same = self.by_rid.iter().filter(|((_, r), _)| r == rid);
        match (mid.is_empty(), same.next(), same.next()) {
            (true, Some((_, p)), None) => Some(*p),
            _ => None,
        }
    }

    /// Look at one inbound packet; unwrap it in place if it is a retransmission, and tell a
    /// retransmission of a packet that arrived already apart (SFU-RTX-07).
    pub fn process(&mut self, packet: &mut rtp::Packet) -> Demuxed {
        let what = self.classify(packet);
        let ssrc = match what {
            Demuxed::Media => packet.header.ssrc,
            Demuxed::Unwrapped(p) => p.ssrc,
            _ => return what,
        };
        let seq = packet.header.sequence_number;
        let full = self.arrived.len() >= MAX_LEARNED_STREAMS;
        let new = match self.arrived.get_mut(&ssrc) {
            Some(a) => a.insert(seq),
            None if full => true,
            None => self.arrived.entry(ssrc).or_default().insert(seq),
        };
        match what {
            Demuxed::Unwrapped(p) if !new => Demuxed::Redundant(p),
            other => other,
        }
    }

    fn classify(&mut self, packet: &mut rtp::Packet) -> Demuxed {
        let (ssrc, payload_type) = (packet.header.ssrc, packet.header.payload_type);
        if let Some(&primary) = self.by_rtx_ssrc.get(&ssrc) {
            return unwrap(packet, primary, self.ids.rrid);
        }
        let ext = |id: Option<u8>| id.and_then(|id| packet.header.get_extension(id));
        let mid = ext(self.ids.mid).map(|b| b.to_vec()).unwrap_or_default();
        // An RTX packet names its stream by rrid, or did on an earlier packet of its SSRC.
        if let Some(rrid) = ext(self.ids.rrid) {
            let key = (mid, rrid.to_vec());
            let primary = self.named(&key);
            if !self.rtx_names.contains_key(&ssrc) && self.learned() < MAX_LEARNED_STREAMS {
                self.rtx_names.insert(ssrc, key);
            }
            return repair(packet, primary, self.ids.rrid);
        }
        if let Some(key) = self.rtx_names.get(&ssrc) {
            return repair(packet, self.named(key), self.ids.rrid);
        }
        if let Some(rid) = ext(self.ids.rid) {
            let primary = Primary { ssrc, payload_type };
            let key = (mid, rid.to_vec());
            if self.by_rid.contains_key(&key) || self.learned() < MAX_LEARNED_STREAMS {
                self.by_rid.insert(key, primary);
            }
        }
        Demuxed::Media
    }
}

/// An RTX packet whose stream was named: unwrapped into `primary`, if known.
fn repair(packet: &mut rtp::Packet, primary: Option<Primary>, rrid: Option<u8>) -> Demuxed {
    let h = &packet.header;
    match primary {
        // The primary itself (or FEC, never negotiated here) naming itself: not RTX.
        Some(p) if p.ssrc == h.ssrc || p.payload_type == h.payload_type => Demuxed::Media,
        Some(p) => unwrap(packet, p, rrid),
        None => Demuxed::Unresolved,
    }
}

/// RFC 4588 §4: the original packet is the RTX packet with the primary's SSRC and payload type,
/// the OSN as sequence number, and the payload after the OSN. Timestamp, marker and extensions
/// are the original's already (minus `rrid`, which would make a receiver take the primary stream
/// for a repair stream).
fn unwrap(packet: &mut rtp::Packet, primary: Primary, rrid: Option<u8>) -> Demuxed {
    if packet.payload.len() < 2 {
        return Demuxed::Probe;
    }
    let header = &mut packet.header;
    header.sequence_number = u16::from_be_bytes([packet.payload[0], packet.payload[1]]);
    header.ssrc = primary.ssrc;
    header.payload_type = primary.payload_type;
    header.padding = false;
    if let Some(id) = rrid
        && header.get_extension(id).is_some()
    {
        header.extensions.retain(|e| e.id != id);
        repad(header);
    }
    packet.payload = packet.payload.slice(2..);
    Demuxed::Unwrapped(primary)
}

/// Make the header's padding count agree with its elements after one was removed or renamed.
///
/// webrtc-rs marshals `extensions_padding` into its size estimate but writes padding from the
/// elements alone, and its own `del_extension` can leave the two apart (found by the `rtp_rtcp`
/// fuzz target): the packet then fails to marshal. The block is the elements padded to a
/// 32-bit boundary, so that is what this sets.
fn repad(header: &mut rtp::header::Header) {
    if header.extensions.is_empty() {
        header.extension = false;
        header.extensions_padding = 0;
    } else {
        header.extensions_padding = (4 - header.get_extension_payload_len() % 4) % 4;
    }
}

/// Hears what [`RtxInterceptor`] did with each retransmission, e.g. to count it in metrics.
pub trait RtxObserver: Send + Sync {
    /// An inbound RTX packet (never called for [`Demuxed::Media`]).
    fn inbound(&self, what: Demuxed);
    /// What became of the `count` sequence numbers one NACK named on a stream with a history
    /// and that ended as `what` (resent, missing or limited). Called at most once per outcome
    /// and NACK, so that a NACK naming thousands of numbers costs the observer three calls.
    fn outbound(&self, what: Sent, count: u64);
}

/// [`RtxDemux`] and [`RtxResponder`] in webrtc-rs's interceptor chain, at [`RTX_SLOT`].
#[derive(Default)]
pub struct RtxInterceptor {
    demux: RtxDemux,
    responder: RtxResponder,
    observer: Option<Arc<dyn RtxObserver>>,
    /// Probe requests from the application (SFU-BWE-06).
    probes: Option<ProbeLink>,
    /// The transport-cc receiver, wire-ward of everything this drops (SFU-RTX-08).
    twcc: Option<TwccReceiverInterceptor>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl RtxInterceptor {
    /// The slot to register it at.
    #[must_use]
    pub fn slot() -> Slot {
        Slot::from(RTX_SLOT)
    }

    /// One that reports every retransmission to `observer`.
    #[must_use]
    pub fn observed(observer: Arc<dyn RtxObserver>) -> Self {
        Self {
            observer: Some(observer),
            ..Self::default()
        }
    }

    /// The same interceptor with the connection's transport-cc receiver inside it, wire-ward of
    /// the demultiplexer (SFU-RTX-08): every packet that arrived is recorded for the sender's
    /// feedback, also the probes and redundant retransmissions this drops, so that the sender's
    /// estimator never reads its own probes as lost. It is webrtc-rs's receiver as
    /// `configure_twcc_receiver_only` builds it; outbound packets do not pass it (it would pass
    /// them on untouched), so it costs the chain no link.
    #[must_use]
    pub fn with_transport_cc(mut self) -> Self {
        self.twcc = Some(TwccReceiverBuilder::new().build());
        self
    }

    /// The same interceptor, sending the probes requested through `link` (SFU-BWE-06).
    #[must_use]
    pub fn with_probes(mut self, link: ProbeLink) -> Self {
        self.probes = Some(link);
        self
    }

    /// Build the probes requested since the last write, each packet stamped with its request's
    /// time, and tell the link which they were.
    fn send_probes(&mut self) {
        let Some(link) = &self.probes else {
            return;
        };
        for r in link.take_requests() {
            let write = &mut self.write;
            self.responder.probe(r.bytes, |p| {
                link.record(ProbePacket {
                    cluster: r.cluster,
                    ssrc: p.header.ssrc,
                    seq: p.header.sequence_number,
                    last: r.last,
                });
                write.push_back(TaggedPacket {
                    now: r.now,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(p)).with(Attribute::Retransmission),
                });
            });
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtxInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        // SFU-RTX-08: the arrival is recorded before anything below can drop the packet.
        if let Some(twcc) = &mut self.twcc {
            twcc.handle_read(msg)?;
            let Some(m) = twcc.poll_read() else {
                return Ok(());
            };
            msg = m;
        }
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for nack in packets
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            {
                let (now, write) = (msg.now, &mut self.write);
                let mut tally = [(Sent::Resent, 0), (Sent::Missing, 0), (Sent::Limited, 0)];
                self.responder.answer(nack, |what, packet| {
                    if let Some(t) = tally.iter_mut().find(|(w, _)| *w == what) {
                        t.1 += 1;
                    }
                    if let Some(p) = packet {
                        write.push_back(TaggedPacket {
                            now,
                            transport: TransportContext::default(),
                            message: AttributedPacket::new(Packet::Rtp(p))
                                .with(Attribute::Retransmission),
                        });
                    }
                });
                if let Some(o) = &self.observer {
                    for (what, count) in tally.into_iter().filter(|(_, n)| *n > 0) {
                        o.outbound(what, count);
                    }
                }
            }
        }
        if let Packet::Rtp(p) = &mut msg.message.packet {
            let what = self.demux.process(p);
            if what != Demuxed::Media
                && let Some(o) = &self.observer
            {
                o.inbound(what);
            }
            if matches!(what, Demuxed::Probe | Demuxed::Redundant(_)) {
                return Ok(());
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            self.responder.on_send(p);
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        // webrtc-rs walks the chain with an empty belt on every drain of the connection, so a
        // request is answered at the application's next drain.
        if self.write.is_empty() {
            self.send_probes();
        }
        self.write
            .pop_front()
            .or_else(|| self.twcc.as_mut()?.poll_write())
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        match &mut self.twcc {
            Some(t) => t.handle_timeout(now),
            None => Ok(()),
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.twcc.as_mut()?.poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        match &mut self.twcc {
            Some(t) => t.close(),
            None => Ok(()),
        }
    }
}

impl Interceptor for RtxInterceptor {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.responder.bind(info);
        if let Some(t) = &mut self.twcc {
            t.bind_local_stream(info);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.responder.unbind(info);
        if let Some(t) = &mut self.twcc {
            t.unbind_local_stream(info);
        }
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.demux.bind(info);
        if let Some(t) = &mut self.twcc {
            t.bind_remote_stream(info);
        }
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.demux.unbind(info);
        if let Some(t) = &mut self.twcc {
            t.unbind_remote_stream(info);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rtc::interceptor::{RTCPFeedback, RTPHeaderExtension};
    use rtc::shared::marshal::{Marshal, Unmarshal};

    pub(crate) const MID: u8 = 1;
    pub(crate) const RID: u8 = 2;
    pub(crate) const RRID: u8 = 3;
    pub(crate) const DD: u8 = 5;

    /// A video stream with NACK, mid/rid/rrid, and RTX if `rtx`.
    pub(crate) fn info(ssrc: u32, rtx: Option<u32>) -> StreamInfo {
        let ext = |uri: &str, id: u16| RTPHeaderExtension {
            uri: uri.to_owned(),
            id,
        };
        StreamInfo {
            ssrc,
            ssrc_rtx: rtx,
            payload_type: 96,
            payload_type_rtx: rtx.map(|_| 97),
            rtp_header_extensions: vec![
                ext(MID_URI, MID.into()),
                ext(RID_URI, RID.into()),
                ext(RRID_URI, RRID.into()),
            ],
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: String::new(),
            }],
            ..StreamInfo::default()
        }
    }

    pub(crate) fn packet(
        ssrc: u32,
        pt: u8,
        seq: u16,
        exts: &[(u8, &[u8])],
        payload: &[u8],
    ) -> rtp::Packet {
        let mut header = rtp::header::Header {
            version: 2,
            payload_type: pt,
            sequence_number: seq,
            timestamp: 9000,
            ssrc,
            ..Default::default()
        };
        for (id, data) in exts {
            header.set_extension(*id, data.to_vec().into()).unwrap();
        }
        rtp::Packet {
            header,
            payload: payload.to_vec().into(),
        }
    }

    /// What a receiver parses from the bytes on the wire.
    pub(crate) fn on_the_wire(p: &rtp::Packet) -> rtp::Packet {
        let mut raw = p.marshal().unwrap().freeze();
        rtp::Packet::unmarshal(&mut raw).unwrap()
    }

    #[test]
    fn a_declared_rtx_ssrc_is_unwrapped_to_its_primary() {
        let mut d = RtxDemux::default();
        d.bind(&info(1, Some(2)));
        let mut p = packet(2, 97, 500, &[(DD, &[0x80, 1, 2])], &[0x12, 0x34, 7, 8, 9]);
        let primary = Primary {
            ssrc: 1,
            payload_type: 96,
        };
        assert_eq!(d.process(&mut p), Demuxed::Unwrapped(primary));
        assert_eq!(
            (
                p.header.ssrc,
                p.header.payload_type,
                p.header.sequence_number
            ),
            (1, 96, 0x1234)
        );
        assert_eq!(&p.payload[..], &[7, 8, 9]);
        assert_eq!(
            p.header.get_extension(DD).as_deref(),
            Some(&[0x80, 1, 2][..])
        );
        assert_eq!(on_the_wire(&p), p);

        // The primary's own packets, and a probe without OSN.
        let mut media = packet(1, 96, 3, &[], &[1, 2, 3]);
        let before = media.clone();
        assert_eq!(d.process(&mut media), Demuxed::Media);
        assert_eq!(media, before);
        assert_eq!(d.process(&mut packet(2, 97, 501, &[], &[])), Demuxed::Probe);

        d.unbind(&info(1, Some(2)));
        assert_eq!(
            d.process(&mut packet(2, 97, 502, &[], &[0, 1])),
            Demuxed::Media
        );
    }

    /// Found by the `rtp_rtcp` fuzz target: removing `rrid` with webrtc-rs's `del_extension`
    /// left a padding count that made the packet fail to marshal.
    #[test]
    fn an_unwrapped_packet_still_marshals_whatever_its_extension_block() {
        let raw = hex_bytes(
            "90e06dffffffff6600000002bede000726942e0041ec016903000b000d0000c500d5000d0000\
             33f0130900fd006474333f006eb33c6a",
        );
        let original = rtp::Packet::unmarshal(&mut &raw[..]).unwrap();
        assert!(original.marshal().is_ok());
        let mut d = RtxDemux::default();
        d.bind(&info(1, Some(2)));
        let mut p = original.clone();
        assert!(matches!(d.process(&mut p), Demuxed::Unwrapped(_)));
        assert_eq!(p.header.get_extension(RRID), None);
        let back = on_the_wire(&p);
        assert_eq!(back.header.extensions, p.header.extensions);
        assert_eq!(back.payload, p.payload);
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn an_rrid_is_resolved_through_the_rid_and_then_latched() {
        let mut d = RtxDemux::default();
        d.bind(&info(10, None));
        // Layer q announces itself with mid and rid; layer h of another m-line has rid q too.
        d.process(&mut packet(10, 96, 1, &[(MID, b"0"), (RID, b"q")], &[0]));
        d.process(&mut packet(11, 96, 1, &[(MID, b"1"), (RID, b"q")], &[0]));
        let mut rtx = packet(20, 97, 7, &[(MID, b"0"), (RRID, b"q")], &[0, 3, 0xAB]);
        let q0 = Primary {
            ssrc: 10,
            payload_type: 96,
        };
        assert_eq!(d.process(&mut rtx), Demuxed::Unwrapped(q0));
        assert_eq!(rtx.header.get_extension(RRID), None, "rrid removed");
        assert_eq!(rtx.header.get_extension(MID).as_deref(), Some(&b"0"[..]));
        assert_eq!(
            (rtx.header.sequence_number, &rtx.payload[..]),
            (3, &[0xAB][..])
        );
        assert_eq!(on_the_wire(&rtx), rtx);
        // Chromium stops sending mid and rrid once the receiver reports: the SSRC is latched.
        let mut bare = packet(20, 97, 8, &[], &[0, 2, 0xCD]);
        assert_eq!(d.process(&mut bare), Demuxed::Unwrapped(q0));
        assert!(!bare.header.extension);
        // The other m-line's q.
        let mut other = packet(21, 97, 1, &[(MID, b"1"), (RRID, b"q")], &[0, 5]);
        assert_eq!(
            d.process(&mut other).clone(),
            Demuxed::Unwrapped(Primary { ssrc: 11, ..q0 })
        );
        // A repaired rid nobody introduced.
        let mut stray = packet(22, 97, 1, &[(MID, b"0"), (RRID, b"f")], &[0, 5]);
        assert_eq!(d.process(&mut stray), Demuxed::Unresolved);
        assert_eq!(stray.header.ssrc, 22, "left as it was");
    }

    /// SFU-RTX-07: a retransmission of a packet that arrived (a probe of redundant RTX, or a
    /// repair that crossed its late original) is told apart and not handed on; one that fills a
    /// gap is, once.
    #[test]
    fn a_retransmission_of_a_packet_that_arrived_is_redundant() {
        let mut d = RtxDemux::default();
        d.bind(&info(1, Some(2)));
        let primary = Primary {
            ssrc: 1,
            payload_type: 96,
        };
        for seq in [10, 11, 13] {
            assert_eq!(
                d.process(&mut packet(1, 96, seq, &[], &[1])),
                Demuxed::Media
            );
        }
        let rtx = |rtx_seq: u16, osn: u16| packet(2, 97, rtx_seq, &[], &[0, osn as u8, 9]);
        assert_eq!(d.process(&mut rtx(0, 11)), Demuxed::Redundant(primary));
        assert_eq!(d.process(&mut rtx(1, 12)), Demuxed::Unwrapped(primary));
        assert_eq!(d.process(&mut rtx(2, 12)), Demuxed::Redundant(primary));
        // The late original of a repaired packet is media all the same.
        assert_eq!(d.process(&mut packet(1, 96, 12, &[], &[1])), Demuxed::Media);

        // In the chain, a redundant one goes no further.
        let mut chain = RtxInterceptor::default();
        chain.bind_remote_stream(&info(1, Some(2)));
        let read = |chain: &mut RtxInterceptor, p: rtp::Packet| {
            chain
                .handle_read(TaggedPacket {
                    now: Instant::now(),
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(p)),
                })
                .unwrap();
            chain.poll_read().is_some()
        };
        assert!(read(&mut chain, packet(1, 96, 10, &[], &[1])));
        assert!(!read(&mut chain, rtx(0, 10)));
        assert!(read(&mut chain, rtx(1, 11)));
    }

    /// SFU-BWE-06: a probe request becomes redundant RTX of the newest packets sent, stamped
    /// with the request's time, at least the bytes asked for, each reported on the link; the
    /// NACK budget is untouched.
    #[test]
    fn a_probe_request_is_sent_as_redundant_rtx_from_the_history() {
        let link = ProbeLink::default();
        let mut chain = RtxInterceptor::default().with_probes(link.clone());
        chain.bind_local_stream(&info(1, Some(2)));
        let t0 = Instant::now();
        let write = |chain: &mut RtxInterceptor, seq: u16| {
            chain
                .handle_write(TaggedPacket {
                    now: t0,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(packet(
                        1,
                        96,
                        seq,
                        &[(DD, &[0x80, 1, 2])],
                        &[seq as u8; 1000],
                    ))),
                })
                .unwrap();
            while chain.poll_write().is_some() {}
        };
        for seq in 100..110 {
            write(&mut chain, seq);
        }
        assert_eq!(chain.poll_write().map(|_| ()), None, "nothing asked");
        let at = t0 + std::time::Duration::from_millis(7);
        link.request(ProbeRequest {
            cluster: 4,
            bytes: 2500,
            now: at,
            last: true,
        });
        let mut out = Vec::new();
        while let Some(p) = chain.poll_write() {
            assert_eq!(p.now, at);
            let Packet::Rtp(p) = p.message.packet else {
                panic!("RTP")
            };
            out.push(p);
        }
        // Three packets of ≈ 1 020 bytes: 109, 108, 107, as RTX 0, 1, 2 with their DD.
        let osns: Vec<u16> = out
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
            .collect();
        assert_eq!(osns, [109, 108, 107]);
        assert!(
            out.iter()
                .all(|p| p.header.ssrc == 2 && p.header.payload_type == 97)
        );
        assert_eq!(
            out.iter()
                .map(|p| p.header.sequence_number)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(
            out.iter()
                .all(|p| p.header.get_extension(DD).as_deref() == Some(&[0x80, 1, 2][..]))
        );
        assert_eq!(
            link.take_sent(),
            (0..3)
                .map(|seq| ProbePacket {
                    cluster: 4,
                    ssrc: 2,
                    seq,
                    last: true,
                })
                .collect::<Vec<_>>()
        );
        // The NACK budget is the 10 packets sent: all 10 can still be resent.
        let mut resent = 0;
        for seq in 100..110 {
            resent += usize::from(matches!(chain.responder.resend(1, seq), Resend::Packet(_)));
        }
        assert_eq!(resent, 10);
    }

    /// SFU-RTX-08: a padding probe and a redundant retransmission go no further than the
    /// interceptor, but the transport-cc feedback it sends reports both as arrived.
    #[test]
    fn what_is_dropped_is_still_reported_as_arrived() {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        const TWCC: u8 = 4;
        let mut stream = info(1, Some(2));
        stream.rtp_header_extensions.push(RTPHeaderExtension {
            uri: crate::TRANSPORT_CC_URI.to_owned(),
            id: TWCC.into(),
        });
        stream.rtcp_feedback.push(RTCPFeedback {
            typ: "transport-cc".to_owned(),
            parameter: String::new(),
        });
        let mut chain = RtxInterceptor::default().with_transport_cc();
        chain.bind_remote_stream(&stream);
        let t0 = Instant::now();
        let numbered = |mut p: rtp::Packet, n: u16| {
            p.header
                .set_extension(TWCC, n.to_be_bytes().to_vec().into())
                .unwrap();
            p
        };
        let inputs = [
            numbered(packet(1, 96, 10, &[], &[1]), 0),
            numbered(packet(2, 97, 0, &[], &[]), 1),
            numbered(packet(2, 97, 1, &[], &[0, 10, 1]), 2),
            numbered(packet(1, 96, 11, &[], &[1]), 3),
        ];
        let mut passed = 0;
        for (i, p) in inputs.into_iter().enumerate() {
            chain
                .handle_read(TaggedPacket {
                    now: t0 + std::time::Duration::from_millis(i as u64),
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(p)),
                })
                .unwrap();
            while chain.poll_read().is_some() {
                passed += 1;
            }
        }
        assert_eq!(passed, 2, "the probe and the redundant RTX are dropped");
        let due = chain.poll_timeout().expect("a feedback timer");
        chain.handle_timeout(due).unwrap();
        let mut reported = Vec::new();
        while let Some(p) = chain.poll_write() {
            if let Packet::Rtcp(ps) = p.message.packet {
                for f in ps
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<TransportLayerCc>())
                {
                    reported.push((
                        f.base_sequence_number,
                        f.packet_status_count,
                        f.recv_deltas.len(),
                    ));
                }
            }
        }
        assert_eq!(reported, [(0, 4, 4)], "all four numbers, each received");
        let mut without = RtxInterceptor::default();
        without.bind_remote_stream(&stream);
        assert_eq!(without.poll_timeout(), None, "no receiver unless asked");
    }

    #[test]
    fn a_peer_inventing_rids_cannot_grow_the_maps() {
        let mut d = RtxDemux::new(StreamIdExtensions {
            mid: Some(MID),
            rid: Some(RID),
            rrid: Some(RRID),
        });
        for i in 0..10_000u32 {
            let rid = format!("r{i}");
            d.process(&mut packet(i, 96, 1, &[(RID, rid.as_bytes())], &[0]));
            d.process(&mut packet(
                i + 1_000_000,
                97,
                1,
                &[(RRID, rid.as_bytes())],
                &[0, 0],
            ));
        }
        assert!(d.learned() <= MAX_LEARNED_STREAMS);
    }
}
