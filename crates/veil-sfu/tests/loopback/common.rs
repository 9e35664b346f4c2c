//! Real webrtc-rs peers on loopback talking to a real SFU (no ICE servers, no mocks).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc, watch};
use veil_sfu::connection::peer::{self, OPUS_PT, VP8_PT};
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI};
use veil_sfu::edge::EdgeSfu;
pub use veil_sfu::grpc::Backend;
use veil_sfu::routing::MediaKind;
use veil_sfu::{Permissions, SignalEvent};
pub use veil_testkit::webrtc::answer_offer;
use veil_testkit::webrtc::{Events, Handler, OnTrack, loopback_addrs};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, RTCPeerConnectionState,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RtpSender, RtpTransceiver};

/// Generous bound for anything that should take well under a second on an idle machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// Wait until `room`'s participants are `expected`.
pub async fn roster_becomes(sfu: &EdgeSfu, room: &str, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = sfu.participants(room).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} has {now:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Wait for `cond` to hold, checking every 20 ms, at most [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One received RTP packet.
#[derive(Debug, Clone)]
pub struct Received {
    pub track: String,
    pub packet: rtp::Packet,
}

/// A remote track's packets, named by the track's id, into `tracks`; the track itself into
/// `remotes` before the handler returns.
fn on_track(
    tracks: mpsc::UnboundedSender<Received>,
    remotes: Arc<Mutex<HashMap<String, Arc<dyn TrackRemote>>>>,
) -> OnTrack {
    Box::new(move |track: Arc<dyn TrackRemote>| {
        let (tx, remotes) = (tracks.clone(), remotes.clone());
        Box::pin(async move {
            let name = track.track_id().await;
            remotes.lock().await.insert(name.clone(), track.clone());
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    match ev {
                        TrackRemoteEvent::OnRtpPacket(packet) => {
                            let r = Received {
                                track: name.clone(),
                                packet,
                            };
                            if tx.send(r).is_err() {
                                return;
                            }
                        }
                        TrackRemoteEvent::OnEnded => return,
                        _ => {}
                    }
                }
            });
        })
    })
}

/// Extension URIs a test publisher registers before Veil's, so that its extension ids differ
/// from the SFU's own and the per-leg id rewriting is exercised for real.
const PAD_URIS: [&str; 3] = [
    "urn:x-veil-test:pad-1",
    "urn:x-veil-test:pad-2",
    "urn:x-veil-test:pad-3",
];

/// Veil's media engine, optionally with padding extensions first.
fn media_engine(shift_ids: bool) -> MediaEngine {
    let mut me = MediaEngine::default();
    for (kind, pt, rk) in [
        (MediaKind::Audio, OPUS_PT, RtpCodecKind::Audio),
        (MediaKind::Video, VP8_PT, RtpCodecKind::Video),
    ] {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: peer::codec(kind),
                payload_type: pt,
            },
            rk,
        )
        .unwrap();
    }
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: veil_rtc::rtx_codec(),
            payload_type: veil_rtc::RTX_PT,
        },
        RtpCodecKind::Video,
    )
    .unwrap();
    let mut uris: Vec<(&str, RtpCodecKind)> = Vec::new();
    if shift_ids {
        for u in PAD_URIS {
            uris.push((u, RtpCodecKind::Audio));
            uris.push((u, RtpCodecKind::Video));
        }
    }
    uris.push((AUDIO_LEVEL_URI, RtpCodecKind::Audio));
    uris.push((DD_URI, RtpCodecKind::Video));
    for (uri, kind) in uris {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )
        .unwrap();
    }
    me
}

/// Rewrites an SDP from the SFU.
pub type SdpFilter = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A test participant: a webrtc-rs peer connection plus its signalling with the SFU.
pub struct Peer {
    pub identity: String,
    pub room: String,
    pub pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub received: mpsc::UnboundedReceiver<Received>,
    pub remotes: Arc<Mutex<HashMap<String, Arc<dyn TrackRemote>>>>,
    /// Signalling events other than offers (those are answered in the background).
    pub events: mpsc::UnboundedReceiver<SignalEvent>,
    /// Events received but not yet asked for.
    pub backlog: Vec<SignalEvent>,
    /// Applied to every SDP from the SFU before use (e.g. to route through a relay).
    pub sdp_filter: Option<SdpFilter>,
}

