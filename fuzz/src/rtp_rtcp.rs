//! The `rtp_rtcp` target (fuzz/README.md).
use bytes::Bytes;
use rtc::interceptor::{RTCPFeedback, RTPHeaderExtension, StreamInfo};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::shared::marshal::{Marshal, Unmarshal};
use veil_rtc::rtx::{Demuxed, HISTORY_PACKETS, Resend, RtxDemux, RtxResponder};
use veil_rtc::{MID_URI, RID_URI, RRID_URI};

fn info() -> StreamInfo {
    let ext = |uri: &str, id: u16| RTPHeaderExtension {
        uri: uri.to_owned(),
        id,
    };
    StreamInfo {
        ssrc: 1,
        ssrc_rtx: Some(2),
        payload_type: 96,
        payload_type_rtx: Some(97),
        rtp_header_extensions: vec![ext(MID_URI, 1), ext(RID_URI, 2), ext(RRID_URI, 3)],
        rtcp_feedback: vec![RTCPFeedback {
            typ: "nack".to_owned(),
            parameter: String::new(),
        }],
        ..StreamInfo::default()
    }
}

/// What a peer's decrypted SRTP/SRTCP reaches on every leg: webrtc-rs 0.21.1's RTP and RTCP
/// parsers, then Veil's RTX interceptor logic (`veil_rtc::rtx`, SFU-RTX-01..02). The first byte
/// picks the path:
/// - even: RTP. A packet that parses goes through an `RtxDemux` that knows one declared RTX
///   stream and learns rid-named ones, and through an `RtxResponder` that keeps it and resends
///   it as RTX; whatever comes out must still marshal and read back equal, and the demux's maps
///   stay bounded.
/// - odd: a compound RTCP packet. Whatever parses must marshal again; its NACKs go to an
///   `RtxResponder` that sent 64 packets, whose answers must marshal and number at most 64.
pub fn rtp_rtcp(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    if sel & 1 == 1 {
        let mut raw = Bytes::copy_from_slice(body);
        if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut raw) {
            // A responder that sent 64 packets, for the NACKs among them.
            let mut responder = RtxResponder::default();
            responder.bind(&info());
            for seq in 0..64u16 {
                let header = rtp::header::Header {
                    version: 2,
                    ssrc: 1,
                    sequence_number: seq,
                    ..Default::default()
                };
                responder.on_send(&rtp::Packet {
                    header,
                    payload: Bytes::from_static(&[7; 8]),
                });
            }
            let mut resent = 0;
            for p in packets {
                let _ = p.marshal();
                if let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() {
                    let mut nack = nack.clone();
                    nack.media_ssrc = 1;
                    responder.answer(&nack, |_, rtx| {
                        if let Some(rtx) = rtx {
                            resent += 1;
                            rtx.marshal().expect("a retransmission marshals");
                        }
                    });
                }
            }
            assert!(resent <= 64, "SFU-RTX-06: {resent} resent for 64 sent");
        }
        return;
    }
    let mut demux = RtxDemux::default();
    demux.bind(&info());
    let mut responder = RtxResponder::default();
    responder.bind(&info());
    // Several packets: length-prefixed, so that rids are learned and then named.
    let mut rest = body;
    // The newest sequence number the responder kept, to know what it must keep.
    let mut newest: Option<u16> = None;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (one, tail) = tail.split_at(n);
        rest = tail;
        let mut raw = Bytes::copy_from_slice(one);
        let Ok(mut p) = rtp::Packet::unmarshal(&mut raw) else {
            continue;
        };
        // webrtc-rs cannot re-marshal everything it parses (an id-0 element in the one-byte
        // form, say); what Veil's code adds must not be the reason a packet fails.
        let marshals = p.marshal().is_ok();
        // Sent on the stream with a history, then NACKed: its RTX packet.
        let mut sent = p.clone();
        sent.header.ssrc = 1;
        let seq = sent.header.sequence_number;
        // Kept unless older than the last HISTORY_PACKETS numbers sent (RFC 3550 order):
        // keeping it would evict a packet inside the window.
        let newer = newest.is_none_or(|n: u16| (1..0x8000).contains(&seq.wrapping_sub(n)));
        let too_old =
            !newer && newest.is_some_and(|n| usize::from(n.wrapping_sub(seq)) >= HISTORY_PACKETS);
        assert_eq!(
            responder.on_send(&sent),
            !too_old,
            "seq {seq} after newest {newest:?}"
        );
        if newer {
            newest = Some(seq);
        }
        if let Resend::Packet(out) = responder.resend(1, sent.header.sequence_number)
            && marshals
        {
            let bytes = out.marshal().expect("a dressed RTX packet marshals");
            let back = rtp::Packet::unmarshal(&mut bytes.freeze()).expect("dressed RTX re-parses");
            assert_eq!(back.header.extensions, out.header.extensions);
        }
        if let Demuxed::Unwrapped(primary) = demux.process(&mut p)
            && marshals
        {
            assert_eq!(p.header.ssrc, primary.ssrc);
            let bytes = p.marshal().expect("an unwrapped packet marshals");
            let back = rtp::Packet::unmarshal(&mut bytes.freeze()).expect("and re-parses");
            assert_eq!(back.payload, p.payload);
            assert_eq!(back.header.sequence_number, p.header.sequence_number);
        }
    }
}
