//! The app-ward end of every connection's chain as one interceptor (specs/sfu.md §"The interceptor
//! chain", SFU-PERF-01).
//!
//! webrtc-rs 0.21.1's chain hands every packet to every interceptor: each takes it into its own
//! queue and gives it back, and a profile of the SFU put a tenth of its time in moving packets
//! between those queues. Four of a connection's interceptors never change an outbound packet: the
//! NACK generator, the receiver reports and [`KeyFrameRequestTap`] pass it straight through, and
//! the sender reports only count it. [`Bundle`] runs the four as one: an outbound packet goes to
//! the sender reports alone (one queue instead of four), and everything
//! else (inbound packets, timers, stream bindings, the RTCP each one generates) reaches each
//! member as the chain would have delivered it.
//!
//! That the three pass outbound packets through untouched is read from webrtc-rs 0.21.1's source
//! (each `handle_write` pushes the packet onto its queue and nothing else) and pinned by the
//! version. A test (`the_bundle_does_what_its_members_do_in_the_chain`) checks it: the same
//! traffic goes through the bundle and through the four as separate interceptors, and
//! everything that comes out is compared.
//!
//! The bundle changes one thing on the way out: every receiver report leaves with one sender
//! SSRC for the connection's life (SFU-RTCP-04). webrtc-rs's receiver reports draw a random
//! sender SSRC for every stream they bind, and a connection's receive streams are bound again
//! at every renegotiation; the other end's SRTCP context keeps a replay window for every sender
//! SSRC it has seen, for good, so a participant who stayed while others came and went made the
//! SFU's memory grow with every renegotiation, and the SFU the participant's.
//!
//! The transport-cc receiver used to be a fifth member. It records arrivals, and an arrival
//! recorder must see every packet that arrived: the [`crate::RtxInterceptor`] wire-ward of the
//! bundle drops padding probes and redundant retransmissions, so the sender read its own probes
//! as lost (SFU-RTX-08). It now sits inside the RTX interceptor, wire-ward of what drops.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{
    Interceptor, NackGeneratorBuilder, NackGeneratorInterceptor, Packet, ReceiverReportBuilder,
    ReceiverReportInterceptor, SenderReportBuilder, SenderReportInterceptor, Slot, StreamInfo,
    TaggedPacket,
};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;

use crate::KeyFrameRequestTap;

/// Where [`Bundle`] sits: the NACK generator's slot, the wire-most of its members. Nothing else
/// in Veil's chain sits between its members' own slots (7 000 to 14 000).
pub const BUNDLE_SLOT: Slot = Slot::NackGenerator;

/// The NACK generator, receiver reports, sender reports and [`KeyFrameRequestTap`], in that
/// order from the wire, as one interceptor.
pub struct Bundle {
    nack_generator: NackGeneratorInterceptor,
    receiver_report: ReceiverReportInterceptor,
    sender_report: SenderReportInterceptor,
    key_frame_tap: KeyFrameRequestTap,
    read: VecDeque<TaggedPacket>,
    /// The sender SSRC of the connection's receiver reports: the first one's (webrtc-rs draws
    /// it at random), kept for every later one (SFU-RTCP-04).
    report_ssrc: Option<u32>,
}

impl Default for Bundle {
    /// Each member as webrtc-rs's `configure_nack` and `configure_rtcp_reports` build it.
    fn default() -> Self {
        Self {
            nack_generator: NackGeneratorBuilder::new().build(),
            receiver_report: ReceiverReportBuilder::new().build(),
            sender_report: SenderReportBuilder::new().build(),
            key_frame_tap: KeyFrameRequestTap::default(),
            read: VecDeque::new(),
            report_ssrc: None,
        }
    }
}

impl Bundle {
    /// The members from the wire on: the order inbound packets take.
    fn members(&mut self) -> [&mut dyn Interceptor; 4] {
        [
            &mut self.nack_generator,
            &mut self.receiver_report,
            &mut self.sender_report,
            &mut self.key_frame_tap,
        ]
    }

    /// Carry `belt` through every member, as webrtc-rs's chain does (`Chain::walk`).
    fn walk_read(&mut self, mut belt: VecDeque<TaggedPacket>) {
        for m in self.members() {
            while let Some(p) = belt.pop_front() {
                if let Err(e) = m.handle_read(p) {
                    tracing::warn!(error = %e, "interceptor handle_read failed");
                }
            }
            while let Some(p) = m.poll_read() {
                belt.push_back(p);
            }
        }
        self.read.extend(belt);
    }

