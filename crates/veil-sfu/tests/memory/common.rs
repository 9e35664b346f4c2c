//! The in-memory network: one [`EdgeRooms`] and sans-I/O `rtc` client peers, driven by virtual
//! time (str0m's `tests/common.rs` `progress()` is the model).
//!
//! - **Clock.** `base` (read once) plus `elapsed`, which only [`Net::progress`] advances: to the
//!   earliest `poll_timeout` of the SFU and every peer, or a peer's next media frame, at most
//!   [`MAX_STEP`] and at least [`MIN_STEP`] on. Nothing sleeps and nothing reads the clock again.
//! - **Wire.** A datagram goes from the sender's `poll_transmit`/`poll_write` straight into the
//!   receiver's `handle_datagram`/`handle_read`, in order, through the link's [`Loss`] model (one
//!   per direction per peer). Every datagram moved in one turn is delivered before time moves.
//! - **Signalling.** Direct calls on [`EdgeRooms`] (`join`, `subscribe`, `answer`, `set_layer`,
//!   `remove`), as `edge/serve.rs` makes them; the SFU's offers are answered as they come
//!   ([`Client::auto_answer`]).
//! - **Media.** Each peer publishes what the native SDK does ([`Publish`]): Opus audio with the
//!   audio level, and VP8 simulcast q/h/f with a DD on every packet, mid/rid on the first
//!   frames. Payloads are opaque bytes that name their layer and frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use rand::rngs::StdRng;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
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
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use veil_sfu::SfuConfig;
use veil_sfu::connection::peer::{self, OPUS_PT, VP8_PT};
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI};
use veil_sfu::edge::{ConnId, Counters, EdgeRoomEvent, EdgeRooms, Observation};
use veil_sfu::routing::{MediaKind, TrackId};
use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
use webrtc::peer_connection::SettingEngineBuilder;

/// The SFU's one address (its only ICE candidate).
pub const SFU: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    3478,
);
/// The edge's seed (ICE credentials): fixed, so runs are alike.
pub const SEED: [u8; 32] = [7; 32];
/// One video frame (one packet per layer) and one audio packet this often.
pub const FRAME: Duration = Duration::from_millis(20);
/// Time never jumps further than this in one [`Net::progress`].
pub const MAX_STEP: Duration = Duration::from_millis(50);
/// Nor less than this: a timer rtc keeps due cannot hold time still.
pub const MIN_STEP: Duration = Duration::from_millis(1);
/// Simulcast rids, lowest first, as the SDK sends them.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// The SFU's config for these tests: the defaults, with shorter ICE timers (virtual seconds cost
/// nothing, but a departure test reads better with them).
pub fn config() -> SfuConfig {
    SfuConfig {
        silence_timeout: Duration::from_secs(3),
        departure_grace: Duration::from_secs(1),
        ..SfuConfig::default()
    }
}

/// Which RTP packets a link loses.
#[derive(Debug)]
pub enum Loss {
    /// None.
    None,
    /// Every `n`th RTP packet of payload type `pt` (counted per link).
    EveryNth { pt: u8, n: u64 },
    /// Each RTP packet of payload type `pt` with probability `percent`/100, from a seeded
    /// generator.
    Random {
        pt: u8,
        percent: u32,
        rng: Box<StdRng>,
    },
}

/// One direction between a peer and the SFU.
#[derive(Debug)]
pub struct Link {
    pub loss: Loss,
    /// Whether anything passes at all (a cut cable: nothing in either direction is delivered).
    pub up: bool,
    /// RTP packets of the loss's payload type seen, and (SSRC, sequence number) of those lost.
    pub seen: u64,
    pub lost: Vec<(u32, u16)>,
    /// RTP packets that passed, by payload type, with their clear header's (SSRC, sequence).
    pub passed: HashMap<u8, Vec<(u32, u16)>>,
    /// Datagrams that passed.
    pub datagrams: u64,
    /// When the last STUN message passed (a consent check, on a peer's uplink).
    pub last_stun: Option<Duration>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            loss: Loss::None,
            up: true,
            seen: 0,
            lost: Vec::new(),
            passed: HashMap::new(),
            datagrams: 0,
            last_stun: None,
        }
    }
}

