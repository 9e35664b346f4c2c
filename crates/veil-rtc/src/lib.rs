//! Veil's WebRTC profile on webrtc-rs 0.21.1: what every connection between a Veil client and the
//! blind SFU negotiates, in one place, so both ends agree by construction.
//!
//! - **Codecs:** Opus (PT 111) and VP8 (PT 96), with the RTCP feedback each hop answers: NACK,
//!   PLI, FIR and transport-cc; VP8's retransmissions go as RTX (PT 97, RFC 4588).
//! - **Header extensions:** audio level and mid on audio, the AV1 dependency descriptor on
//!   video; webrtc-rs's default interceptors add mid, rid, repaired rid and transport-cc.
//!   webrtc-rs offers `extmap-allow-mixed`, so the two-byte form DD key frames need is allowed.
//! - **Interceptors:** the defaults (NACK generator, RTCP reports, transport-cc feedback,
//!   simulcast extensions) plus [`KeyFrameRequestTap`], which hands PLI and FIR to the
//!   application (webrtc-rs ends all other inbound RTCP in its chain), and [`RtxInterceptor`],
//!   which completes webrtc-rs's RTX and answers NACKs in place of its responder ([`rtx`]).
//!   The transport-cc receiver runs inside the [`RtxInterceptor`], wire-ward of the packets it
//!   drops; the others run as one [`Bundle`], so that an outbound packet is handed over once
//!   rather than once per interceptor ([`bundle`]).
//! - **ICE:** connectivity checks every 50 ms ([`setting_engine`]).
//!
//! It holds no key: the SFU links it.
//!
//! ```
//! use veil_rtc::{interceptors, media_engine};
//!
//! let mut me = media_engine().unwrap();
//! let registry = interceptors(&mut me).unwrap();
//! # let _ = registry;
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod rtx;
pub use bundle::Bundle;
pub use rtx::RtxInterceptor;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::peer_connection::{
    MediaEngine, Registry, SettingEngine, SettingEngineBuilder,
    configure_simulcast_extension_headers,
};

/// RFC 6464 audio level.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// The AV1 dependency descriptor.
pub const DD_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
/// The transceiver's mid (RFC 9143).
pub const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// The simulcast layer's rid (RFC 8852).
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// The repaired stream's rid (RFC 8852).
pub const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// Transport-wide sequence numbers for transport-cc feedback.
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Payload type of Opus.
pub const OPUS_PT: u8 = 111;
/// Payload type of VP8.
pub const VP8_PT: u8 = 96;
/// `audio/opus`.
pub const MIME_OPUS: &str = "audio/opus";
/// `video/VP8`.
pub const MIME_VP8: &str = "video/VP8";
/// Payload type of VP8's retransmissions (RFC 4588 `video/rtx`, `apt=96`), the number Chromium
/// uses too.
pub const RTX_PT: u8 = 97;
/// `video/rtx`.
pub const MIME_RTX: &str = "video/rtx";

/// The SSRC of a video stream's retransmissions: its own with the top bit flipped. Veil
/// clients number their streams densely (simulcast layers two apart) and the SFU checks its
/// picks against both, so this never lands on another stream's SSRC.
#[must_use]
pub const fn rtx_ssrc(primary: u32) -> u32 {
    primary ^ 0x8000_0000
}

/// The RTX codec that repairs VP8 (`apt` = [`VP8_PT`]).
#[must_use]
pub fn rtx_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_RTX.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: format!("apt={VP8_PT}"),
        rtcp_feedback: Vec::new(),
    }
}

/// The codec of `kind` as every Veil connection negotiates it.
#[must_use]
pub fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    if kind == RtpCodecKind::Audio {
        RTCRtpCodec {
            mime_type: MIME_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![fb("transport-cc", "")],
        }
    } else {
        RTCRtpCodec {
            mime_type: MIME_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![
                fb("nack", ""),
                fb("nack", "pli"),
                fb("ccm", "fir"),
                fb("transport-cc", ""),
            ],
        }
    }
}

/// Opus and VP8, plus audio level and mid (audio) and the dependency descriptor (video). The
/// default interceptors ([`interceptors`]) add mid, rid and repaired rid (video) and
/// transport-cc.
///
/// # Errors
/// webrtc-rs's error if it refuses a registration.
pub fn media_engine() -> Result<MediaEngine, webrtc::error::Error> {
    let mut me = MediaEngine::default();
    for (kind, pt) in [
        (RtpCodecKind::Audio, OPUS_PT),
        (RtpCodecKind::Video, VP8_PT),
    ] {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec(kind),
                payload_type: pt,
            },
            kind,
        )?;
    }
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: rtx_codec(),
            payload_type: RTX_PT,
        },
        RtpCodecKind::Video,
    )?;
    // The default interceptors register mid for video only; audio gets it here, so that every
    // m-section can be demultiplexed by mid.
    for (uri, kind) in [
        (AUDIO_LEVEL_URI, RtpCodecKind::Audio),
        (MID_URI, RtpCodecKind::Audio),
        (DD_URI, RtpCodecKind::Video),
    ] {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(me)
}