/// One outgoing test track.
pub struct LocalTrack {
    pub track: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<dyn RtpSender>,
    pub ssrc: u32,
    pub kind: MediaKind,
}

impl LocalTrack {
    /// The id negotiated for `uri` on this sender's leg.
    pub async fn ext_id(&self, uri: &str) -> Option<u8> {
        let p = self.sender.get_parameters().await.unwrap();
        p.rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == uri)
            .map(|h| h.id as u8)
    }

    /// Send one packet with `payload` and extension elements `exts` (id, data).
    pub async fn send(
        &self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        exts: &[(u8, Bytes)],
        payload: Bytes,
    ) {
        let mut header = rtp::header::Header {
            version: 2,
            marker,
            payload_type: match self.kind {
                MediaKind::Audio => OPUS_PT,
                MediaKind::Video => VP8_PT,
            },
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        // Longest first: a DD key frame (> 16 bytes) selects the two-byte form for all.
        let mut exts = exts.to_vec();
        exts.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
        for (id, data) in exts {
            header.set_extension(id, data).unwrap();
        }
        self.track
            .write_rtp(rtp::Packet { header, payload })
            .await
            .unwrap();
    }

    /// PLIs (media SSRC = this track's SSRC) that reached this sender, with arrival times.
    pub fn count_plis(&self) -> Arc<std::sync::Mutex<Vec<std::time::Instant>>> {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (track, ssrc, o) = (self.track.clone(), self.ssrc, out.clone());
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(pkts) = ev {
                    for p in pkts {
                        if p.as_any()
                            .downcast_ref::<PictureLossIndication>()
                            .is_some_and(|pli| pli.media_ssrc == ssrc)
                        {
                            o.lock().unwrap().push(std::time::Instant::now());
                        }
                    }
                }
            }
        });
        out
    }
}

impl Peer {
    /// A peer; a publisher (`shift_ids`) registers extra extensions first.
    pub async fn new(room: &str, identity: &str, shift_ids: bool) -> Peer {
        Self::build(room, identity, shift_ids, None).await
    }

    /// A peer whose sender and receiver reports, in and out, are logged as they cross the wire.
    pub async fn with_rtcp_log(room: &str, identity: &str, shift_ids: bool) -> (Peer, RtcpLog) {
        let log = RtcpLog::default();
        let peer = Self::build(room, identity, shift_ids, Some(log.clone())).await;
        (peer, log)
    }