/// RFC 7983: RTP or RTCP; RTCP packet types are 192..=223. SRTP leaves the header clear.
fn rtp_header(d: &[u8]) -> Option<(u8, u32, u16)> {
    if d.len() < 12 || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
        return None;
    }
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((d[1] & 0x7f, ssrc, u16::from_be_bytes([d[2], d[3]])))
}

impl Link {
    /// Whether `d`, at `at`, gets through.
    fn pass(&mut self, d: &[u8], at: Duration) -> bool {
        if !self.up {
            return false;
        }
        // RFC 7983: 0..=3 is STUN.
        if d.first().is_some_and(|b| *b < 4) {
            self.last_stun = Some(at);
        }
        if let Some((pt, ssrc, seq)) = rtp_header(d) {
            let lose = match &mut self.loss {
                Loss::None => false,
                Loss::EveryNth { pt: p, n } if *p == pt => {
                    self.seen += 1;
                    self.seen.is_multiple_of(*n)
                }
                Loss::Random {
                    pt: p,
                    percent,
                    rng,
                } if *p == pt => {
                    self.seen += 1;
                    rng.random_range(0..100) < *percent
                }
                _ => false,
            };
            if lose {
                self.lost.push((ssrc, seq));
                return false;
            }
            self.passed.entry(pt).or_default().push((ssrc, seq));
        }
        self.datagrams += 1;
        true
    }