    /// Give every receiver report in `p` the connection's one sender SSRC (SFU-RTCP-04).
    fn one_report_ssrc(&mut self, mut p: TaggedPacket) -> TaggedPacket {
        if let Packet::Rtcp(packets) = &mut p.message.packet {
            for b in packets.iter_mut() {
                let Some(rr) = b.as_any().downcast_ref::<ReceiverReport>() else {
                    continue;
                };
                let ssrc = *self.report_ssrc.get_or_insert(rr.ssrc);
                if rr.ssrc != ssrc {
                    *b = Box::new(ReceiverReport { ssrc, ..rr.clone() });
                }
            }
        }
        p
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Bundle {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.walk_read(VecDeque::from([msg]));
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        // As the chain does: an empty walk collects what a member released on its own.
        if self.read.is_empty() {
            self.walk_read(VecDeque::new());
        }
        self.read.pop_front()
    }

    /// Only the sender reports see an outbound packet; the tap app-ward of them and the two
    /// wire-ward would pass it on unchanged.
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.sender_report.handle_write(msg)
    }

    /// The sender reports' queue (the packets written, and the reports it generated), then the
    /// RTCP each other member generated (NACKs, receiver reports, these with the connection's
    /// one sender SSRC). In the chain the latter would also pass the members wire-ward of them,
    /// unchanged.
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        if let Some(p) = self
            .sender_report
            .poll_write()
            .or_else(|| self.key_frame_tap.poll_write())
        {
            return Some(p);
        }
        if let Some(p) = self.receiver_report.poll_write() {
            return Some(self.one_report_ssrc(p));
        }
        self.nack_generator.poll_write()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        for m in self.members() {
            m.handle_timeout(now)?;
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.members()
            .into_iter()
            .filter_map(|m| m.poll_timeout())
            .min()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        for m in self.members() {
            m.close()?;
        }
        Ok(())
    }
}

impl Interceptor for Bundle {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        for m in self.members() {
            m.bind_local_stream(info);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        for m in self.members() {
            m.unbind_local_stream(info);
        }
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        for m in self.members() {
            m.bind_remote_stream(info);
        }
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        for m in self.members() {
            m.unbind_remote_stream(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, Packet, RTCPFeedback, RTPHeaderExtension, Registry};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtp;
    use rtc::shared::TransportContext;
    use rtc::shared::marshal::Marshal;
    use std::time::Duration;

    const TWCC_ID: u8 = 3;

    fn info(ssrc: u32) -> StreamInfo {
        StreamInfo {
            ssrc,
            payload_type: 96,
            clock_rate: 90_000,
            mime_type: "video/VP8".to_owned(),
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: crate::TRANSPORT_CC_URI.to_owned(),
                id: TWCC_ID.into(),
            }],
            rtcp_feedback: ["nack", "transport-cc"]
                .map(|typ| RTCPFeedback {
                    typ: typ.to_owned(),
                    parameter: String::new(),
                })
                .to_vec(),
            ..StreamInfo::default()
        }
    }

    fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    fn rtp(ssrc: u32, seq: u16, twcc: bool) -> Packet {
        let mut header = rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc,
            ..Default::default()
        };
        if twcc {
            header
                .set_extension(TWCC_ID, seq.to_be_bytes().to_vec().into())
                .unwrap();
        }
        Packet::Rtp(rtp::Packet {
            header,
            payload: vec![seq as u8; 100].into(),
        })
    }

    /// What came out, comparable across chains: each packet marshalled, with an RTCP packet's
    /// sender SSRC (bytes 4..8, random per interceptor) and a sender report's NTP time zeroed;
    /// sorted, since the two chains
    /// may interleave generated RTCP and passing RTP differently.
    fn drain(chain: &mut dyn Interceptor) -> Vec<(char, Vec<u8>)> {
        let show = |dir: char, p: TaggedPacket| -> Vec<(char, Vec<u8>)> {
            match p.message.packet {
                Packet::Rtp(p) => vec![(dir, p.marshal().unwrap().to_vec())],
                Packet::Rtcp(ps) => ps
                    .iter()
                    .map(|p| {
                        let mut b = p.marshal().unwrap().to_vec();
                        b[4..8].fill(0);
                        // A sender report's NTP time is read from the wall clock when sent.
                        if b[1] == 200 {
                            b[8..16].fill(0);
                        }
                        (dir, b)
                    })
                    .collect(),
                other => panic!("neither RTP nor RTCP: {other:?}"),
            }
        };
        let mut out = Vec::new();
        while let Some(p) = chain.poll_read() {
            out.extend(show('r', p));
        }
        while let Some(p) = chain.poll_write() {
            out.extend(show('w', p));
        }
        out.sort();
        out
    }

    /// Two seconds of a connection that sends one stream and receives one with every seventh packet
    /// lost, sender reports and PLIs: the bundle emits exactly what the four interceptors emit
    /// as separate links of webrtc-rs's chain, step by step.
    #[test]
    fn the_bundle_does_what_its_members_do_in_the_chain() {
        let mut plain = Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(Slot::from(14_000), KeyFrameRequestTap::default())
            .build();
        let mut bundled = Registry::new().with(BUNDLE_SLOT, Bundle::default()).build();
        for chain in [&mut plain as &mut dyn Interceptor, &mut bundled] {
            chain.bind_local_stream(&info(1));
            chain.bind_remote_stream(&info(100));
        }
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for i in 0..400u16 {
            let now = t0 + Duration::from_millis(5) * u32::from(i);
            let mut inputs = vec![(false, rtp(1, i, false))];
            if i % 7 != 3 {
                inputs.push((true, rtp(100, i, true)));
            }
            if i % 40 == 20 {
                let sr = SenderReport {
                    ssrc: 100,
                    ntp_time: u64::from(i) << 32,
                    rtp_time: u32::from(i) * 3000,
                    ..Default::default()
                };
                let pli = PictureLossIndication {
                    sender_ssrc: 100,
                    media_ssrc: 1,
                };
                inputs.push((true, Packet::Rtcp(vec![Box::new(sr), Box::new(pli)])));
            }
            let step = |chain: &mut dyn Interceptor| {
                let mut out = Vec::new();
                for (read, p) in inputs.clone() {
                    if read {
                        chain.handle_read(tagged(now, p)).unwrap();
                    } else {
                        chain.handle_write(tagged(now, p)).unwrap();
                    }
                    out.extend(drain(chain));
                }
                chain.handle_timeout(now).unwrap();
                out.extend(drain(chain));
                out
            };
            let a = step(&mut plain);
            let b = step(&mut bundled);
            assert_eq!(a, b, "step {i}");
            assert_eq!(plain.poll_timeout(), bundled.poll_timeout(), "step {i}");
            seen.extend(a);
        }
        // Not a vacuous comparison: every member had something to say.
        let rtcp = |dir: char, pt: u8, fmt: u8| {
            seen.iter()
                .filter(|(d, b)| *d == dir && b[1] == pt && b[0] & 0x1F == fmt)
                .count()
        };
        assert!(rtcp('w', 205, 1) > 0, "NACKs");
        let reports = |pt: u8| seen.iter().filter(|(d, b)| *d == 'w' && b[1] == pt).count();
        assert!(reports(201) > 0, "receiver reports");
        assert!(reports(200) > 0, "sender reports");
        assert_eq!(rtcp('r', 206, 1), 10, "every PLI reaches the application");
        assert_eq!(rtcp('r', 200, 0), 0, "no other RTCP does");
        let rtp_read = seen
            .iter()
            .filter(|(d, b)| *d == 'r' && b[1] & 0x7F == 96)
            .count();
        assert_eq!(rtp_read, 400 - 57);
    }

    /// SFU-RTCP-04: a connection whose receive streams are bound again and again (every
    /// renegotiation does it) sends every receiver report under one sender SSRC; webrtc-rs's
    /// receiver reports alone draw a new one at every bind.
    #[test]
    fn receiver_reports_keep_one_sender_ssrc_across_rebinds() {
        let report_ssrcs = |chain: &mut dyn Interceptor| {
            let t0 = Instant::now();
            let mut ssrcs = std::collections::BTreeSet::new();
            for round in 0..5u16 {
                // A renegotiation: the receive streams are bound again.
                chain.bind_remote_stream(&info(100));
                chain.bind_remote_stream(&info(200));
                for i in 0..200u16 {
                    let now = t0 + Duration::from_millis(10) * u32::from(round * 200 + i);
                    for ssrc in [100, 200] {
                        chain
                            .handle_read(tagged(now, rtp(ssrc, round * 200 + i, false)))
                            .unwrap();
                    }
                    chain.handle_timeout(now).unwrap();
                    while chain.poll_read().is_some() {}
                    while let Some(p) = chain.poll_write() {
                        if let Packet::Rtcp(ps) = p.message.packet {
                            ssrcs.extend(
                                ps.iter()
                                    .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
                                    .map(|rr| rr.ssrc),
                            );
                        }
                    }
                }
            }
            ssrcs
        };
        let mut plain = Registry::new()
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .build();
        let mut bundled = Registry::new().with(BUNDLE_SLOT, Bundle::default()).build();
        assert!(report_ssrcs(&mut plain).len() >= 5, "webrtc-rs alone");
        assert_eq!(report_ssrcs(&mut bundled).len(), 1);
    }
}