    async fn build(room: &str, identity: &str, shift_ids: bool, log: Option<RtcpLog>) -> Peer {
        let (tracks_tx, received) = mpsc::unbounded_channel();
        let remotes = Arc::new(Mutex::new(HashMap::new()));
        let (handler, Events { gathered, state }) =
            Handler::new(Some(on_track(tracks_tx, remotes.clone())));
        let mut me = media_engine(shift_ids);
        let mut registry = peer::interceptors(&mut me).unwrap();
        if let Some(log) = log {
            // Wire-most: it sees inbound RTCP before any interceptor, outbound after all.
            registry = registry.with(
                Slot::from(500),
                RtcpRecorder {
                    log,
                    ..Default::default()
                },
            );
        }
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(me)
                .with_interceptor_registry(registry)
                .with_handler(handler)
                .with_udp_addrs(loopback_addrs())
                .build()
                .await
                .unwrap(),
        );
        let (_tx, events) = mpsc::unbounded_channel();
        Peer {
            identity: identity.to_owned(),
            room: room.to_owned(),
            pc,
            gathered,
            state,
            received,
            remotes,
            events,
            backlog: Vec::new(),
            sdp_filter: None,
        }
    }

    /// A send-only transceiver for `track`.
    pub async fn add_sendonly(&self, track: Arc<TrackLocalStaticRTP>) -> Arc<dyn RtpTransceiver> {
        self.pc
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    ..Default::default()
                }),
            )
            .await
            .unwrap()
    }

    /// Add a send-only track.
    pub async fn add_track(&self, kind: MediaKind, ssrc: u32, id: &str) -> LocalTrack {
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{}-stream", self.identity),
            id.to_owned(),
            id.to_owned(),
            match kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            },
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: (kind == MediaKind::Video).then(|| RTCRtpRtxParameters {
                        ssrc: veil_rtc::rtx_ssrc(ssrc),
                    }),
                    ..Default::default()
                },
                codec: peer::codec(kind),
                ..Default::default()
            }],
        )));
        let t = self.add_sendonly(track.clone()).await;
        let sender = t.sender().await.unwrap().unwrap();
        LocalTrack {
            track,
            sender,
            ssrc,
            kind,
        }
    }

    /// The offer to join with (a subscriber without tracks offers a data channel, so that
    /// there is a transport to bundle the SFU's tracks on).
    pub async fn offer(&mut self) -> String {
        if self.pc.get_transceivers().await.is_empty() {
            self.pc.create_data_channel("veil", None).await.unwrap();
        }
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(WAIT, self.gathered.wait_for(|g| *g))
            .await
            .expect("gathering")
            .unwrap();
        self.pc.local_description().await.unwrap().sdp
    }

    /// Apply the SFU's answer and answer its later offers in the background.
    pub async fn accept(&mut self, sfu: &impl Backend, session: veil_sfu::Session) {
        let sdp_filter = self.sdp_filter.clone();
        let answer = sdp_filter
            .as_ref()
            .map_or(session.answer.clone(), |f| f(&session.answer));
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = rx;
        let (pc, sfu, room, identity) = (
            self.pc.clone(),
            sfu.clone(),
            self.room.clone(),
            self.identity.clone(),
        );
        let mut events = session.events;
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    SignalEvent::Offer { sdp } => {
                        let sdp = sdp_filter.as_ref().map_or(sdp.clone(), |f| f(&sdp));
                        let sdp = answer_offer(&pc, sdp).await;
                        if let Err(e) = sfu.answer(&room, &identity, &sdp).await {
                            panic!("answer refused: {e}");
                        }
                    }
                    other => {
                        let _ = tx.send(other);
                    }
                }
            }
        });
    }

    /// Join `sfu` and wait until connected.
    pub async fn join(&mut self, sfu: &impl Backend) {
        let offer = self.offer().await;
        let session = sfu
            .join_with(&self.room, &self.identity, &offer, Permissions::ALL)
            .await
            .unwrap();
        self.accept(sfu, session).await;
        self.connected().await;
    }

    pub async fn connected(&mut self) {
        tokio::time::timeout(
            WAIT,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .expect("connection")
        .unwrap();
    }

    /// The first event, seen or to come, that `f` accepts; others are kept for later calls.
    pub async fn next_event<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&SignalEvent) -> Option<T>,
    ) -> T {
        if let Some((i, t)) = self
            .backlog
            .iter()
            .enumerate()
            .find_map(|(i, e)| f(e).map(|t| (i, t)))
        {
            self.backlog.remove(i);
            return t;
        }
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = events.recv().await.expect("event stream ended");
                match f(&ev) {
                    Some(t) => return t,
                    None => backlog.push(ev),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: no event {what}", self.identity))
    }

    /// The SFU name of the track `publisher` published as `publisher_track_id`.
    pub async fn track_named(&mut self, publisher: &str, publisher_track_id: &str) -> String {
        self.next_event("TrackPublished", |e| match e {
            SignalEvent::TrackPublished(t)
                if t.publisher == publisher && t.publisher_track_id == publisher_track_id =>
            {
                Some(t.track.clone())
            }
            _ => None,
        })
        .await
    }

    /// Subscribe to `track` and wait until it is live; returns the SSRC it arrives on.
    pub async fn subscribe(&mut self, sfu: &impl Backend, track: &str) -> u32 {
        sfu.subscribe(&self.room, &self.identity, track)
            .await
            .unwrap();
        let want = track.to_owned();
        self.next_event("Subscribed", |e| match e {
            SignalEvent::Subscribed { track, ssrc } if *track == want => Some(*ssrc),
            _ => None,
        })
        .await
    }
}

