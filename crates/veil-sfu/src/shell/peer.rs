//! How the SFU's webrtc-rs peer connections are built: codecs, header extensions, interceptors
//! and ICE timers. Veil peers (and the tests' peers) build theirs the same way, so every leg
//! negotiates the same set.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{
    Attribute, BandwidthEstimator, CongestionControlBuilder, EstimatorStats, Gcc, Interceptor,
    Packet, PacketReport, Slot, StreamInfo, TaggedPacket, TwccSenderBuilder,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, Registry,
    SettingEngineBuilder, register_default_interceptors,
};

use crate::error::SfuError;
use crate::routing::MediaKind;
use crate::shell::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI};

/// Payload type of Opus in the SFU's offers.
pub const OPUS_PT: u8 = 111;
/// Payload type of VP8 in the SFU's offers.
pub const VP8_PT: u8 = 96;
/// `audio/opus`.
pub const MIME_OPUS: &str = "audio/opus";
/// `video/VP8`.
pub const MIME_VP8: &str = "video/VP8";

/// The codec of `kind` as every Veil leg negotiates it (with the RTCP feedback the SFU answers
/// per hop: NACK, PLI, FIR, transport-cc).
#[must_use]
pub fn codec(kind: MediaKind) -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    match kind {
        MediaKind::Audio => RTCRtpCodec {
            mime_type: MIME_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![fb("transport-cc", "")],
        },
        MediaKind::Video => RTCRtpCodec {
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
        },
    }
}

fn rtp_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

/// Opus and VP8, plus audio level and mid (audio) and the dependency descriptor (video). The
/// default interceptors add mid, rid and repaired rid (video) and transport-cc (SFU-NEG-01). webrtc-rs puts
/// `a=extmap-allow-mixed` in every offer and echoes it in answers, so the two-byte form that
/// DD key frames need is allowed on every leg.
///
/// # Errors
/// [`SfuError::WebRtc`] if webrtc-rs refuses a registration.
pub fn media_engine() -> Result<MediaEngine, SfuError> {
    let mut me = MediaEngine::default();
    for (kind, pt) in [(MediaKind::Audio, OPUS_PT), (MediaKind::Video, VP8_PT)] {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec(kind),
                payload_type: pt,
            },
            rtp_kind(kind),
        )
        .map_err(SfuError::webrtc("register codec"))?;
    }
    // The default interceptors register mid for video only; audio gets it here, so that every
    // m-section can be demultiplexed by mid.
    for (uri, kind) in [
        (AUDIO_LEVEL_URI, MediaKind::Audio),
        (MID_URI, MediaKind::Audio),
        (DD_URI, MediaKind::Video),
    ] {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            rtp_kind(kind),
            None,
        )
        .map_err(SfuError::webrtc("register header extension"))?;
    }
    Ok(me)
}

/// The default interceptors (NACK generator and responder, RTCP reports, transport-cc feedback,
/// simulcast extensions) plus [`KeyFrameRequestTap`], registered into `me`.
///
/// # Errors
/// [`SfuError::WebRtc`].
pub fn interceptors(me: &mut MediaEngine) -> Result<Registry, SfuError> {
    let reg = register_default_interceptors(Registry::new(), me)
        .map_err(SfuError::webrtc("interceptors"))?;
    // Last in the chain, so every interceptor that reads RTCP has seen it first.
    Ok(reg.with(Slot::from(14_000), KeyFrameRequestTap::default()))
}

/// Where GCC starts on a subscriber leg, before any feedback, in bits per second. Above a
/// typical top layer, so that a subscriber starts on the layer it asked for and GCC backs off
/// from there if the path cannot carry it (SFU-BWE-01).
pub const ESTIMATE_INITIAL: f64 = 1_500_000.0;
/// GCC's floor on a subscriber leg (audio and the lowest layer still go out).
pub const ESTIMATE_MIN: f64 = 50_000.0;
/// GCC's ceiling on a subscriber leg.
pub const ESTIMATE_MAX: f64 = 20_000_000.0;

/// The send-side bandwidth estimate of one leg, as GCC last computed it from the remote's
/// transport-cc feedback (SFU-BWE-01). Cheap to clone; all clones read the same value.
#[derive(Debug, Clone, Default)]
pub struct Estimate(Arc<AtomicU64>);

impl Estimate {
    /// The estimate in bits per second, or None until the first feedback arrived (a leg whose
    /// remote sends no transport-cc feedback never has one).
    #[must_use]
    pub fn bits_per_second(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }
}