    /// RTP packets of payload type `pt` that passed.
    pub fn passed(&self, pt: u8) -> &[(u32, u16)] {
        self.passed.get(&pt).map_or(&[], Vec::as_slice)
    }
}

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
    next_frame: Duration,
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
    fn new(i: usize, name: &str, what: Publish, now: Instant) -> Self {
        Self::with_ssrcs(i, name, what, now, audio_ssrc(i), video_ssrc(i, 0))
    }

    fn with_ssrcs(
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
    fn offer(&mut self, now: Instant) -> String {
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
    fn send_frame(&mut self, now: Instant, at: Duration) {
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
    fn poll(&mut self, at: Duration) {
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

/// Add `b` to `a`, field by field.
pub fn add(a: &mut Counters, b: &Counters) {
    for i in 0..2 {
        a.received[i] += b.received[i];
        a.forwarded[i] += b.forwarded[i];
        a.forwarded_bytes[i] += b.forwarded_bytes[i];
    }
    for (x, y) in a.drops.iter_mut().zip(&b.drops) {
        *x += y;
    }
    for (x, y) in a.rtx.iter_mut().zip(&b.rtx) {
        *x += y;
    }
    a.subscriber_key_frame_requests += b.subscriber_key_frame_requests;
    a.publisher_key_frame_requests += b.publisher_key_frame_requests;
    a.tracks += b.tracks;
    a.subscriptions += b.subscriptions;
}

/// The SFU, its peers, and virtual time.
pub struct Net {
    pub sfu: EdgeRooms,
    pub peers: Vec<Client>,
    base: Instant,
    elapsed: Duration,
    /// Everything the rooms said, when.
    pub events: Vec<(Duration, EdgeRoomEvent)>,
    /// Everything the rooms counted, summed.
    pub counters: Counters,
    pub observations: Vec<Observation>,
    /// Datagrams the SFU sent to addresses no peer has (or a peer not alive): when, to where,
    /// how long.
    pub undelivered: Vec<(Duration, SocketAddr, usize)>,
}

impl Net {
    /// An SFU with `config` and no peer.
    pub fn new(config: SfuConfig) -> Self {
        let base = Instant::now();
        Self {
            sfu: EdgeRooms::new(SFU, config, base, SEED),
            peers: Vec::new(),
            base,
            elapsed: Duration::ZERO,
            events: Vec::new(),
            counters: Counters::default(),
            observations: Vec::new(),
            undelivered: Vec::new(),
        }
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// A peer (not joined yet); returns its index.
    pub fn add_peer(&mut self, name: &str, what: Publish) -> usize {
        let i = self.peers.len();
        let c = Client::new(i, name, what, self.now());
        self.peers.push(c);
        i
    }

    /// A peer whose streams use these SSRCs (to spoof another's).
    pub fn add_peer_with_ssrcs(
        &mut self,
        name: &str,
        what: Publish,
        audio: u32,
        video0: u32,
    ) -> usize {
        let i = self.peers.len();
        let c = Client::with_ssrcs(i, name, what, self.now(), audio, video0);
        self.peers.push(c);
        i
    }

    /// Peer `i` joins `room` (may publish) and applies the SFU's answer. Returns the answer.
    pub fn join(&mut self, i: usize, room: &str) -> String {
        let now = self.now();
        let offer = self.peers[i].offer(now);
        let name = self.peers[i].name.clone();
        let (conn, answer) = self.sfu.join(now, room, &name, &offer, true).unwrap();
        let p = &mut self.peers[i];
        p.conn = Some(conn);
        p.pc.set_remote_description(now, RTCSessionDescription::answer(answer.clone()).unwrap())
            .unwrap();
        self.collect();
        answer
    }

    /// Run until every peer given is connected (at most 5 virtual seconds).
    pub fn connect(&mut self, peers: &[usize]) {
        self.run_until(Duration::from_secs(5), |n| {
            peers.iter().all(|&i| n.peers[i].connected())
        });
        for &i in peers {
            assert!(
                self.peers[i].connected(),
                "{} did not connect",
                self.peers[i].name
            );
        }
    }

    /// Peer `i` starts sending a frame every [`FRAME`], from now.
    pub fn start_media(&mut self, i: usize) {
        let e = self.elapsed;
        let p = &mut self.peers[i];
        p.sending = true;
        p.next_frame = e;
    }

    /// The tracks published so far, as (publisher's connection, track, kind), in order.
    pub fn published(&self) -> Vec<(ConnId, TrackId, MediaKind)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                EdgeRoomEvent::Published {
                    publisher,
                    track,
                    kind,
                    ..
                } => Some((*publisher, *track, *kind)),
                _ => None,
            })
            .collect()
    }

    /// The tracks peer `i` published.
    pub fn tracks_of(&self, i: usize) -> Vec<(TrackId, MediaKind)> {
        let conn = self.peers[i].conn;
        self.published()
            .into_iter()
            .filter(|(p, _, _)| Some(*p) == conn)
            .map(|(_, t, k)| (t, k))
            .collect()
    }

    /// Peer `i`'s track of `kind`, once published.
    pub fn track(&self, i: usize, kind: MediaKind) -> TrackId {
        self.tracks_of(i)
            .into_iter()
            .find(|(_, k)| *k == kind)
            .unwrap_or_else(|| panic!("{} published no {kind:?}", self.peers[i].name))
            .0
    }

    /// Subscribe peer `i` to `track` (its offer is answered as it comes).
    pub fn subscribe(&mut self, i: usize, track: TrackId) {
        let now = self.now();
        let conn = self.peers[i].conn.unwrap();
        self.sfu.subscribe(now, conn, track).unwrap();
        self.collect();
    }

    /// Peer `i` answers the SFU's `offer` now (one it left unanswered).
    pub fn answer_pending(&mut self, i: usize, offer: &str) {
        let now = self.now();
        let p = &mut self.peers[i];
        p.pc.set_remote_description(now, RTCSessionDescription::offer(offer.to_owned()).unwrap())
            .unwrap();
        let a = p.pc.create_answer(None).unwrap();
        p.pc.set_local_description(now, a).unwrap();
        let sdp = p.pc.local_description().unwrap().sdp;
        p.answered += 1;
        let conn = p.conn.unwrap();
        self.sfu.answer(now, conn, &sdp).unwrap();
        self.collect();
    }

    /// Whether the SFU said `subscriber` gets `track`.
    pub fn subscribed(&self, i: usize, track: TrackId) -> bool {
        let conn = self.peers[i].conn;
        self.events.iter().any(|(_, e)| {
            matches!(e, EdgeRoomEvent::Subscribed { subscriber, track: t, .. }
                if Some(*subscriber) == conn && *t == track)
        })
    }

    /// Events since `from` (an index into [`Net::events`]).
    pub fn events_since(&self, from: usize) -> impl Iterator<Item = &EdgeRoomEvent> {
        self.events[from..].iter().map(|(_, e)| e)
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.elapsed + d;
        while self.elapsed < end {
            self.progress(end);
        }
    }

    /// Run until `done` holds, at most `limit` of virtual time; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.elapsed + limit;
        while !done(self) {
            if self.elapsed >= end {
                return false;
            }
            self.progress(end);
        }
        true
    }

    /// One turn: media that is due, every datagram delivered, then time moves to the earliest
    /// timer (never past `end`) and the timers that are due run, and what they made is
    /// delivered.
    pub fn progress(&mut self, end: Duration) {
        let now = self.now();
        let at = self.elapsed;
        for p in &mut self.peers {
            if p.alive && p.sending && p.connected() && p.next_frame <= at {
                p.send_frame(now, at);
                p.next_frame = at + FRAME;
            }
        }
        self.deliver();
        // The earliest timer of anyone, then the step bounds.
        let mut next = self.sfu.poll_timeout();
        for p in &mut self.peers {
            if !p.alive {
                continue;
            }
            let t = p.pc.poll_timeout();
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if p.sending && p.connected() {
                let f = self.base + p.next_frame;
                next = Some(next.map_or(f, |n| n.min(f)));
            }
        }
        let floor = self.elapsed + MIN_STEP;
        let mut to = next
            .map_or(self.elapsed + MAX_STEP, |t| {
                t.saturating_duration_since(self.base)
            })
            .clamp(floor, self.elapsed + MAX_STEP);
        if end > self.elapsed {
            to = to.min(end);
        }
        self.elapsed = to;
        let now = self.now();
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        for p in &mut self.peers {
            if p.alive && p.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = p.pc.handle_timeout(now);
            }
        }
        self.deliver();
    }

    /// Move every datagram until none is left, answering the SFU's offers on the way.
    fn deliver(&mut self) {
        let at = self.elapsed;
        let now = self.now();
        loop {
            let mut moved = false;
            for p in &mut self.peers {
                if !p.alive {
                    // Its process is gone: what its connection had queued never leaves.
                    while p.pc.poll_write().is_some() {}
                    continue;
                }
                while let Some(out) = p.pc.poll_write() {
                    moved = true;
                    if out.transport.peer_addr == SFU && p.up.pass(&out.message, at) {
                        self.sfu.handle_datagram(now, p.addr, &out.message);
                    }
                }
            }
            while let Some((to, d)) = self.sfu.poll_transmit() {
                moved = true;
                self.carry(now, to, d);
            }
            for p in &mut self.peers {
                if p.alive {
                    p.poll(at);
                }
            }
            moved |= self.collect();
            if !moved {
                break;
            }
        }
    }

    /// A datagram from the SFU to `to`.
    fn carry(&mut self, now: Instant, to: SocketAddr, d: BytesMut) {
        let Some(p) = self.peers.iter_mut().find(|p| p.addr == to && p.alive) else {
            self.undelivered.push((self.elapsed, to, d.len()));
            return;
        };
        if !p.down.pass(&d, self.elapsed) {
            return;
        }
        let _ = p.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: p.addr,
                peer_addr: SFU,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: d,
        });
    }

    /// Take the rooms' events, counters and observations; answer offers. Whether an offer was
    /// answered (which makes datagrams).
    fn collect(&mut self) -> bool {
        let at = self.elapsed;
        let now = self.now();
        let mut answered = false;
        while let Some(ev) = self.sfu.poll_event() {
            if let EdgeRoomEvent::Offer { to, sdp } = &ev
                && let Some(p) = self
                    .peers
                    .iter_mut()
                    .find(|p| p.conn == Some(*to) && p.alive && p.auto_answer)
            {
                p.pc.set_remote_description(
                    now,
                    RTCSessionDescription::offer(sdp.clone()).unwrap(),
                )
                .unwrap();
                let a = p.pc.create_answer(None).unwrap();
                p.pc.set_local_description(now, a).unwrap();
                let sdp = p.pc.local_description().unwrap().sdp;
                p.answered += 1;
                self.sfu.answer(now, *to, &sdp).unwrap();
                answered = true;
            }
            self.events.push((at, ev));
        }
        add(&mut self.counters, &self.sfu.take_counters());
        while let Some(o) = self.sfu.poll_observation() {
            self.observations.push(o);
        }
        answered
    }

    /// Take what the rooms counted so far out of [`Net::counters`] (a fresh count from here).
    pub fn take_counters(&mut self) -> Counters {
        self.collect();
        std::mem::take(&mut self.counters)
    }

    /// Peer `i` closes its connection (its DTLS `close_notify` goes out) and its process ends.
    pub fn close_peer(&mut self, i: usize) {
        let _ = self.peers[i].pc.close();
        self.deliver();
        self.peers[i].alive = false;
    }

    /// Peer `i`'s process is gone: nothing more from it, nothing reaches it.
    pub fn vanish(&mut self, i: usize) {
        self.peers[i].alive = false;
    }

    /// When the rooms said `i` left.
    pub fn left_at(&self, i: usize) -> Option<Duration> {
        let conn = self.peers[i].conn?;
        self.events
            .iter()
            .find(|(_, e)| *e == EdgeRoomEvent::Left(conn))
            .map(|(at, _)| *at)
    }

    /// A datagram from `from`, straight to the SFU (an attacker's, or a forged one).
    pub fn inject(&mut self, from: SocketAddr, d: &[u8]) {
        let now = self.now();
        self.sfu.handle_datagram(now, from, d);
        self.collect();
    }
}

