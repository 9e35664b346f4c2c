//! The WebRTC edge of the client (webrtc-rs 0.21.1): a peer connection that negotiates what a
//! blind SFU needs (Opus and VP8, the audio-level and dependency-descriptor extensions with
//! `extmap-allow-mixed`, transport-cc, mid/rid, NACK), local tracks that send the
//! [`media`](crate::media) module's packets as they are, and a reader that turns a remote
//! track's RTP into [`RemotePacket`]s. Every decision about packet contents is in `media`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};
use webrtc::rtp_transceiver::RtpSender;

use crate::error::ClientError;
use crate::media::{ExtIds, MediaKind, RtpOut};

pub use veil_rtc::{AUDIO_LEVEL_URI, DD_URI, MID_URI, OPUS_PT, RID_URI, VP8_PT};

fn rtc_err(what: &str) -> impl FnOnce(webrtc::error::Error) -> ClientError + '_ {
    move |e| ClientError::transport_by(what, e)
}

fn codec(kind: MediaKind) -> RTCRtpCodec {
    veil_rtc::codec(rtp_kind(kind))
}

/// The media engine every Veil peer uses ([`veil_rtc::media_engine`], the same the SFU
/// uses): Opus and VP8 only, plus the audio-level, mid and dependency-descriptor extensions
/// (the SFU reads DD and audio level; Chromium sends DD only if offered).
///
/// # Errors
/// [`ClientError::Transport`] if webrtc-rs refuses a registration.
pub fn media_engine() -> Result<MediaEngine, ClientError> {
    veil_rtc::media_engine().map_err(rtc_err("media engine"))
}

fn rtp_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

/// No ICE traffic for this long and the connection is `Disconnected` (webrtc-rs: 5 s).
pub const ICE_DISCONNECTED: Duration = Duration::from_secs(3);
/// Consent checks this often while the connection is idle (webrtc-rs: 2 s), so that an
/// idle but live connection never goes [`ICE_DISCONNECTED`] quiet.
pub const ICE_KEEPALIVE: Duration = Duration::from_secs(1);

/// A peer connection bound to `udp_addrs` (e.g. `["127.0.0.1:0"]`), with Veil's WebRTC profile
/// ([`veil_rtc`]): the default interceptors (NACK, RTCP reports, transport-cc feedback,
/// simulcast extensions), the key-frame request tap, ICE checks every 50 ms, and
/// [`ICE_DISCONNECTED`] / [`ICE_KEEPALIVE`].
///
/// # Errors
/// [`ClientError::Transport`].
pub async fn peer_connection(
    handler: Arc<dyn PeerConnectionEventHandler>,
    udp_addrs: Vec<String>,
) -> Result<Arc<dyn PeerConnection>, ClientError> {
    peer_connection_with(handler, udp_addrs, Vec::new()).await
}

/// [`peer_connection`], also gathering ICE-TCP candidates (RFC 6544) on `tcp_addrs`: a passive
/// one on each (a listener nobody in Veil connects to) and an active one, which connects to a
/// passive candidate of the SFU's handed to `add_ice_candidate` ([`passive_tcp_candidates`];
/// specs/sfu.md SFU-TCP-05). Empty `tcp_addrs`: UDP only.
///
/// # Errors
/// [`ClientError::Transport`].
pub async fn peer_connection_with(
    handler: Arc<dyn PeerConnectionEventHandler>,
    udp_addrs: Vec<String>,
    tcp_addrs: Vec<String>,
) -> Result<Arc<dyn PeerConnection>, ClientError> {
    let mut me = media_engine()?;
    // The defaults plus the key-frame request tap, so the SFU's PLI/FIR reach the publisher's
    // tracks (`LocalTrack::key_frame_requests`).
    let registry = veil_rtc::interceptors(&mut me).map_err(rtc_err("interceptors"))?;
    // A connection with no ICE answer for `ICE_DISCONNECTED` goes `Disconnected`, which the
    // SFU session takes for a lost link and reconnects (specs/sfu.md, "Reconnecting").
    let se = veil_rtc::setting_engine(
        webrtc::peer_connection::SettingEngineBuilder::new().with_ice_timeouts(
            Some(ICE_DISCONNECTED),
            None,
            Some(ICE_KEEPALIVE),
        ),
    );
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(se)
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .with_tcp_addrs(tcp_addrs)
        .build()
        .await
        .map_err(rtc_err("peer connection"))?;
    Ok(Arc::new(pc))
}