/// GCC, publishing its target into an [`Estimate`] the application reads. The estimator sits
/// inside webrtc-rs's interceptor chain, out of the application's reach, so this is the way out
/// (webrtc-rs's bandwidth-estimation example does the same).
struct PublishedGcc {
    gcc: Gcc,
    out: Estimate,
}

impl BandwidthEstimator for PublishedGcc {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        if !reports.is_empty() {
            let bps = self.gcc.target_bitrate().max(1.0) as u64;
            self.out.0.store(bps, Ordering::Relaxed);
        }
    }

    fn target_bitrate(&self) -> f64 {
        self.gcc.target_bitrate()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

/// The SFU's own chain: [`interceptors`] plus send-side congestion control on the leg
/// (SFU-BWE-01): the TWCC sender numbers every departing RTP packet with the transport-wide
/// sequence number, and the congestion-control interceptor keeps the send history, resolves the
/// remote's transport-cc feedback against it, and drives GCC, whose target goes to `estimate`.
///
/// **No pacer.** webrtc-rs's `configure_congestion_control` also installs a pacer that releases
/// packets at exactly GCC's target. The SFU does not: it cannot lower a layer's bitrate by
/// holding its packets (the publisher's encoder sets it), so a pacer below the forwarded rate
/// only builds a queue (up to 4,096 packets, seconds of delay) until GCC catches up. Its lever
/// is the layer choice (SFU-BWE-03). Forwarded packets leave as the publisher's own pacer
/// spaced them on the way in; a key frame leaves as the burst it arrived as.
///
/// # Errors
/// [`SfuError::WebRtc`].
pub fn sfu_interceptors(me: &mut MediaEngine, estimate: &Estimate) -> Result<Registry, SfuError> {
    let gcc = PublishedGcc {
        gcc: Gcc::new(ESTIMATE_INITIAL, ESTIMATE_MIN, ESTIMATE_MAX),
        out: estimate.clone(),
    };
    Ok(interceptors(me)?
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(gcc).build(),
        )
        .with(Slot::TwccSender, TwccSenderBuilder::new().build()))
}

/// ICE timers of a leg (SFU-LIVE-01): the agent marks the leg disconnected after
/// `silence` without any packet (a live peer sends STUN consent checks every `keepalive`), and
/// failed after a further `grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IceTimers {
    /// No packet at all for this long: disconnected.
    pub silence: Duration,
    /// Disconnected for this long: failed (the participant is removed).
    pub grace: Duration,
    /// Consent checks this often.
    pub keepalive: Duration,
}

/// The SFU's peer connection to one participant: Veil's codecs, extensions and interceptors,
/// with congestion control on what the SFU sends ([`sfu_interceptors`]), bound to `udp_addrs`
/// (e.g. `["127.0.0.1:0"]`), with no ICE servers: host candidates only. Returns the leg's
/// [`Estimate`] too.
///
/// # Errors
/// [`SfuError::WebRtc`].
pub async fn peer_connection(
    handler: Arc<dyn PeerConnectionEventHandler>,
    udp_addrs: Vec<String>,
    timers: IceTimers,
) -> Result<(Arc<dyn PeerConnection>, Estimate), SfuError> {
    let mut me = media_engine()?;
    let estimate = Estimate::default();
    let registry = sfu_interceptors(&mut me, &estimate)?;
    let se = SettingEngineBuilder::new()
        .with_ice_timeouts(
            Some(timers.silence),
            Some(timers.grace),
            Some(timers.keepalive),
        )
        // The answering side's first connectivity check waits one check interval: webrtc-rs's
        // 200 ms default was most of every join (BENCHMARKS.md, call bench). 50 ms × 30
        // attempts keeps the default's 1.5 s per candidate pair.
        .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(30))
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(se)
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .build()
        .await
        .map_err(SfuError::webrtc("peer connection"))?;
    Ok((Arc::new(pc), estimate))
}

/// Hands inbound PLI and FIR to the application (SFU-KF-03).
///
/// webrtc-rs 0.21.1 ends inbound RTCP at the end of the interceptor chain unless an interceptor
/// marks it `DeliverToApplication` (rtc-interceptor `noop.rs`). This one marks key-frame
/// requests, so they reach `TrackLocal::poll` of the track they name; the SFU answers them
/// itself. Other RTCP (reports, NACK, transport-cc feedback) stays with the interceptors that
/// act on it.
#[derive(Default)]
pub struct KeyFrameRequestTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_key_frame_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
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