/// webrtc-rs's default interceptors (NACK generator, RTCP reports, transport-cc feedback,
/// simulcast extensions) and [`KeyFrameRequestTap`], as one [`Bundle`], and [`RtxInterceptor`],
/// registered into `me`. The [`RtxInterceptor`] takes the place of webrtc-rs's NACK responder:
/// it answers NACKs from its own history ([`rtx::RtxResponder`]); and it holds the transport-cc
/// receiver, so that the probes and redundant retransmissions it drops are still reported as
/// arrived (SFU-RTX-08).
///
/// # Errors
/// webrtc-rs's error if it refuses a registration.
pub fn interceptors(me: &mut MediaEngine) -> Result<Registry, webrtc::error::Error> {
    interceptors_with(me, RtxInterceptor::default())
}

/// [`interceptors`] with this [`RtxInterceptor`] (e.g. one with an observer).
///
/// # Errors
/// webrtc-rs's error if it refuses a registration.
pub fn interceptors_with(
    me: &mut MediaEngine,
    rtx: RtxInterceptor,
) -> Result<Registry, webrtc::error::Error> {
    // webrtc-rs's defaults (`register_default_interceptors`: `configure_nack`,
    // `configure_simulcast_extension_headers`, `configure_twcc_receiver_only`,
    // `configure_rtcp_reports`), registered into `me` as they do, with two changes:
    // - no NACK responder: the RtxInterceptor keeps the connection's only retransmission history
    //   and answers NACKs itself (rtx::responder);
    // - the NACK generator and both reports run in one Bundle with the KeyFrameRequestTap, so
    //   that an outbound packet is handed over once, not four times;
    // - the transport-cc receiver runs inside the RtxInterceptor, wire-ward of the probes and
    //   redundant retransmissions it drops, so that every arrival is in the feedback (SFU-RTX-08).
    for parameter in ["", "pli"] {
        me.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    configure_simulcast_extension_headers(me)?;
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        me.register_feedback(
            RTCPFeedback {
                typ: "transport-cc".to_owned(),
                parameter: String::new(),
            },
            kind,
        );
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: TRANSPORT_CC_URI.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(Registry::new()
        .with(RtxInterceptor::slot(), rtx.with_transport_cc())
        .with(bundle::BUNDLE_SLOT, Bundle::default()))
}

/// How often ICE connectivity checks go out while a connection is set up. webrtc-rs's default is
/// 200 ms, and the answering side's first check waits for it: every join paid ~200 ms
/// (BENCHMARKS.md, the call bench).
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it fails: 30 × 50 ms, the same 1.5 s as webrtc-rs's
/// default 7 × 200 ms.
pub const ICE_CHECK_ATTEMPTS: u16 = 30;

/// A setting engine with Veil's ICE checks, starting from `base` (e.g. with timeouts set).
#[must_use]
pub fn setting_engine(base: SettingEngineBuilder) -> SettingEngine {
    base.with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_CHECK_ATTEMPTS))
        .build()
}

/// Whether `p` asks for a key frame (PLI or FIR).
#[must_use]
pub fn is_key_frame_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Hands inbound PLI and FIR to the application.
///
/// webrtc-rs 0.21.1 ends inbound RTCP at the end of the interceptor chain unless an interceptor
/// marks it `DeliverToApplication` (rtc-interceptor `noop.rs`). This one marks key-frame
/// requests, so they reach `TrackLocal::poll` of the track they name: the SFU answers its
/// subscribers' itself, a client's encoder produces a key frame. Other RTCP (reports, NACK,
/// transport-cc feedback) stays with the interceptors that act on it.
#[derive(Default)]
pub struct KeyFrameRequestTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyFrameRequestTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            packets.retain(|p| is_key_frame_request(p.as_ref()));
            if packets.is_empty() {
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyFrameRequestTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::Slot;
    use rtc::rtcp::receiver_report::ReceiverReport;

    #[test]
    fn only_key_frame_requests_count_as_such() {
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        };
        assert!(is_key_frame_request(&pli));
        assert!(is_key_frame_request(&FullIntraRequest::default()));
        assert!(!is_key_frame_request(&ReceiverReport::default()));
    }

    /// The RtxInterceptor answers NACKs in the responder's slot, and webrtc-rs's responder,
    /// which kept a second copy of every packet, is not in the chain; the rest of webrtc-rs's
    /// defaults run in one Bundle.
    #[test]
    fn the_chain_is_the_rtx_interceptor_and_the_bundle() {
        let mut me = media_engine().unwrap();
        let slots = interceptors(&mut me).unwrap().slots();
        assert_eq!(
            slots,
            [
                (Slot::NackResponder, "RtxInterceptor".to_owned()),
                (Slot::NackGenerator, "Bundle".to_owned()),
            ]
        );
    }

    #[test]
    fn both_codecs_and_the_profiles_extensions_register() {
        let mut me = media_engine().unwrap();
        interceptors(&mut me).unwrap();
        assert_eq!(codec(RtpCodecKind::Audio).clock_rate, 48_000);
        assert_eq!(codec(RtpCodecKind::Video).mime_type, MIME_VP8);
        assert!(
            codec(RtpCodecKind::Video)
                .rtcp_feedback
                .iter()
                .any(|f| f.typ == "nack" && f.parameter == "pli")
        );
    }
}
