//! A client peer: a sans-I/O `rtc` peer connection built as the SDK builds its own, the media it
//! publishes, and what its application reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use veil_sfu::connection::peer::{self, OPUS_PT, VP8_PT};
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI};
use veil_sfu::edge::ConnId;
use veil_sfu::routing::{MediaKind, TrackId};
use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
use webrtc::peer_connection::SettingEngineBuilder;

use super::{Link, RIDS};

/// Extension ids one sender negotiated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids {
    pub mid: Option<u8>,
    pub rid: Option<u8>,
    pub dd: Option<u8>,
    pub audio_level: Option<u8>,
}

/// A track a peer sends.
#[derive(Debug)]
pub struct Sending {
    pub transceiver: RTCRtpTransceiverId,
    pub sender: RTCRtpSenderId,
    /// One SSRC per layer (one for audio).
    pub ssrcs: Vec<u32>,
    pub ids: Option<Ids>,
    pub mid: String,
}

/// What a peer publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub audio: bool,
    /// Simulcast video, three layers.
    pub video: bool,
}

impl Publish {
    /// Audio only.
    pub const AUDIO: Self = Self {
        audio: true,
        video: false,
    };
    /// Audio and simulcast video.
    pub const BOTH: Self = Self {
        audio: true,
        video: true,
    };
}

/// One packet a peer sent (its own view, before the SFU).
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Duration,
    pub ssrc: u32,
    pub key: bool,
    pub payload: Bytes,
}

/// One RTP packet a peer's application read.
#[derive(Debug, Clone)]
pub struct Got {
    pub at: Duration,
    /// The SFU's track name (`t<n>`).
    pub track: String,
    pub packet: rtp::Packet,
}

/// A key-frame request a peer's track heard.
#[derive(Debug, Clone)]
pub struct Pli {
    pub at: Duration,
    pub track: String,
    pub media_ssrc: u32,
}

/// A client: an `rtc` peer connection and what it did.
pub struct Client {
    pub name: String,
    pub addr: SocketAddr,
    pub pc: RTCPeerConnection,
    pub conn: Option<ConnId>,
    pub state: RTCPeerConnectionState,
    /// Driven by the harness at all (false: its process is gone; nothing it would send is sent).
    pub alive: bool,
    /// Answer the SFU's offers as they come.
    pub auto_answer: bool,
    /// SFU offers answered.
    pub answered: usize,
    pub audio: Option<Sending>,
    pub video: Option<Sending>,
    /// Sending media (frames every [`FRAME`]).
    pub sending: bool,
    /// A key frame on every layer every this many frames (0: only when asked).
    pub key_every: u32,
    /// Answer a PLI with a key frame on that layer's next frame.
    pub answer_plis: bool,
    /// mid/rid ride on this many first frames, and on every key frame (as the SDK's
    /// `TrackSender` sends them: 32 packets, and key frames).
    pub announce_frames: u32,
    /// Send every DD cut to its first two bytes (an unreadable extension, SFU-SEC-02).
    pub truncate_dd: bool,
    frame: u32,
    pub(super) next_frame: Duration,
    key_pending: [bool; 3],
    pub sent: Vec<Sent>,
    pub got: Vec<Got>,
    pub plis: Vec<Pli>,
    /// Remote tracks opened: track name → (receiver, SSRC).
    pub opened: HashMap<String, (RTCRtpReceiverId, u32)>,
    /// Client → SFU and SFU → client.
    pub up: Link,
    pub down: Link,
}

/// A payload standing in for SFrame ciphertext: the layer's rid byte (`a` for audio), the frame
/// number, then bytes from a generator seeded by both.
pub fn payload(tag: u8, frame: u32, len: usize) -> Bytes {
    let mut x = (u64::from(frame) << 8 | u64::from(tag)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    v.push(tag);
    v.extend_from_slice(&frame.to_be_bytes());
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v.into()
}

/// The DD of a one-packet frame of a one-layer stream: a key frame (with the structure) or a
/// delta frame. `width` tells the layers' structures apart.
pub fn dd(frame_number: u16, key: bool, width: u32) -> Bytes {
    let s = Arc::new(TemplateStructure::single_layer(width, width * 9 / 16, 1));
    let d = DependencyDescriptor::new(true, true, u8::from(!key), frame_number, &s).unwrap();
    let d = if key { d.with_structure(s.clone()) } else { d };
    let mut buf = [0u8; 128];
    let n = d.write(&s, &mut buf).unwrap();
    Bytes::copy_from_slice(&buf[..n])
}

/// The SSRC of layer `l` of peer `i`'s video, and of its audio.
pub fn video_ssrc(i: usize, l: usize) -> u32 {
    0x0010_0000 * (i as u32 + 1) + 2 * l as u32 + 0x100
}
pub fn audio_ssrc(i: usize) -> u32 {
    0x0010_0000 * (i as u32 + 1) + 1
}

fn sendonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        ..Default::default()
    })
}