/// Deterministic "ciphertext": bytes from a seeded generator, standing in for SFrame output.
pub fn payload(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A one-layer DD structure (as Veil clients send for a non-simulcast stream).
pub fn dd_structure() -> Arc<veil_wire::dd::TemplateStructure> {
    Arc::new(veil_wire::dd::TemplateStructure::single_layer(640, 360, 1))
}

/// The DD of a one-packet frame: a key frame (with the structure) or a delta frame.
pub fn dd(frame_number: u16, key: bool) -> Bytes {
    let s = dd_structure();
    let d = veil_wire::dd::DependencyDescriptor::new(true, true, u8::from(!key), frame_number, &s)
        .unwrap();
    let d = if key { d.with_structure(s.clone()) } else { d };
    let mut buf = [0u8; 128];
    let n = d.write(&s, &mut buf).unwrap();
    Bytes::copy_from_slice(&buf[..n])
}

/// The extension ids the SFU's offer gave this peer's receive legs.
pub async fn remote_ext_ids(pc: &Arc<dyn PeerConnection>) -> veil_sfu::routing::ExtIds {
    let desc = pc.remote_description().await.unwrap();
    veil_sfu::connection::sdp::SdpInfo::parse(&desc)
        .unwrap()
        .ext_ids()
}

/// A sender or receiver report, as a test peer's connection read or wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Sender report.
    Sr {
        ssrc: u32,
        rtp_time: u32,
        packet_count: u32,
        octet_count: u32,
    },
    /// Receiver report: who reports, and the SSRCs its report blocks are about.
    Rr { sender: u32, about: Vec<u32> },
}

/// One logged report.
#[derive(Debug, Clone)]
pub struct Logged {
    pub inbound: bool,
    pub report: Report,
}

/// The reports a peer's connection read (`inbound`) and wrote, in order.
#[derive(Debug, Clone, Default)]
pub struct RtcpLog(Arc<std::sync::Mutex<Vec<Logged>>>);

impl RtcpLog {
    /// The reports seen so far in one direction.
    pub fn reports(&self, inbound: bool) -> Vec<Report> {
        let log = self.0.lock().unwrap();
        log.iter()
            .filter(|l| l.inbound == inbound)
            .map(|l| l.report.clone())
            .collect()
    }

