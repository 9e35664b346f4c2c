//! Retransmissions counted by congestion control (specs/sfu.md §"Congestion control per
//! subscriber connection", SFU-BWE-05).
//!
//! webrtc-rs 0.21.1 binds only a connection's primary streams to its interceptors, so its
//! transport-cc numbering and GCC's send history both skip packets on an RTX SSRC: a retransmission
//! left without a transport-wide number, the receiver's feedback never named it, and GCC took the
//! connection's rate for lower than it was. [`CountRtx`] wraps either of the two and binds each
//! stream's RTX SSRC beside the stream, with the same negotiated extensions.

use std::time::Instant;

use rtc::interceptor::{Interceptor, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;

/// An interceptor that also sees each local stream's RTX SSRC as a stream of its own.
pub struct CountRtx<I>(pub I);

/// The RTX stream of `info`, if it has one, as a stream of its own.
fn rtx_stream(info: &StreamInfo) -> Option<StreamInfo> {
    let ssrc = info.ssrc_rtx?;
    Some(StreamInfo {
        ssrc,
        payload_type: info.payload_type_rtx.unwrap_or(info.payload_type),
        ssrc_rtx: None,
        payload_type_rtx: None,
        ..info.clone()
    })
}

impl<I: Interceptor> Protocol<TaggedPacket, TaggedPacket, ()> for CountRtx<I> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_read(msg)
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.0.poll_read()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_write(msg)
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.0.poll_write()
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.0.handle_timeout(now)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn close(&mut self) -> Result<(), Self::Error> {
        self.0.close()
    }
}

impl<I: Interceptor> Interceptor for CountRtx<I> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.0.bind_local_stream(info);
        if let Some(rtx) = rtx_stream(info) {
            self.0.bind_local_stream(&rtx);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_local_stream(info);
        if let Some(rtx) = rtx_stream(info) {
            self.0.unbind_local_stream(&rtx);
        }
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_remote_stream(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtx::tests::{info, packet};
    use crate::rtx::{Resend, RtxResponder};
    use rtc::interceptor::{
        AttributedPacket, Packet, RTCPFeedback, RTPHeaderExtension, Registry, Slot,
        TwccSenderBuilder,
    };
    use rtc::shared::TransportContext;

    const TWCC_ID: u8 = 4;

    /// A retransmission on the RTX SSRC leaves with a transport-wide number, next after the
    /// original's, as only the primary's packets did before.
    #[test]
    fn a_retransmission_is_numbered_for_transport_cc() {
        let mut stream = info(1, Some(2));
        stream.rtp_header_extensions.push(RTPHeaderExtension {
            uri: crate::TRANSPORT_CC_URI.to_owned(),
            id: TWCC_ID.into(),
        });
        stream.rtcp_feedback.push(RTCPFeedback {
            typ: "transport-cc".to_owned(),
            parameter: String::new(),
        });
        let number = |wrap: bool| -> Vec<Option<u16>> {
            let reg = Registry::new();
            let reg = if wrap {
                reg.with(Slot::TwccSender, CountRtx(TwccSenderBuilder::new().build()))
            } else {
                reg.with(Slot::TwccSender, TwccSenderBuilder::new().build())
            };
            let mut chain = reg.build();
            chain.bind_local_stream(&stream);
            let original = packet(1, 96, 9, &[], &[5]);
            let mut responder = RtxResponder::default();
            responder.bind(&stream);
            responder.on_send(&original);
            let Resend::Packet(rtx) = responder.resend(1, 9) else {
                panic!("just sent")
            };
            let mut out = Vec::new();
            for p in [original, rtx] {
                chain
                    .handle_write(TaggedPacket {
                        now: Instant::now(),
                        transport: TransportContext::default(),
                        message: AttributedPacket::new(Packet::Rtp(p)),
                    })
                    .unwrap();
                while let Some(p) = chain.poll_write() {
                    let Packet::Rtp(p) = p.message.packet else {
                        panic!("RTP in, RTP out")
                    };
                    out.push(
                        p.header
                            .get_extension(TWCC_ID)
                            .map(|b| u16::from_be_bytes([b[0], b[1]])),
                    );
                }
            }
            out
        };
        assert_eq!(number(true), [Some(0), Some(1)]);
        // What webrtc-rs does alone: the RTX packet is not numbered.
        assert_eq!(number(false), [Some(0), None]);
    }
}
