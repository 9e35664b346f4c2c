//! How the SFU's connections are built: codecs, header extensions, interceptors (with
//! congestion control on what the SFU sends) and ICE timers. Veil peers (and the tests' peers)
//! build theirs the same way, so every connection negotiates the same set.

use std::sync::Arc;
use std::time::Duration;

use rtc::interceptor::{CongestionControlBuilder, Slot, TwccSenderBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use webrtc::peer_connection::{MediaEngine, Registry};

use crate::error::SfuError;
use crate::routing::MediaKind;

pub use super::estimator::Signals;
use super::estimator::{ProbingGcc, Published};
use veil_rtc::RtxInterceptor;
use veil_rtc::rtx::{CountRtx, ProbeLink, RtxObserver};
pub use veil_rtc::{KeyFrameRequestTap, MIME_OPUS, MIME_VP8, OPUS_PT, VP8_PT};

/// The codec of `kind` as every Veil connection negotiates it ([`veil_rtc::codec`]).
#[must_use]
pub fn codec(kind: MediaKind) -> RTCRtpCodec {
    veil_rtc::codec(rtp_kind(kind))
}

pub(crate) fn rtp_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

/// Veil's media engine ([`veil_rtc::media_engine`]): Opus and VP8, audio level and mid
/// (audio), the dependency descriptor (video); the default interceptors add mid, rid and
/// repaired rid (video) and transport-cc (SFU-NEG-01). webrtc-rs puts `a=extmap-allow-mixed` in
/// every offer and echoes it in answers, so the two-byte form that DD key frames need is
/// allowed on every connection.
///
/// # Errors
/// [`SfuError::WebRtc`] if webrtc-rs refuses a registration.
pub fn media_engine() -> Result<MediaEngine, SfuError> {
    veil_rtc::media_engine().map_err(SfuError::webrtc("media engine"))
}

/// The default interceptors plus [`KeyFrameRequestTap`] ([`veil_rtc::interceptors`]),
/// registered into `me`.
///
/// # Errors
/// [`SfuError::WebRtc`].
pub fn interceptors(me: &mut MediaEngine) -> Result<Registry, SfuError> {
    veil_rtc::interceptors(me).map_err(SfuError::webrtc("interceptors"))
}

/// Where GCC starts on a subscriber's connection, before any feedback, in bits per second. Above a
/// typical top layer, so that a subscriber starts on the layer it asked for and GCC backs off
/// from there if the path cannot carry it (SFU-BWE-01).
pub const ESTIMATE_INITIAL: f64 = 1_500_000.0;
/// GCC's floor on a subscriber's connection (audio and the lowest layer still go out).
pub const ESTIMATE_MIN: f64 = 50_000.0;
/// GCC's ceiling on a subscriber's connection.
pub const ESTIMATE_MAX: f64 = 20_000_000.0;

/// The send-side bandwidth estimate of one connection, as GCC last computed it from the remote's
/// transport-cc feedback (SFU-BWE-01), with what moved it ([`Signals`]), and the way probe
/// requests reach the connection's RTX interceptor (SFU-BWE-06). Cheap to clone; all clones
/// read the same value.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    published: Published,
    probes: ProbeLink,
}

impl Estimate {
    /// The estimate in bits per second, or None until the first feedback arrived (a connection
    /// whose remote sends no transport-cc feedback never has one).
    #[must_use]
    pub fn bits_per_second(&self) -> Option<u64> {
        self.published.get().bps
    }

    /// Everything the estimator last published.
    #[must_use]
    pub fn signals(&self) -> Signals {
        self.published.get()
    }

    /// Where probe requests for this connection go.
    #[must_use]
    pub fn probes(&self) -> &ProbeLink {
        &self.probes
    }
}

/// The SFU's own chain: [`interceptors`] (its RTX interceptor reporting to `rtx`, and sending
/// the probes `estimate` asks for, SFU-BWE-06) plus send-side congestion control on the
/// connection (SFU-BWE-01, SFU-BWE-07: GCC moved up by probe results): the TWCC sender numbers every departing RTP packet with the transport-wide
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
pub fn sfu_interceptors(
    me: &mut MediaEngine,
    estimate: &Estimate,
    rtx: Arc<dyn RtxObserver>,
) -> Result<Registry, SfuError> {
    let gcc = ProbingGcc::new(
        ESTIMATE_INITIAL,
        ESTIMATE_MIN,
        ESTIMATE_MAX,
        estimate.probes.clone(),
        estimate.published.clone(),
    );
    let rtx = RtxInterceptor::observed(rtx).with_probes(estimate.probes.clone());
    Ok(veil_rtc::interceptors_with(me, rtx)
        .map_err(SfuError::webrtc("interceptors"))?
        // Both bind each stream's RTX SSRC too, so that retransmissions are numbered and
        // counted by GCC (SFU-BWE-05).
        .with(
            Slot::CongestionControl,
            CountRtx(CongestionControlBuilder::new(gcc).build()),
        )
        .with(Slot::TwccSender, CountRtx(TwccSenderBuilder::new().build())))
}

/// ICE timers of a connection (SFU-LIVE-01): the agent marks the connection disconnected after
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