impl Client {
    /// Peer `i` at its own made-up address, publishing `what` with `audio_ssrc`/`video_ssrc`.
    pub(super) fn new(i: usize, name: &str, what: Publish, now: Instant) -> Self {
        Self::with_ssrcs(i, name, what, now, audio_ssrc(i), video_ssrc(i, 0))
    }

    pub(super) fn with_ssrcs(
        i: usize,
        name: &str,
        what: Publish,
        now: Instant,
        audio: u32,
        video0: u32,
    ) -> Self {
        let addr = SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, 10 + i as u8)),
            5000,
        );
        let mut me = peer::media_engine().unwrap();
        let registry = peer::interceptors(&mut me).unwrap();
        let se = SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled);
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_setting_engine(veil_rtc::setting_engine(se))
            .with_interceptor_registry(registry)
            .build(now)
            .unwrap();
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json().unwrap())
            .unwrap();
        let audio = what.audio.then(|| {
            let track = MediaStreamTrack::new(
                format!("{name}-stream"),
                "mic".to_owned(),
                "mic".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(audio),
                        ..Default::default()
                    },
                    codec: peer::codec(MediaKind::Audio),
                    ..Default::default()
                }],
            );
            let t = pc.add_transceiver_from_track(track, sendonly()).unwrap();
            Sending {
                transceiver: t,
                sender: RTCRtpSenderId::from(t),
                ssrcs: vec![audio],
                ids: None,
                mid: String::new(),
            }
        });
        let video = what.video.then(|| {
            let ssrcs: Vec<u32> = (0..3).map(|l| video0 + 2 * l).collect();
            let track = MediaStreamTrack::new(
                format!("{name}-stream"),
                "cam".to_owned(),
                "cam".to_owned(),
                RtpCodecKind::Video,
                RIDS.iter()
                    .zip(&ssrcs)
                    .map(|(rid, &ssrc)| RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            rid: (*rid).to_owned(),
                            ssrc: Some(ssrc),
                            rtx: Some(RTCRtpRtxParameters {
                                ssrc: veil_rtc::rtx_ssrc(ssrc),
                            }),
                            ..Default::default()
                        },
                        codec: peer::codec(MediaKind::Video),
                        ..Default::default()
                    })
                    .collect(),
            );
            let t = pc.add_transceiver_from_track(track, sendonly()).unwrap();
            Sending {
                transceiver: t,
                sender: RTCRtpSenderId::from(t),
                ssrcs,
                ids: None,
                mid: String::new(),
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            pc,
            conn: None,
            state: RTCPeerConnectionState::New,
            alive: true,
            auto_answer: true,
            answered: 0,
            audio,
            video,
            sending: false,
            key_every: 0,
            answer_plis: true,
            announce_frames: 32,
            truncate_dd: false,
            frame: 0,
            next_frame: Duration::ZERO,
            key_pending: [true; 3],
            sent: Vec::new(),
            got: Vec::new(),
            plis: Vec::new(),
            opened: HashMap::new(),
            up: Link::default(),
            down: Link::default(),
        }
    }

    /// Its offer to join with.
    pub(super) fn offer(&mut self, now: Instant) -> String {
        let o = self.pc.create_offer(None).unwrap();
        self.pc.set_local_description(now, o).unwrap();
        self.pc.local_description().unwrap().sdp
    }

    /// The mid and the extension ids a sender negotiated (once the answer is in).
    fn learn(pc: &mut RTCPeerConnection, s: &mut Sending) {
        if s.ids.is_some() {
            return;
        }
        let mut sender = pc.rtp_sender(s.sender).unwrap();
        let p = &sender.get_parameters().rtp_parameters;
        let id = |uri: &str| {
            p.header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .and_then(|h| u8::try_from(h.id).ok())
        };
        let ids = Ids {
            mid: id(MID_URI),
            rid: id(RID_URI),
            dd: id(DD_URI),
            audio_level: id(AUDIO_LEVEL_URI),
        };
        s.mid = pc
            .rtp_transceiver(s.transceiver)
            .and_then(|t| t.mid().clone())
            .unwrap_or_default();
        s.ids = Some(ids);
    }

    /// Whether it is connected.
    pub fn connected(&self) -> bool {
        self.state == RTCPeerConnectionState::Connected
    }

    /// Packets its application read on the SFU's track `track`.
    pub fn got_on(&self, track: TrackId) -> Vec<&Got> {
        let name = veil_sfu::edge::track_name(track);
        self.got.iter().filter(|g| g.track == name).collect()
    }

    /// Ask for a key frame on the SFU's track `track` (a PLI on its receiver).
    pub fn send_pli(&mut self, now: Instant, track: TrackId) {
        let (receiver, ssrc) = self.opened[&veil_sfu::edge::track_name(track)];
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        self.pc
            .rtp_receiver(receiver)
            .unwrap()
            .write_rtcp(now, vec![Box::new(pli)])
            .unwrap();
    }

    /// Send one frame: an audio packet, and a packet on each video layer.
    pub(super) fn send_frame(&mut self, now: Instant, at: Duration) {
        let n = self.frame;
        self.frame += 1;
        let announce = n < self.announce_frames;
        if let Some(a) = &mut self.audio {
            Self::learn(&mut self.pc, a);
            let ids = a.ids.unwrap();
            let mut header = rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: n as u16,
                timestamp: 960 * n,
                ssrc: a.ssrcs[0],
                ..Default::default()
            };
            // Voice, -30 dBov: never silence (SFU-DTX-01).
            header
                .set_extension(ids.audio_level.unwrap(), Bytes::from_static(&[0x80 | 30]))
                .unwrap();
            if announce && let Some(mid) = ids.mid {
                header
                    .set_extension(mid, Bytes::from(a.mid.clone()))
                    .unwrap();
            }
            let body = payload(b'a', n, 80);
            let p = rtp::Packet {
                header,
                payload: body.clone(),
            };
            self.pc
                .rtp_sender(a.sender)
                .unwrap()
                .write_rtp(now, p)
                .unwrap();
            self.sent.push(Sent {
                at,
                ssrc: a.ssrcs[0],
                key: false,
                payload: body,
            });
        }
        if let Some(v) = &mut self.video {
            Self::learn(&mut self.pc, v);
            let ids = v.ids.unwrap();
            for (l, rid) in RIDS.iter().enumerate() {
                let key =
                    self.key_pending[l] || (self.key_every > 0 && n.is_multiple_of(self.key_every));
                self.key_pending[l] = false;
                let seq = (n as u16).wrapping_add(1000 * l as u16);
                let mut header = rtp::header::Header {
                    version: 2,
                    marker: true,
                    payload_type: VP8_PT,
                    sequence_number: seq,
                    timestamp: 1800 * n,
                    ssrc: v.ssrcs[l],
                    ..Default::default()
                };
                // One frame counter across layers, as Chromium numbers them.
                let frame = (3 * n + l as u32) as u16;
                // Longest first: a key frame's DD (> 16 bytes) selects the two-byte form.
                let mut d = dd(frame, key, 320 << l);
                if self.truncate_dd {
                    d.truncate(2);
                }
                header.set_extension(ids.dd.unwrap(), d).unwrap();
                if announce || key {
                    header
                        .set_extension(ids.mid.unwrap(), Bytes::from(v.mid.clone()))
                        .unwrap();
                    header
                        .set_extension(ids.rid.unwrap(), Bytes::from(*rid))
                        .unwrap();
                }
                let body = payload(rid.as_bytes()[0], n, 200 + 100 * l);
                let p = rtp::Packet {
                    header,
                    payload: body.clone(),
                };
                self.pc
                    .rtp_sender(v.sender)
                    .unwrap()
                    .write_rtp(now, p)
                    .unwrap();
                self.sent.push(Sent {
                    at,
                    ssrc: v.ssrcs[l],
                    key,
                    payload: body,
                });
            }
        }
    }

    /// Read what its connection has for the application.
    pub(super) fn poll(&mut self, at: Duration) {
        while let Some(ev) = self.pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => self.state = s,
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.opened
                        .insert(init.track_id, (init.receiver_id, init.ssrc));
                }
                _ => {}
            }
        }
        while let Some(m) = self.pc.poll_read() {
            match m.message {
                RTCMessage::RtpPacket(track, packet) => self.got.push(Got { at, track, packet }),
                RTCMessage::RtcpPacket(track, packets) => {
                    for p in packets {
                        let Some(pli) = p.as_any().downcast_ref::<PictureLossIndication>() else {
                            continue;
                        };
                        self.plis.push(Pli {
                            at,
                            track: track.clone(),
                            media_ssrc: pli.media_ssrc,
                        });
                        if self.answer_plis
                            && let Some(l) = self
                                .video
                                .as_ref()
                                .and_then(|v| v.ssrcs.iter().position(|&s| s == pli.media_ssrc))
                        {
                            self.key_pending[l] = true;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