/// The passive ICE-TCP candidates of a session description (`a=candidate:… tcp … tcptype
/// passive`) of component 1, each once (a bundled description repeats its candidates in
/// every media section, webrtc-rs writes one for the muxed RTCP component too, and each one
/// handed over opens a stream), as `add_ice_candidate` takes them (SFU-TCP-05).
#[must_use]
pub fn passive_tcp_candidates(sdp: &str) -> Vec<RTCIceCandidateInit> {
    let mut out: Vec<RTCIceCandidateInit> = Vec::new();
    for c in sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|c| c.starts_with("candidate:"))
    {
        let f: Vec<&str> = c.split_ascii_whitespace().collect();
        // Component 1 only: with rtcp-mux, a component-2 line names the same port again.
        let passive = f.get(1) == Some(&"1")
            && f.get(2).is_some_and(|t| t.eq_ignore_ascii_case("tcp"))
            && f.windows(2).any(|w| w[0] == "tcptype" && w[1] == "passive");
        if passive && !out.iter().any(|o| o.candidate == c) {
            out.push(RTCIceCandidateInit {
                candidate: c.to_owned(),
                ..Default::default()
            });
        }
    }
    out
}

/// One outgoing track: a webrtc-rs RTP track with a fixed SSRC per encoding (one, or one per
/// simulcast layer).
#[derive(Clone)]
pub struct LocalTrack {
    track: Arc<TrackLocalStaticRTP>,
    kind: MediaKind,
    ssrcs: Vec<u32>,
}

impl core::fmt::Debug for LocalTrack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalTrack")
            .field("kind", &self.kind)
            .field("ssrcs", &self.ssrcs)
            .finish_non_exhaustive()
    }
}

impl LocalTrack {
    /// A track of `kind` named `id` in stream `stream`, sending as `ssrc`.
    #[must_use]
    pub fn new(kind: MediaKind, stream: &str, id: &str, ssrc: u32) -> Self {
        let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream.to_owned(),
            id.to_owned(),
            id.to_owned(),
            rtp_kind(kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: (kind == MediaKind::Video).then(|| RTCRtpRtxParameters {
                        ssrc: veil_rtc::rtx_ssrc(ssrc),
                    }),
                    ..Default::default()
                },
                codec: codec(kind),
                ..Default::default()
            }],
        ));
        Self {
            track: Arc::new(track),
            kind,
            ssrcs: vec![ssrc],
        }
    }

    /// A video track sent as simulcast layers, `(rid, ssrc)` each, lowest first (`q`, `h`,
    /// `f`, as browsers name them).
    #[must_use]
    pub fn simulcast(stream: &str, id: &str, layers: &[(&str, u32)]) -> Self {
        let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream.to_owned(),
            id.to_owned(),
            id.to_owned(),
            rtp_kind(MediaKind::Video),
            layers
                .iter()
                .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: (*rid).to_owned(),
                        ssrc: Some(*ssrc),
                        rtx: Some(RTCRtpRtxParameters {
                            ssrc: veil_rtc::rtx_ssrc(*ssrc),
                        }),
                        ..Default::default()
                    },
                    codec: codec(MediaKind::Video),
                    ..Default::default()
                })
                .collect(),
        ));
        Self {
            track: Arc::new(track),
            kind: MediaKind::Video,
            ssrcs: layers.iter().map(|(_, s)| *s).collect(),
        }
    }

    /// Encodings (simulcast layers) of this track.
    #[must_use]
    pub fn layers(&self) -> usize {
        self.ssrcs.len()
    }

    /// The track to add to a peer connection.
    #[must_use]
    pub fn track(&self) -> Arc<dyn TrackLocal> {
        self.track.clone()
    }

    /// The next key-frame request (PLI or FIR) the SFU sent about this track: the simulcast
    /// layer it names (0 without simulcast). `None` once the track is unbound for good. The
    /// publisher's encoder should answer with a key frame on that layer.
    pub async fn key_frame_request(&self) -> Option<usize> {
        use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use webrtc::media_stream::track_local::TrackLocalEvent;
        loop {
            let TrackLocalEvent::OnRtcpPacket(packets) = self.track.poll().await? else {
                continue;
            };
            for p in &packets {
                let any = p.as_any();
                let ssrcs: Vec<u32> = if let Some(pli) = any.downcast_ref::<PictureLossIndication>()
                {
                    vec![pli.media_ssrc]
                } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                    fir.fir.iter().map(|e| e.ssrc).collect()
                } else {
                    Vec::new()
                };
                if let Some(layer) = ssrcs
                    .iter()
                    .find_map(|s| self.ssrcs.iter().position(|o| o == s))
                {
                    return Some(layer);
                }
            }
        }
    }

    /// Send packets (payloads untouched; SSRC, payload type and extensions set here).
    ///
    /// # Errors
    /// [`ClientError::Transport`] if the connection is gone or a packet cannot be written.
    pub async fn send(&self, packets: &[RtpOut]) -> Result<(), ClientError> {
        self.send_layer(0, packets).await
    }

    /// Send packets on simulcast layer `layer` (its SSRC).
    ///
    /// # Errors
    /// As [`send`](Self::send); [`ClientError::Config`] for a layer the track does not have.
    pub async fn send_layer(&self, layer: usize, packets: &[RtpOut]) -> Result<(), ClientError> {
        let ssrc = *self.ssrcs.get(layer).ok_or_else(|| {
            ClientError::config(format!(
                "layer {layer} of a track with {} layers",
                self.ssrcs.len()
            ))
        })?;
        let pt = match self.kind {
            MediaKind::Audio => OPUS_PT,
            MediaKind::Video => VP8_PT,
        };
        for p in packets {
            self.track
                .write_rtp(to_rtp(p, ssrc, pt)?)
                .await
                .map_err(rtc_err("write RTP"))?;
        }
        Ok(())
    }
}