/// The packets `p` sent on `ssrc`.
pub fn sent_on(p: &Client, ssrc: u32) -> Vec<&Sent> {
    p.sent.iter().filter(|s| s.ssrc == ssrc).collect()
}

/// `got` is what was `sent` from some packet on, every one after it, in order, byte for byte,
/// on one SSRC with sequence numbers +1 each: one continuous stream. Returns where in `sent` it
/// starts.
pub fn assert_continuous_suffix(what: &str, got: &[&Got], sent: &[&Sent]) -> usize {
    assert!(!got.is_empty(), "{what}: nothing arrived");
    let first = &got[0].packet.payload;
    let k = sent
        .iter()
        .position(|s| s.payload == *first)
        .unwrap_or_else(|| panic!("{what}: the first payload was never sent"));
    let want: Vec<&Bytes> = sent[k..].iter().map(|s| &s.payload).collect();
    let have: Vec<&Bytes> = got.iter().map(|g| &g.packet.payload).collect();
    assert_eq!(
        have.len(),
        want.len(),
        "{what}: {} of {} arrived",
        have.len(),
        want.len()
    );
    assert!(have == want, "{what}: payloads differ");
    assert_one_stream(what, got);
    k
}

/// One SSRC, sequence numbers +1 each, timestamps never back.
pub fn assert_one_stream(what: &str, got: &[&Got]) {
    for w in got.windows(2) {
        let (a, b) = (&w[0].packet.header, &w[1].packet.header);
        assert_eq!(a.ssrc, b.ssrc, "{what}: SSRC changed");
        assert_eq!(
            b.sequence_number,
            a.sequence_number.wrapping_add(1),
            "{what}: not contiguous"
        );
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) as i32 >= 0,
            "{what}: timestamp back"
        );
    }
}

/// Where `got` has holes against `sent`: every packet of `got` was sent, in `sent`'s order,
/// and these ranges of `sent` (after `got`'s first) never arrived.
pub fn holes(what: &str, got: &[&Got], sent: &[&Sent]) -> Vec<std::ops::Range<usize>> {
    let mut at = Vec::with_capacity(got.len());
    for g in got {
        let i = sent
            .iter()
            .position(|s| s.payload == g.packet.payload)
            .unwrap_or_else(|| panic!("{what}: a payload that was never sent"));
        at.push(i);
    }
    let mut out = Vec::new();
    for w in at.windows(2) {
        assert!(w[1] > w[0], "{what}: out of order");
        if w[1] > w[0] + 1 {
            out.push(w[0] + 1..w[1]);
        }
    }
    out
}

/// The ICE ufrag an SDP names.
pub fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned()
}