    fn record(&self, inbound: bool, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        let mut log = self.0.lock().unwrap();
        for p in packets {
            let any = p.as_any();
            let report = if let Some(sr) = any.downcast_ref::<SenderReport>() {
                Report::Sr {
                    ssrc: sr.ssrc,
                    rtp_time: sr.rtp_time,
                    packet_count: sr.packet_count,
                    octet_count: sr.octet_count,
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                Report::Rr {
                    sender: rr.ssrc,
                    about: rr.reports.iter().map(|r| r.ssrc).collect(),
                }
            } else {
                continue;
            };
            log.push(Logged { inbound, report });
        }
    }
}

/// An interceptor that logs SR and RR going either way and changes nothing. webrtc-rs ends
/// inbound RTCP inside its chain (specs/dependencies.md), so the application never sees
/// reports: the log is kept where they pass.
#[derive(Default)]
struct RtcpRecorder {
    log: RtcpLog,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpRecorder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(p) = &msg.message.packet {
            self.log.record(true, p);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(p) = &msg.message.packet {
            self.log.record(false, p);
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for RtcpRecorder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

// ---- a lossy UDP relay (nack.rs) ---------------------------------------------------------

/// SFU candidate port → relay port, in every candidate line of `sdp`.
pub fn via(sdp: &str, sfu_port: u16, relay_port: u16) -> String {
    sdp.replace(
        &format!(" 127.0.0.1 {sfu_port} typ host"),
        &format!(" 127.0.0.1 {relay_port} typ host"),
    )
}

pub fn candidate_port(sdp: &str) -> u16 {
    let line = sdp.lines().find(|l| l.starts_with("a=candidate:")).unwrap();
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

/// RFC 7983: 128..=191 is RTP or RTCP; RTCP packet types are 192..=223.
pub fn is_rtp(p: &[u8]) -> bool {
    p.len() > 1 && (128..=191).contains(&p[0]) && !(192..=223).contains(&p[1])
}

/// Drops every `nth` RTP packet (not RTCP, STUN or DTLS) that passes, and tells retransmissions
/// apart from the clear RTP header that SRTP leaves (RFC 3711 §3.1).
#[derive(Default)]
pub struct Dropper {
    pub nth: u64,
    pub seen: AtomicU64,
    pub dropped: AtomicU64,
    /// RTX packets (PT 97) that reached the relay, and those of them it dropped.
    pub rtx: AtomicU64,
    pub rtx_dropped: AtomicU64,
    /// VP8 packets whose (SSRC, sequence number) had passed before: retransmissions that did
    /// not go as RTX.
    pub repeats: AtomicU64,
    media: std::sync::Mutex<HashSet<(u32, u16)>>,
}

impl Dropper {
    pub fn keep(&self, p: &[u8]) -> bool {
        if !is_rtp(p) || p.len() < 12 {
            return true;
        }
        let pt = p[1] & 0x7f;
        let is_rtx = pt == veil_rtc::RTX_PT;
        if is_rtx {
            self.rtx.fetch_add(1, Ordering::Relaxed);
        } else if pt == VP8_PT {
            let key = (
                u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            if !self.media.lock().unwrap().insert(key) {
                self.repeats.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.nth == 0 {
            return true;
        }
        if (self.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.nth) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if is_rtx {
                self.rtx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        true
    }
}

/// A two-socket UDP relay: `front` faces the peer, `back` the SFU.
pub struct Relay {
    pub front: Arc<UdpSocket>,
    pub dropped: Arc<Dropper>,
}

impl Relay {
    /// Drop every `nth` RTP packet towards the peer, or (`to_sfu`) towards the SFU.
    pub async fn start(sfu: SocketAddr, nth: u64, to_sfu: bool) -> Relay {
        let dropper = |on: bool| {
            Arc::new(Dropper {
                nth: if on { nth } else { 0 },
                ..Dropper::default()
            })
        };
        let (up, down) = (dropper(to_sfu), dropper(!to_sfu));
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let subscriber: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, subscriber) = (front.clone(), back.clone(), subscriber.clone());
            let up = up.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *subscriber.lock().await = Some(from);
                    if up.keep(&buf[..n]) {
                        let _ = back.send_to(&buf[..n], sfu).await;
                    }
                }
            });
        }
        {
            let (front, down) = (front.clone(), down.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = back.recv(&mut buf).await {
                    if down.keep(&buf[..n])
                        && let Some(to) = *subscriber.lock().await
                    {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        let dropped = if to_sfu { up } else { down };
        Relay { front, dropped }
    }

    pub fn port(&self) -> u16 {
        self.front.local_addr().unwrap().port()
    }
}

/// A [`Simulcast`] publisher's traffic: every 20 ms, each layer's `shape` (packets, payload bytes), each packet one
/// frame; one DD frame counter across layers; a key frame on every layer every 25 ticks (0.5 s).
/// mid/rid on the first second only, as Chromium does. Until `stop`.
pub fn send_layers(
    track: Arc<TrackLocalStaticRTP>,
    ids: SimulcastIds,
    shape: [(usize, usize); 3],
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let dd_id = ids.dd_id;
    tokio::spawn(async move {
        let mut n: u16 = 0;
        let mut seq = [0u16, 10_000, 20_000];
        let mut next = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut frame = n.wrapping_mul(8);
            for (l, ((rid, ssrc), (packets, len))) in SIMULCAST_RIDS
                .iter()
                .zip(SIMULCAST_SSRCS)
                .zip(shape)
                .enumerate()
            {
                for _ in 0..packets {
                    let mut header = rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: VP8_PT,
                        sequence_number: seq[l],
                        timestamp: 1800 * u32::from(n),
                        ssrc,
                        ..Default::default()
                    };
                    seq[l] = seq[l].wrapping_add(1);
                    header
                        .set_extension(dd_id, dd(frame, n.is_multiple_of(25)))
                        .unwrap();
                    frame = frame.wrapping_add(1);
                    if n < 50 {
                        ids.announce(&mut header, rid);
                    }
                    let mut body = payload(u64::from(n), len).to_vec();
                    body[0] = rid.as_bytes()[0];
                    let _ = track
                        .write_rtp(rtp::Packet {
                            header,
                            payload: body.into(),
                        })
                        .await;
                }
            }
            n = n.wrapping_add(1);
            next += Duration::from_millis(20);
            tokio::time::sleep_until(next).await;
        }
    })
}

// ---- a rate-capped UDP relay (bandwidth.rs, benches/ramp.rs) ---------------------------

/// A token bucket on the SFU → peer direction: `rate` bits/s of UDP payload (0: no cap), at
/// most `max_queue` of queueing, then tail drop.
pub struct Shaper {
    pub rate: AtomicU64,
    pub max_queue: Duration,
    pub dropped: AtomicU64,
}

/// A two-socket UDP relay with a [`Shaper`]: `front` faces the peer, `back` the SFU. The peer →
/// SFU direction is not shaped (it carries the peer's transport-cc feedback).
pub struct ShapedRelay {
    front: Arc<UdpSocket>,
    pub shaper: Arc<Shaper>,
}

impl ShapedRelay {
    pub async fn start(sfu: SocketAddr, rate: u64) -> ShapedRelay {
        let shaper = Arc::new(Shaper {
            rate: AtomicU64::new(rate),
            max_queue: Duration::from_millis(200),
            dropped: AtomicU64::new(0),
        });
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let peer: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, peer) = (front.clone(), back.clone(), peer.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *peer.lock().unwrap() = Some(from);
                    let _ = back.send_to(&buf[..n], sfu).await;
                }
            });
        }
        // Scheduling here, sending in another task, so a queued packet does not hold up the
        // reading of the next one.
        let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        {
            let (front, peer) = (front.clone(), peer.clone());
            tokio::spawn(async move {
                while let Some((at, p)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    let to = *peer.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&p, to).await;
                    }
                }
            });
        }
        {
            let shaper = shaper.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut free_at = tokio::time::Instant::now();
                while let Ok(n) = back.recv(&mut buf).await {
                    let now = tokio::time::Instant::now();
                    let rate = shaper.rate.load(Ordering::Relaxed);
                    let at = if rate == 0 {
                        free_at = now;
                        now
                    } else {
                        let start = free_at.max(now);
                        if start - now > shaper.max_queue {
                            shaper.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        free_at = start + Duration::from_secs_f64(n as f64 * 8.0 / rate as f64);
                        free_at
                    };
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
        }
        ShapedRelay { front, shaper }
    }

    pub fn port(&self) -> u16 {
        self.front.local_addr().unwrap().port()
    }
}

/// The rids of a [`Simulcast`] track, lowest first.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];
/// The SSRCs of its layers.
pub const SIMULCAST_SSRCS: [u32; 3] = [0x51_0001, 0x51_0002, 0x51_0003];

/// What a [`Simulcast`] track's leg negotiated.
pub struct SimulcastIds {
    /// The track's mid.
    pub mid: String,
    /// Extension id of mid.
    pub mid_id: u8,
    /// Extension id of rid.
    pub rid_id: u8,
    /// Extension id of the DD.
    pub dd_id: u8,
}

impl SimulcastIds {
    /// Put the mid and the layer's `rid` on `header`, as a stream's first packets carry them.
    pub fn announce(&self, header: &mut rtp::header::Header, rid: &str) {
        header
            .set_extension(self.mid_id, Bytes::from(self.mid.clone()))
            .unwrap();
        header
            .set_extension(self.rid_id, Bytes::from(rid.to_owned()))
            .unwrap();
    }
}

/// A simulcast video track sent the way Chromium sends one: layers q/h/f, a DD on every
/// packet with one frame counter across layers, a key frame on every layer every 10 frames,
/// mid and rid only while `announce` holds. Each payload starts with its layer's rid.
pub struct Simulcast {
    pub track: Arc<TrackLocalStaticRTP>,
    transceiver: Arc<dyn RtpTransceiver>,
    pub stop: Arc<AtomicBool>,
    pub announce: Arc<AtomicBool>,
}

impl Simulcast {
    /// Add the track ("cam") to `p`, before it offers.
    pub async fn add(p: &Peer) -> Simulcast {
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{}-stream", p.identity),
            "cam".to_owned(),
            "cam".to_owned(),
            RtpCodecKind::Video,
            SIMULCAST_RIDS
                .iter()
                .zip(SIMULCAST_SSRCS)
                .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: (*rid).to_owned(),
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: peer::codec(MediaKind::Video),
                    ..Default::default()
                })
                .collect(),
        )));
        let transceiver = p.add_sendonly(track.clone()).await;
        Simulcast {
            track,
            transceiver,
            stop: Arc::new(AtomicBool::new(false)),
            announce: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Once connected: the mid and the extension ids its leg negotiated.
    pub async fn ids(&self) -> SimulcastIds {
        let params = self
            .transceiver
            .sender()
            .await
            .unwrap()
            .unwrap()
            .get_parameters()
            .await
            .unwrap()
            .rtp_parameters;
        let id = |uri: &str| {
            params
                .header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .map(|h| h.id as u8)
                .unwrap_or_else(|| panic!("{uri} not negotiated"))
        };
        SimulcastIds {
            mid: self.transceiver.mid().await.unwrap().unwrap(),
            mid_id: id(MID_URI),
            rid_id: id(RID_URI),
            dd_id: id(DD_URI),
        }
    }

    /// Once connected: a frame every 20 ms on each layer until `stop`.
    pub async fn start(&self) -> tokio::task::JoinHandle<()> {
        let ids = self.ids().await;
        let dd_id = ids.dd_id;
        let (stop, announce, track) =
            (self.stop.clone(), self.announce.clone(), self.track.clone());
        tokio::spawn(async move {
            let mut n: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                for (l, (rid, ssrc)) in SIMULCAST_RIDS.iter().zip(SIMULCAST_SSRCS).enumerate() {
                    let mut header = rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: VP8_PT,
                        sequence_number: n.wrapping_add(1000 * l as u16),
                        timestamp: 3000 * u32::from(n),
                        ssrc,
                        ..Default::default()
                    };
                    let frame = n.wrapping_mul(3).wrapping_add(l as u16);
                    header
                        .set_extension(dd_id, dd(frame, n.is_multiple_of(10)))
                        .unwrap();
                    if announce.load(Ordering::Relaxed) {
                        ids.announce(&mut header, rid);
                    }
                    let mut body = payload(u64::from(n), 300 + 100 * l).to_vec();
                    body[0] = rid.as_bytes()[0];
                    track
                        .write_rtp(rtp::Packet {
                            header,
                            payload: body.into(),
                        })
                        .await
                        .unwrap();
                }
                n = n.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

/// What a subscriber of a [`Simulcast`] track receives, checked as it arrives: every switch
/// of layer lands on a key frame's first packet (as the forwarded DD marks it).
pub struct LayerReceiver {
    /// (the layer's rid byte, the packet), in arrival order.
    pub got: Vec<(u8, rtp::Packet)>,
    latch: veil_wire::dd::DdLatch,
    dd: u8,
}

impl LayerReceiver {
    /// For `p`, whose leg has negotiated the DD.
    pub async fn new(p: &Peer) -> LayerReceiver {
        LayerReceiver {
            got: Vec::new(),
            latch: veil_wire::dd::DdLatch::default(),
            dd: remote_ext_ids(&p.pc).await.dd.expect("DD negotiated"),
        }
    }

    /// Receive until 20 packets of layer `want` (its rid byte) arrived.
    pub async fn receive(&mut self, p: &mut Peer, want: u8) {
        let mut on_layer = 0;
        while on_layer < 20 {
            let r = tokio::time::timeout(WAIT, p.received.recv())
                .await
                .unwrap_or_else(|_| panic!("waiting for layer {}", want as char))
                .unwrap();
            let tag = r.packet.payload[0];
            let d = self
                .latch
                .parse(
                    &r.packet
                        .header
                        .get_extension(self.dd)
                        .expect("DD forwarded"),
                )
                .unwrap();
            if let Some((prev, _)) = self.got.last()
                && *prev != tag
            {
                assert_eq!(tag, want, "switched to the wrong layer");
                assert!(
                    d.is_key_frame_start(),
                    "switch to {} not at a key frame",
                    tag as char
                );
            }
            on_layer += usize::from(tag == want);
            self.got.push((tag, r.packet));
        }
    }

    /// It was one continuous stream through the layers `runs`: one SSRC, sequence numbers +1
    /// each, timestamps never back.
    pub fn assert_one_stream(&self, runs: &[u8]) {
        let layers: Vec<u8> = self.got.iter().map(|(t, _)| *t).collect();
        let mut r = layers.clone();
        r.dedup();
        assert_eq!(r, runs, "layer runs");
        for w in self.got.windows(2) {
            let (a, b) = (&w[0].1.header, &w[1].1.header);
            assert_eq!(a.ssrc, b.ssrc);
            assert_eq!(
                b.sequence_number,
                a.sequence_number.wrapping_add(1),
                "a gap in {layers:?}"
            );
            assert!(b.timestamp.wrapping_sub(a.timestamp) as i32 > 0);
        }
    }
}