/// Build a webrtc-rs packet from `p`. The longest extension goes in first, so a dependency
/// descriptor with its template structure (often > 16 bytes) selects the two-byte header form
/// (RFC 8285), which then holds every other element too.
///
/// # Errors
/// [`ClientError::Transport`] for an extension webrtc-rs cannot encode.
pub fn to_rtp(p: &RtpOut, ssrc: u32, pt: u8) -> Result<rtc::rtp::Packet, ClientError> {
    let mut header = rtc::rtp::header::Header {
        version: 2,
        marker: p.marker,
        payload_type: pt,
        sequence_number: p.seq,
        timestamp: p.timestamp,
        ssrc,
        ..Default::default()
    };
    let mut exts: Vec<&(u8, Vec<u8>)> = p.extensions.iter().collect();
    exts.sort_by_key(|(_, d)| core::cmp::Reverse(d.len()));
    for (id, data) in exts {
        header
            .set_extension(*id, Bytes::copy_from_slice(data))
            .map_err(|e| ClientError::transport_by(format!("header extension {id}"), e))?;
    }
    Ok(rtc::rtp::Packet {
        header,
        payload: Bytes::copy_from_slice(&p.payload),
    })
}

/// The extension ids negotiated for a sender (after the answer is applied).
///
/// # Errors
/// [`ClientError::Transport`].
pub async fn negotiated_ext_ids(sender: &Arc<dyn RtpSender>) -> Result<ExtIds, ClientError> {
    let params = sender
        .get_parameters()
        .await
        .map_err(rtc_err("sender parameters"))?;
    let id = |uri: &str| {
        params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == uri)
            .and_then(|e| u8::try_from(e.id).ok())
    };
    Ok(ExtIds {
        audio_level: id(AUDIO_LEVEL_URI),
        dependency_descriptor: id(DD_URI),
        mid: id(MID_URI),
        rid: id(RID_URI),
    })
}

/// One received RTP packet, as the frame path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePacket {
    /// The SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Header extensions `(id, data)`.
    pub extensions: Vec<(u8, Vec<u8>)>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Forward every RTP packet of `track` to `tx` until the track ends or `tx` closes.
pub async fn read_track(track: Arc<dyn TrackRemote>, tx: mpsc::Sender<RemotePacket>) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                let pkt = RemotePacket {
                    ssrc: p.header.ssrc,
                    seq: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    marker: p.header.marker,
                    extensions: p
                        .header
                        .extensions
                        .iter()
                        .map(|e| (e.id, e.payload.to_vec()))
                        .collect(),
                    payload: p.payload.to_vec(),
                };
                if tx.send(pkt).await.is_err() {
                    return;
                }
            }
            TrackRemoteEvent::OnEnded => return,
            _ => {}
        }
    }
}

/// One received RTP stream, from webrtc-rs's getStats (`inbound-rtp`). Loss and jitter are in
/// [`ReceiveStats`](crate::media::ReceiveStats), computed per RFC 3550 as packets arrive:
/// webrtc-rs 0.21.1 fills its own only when it sends a receiver report, and its jitter there is
/// in RTP timestamp units, not seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundNetStats {
    /// The SSRC (the SFU's, for this subscription).
    pub ssrc: u32,
    /// The SFU's track name, once a packet of the stream went through the frame path.
    pub track: Option<String>,
    /// RTP packets received.
    pub packets_received: u64,
    /// NACKs sent for this stream.
    pub nack_count: u32,
}

/// One sent RTP stream (`outbound-rtp`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboundNetStats {
    /// The SSRC.
    pub ssrc: u32,
    /// The simulcast rid (empty without simulcast).
    pub rid: String,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Packets sent again after a NACK.
    pub retransmitted_packets: u64,
    /// Fraction lost in the SFU's last receiver report, once one arrived.
    pub fraction_lost: Option<f64>,
}

/// The connection's network statistics, like WebRTC's getStats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkStats {
    /// Round-trip time to the SFU: the selected ICE candidate pair's, from its STUN consent
    /// checks (webrtc-rs 0.21.1 does not derive one from receiver reports).
    pub round_trip_time: Option<Duration>,
    /// Streams received.
    pub inbound: Vec<InboundNetStats>,
    /// Streams sent.
    pub outbound: Vec<OutboundNetStats>,
}

fn seconds(s: f64) -> Option<Duration> {
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

/// Read `pc`'s statistics.
pub async fn network_stats(pc: &Arc<dyn PeerConnection>) -> NetworkStats {
    use webrtc::peer_connection::{RTCStatsReportEntry as S, StatsSelector};
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let mut out = NetworkStats::default();
    let mut remote: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for e in report.iter() {
        match e {
            S::IceCandidatePair(p) if p.nominated => {
                out.round_trip_time = seconds(p.current_round_trip_time).or(out.round_trip_time);
            }
            S::InboundRtp(s) => {
                let r = &s.received_rtp_stream_stats;
                out.inbound.push(InboundNetStats {
                    ssrc: r.rtp_stream_stats.ssrc,
                    track: None,
                    packets_received: r.packets_received,
                    nack_count: s.nack_count,
                });
            }
            S::OutboundRtp(s) => {
                let t = &s.sent_rtp_stream_stats;
                out.outbound.push(OutboundNetStats {
                    ssrc: t.rtp_stream_stats.ssrc,
                    rid: s.rid.clone(),
                    packets_sent: t.packets_sent,
                    bytes_sent: t.bytes_sent,
                    retransmitted_packets: s.retransmitted_packets_sent,
                    fraction_lost: None,
                });
            }
            S::RemoteInboundRtp(s) if s.round_trip_time_measurements > 0 => {
                remote.insert(
                    s.received_rtp_stream_stats.rtp_stream_stats.ssrc,
                    s.fraction_lost,
                );
            }
            _ => {}
        }
    }
    for o in &mut out.outbound {
        o.fraction_lost = remote.get(&o.ssrc).copied();
    }
    out.inbound.sort_by_key(|s| s.ssrc);
    out.outbound.sort_by_key(|s| s.ssrc);
    out
}

#[cfg(test)]
mod tests {
    use super::passive_tcp_candidates;

    /// SFU-TCP-05: the SFU's passive TCP candidate, once, although both media sections list
    /// it; UDP and active candidates are not handed over.
    #[test]
    fn the_answers_passive_tcp_candidate_is_taken_once() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=candidate:1 1 udp 2130706431 10.0.0.1 4000 typ host\r\n\
            a=candidate:2 1 tcp 1671430143 10.0.0.1 4443 typ host tcptype passive\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            a=candidate:1 1 udp 2130706431 10.0.0.1 4000 typ host\r\n\
            a=candidate:2 1 tcp 1671430143 10.0.0.1 4443 typ host tcptype passive\r\n\
            a=candidate:2 2 tcp 1671430143 10.0.0.1 4443 typ host tcptype passive\r\n\
            a=candidate:3 1 tcp 1671430143 10.0.0.1 9 typ host tcptype active\r\n";
        let got = passive_tcp_candidates(sdp);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].candidate,
            "candidate:2 1 tcp 1671430143 10.0.0.1 4443 typ host tcptype passive"
        );
    }
}
