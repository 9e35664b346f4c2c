//! SFU forwarding load (a bench binary, not a timed test): P publishers × S subscribers of
//! synthetic media through the real `veil-server --role sfu` child process, and the same packet
//! schedule through a plain UDP relay in the same run as the baseline.
//!
//! - Each publisher is a webrtc-rs peer joined through `veil.sfu.v1` with a token from the
//!   server's key. It sends audio at 50 pps (one 120-byte packet per 20 ms, audio level on
//!   each) and one video track of three simulcast layers (rid q/h/f, 30 fps, 1/2/4 packets of
//!   400/900/1100 bytes per frame, DD on every packet, a key frame on every layer each second).
//! - Each subscriber subscribes to every track and receives layer `q`, `h` or `f` (subscriber
//!   index mod 3) of every video track.
//! - Payloads are opaque bytes: a stream id, a sequence number and the send time on this
//!   process's monotonic clock. Subscribers record the added latency (send → receipt, both in
//!   this process) in an HdrHistogram; loss is what was sent in the window and never arrived.
//! - The relay baseline (this binary re-run with `--relay`) forwards every publisher datagram
//!   to every subscriber socket: no SRTP, no routing, all three layers, one `recv_from` and one
//!   `send_to` per datagram. The batched relay (`--relay-batched`, measured in the same run)
//!   does the same forwarding with the edge's batched I/O (`quinn-udp`: `recvmmsg`, and UDP GSO
//!   for equal-sized runs to one subscriber), so the limit the SFU is held to stays honest.
//! - The server (or relay) is pinned to CPU 0 and this load generator to CPU 1 (`taskset`).
//!   Server CPU time is utime + stime of the child from `/proc/<pid>/stat` over the window.
//!
//! `cargo bench -p veil-server --bench sfu_load` (add `-- --quick` for a short run, or
//! `-- --points 10x10,12x20` for other publisher × subscriber counts, at most 16 publishers).
//! `-- --compare PATH` also runs each point through another `veil-server` binary (a build of
//! another commit), right after this build's row: an A/B comparison in one run, since this
//! machine's figures drift more between runs than a small change moves them.
//!
//! Workers (specs/sfu.md SFU-WRK-01..03): `-- --workers 1,2 --rooms 2` runs each point as two
//! rooms of P×S through this build with `--sfu-workers 1`, then `--sfu-workers 2`, in one run.
//! An N-worker server may use CPUs 0..N-1 (the load generator stays on CPU 1, so on a 2-core
//! machine the second worker shares its core with the generator). Each row also gives every
//! edge worker thread's CPU (`sfu-edge-N`, from `/proc/<pid>/task`), and the notes compare the
//! worker counts: forwarded packets per second and per CPU-second, and the busiest thread's
//! share. The relays run only for one room.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use veil_auth::TokenKey;
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_client::SfuClient;
use veil_sfu::connection::peer::{self, OPUS_PT, VP8_PT};
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI};
use veil_sfu::routing::MediaKind;
use veil_testkit::webrtc::{Events, Handler, OnTrack, loopback_addrs};
use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
use webrtc::media_stream::track_local::TrackLocal as _;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, RTCPeerConnectionState, RTCSessionDescription,
};

use pb::signal_event::Event as E;
use pb::signal_request::Request as R;

const RIDS: [&str; 3] = ["q", "h", "f"];
/// Packets per video frame and payload bytes per packet, per layer.
const LAYER_PACKETS: [usize; 3] = [1, 2, 4];
const LAYER_BYTES: [usize; 3] = [400, 900, 1100];
const AUDIO_BYTES: usize = 120;
const AUDIO_PERIOD: Duration = Duration::from_millis(20);
const FRAME_PERIOD: Duration = Duration::from_nanos(33_333_333);
const KEY_FRAME_EVERY: u32 = 30;
/// Stream ids: publisher × 4 + (0 audio, 1 + layer video).
const STREAMS_PER_PUBLISHER: usize = 4;
const WAIT: Duration = Duration::from_secs(30);
/// How long every subscriber may take to receive the layers it asked for. The SFU's GCC starts
/// each leg at 1.5 Mbit/s and grows from its feedback (SFU-BWE-01); a subscriber of layer f
/// from 12 publishers needs about 12.7 Mbit/s, which took longer than `WAIT` on loopback.
const WARM_UP: Duration = Duration::from_secs(120);

// ---- clock and payloads ----------------------------------------------------------------------

/// Microseconds on one monotonic clock shared by publishers and subscribers of this process.
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Opaque payload: stream id, sequence number, send time, then filler.
fn payload(stream: usize, seq: u32, sent_us: u64, len: usize) -> Bytes {
    let mut b = vec![0xA5u8; len.max(16)];
    b[0..4].copy_from_slice(&(stream as u32).to_be_bytes());
    b[4..8].copy_from_slice(&seq.to_be_bytes());
    b[8..16].copy_from_slice(&sent_us.to_be_bytes());
    b.into()
}

// ---- counting --------------------------------------------------------------------------------

/// What one run sent and received. Only packets sent inside `[start, end)` (send times, known
/// in advance) count, on both sides.
struct Stats {
    start: AtomicU64,
    end: AtomicU64,
    /// Packets sent in the window, per stream id.
    sent: Vec<AtomicU64>,
    received: AtomicU64,
    /// Per subscriber: the stream ids of its room seen since the warm-up last cleared them
    /// (bit mask of the id modulo `room_streams`).
    seen: Vec<AtomicU64>,
    /// Stream ids per room: a subscriber receives only its own room's.
    room_streams: usize,
    latency: Mutex<Histogram<u64>>,
}

impl Stats {
    /// Counters for `rooms` rooms of `publishers` × `subscribers` each.
    fn new(rooms: usize, publishers: usize, subscribers: usize) -> Arc<Stats> {
        Arc::new(Stats {
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(u64::MAX),
            sent: (0..rooms * publishers * STREAMS_PER_PUBLISHER)
                .map(|_| AtomicU64::new(0))
                .collect(),
            received: AtomicU64::new(0),
            seen: (0..rooms * subscribers)
                .map(|_| AtomicU64::new(0))
                .collect(),
            room_streams: publishers * STREAMS_PER_PUBLISHER,
            latency: Mutex::new(Histogram::new(3).unwrap()),
        })
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.start.load(Ordering::Relaxed) && t < self.end.load(Ordering::Relaxed)
    }

    fn sent(&self, stream: usize, t: u64) {
        if self.in_window(t) {
            self.sent[stream].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn receive(&self, subscriber: usize, p: &[u8]) {
        let now = now_us();
        if p.len() < 16 {
            return;
        }
        let stream = u32::from_be_bytes(p[0..4].try_into().unwrap());
        let sent = u64::from_be_bytes(p[8..16].try_into().unwrap());
        let local = stream as usize % self.room_streams;
        self.seen[subscriber].fetch_or(1 << (local % 64), Ordering::Relaxed);
        if self.in_window(sent) {
            self.received.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .latency
                .lock()
                .unwrap()
                .record(now.saturating_sub(sent).max(1));
        }
    }

    fn total_sent(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// The layer subscriber `s` receives.
fn layer_of(s: usize) -> usize {
    s % 3
}

// ---- the packet schedule ---------------------------------------------------------------------

/// One packet of the schedule.
struct Pkt {
    stream: usize,
    seq: u32,
    /// Video: layer, frame counter, key frame, first and last packet of the frame.
    video: Option<(usize, u32, bool, bool, bool)>,
    len: usize,
}

/// Where a publisher's packets go.
enum Out {
    Rtc(Box<RtcPublisher>),
    Udp(UdpSocket, SocketAddr),
}

impl Out {
    async fn send(&self, pkt: &Pkt) {
        let sent_us = now_us();
        let body = payload(pkt.stream, pkt.seq, sent_us, pkt.len);
        match self {
            Out::Rtc(p) => p.send(pkt, body).await,
            Out::Udp(sock, to) => {
                // A 12-byte stand-in for the RTP header, then the same payload.
                let mut d = Vec::with_capacity(12 + body.len());
                d.extend_from_slice(&[0x80; 12]);
                d.extend_from_slice(&body);
                let _ = sock.send_to(&d, to).await;
            }
        }
    }
}

/// Run publisher `idx`'s schedule until `stop`: audio every 20 ms, a frame on every video layer
/// every 33.3 ms. Ticks the generator misses are skipped, not burst (the sent counts say what
/// was offered).
async fn publish(out: Out, idx: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut audio = tokio::time::interval(AUDIO_PERIOD);
    let mut video = tokio::time::interval(FRAME_PERIOD);
    audio.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    video.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let base = idx * STREAMS_PER_PUBLISHER;
    let (mut aseq, mut vseq, mut frame) = (0u32, [0u32; 3], 0u32);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = audio.tick() => {
                let pkt = Pkt { stream: base, seq: aseq, video: None, len: AUDIO_BYTES };
                stats.sent(base, now_us());
                out.send(&pkt).await;
                aseq += 1;
            }
            _ = video.tick() => {
                let key = frame.is_multiple_of(KEY_FRAME_EVERY);
                for l in 0..3 {
                    let n = LAYER_PACKETS[l];
                    for k in 0..n {
                        let pkt = Pkt {
                            stream: base + 1 + l,
                            seq: vseq[l],
                            video: Some((l, frame, key, k == 0, k == n - 1)),
                            len: LAYER_BYTES[l],
                        };
                        stats.sent(base + 1 + l, now_us());
                        out.send(&pkt).await;
                        vseq[l] += 1;
                    }
                }
                frame += 1;
            }
        }
    }
}

// ---- webrtc-rs peers -------------------------------------------------------------------------

/// Subscribers (`sink`: their index and the run's counters) count what they receive.
fn on_track(sink: Option<(usize, Arc<Stats>)>) -> Option<OnTrack> {
    let (sub, stats) = sink?;
    Some(Box::new(move |track: Arc<dyn TrackRemote>| {
        let stats = stats.clone();
        Box::pin(async move {
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    match ev {
                        TrackRemoteEvent::OnRtpPacket(p) => stats.receive(sub, &p.payload),
                        TrackRemoteEvent::OnEnded => return,
                        _ => {}
                    }
                }
            });
        })
    }))
}

/// A webrtc-rs peer with Veil's codecs, extensions and interceptors, and its signalling stream.
struct Client {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tx: mpsc::Sender<pb::SignalRequest>,
    /// Events other than the SFU's offers (those are answered in the background).
    events: mpsc::UnboundedReceiver<E>,
    next_id: u32,
}

impl Client {
    async fn new(sink: Option<(usize, Arc<Stats>)>) -> Client {
        let (handler, Events { gathered, state }) = Handler::new(on_track(sink));
        let mut me = peer::media_engine().unwrap();
        let registry = peer::interceptors(&mut me).unwrap();
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
        let (tx, _) = mpsc::channel(1);
        let (_, events) = mpsc::unbounded_channel();
        Client {
            pc,
            gathered,
            state,
            tx,
            events,
            next_id: 1,
        }
    }

    async fn send(&mut self, r: R) {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .send(pb::SignalRequest {
                id,
                request: Some(r),
            })
            .await
            .unwrap();
    }

    /// Open the signalling stream, join `room` with this peer's offer, answer the SFU's later
    /// offers in the background, and wait until the connection is up.
    async fn join(&mut self, grpc: SocketAddr, token: &str, room: &str) {
        if self.pc.get_transceivers().await.is_empty() {
            self.pc.create_data_channel("veil", None).await.unwrap();
        }
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(WAIT, self.gathered.wait_for(|g| *g))
            .await
            .expect("gathering")
            .unwrap();
        let offer_sdp = self.pc.local_description().await.unwrap().sdp;

        let mut client = SfuClient::connect(format!("http://{grpc}")).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut stream = client.signal(req).await.unwrap().into_inner();
        self.tx = tx.clone();
        self.send(R::Join(pb::Join {
            room: room.to_owned(),
            offer_sdp,
            // Synthetic payloads: the packetization label is irrelevant to forwarding.
            packetization: 0,
        }))
        .await;
        let answer = match stream.message().await.unwrap() {
            Some(pb::SignalEvent {
                event: Some(E::Joined(j)),
            }) => j.answer_sdp,
            other => panic!("expected Joined, got {other:?}"),
        };
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        self.events = ev_rx;
        let pc = self.pc.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                match ev.event {
                    Some(E::Offer(d)) => {
                        pc.set_remote_description(RTCSessionDescription::offer(d.sdp).unwrap())
                            .await
                            .unwrap();
                        let answer = pc.create_answer(None).await.unwrap();
                        pc.set_local_description(answer).await.unwrap();
                        let sdp = pc.local_description().await.unwrap().sdp;
                        let req = pb::SignalRequest {
                            id: 0,
                            request: Some(R::Answer(pb::SessionDescription { sdp })),
                        };
                        if tx.send(req).await.is_err() {
                            return;
                        }
                    }
                    Some(E::RequestFailed(f)) => eprintln!("request failed: {f:?}"),
                    Some(e) => {
                        let _ = ev_tx.send(e);
                    }
                    None => {}
                }
            }
        });
        tokio::time::timeout(
            WAIT,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .expect("connection")
        .unwrap();
    }

    async fn next<T>(&mut self, what: &str, mut f: impl FnMut(&E) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let e = self.events.recv().await.expect("signalling stream ended");
                if let Some(t) = f(&e) {
                    return t;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} in {WAIT:?}"))
    }
}

fn track(kind: MediaKind, id: &str, encodings: Vec<(String, u32)>) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{id}-stream"),
        id.to_owned(),
        id.to_owned(),
        match kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        },
        encodings
            .into_iter()
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid,
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: peer::codec(kind),
                ..Default::default()
            })
            .collect(),
    )))
}

/// A publisher's tracks and the extension ids its leg negotiated.
struct RtcPublisher {
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    audio_ssrc: u32,
    video_ssrcs: [u32; 3],
    level_id: u8,
    mid: String,
    mid_id: u8,
    rid_id: u8,
    dd_id: u8,
    structure: Arc<TemplateStructure>,
}

impl RtcPublisher {
    async fn send(&self, pkt: &Pkt, body: Bytes) {
        let mut exts: Vec<(u8, Bytes)> = Vec::with_capacity(3);
        let (header, track) = match pkt.video {
            None => {
                exts.push((self.level_id, Bytes::from_static(&[0x80 | 30])));
                let h = rtp::header::Header {
                    version: 2,
                    payload_type: OPUS_PT,
                    sequence_number: pkt.seq as u16,
                    timestamp: pkt.seq.wrapping_mul(960),
                    ssrc: self.audio_ssrc,
                    ..Default::default()
                };
                (h, &self.audio)
            }
            Some((layer, frame, key, first, last)) => {
                // One DD frame counter across the layers, as Chromium numbers them.
                let number = (frame * 3 + layer as u32) as u16;
                let s = &self.structure;
                let d = DependencyDescriptor::new(first, last, u8::from(!key), number, s).unwrap();
                let d = if key && first {
                    d.with_structure(s.clone())
                } else {
                    d
                };
                let mut buf = [0u8; 128];
                let n = d.write(s, &mut buf).unwrap();
                exts.push((self.dd_id, Bytes::copy_from_slice(&buf[..n])));
                exts.push((self.mid_id, Bytes::from(self.mid.clone())));
                exts.push((self.rid_id, Bytes::from_static(RIDS[layer].as_bytes())));
                let h = rtp::header::Header {
                    version: 2,
                    marker: last,
                    payload_type: VP8_PT,
                    sequence_number: pkt.seq as u16,
                    timestamp: frame.wrapping_mul(3000),
                    ssrc: self.video_ssrcs[layer],
                    ..Default::default()
                };
                (h, &self.video)
            }
        };
        let mut header = header;
        // Longest first: a DD key frame (> 16 bytes) selects the two-byte form for all.
        exts.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
        for (id, data) in exts {
            header.set_extension(id, data).unwrap();
        }
        let _ = track
            .write_rtp(rtp::Packet {
                header,
                payload: body,
            })
            .await;
    }
}

/// A one-layer DD structure per simulcast stream (each SSRC latches its own).
fn dd_structure() -> Arc<TemplateStructure> {
    // Three layers on one frame counter, sent in turn: a layer's previous frame is 3 back.
    Arc::new(TemplateStructure::single_layer(640, 360, 3))
}

async fn ext_id(t: &Arc<dyn webrtc::rtp_transceiver::RtpTransceiver>, uri: &str) -> u8 {
    let sender = t.sender().await.unwrap().unwrap();
    let p = sender.get_parameters().await.unwrap();
    p.rtp_parameters
        .header_extensions
        .iter()
        .find(|h| h.uri == uri)
        .map(|h| h.id as u8)
        .unwrap_or_else(|| panic!("{uri} not negotiated"))
}

async fn join_publisher(grpc: SocketAddr, key: &TokenKey, room: &str, idx: usize) -> Out {
    let mut c = Client::new(None).await;
    let id = format!("p{idx}");
    let audio_ssrc = 0x1000_0000 + idx as u32 * 16;
    let video_ssrcs = [audio_ssrc + 1, audio_ssrc + 2, audio_ssrc + 3];
    let audio = track(MediaKind::Audio, "mic", vec![(String::new(), audio_ssrc)]);
    let video = track(
        MediaKind::Video,
        "cam",
        RIDS.iter()
            .zip(video_ssrcs)
            .map(|(r, s)| ((*r).to_owned(), s))
            .collect(),
    );
    let init = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            ..Default::default()
        })
    };
    let at =
        c.pc.add_transceiver_from_track(audio.clone(), init())
            .await
            .unwrap();
    let vt =
        c.pc.add_transceiver_from_track(video.clone(), init())
            .await
            .unwrap();
    c.join(grpc, &token(key, &id, room, true, false), room)
        .await;
    let p = RtcPublisher {
        level_id: ext_id(&at, AUDIO_LEVEL_URI).await,
        mid: vt.mid().await.unwrap().unwrap(),
        mid_id: ext_id(&vt, MID_URI).await,
        rid_id: ext_id(&vt, RID_URI).await,
        dd_id: ext_id(&vt, DD_URI).await,
        audio,
        video,
        audio_ssrc,
        video_ssrcs,
        structure: dd_structure(),
    };
    // The session lives as long as its signalling stream: keep the sender until the run ends.
    PC_KEEP.lock().unwrap().push((c.pc, c.tx));
    Out::Rtc(Box::new(p))
}

type Keep = (Arc<dyn PeerConnection>, mpsc::Sender<pb::SignalRequest>);
/// Peer connections and signalling streams of the current SFU run (closed at its end).
static PC_KEEP: Mutex<Vec<Keep>> = Mutex::new(Vec::new());

async fn join_subscriber(
    grpc: SocketAddr,
    key: &TokenKey,
    room: &str,
    idx: usize,
    publishers: usize,
    stats: Arc<Stats>,
) {
    let mut c = Client::new(Some((idx, stats))).await;
    c.join(
        grpc,
        &token(key, &format!("s{idx}"), room, false, true),
        room,
    )
    .await;
    let mut tracks = Vec::new();
    while tracks.len() < 2 * publishers {
        let t = c
            .next("TrackPublished", |e| match e {
                E::TrackPublished(t) => Some(t.clone()),
                _ => None,
            })
            .await;
        tracks.push(t);
    }
    for t in &tracks {
        c.send(R::Subscribe(pb::Subscribe {
            track: t.track.clone(),
        }))
        .await;
    }
    let mut subscribed = 0;
    while subscribed < tracks.len() {
        c.next("Subscribed", |e| {
            matches!(e, E::Subscribed(_)).then_some(())
        })
        .await;
        subscribed += 1;
    }
    let layer = layer_of(idx);
    if layer != 0 {
        for t in tracks.iter().filter(|t| t.rids.len() == 3) {
            c.send(R::SetLayer(pb::SetLayer {
                track: t.track.clone(),
                rid: RIDS[layer].to_owned(),
            }))
            .await;
        }
    }
    PC_KEEP.lock().unwrap().push((c.pc, c.tx));
}

fn token(key: &TokenKey, identity: &str, room: &str, publish: bool, subscribe: bool) -> String {
    veil_testkit::token::mint_with(
        key,
        room,
        identity,
        veil_testkit::token::joiner(publish, subscribe),
        0,
        Duration::from_secs(3600),
    )
}

// ---- processes and CPU time ------------------------------------------------------------------

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: &str, tick: f64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / tick
}

/// (worker index, CPU seconds) of each edge worker thread of `pid` (named `sfu-edge-N`),
/// by index.
fn edge_threads(pid: &str, tick: f64) -> Vec<(usize, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, f64)> = tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let w = comm.trim().strip_prefix("sfu-edge-")?.parse().ok()?;
            let tid = t.file_name().into_string().ok()?;
            Some((w, cpu_seconds(&format!("{pid}/task/{tid}"), tick)))
        })
        .collect();
    out.sort_by_key(|(w, _)| *w);
    out
}

fn clock_tick() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A child process pinned to `cpus` (a `taskset` list; `None`: not pinned), killed when
/// dropped.
async fn spawn_pinned(
    cpus: Option<&str>,
    program: &std::path::Path,
    args: &[&str],
    stderr: Stdio,
) -> (tokio::process::Child, String) {
    let mut cmd = if let Some(cpus) = cpus {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", cpus]).arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    };
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("child start-up")
        .unwrap()
        .expect("child printed its address");
    // Keep draining stdout so the child never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
}

/// Sum of the samples of `name` at `http://addr/metrics`, if the endpoint has it.
async fn metric(addr: Option<SocketAddr>, name: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(addr?).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let v: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

// ---- runs ------------------------------------------------------------------------------------

struct Scenario {
    /// Per room.
    publishers: usize,
    subscribers: usize,
    /// Rooms of `publishers` × `subscribers` each (`--rooms`); the relay rows run one.
    rooms: usize,
    window: Duration,
    pinned: bool,
    tick: f64,
    /// CPUs on this machine.
    cpus: usize,
}

struct Measured {
    path: String,
    /// Rooms it carried.
    rooms: usize,
    stats: Arc<Stats>,
    expected: u64,
    w: Window,
    notes: String,
}

/// What the measured window cost.
struct Window {
    /// Seconds of CPU: the server (or relay) child, and this load generator.
    server_cpu: f64,
    generator_cpu: f64,
    /// The SFU's own `veil_sfu_forwarded_packets_total` over the window, if exported.
    counter: Option<f64>,
    warm_up: Duration,
    /// Busy fraction of CPU 0 and CPU 1, all processes (other work on the machine shows here).
    busy: [f64; 2],
    /// Datagrams the kernel dropped for full UDP receive buffers (system-wide).
    udp_drops: u64,
    /// CPU seconds of each of the server's edge worker threads (`sfu-edge-*`) over the
    /// window, by worker index; empty for the relays.
    edge_threads: Vec<f64>,
}

/// (busy, total) jiffies of CPU 0 and CPU 1 from `/proc/stat`.
fn cpu_jiffies() -> [(u64, u64); 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = [(0, 0); 2];
    for (i, o) in out.iter_mut().enumerate() {
        let prefix = format!("cpu{i} ");
        if let Some(l) = stat.lines().find(|l| l.starts_with(&prefix)) {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            *o = (total - idle, total);
        }
    }
    out
}

/// `Udp: RcvbufErrors` from `/proc/net/snmp`.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (Some(names), Some(values)) = (udp.first(), udp.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Wait until every subscriber has seen every stream it should get (bit masks), then measure
/// one window.
async fn measure(
    sc: &Scenario,
    stats: &Arc<Stats>,
    want: impl Fn(usize) -> u64,
    pids: &[String],
    metrics: Option<SocketAddr>,
) -> Window {
    // Every server process of the row (two nodes for `--cascade`), summed.
    let cpu = || pids.iter().map(|p| cpu_seconds(p, sc.tick)).sum::<f64>();
    let threads = || {
        pids.iter()
            .enumerate()
            .flat_map(|(k, p)| {
                edge_threads(p, sc.tick)
                    .into_iter()
                    .map(move |(w, c)| (k * 1000 + w, c))
            })
            .collect::<Vec<_>>()
    };
    let t = Instant::now();
    // Warm when, in each of two seconds in a row, every subscriber received every stream it
    // asked for. A layer that arrived once and then gave way to a lower one does not count:
    // the SFU forwards the layer asked for until a leg's first estimate, which may then be
    // below it until GCC has grown.
    let mut passed = 0;
    loop {
        for s in &stats.seen {
            s.store(0, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let subscribers = stats.seen.len();
        if (0..subscribers).all(|s| stats.seen[s].load(Ordering::Relaxed) & want(s) == want(s)) {
            passed += 1;
            if passed == 2 {
                break;
            }
            continue;
        }
        passed = 0;
        if t.elapsed() > WARM_UP {
            let missing: Vec<(usize, u32)> = (0..subscribers)
                .map(|s| {
                    (
                        s,
                        (want(s) & !stats.seen[s].load(Ordering::Relaxed)).count_ones(),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            panic!("warm-up: not every stream arrived; (subscriber, streams missing): {missing:?}");
        }
    }
    // Let the last layer switches settle, then fix the window in the near future.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm_up = t.elapsed();
    let start = now_us() + 100_000;
    let end = start + sc.window.as_micros() as u64;
    stats.start.store(start, Ordering::Relaxed);
    stats.end.store(end, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_micros(start - now_us())).await;
    let (s0, g0) = (cpu(), cpu_seconds("self", sc.tick));
    let (j0, d0) = (cpu_jiffies(), udp_rcvbuf_errors());
    let t0 = threads();
    let c0 = metric(metrics, "veil_sfu_forwarded_packets_total").await;
    tokio::time::sleep(Duration::from_micros(end.saturating_sub(now_us()))).await;
    let (s1, g1) = (cpu(), cpu_seconds("self", sc.tick));
    let (j1, d1) = (cpu_jiffies(), udp_rcvbuf_errors());
    let t1 = threads();
    let c1 = metric(metrics, "veil_sfu_forwarded_packets_total").await;
    if std::env::var_os("SFU_LOAD_METRICS").is_some()
        && let Some(addr) = metrics
        && let Ok(mut s) = tokio::net::TcpStream::connect(addr).await
    {
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        for l in body
            .lines()
            .filter(|l| l.starts_with("veil_sfu_") && !l.ends_with(" 0"))
        {
            eprintln!("metrics: {l}");
        }
    }
    // Stragglers: packets sent at the end of the window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = |i: usize| (j1[i].0 - j0[i].0) as f64 / (j1[i].1 - j0[i].1).max(1) as f64;
    Window {
        server_cpu: s1 - s0,
        generator_cpu: g1 - g0,
        counter: c0.zip(c1).map(|(a, b)| b - a),
        warm_up,
        busy: [busy(0), busy(1)],
        udp_drops: d1 - d0,
        edge_threads: t1
            .iter()
            .map(|(w, c)| {
                let before = t0.iter().find(|(v, _)| v == w).map_or(0.0, |(_, c)| *c);
                c - before
            })
            .collect(),
    }
}

/// The `veil-server` binary of this build, and its row label.
fn this_server() -> (std::path::PathBuf, String) {
    (
        env!("CARGO_BIN_EXE_veil-server").into(),
        "veil-server SFU".to_owned(),
    )
}

/// The CPUs a server child may use: CPU 0, or with `--workers N` CPUs 0..N-1 (as many as the
/// machine has); the load generator stays on CPU 1.
fn server_cpus(sc: &Scenario, workers: Option<usize>) -> Option<String> {
    sc.pinned.then(|| {
        let n = workers.unwrap_or(1).clamp(1, sc.cpus);
        (0..n).map(|c| c.to_string()).collect::<Vec<_>>().join(",")
    })
}

/// Run one point through `server`, with `--sfu-workers workers` if given (else the server's
/// default).
async fn run_sfu(
    sc: &Scenario,
    n: usize,
    server: &(std::path::PathBuf, String),
    workers: Option<usize>,
) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let secret = "42".repeat(32);
    let key = TokenKey::parse(&format!("bench:{secret}")).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let data = dir.path().join("data");
    let token_key = format!("bench:{secret}");
    let workers_arg = workers.map(|w| w.to_string());
    let mut args = vec![
        "serve",
        "--role",
        "sfu",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--token-key",
        &token_key,
    ];
    if let Some(w) = &workers_arg {
        args.extend(["--sfu-workers", w]);
    }
    let cpus = server_cpus(sc, workers);
    let (child, line) = spawn_pinned(cpus.as_deref(), &server.0, &args, Stdio::from(log)).await;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<SocketAddr>().ok())
    };
    let grpc = field("grpc=").expect("grpc address");
    let metrics = field("metrics=");
    let pid = child.id().unwrap().to_string();
    let stats = Stats::new(sc.rooms, sc.publishers, sc.subscribers);
    let stop = Arc::new(AtomicBool::new(false));

    // Room r has publishers r·P.. and subscribers r·S..; ids, SSRCs and stream ids are global.
    let mut senders = Vec::new();
    for r in 0..sc.rooms {
        let room = format!("load{n}-{r}");
        for p in r * sc.publishers..(r + 1) * sc.publishers {
            let out = join_publisher(grpc, &key, &room, p).await;
            senders.push(tokio::spawn(publish(out, p, stats.clone(), stop.clone())));
        }
        for s in r * sc.subscribers..(r + 1) * sc.subscribers {
            join_subscriber(grpc, &key, &room, s, sc.publishers, stats.clone()).await;
        }
    }
    // A subscriber's mask, in its room's stream ids (`Stats::room_streams`).
    let want = |s: usize| {
        (0..sc.publishers)
            .map(|p| {
                let b = p * STREAMS_PER_PUBLISHER;
                (1u64 << b) | (1u64 << (b + 1 + layer_of(s)))
            })
            .fold(0, |a, m| a | m)
    };
    let w = measure(sc, &stats, want, &[pid], metrics).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    let expected = (0..sc.rooms * sc.subscribers)
        .map(|s| {
            let r = s / sc.subscribers;
            (r * sc.publishers..(r + 1) * sc.publishers)
                .map(|p| {
                    let b = p * STREAMS_PER_PUBLISHER;
                    stats.sent[b].load(Ordering::Relaxed)
                        + stats.sent[b + 1 + layer_of(s)].load(Ordering::Relaxed)
                })
                .sum::<u64>()
        })
        .sum();
    drop(child);
    let keep: Vec<Keep> = std::mem::take(&mut *PC_KEEP.lock().unwrap());
    for (pc, _) in keep {
        let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    Measured {
        path: match workers {
            Some(1) => format!("{} (1 worker)", server.1),
            Some(w) => format!("{} ({w} workers)", server.1),
            None => server.1.clone(),
        },
        rooms: sc.rooms,
        stats,
        expected,
        w,
        notes: log_summary(&log),
    }
}

/// `--cascade` (specs/sfu.md SFU-CAS-01..07): one point through two `veil-server` nodes on one
/// PostgreSQL database (key service and SFU each, as a deployment runs them), both pinned
/// where the single server is: the publishers join the first node, the subscribers the
/// second, so every forwarded packet crosses the node-to-node leg. The CPU is both
/// processes' together.
async fn run_cascade(sc: &Scenario, n: usize) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let secret = "42".repeat(32);
    let key = TokenKey::parse(&format!("bench:{secret}")).unwrap();
    let token_key = format!("bench:{secret}");
    let db = veil_testkit::postgres::TempPostgres::shared().database();
    let cpus = server_cpus(sc, None);
    let (mut children, mut grpcs, mut pids) = (Vec::new(), Vec::new(), Vec::new());
    for node in 0..2 {
        let log = std::fs::File::create(dir.path().join(format!("node{node}.log"))).unwrap();
        let data = dir.path().join(format!("data{node}"));
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--token-key",
            &token_key,
            "--database",
            &db,
        ];
        let (child, line) =
            spawn_pinned(cpus.as_deref(), &this_server().0, &args, Stdio::from(log)).await;
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .expect("grpc address");
        pids.push(child.id().unwrap().to_string());
        grpcs.push(grpc);
        children.push(child);
    }
    let stats = Stats::new(1, sc.publishers, sc.subscribers);
    let stop = Arc::new(AtomicBool::new(false));
    let room = format!("cascade{n}");
    let mut senders = Vec::new();
    for p in 0..sc.publishers {
        let out = join_publisher(grpcs[0], &key, &room, p).await;
        senders.push(tokio::spawn(publish(out, p, stats.clone(), stop.clone())));
    }
    for s in 0..sc.subscribers {
        join_subscriber(grpcs[1], &key, &room, s, sc.publishers, stats.clone()).await;
    }
    let want = |s: usize| {
        (0..sc.publishers)
            .map(|p| {
                let b = p * STREAMS_PER_PUBLISHER;
                (1u64 << b) | (1u64 << (b + 1 + layer_of(s)))
            })
            .fold(0, |a, m| a | m)
    };
    let w = measure(sc, &stats, want, &pids, None).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    let expected = (0..sc.subscribers)
        .map(|s| {
            (0..sc.publishers)
                .map(|p| {
                    let b = p * STREAMS_PER_PUBLISHER;
                    stats.sent[b].load(Ordering::Relaxed)
                        + stats.sent[b + 1 + layer_of(s)].load(Ordering::Relaxed)
                })
                .sum::<u64>()
        })
        .sum();
    drop(children);
    let keep: Vec<Keep> = std::mem::take(&mut *PC_KEEP.lock().unwrap());
    for (pc, _) in keep {
        let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    }
    let log = (0..2)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("node{i}.log"))).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n");
    Measured {
        path: "veil-server SFU, two nodes over a leg".to_owned(),
        rooms: 1,
        stats,
        expected,
        w,
        notes: log_summary(&log),
    }
}

/// The server's warnings and errors, grouped by target and message start.
fn log_summary(log: &str) -> String {
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for l in log.lines() {
        if let Some(i) = l.find(" WARN ").or_else(|| l.find(" ERROR ")) {
            let msg: String = l[i + 1..].chars().take(90).collect();
            *seen.entry(msg).or_default() += 1;
        }
    }
    seen.iter()
        .map(|(m, n)| format!("{n} × `{m}…`"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run_relay(sc: &Scenario, batched: bool) -> Measured {
    let exe = std::env::current_exe().unwrap();
    let mode = if batched {
        "--relay-batched"
    } else {
        "--relay"
    };
    let cpus = sc.pinned.then_some("0");
    let (child, line) = spawn_pinned(cpus, &exe, &[mode], Stdio::inherit()).await;
    let relay: SocketAddr = line
        .strip_prefix("relay ")
        .and_then(|a| a.parse().ok())
        .expect("relay address");
    let pid = child.id().unwrap().to_string();
    let stats = Stats::new(1, sc.publishers, sc.subscribers);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..sc.subscribers {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (stats, stop) = (stats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                // Register (again, in case the first hello was lost) until media flows.
                if stats.seen[s].load(Ordering::Relaxed) == 0 {
                    let _ = sock.send_to(&[0], relay).await;
                }
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await
                    && n > 12
                {
                    stats.receive(s, &buf[12..n]);
                }
            }
        }));
    }
    let mut senders = Vec::new();
    for p in 0..sc.publishers {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let out = Out::Udp(sock, relay);
        senders.push(tokio::spawn(publish(out, p, stats.clone(), stop.clone())));
    }
    let all = u64::MAX >> (64 - sc.publishers * STREAMS_PER_PUBLISHER);
    let w = measure(sc, &stats, |_| all, std::slice::from_ref(&pid), None).await;
    stop.store(true, Ordering::Relaxed);
    for t in senders.into_iter().chain(tasks) {
        let _ = t.await;
    }
    drop(child);
    let expected = stats.total_sent() * sc.subscribers as u64;
    Measured {
        path: if batched {
            "batched UDP relay".to_owned()
        } else {
            "plain UDP relay".to_owned()
        },
        rooms: 1,
        stats,
        expected,
        w,
        notes: String::new(),
    }
}

/// The baseline relay: every datagram from a publisher goes to every registered subscriber (a
/// one-byte datagram registers its sender). Runs until killed.
fn relay() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    println!("relay {}", sock.local_addr().unwrap());
    let mut subscribers: Vec<SocketAddr> = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if n == 1 {
            if !subscribers.contains(&from) {
                subscribers.push(from);
            }
            continue;
        }
        for to in &subscribers {
            let _ = sock.send_to(&buf[..n], to);
        }
    }
}

/// The relay with the edge's batched I/O (specs/sfu.md SFU-EDGE-15): the same forwarding, but
/// datagrams are read with `recvmmsg` (up to 32 a call) and what one read produced is sent
/// grouped per subscriber, consecutive datagrams of equal size (the last may be shorter) as one
/// UDP GSO send (`quinn-udp`). Runs until killed.
fn relay_batched() {
    use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    println!("relay {}", sock.local_addr().unwrap());
    let state = UdpSocketState::new((&sock).into()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sock = UdpSocket::from_std(sock).unwrap();
        let mut subscribers: Vec<SocketAddr> = Vec::new();
        // 64 KiB each: a GRO read (the kernel's coalescing, on) may hold several datagrams.
        let mut bufs = vec![vec![0u8; 1 << 16]; 32];
        let mut meta = vec![RecvMeta::default(); 32];
        let mut gso: Vec<u8> = Vec::with_capacity(65_536);
        let mut media: Vec<(usize, usize, usize)> = Vec::new();
        loop {
            if sock.readable().await.is_err() {
                continue;
            }
            let got = {
                let mut slices: Vec<std::io::IoSliceMut<'_>> = bufs
                    .iter_mut()
                    .map(|b| std::io::IoSliceMut::new(b))
                    .collect();
                sock.try_io(tokio::io::Interest::READABLE, || {
                    state.recv(UdpSockRef::from(&sock), &mut slices, &mut meta)
                })
            };
            let Ok(n) = got else { continue };
            // (buffer, start, length) of each media datagram, in the order read.
            media.clear();
            for (b, m) in meta[..n].iter().enumerate() {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let mut at = 0;
                while at < m.len {
                    let len = stride.min(m.len - at);
                    if len == 1 {
                        if !subscribers.contains(&m.addr) {
                            subscribers.push(m.addr);
                        }
                    } else {
                        media.push((b, at, len));
                    }
                    at += len;
                }
            }
            let max = state.max_gso_segments().max(1);
            for to in &subscribers {
                let mut i = 0;
                while i < media.len() {
                    let size = media[i].2;
                    let mut j = i + 1;
                    while j < media.len() && j - i < max && media[j].2 == size {
                        j += 1;
                    }
                    if j < media.len() && j - i < max && media[j].2 < size {
                        j += 1;
                    }
                    let contents: &[u8] = if j - i == 1 {
                        let (b, at, len) = media[i];
                        &bufs[b][at..at + len]
                    } else {
                        gso.clear();
                        for &(b, at, len) in &media[i..j] {
                            gso.extend_from_slice(&bufs[b][at..at + len]);
                        }
                        &gso
                    };
                    let t = Transmit {
                        destination: *to,
                        ecn: None,
                        contents,
                        segment_size: (j - i > 1).then_some(size),
                        src_ip: None,
                    };
                    loop {
                        match sock.try_io(tokio::io::Interest::WRITABLE, || {
                            state.try_send(UdpSockRef::from(&sock), &t)
                        }) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                let _ = sock.writable().await;
                            }
                            _ => break,
                        }
                    }
                    i = j;
                }
            }
        }
    });
}

// ---- output ----------------------------------------------------------------------------------

fn row(sc: &Scenario, m: &Measured) -> f64 {
    let secs = sc.window.as_secs_f64();
    let received = m.stats.received.load(Ordering::Relaxed);
    let per_cpu = received as f64 / m.w.server_cpu.max(1e-9);
    let loss = m.expected.saturating_sub(received) as f64 / m.expected.max(1) as f64;
    let h = m.stats.latency.lock().unwrap();
    let ms = |q: f64| format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0);
    let threads = if m.w.edge_threads.is_empty() {
        "–".to_owned()
    } else {
        m.w.edge_threads
            .iter()
            .map(|c| format!("{:.0} %", 100.0 * c / secs))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} % | {:.0} | {} | {} | {} | {:.3} % | {:.0} % | {:.0} % / {:.0} % | {threads} |",
        m.path,
        point(sc, m.rooms),
        m.stats.total_sent() as f64 / secs,
        received as f64 / secs,
        100.0 * m.w.server_cpu / secs,
        per_cpu,
        ms(0.5),
        ms(0.99),
        ms(1.0),
        100.0 * loss,
        100.0 * m.w.generator_cpu / secs,
        100.0 * m.w.busy[0],
        100.0 * m.w.busy[1],
    );
    per_cpu
}

/// `P×S`, or `R×(P×S)` for R rooms.
fn point(sc: &Scenario, rooms: usize) -> String {
    if rooms == 1 {
        format!("{}×{}", sc.publishers, sc.subscribers)
    } else {
        format!("{rooms}×({}×{})", sc.publishers, sc.subscribers)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--relay") {
        relay();
        return;
    }
    if std::env::args().any(|a| a == "--relay-batched") {
        relay_batched();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // Pin this process (all threads to come) to CPU 1 before the runtime starts; the children
    // go to CPU 0.
    let pinned = cpus >= 2
        && std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(quick, pinned));
}

/// What may make a row unreliable: a saturated core, other work on the machine, kernel drops.
fn warnings(sc: &Scenario, m: &Measured) -> Vec<String> {
    let secs = sc.window.as_secs_f64();
    let (server, generator) = (m.w.server_cpu / secs, m.w.generator_cpu / secs);
    let mut out = Vec::new();
    let mut say = |what: String| {
        out.push(format!("{} {}: {what}", point(sc, m.rooms), m.path));
    };
    // A server on both CPUs (`--workers 2`) shows in both busy figures: compare the sums.
    let other = if m.w.edge_threads.len() > 1 {
        m.w.busy[0] + m.w.busy[1] - server - generator
    } else {
        (m.w.busy[0] - server).max(m.w.busy[1] - generator)
    };
    // The server saturates when one edge thread does, whatever the process total.
    let thread = m.w.edge_threads.iter().fold(0.0f64, |a, c| a.max(c / secs));
    let server = server.min(1.0).max(thread);
    if other > 0.2 {
        say(format!(
            "other processes shared the cores (CPU 0 / CPU 1 {:.0} % / {:.0} % busy, of which \
             the server {:.0} % and the generator {:.0} %): a noisy row, latency most of all",
            100.0 * m.w.busy[0],
            100.0 * m.w.busy[1],
            100.0 * server,
            100.0 * generator
        ));
    } else if server > 0.9 || generator > 0.9 {
        say(format!(
            "a core saturated (server {:.0} %, generator {:.0} %): {} limits this row",
            100.0 * server,
            100.0 * generator,
            if server >= generator {
                "the server"
            } else {
                "the load generator"
            }
        ));
    }
    if m.w.udp_drops > 0 {
        say(format!(
            "the kernel dropped {} datagrams for full UDP receive buffers (system-wide)",
            m.w.udp_drops
        ));
    }
    out
}

/// `--workers 1,2`: run each point through this build once per worker count
/// (`--sfu-workers`), the server on CPUs 0..N-1; without it, once with the server's default.
fn workers() -> Vec<Option<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--workers") else {
        return vec![None];
    };
    args.get(i + 1)
        .expect("--workers N,N")
        .split(',')
        .map(|w| Some(w.parse().expect("--workers N,N")))
        .collect()
}

/// `--rooms R`: each point is R rooms of P×S (default 1); the relays run only for one room.
fn rooms() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--rooms")
        .map_or(1, |i| args[i + 1].parse().expect("--rooms R"))
}

/// `--compare PATH`: another `veil-server` binary to measure beside this build's.
fn compare() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--compare")?;
    let bin = std::path::PathBuf::from(args.get(i + 1).expect("--compare PATH"));
    assert!(bin.is_file(), "--compare {}: no such file", bin.display());
    Some(bin)
}

/// `--points 10x10,12x20` overrides the default scenarios.
fn points(quick: bool) -> Vec<(usize, usize)> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--points") {
        return args[i + 1]
            .split(',')
            .map(|p| {
                let (a, b) = p.split_once('x').expect("--points PxS,PxS");
                let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
                // Stream ids live in a 64-bit mask: 4 per publisher.
                assert!(
                    (1..=16).contains(&a) && b >= 1,
                    "1..=16 publishers, 1+ subscribers"
                );
                (a, b)
            })
            .collect();
    }
    if quick {
        vec![(1, 10), (5, 5)]
    } else {
        vec![(1, 10), (5, 5), (10, 10), (12, 20)]
    }
}

async fn bench(quick: bool, pinned: bool) {
    now_us();
    let tick = clock_tick();
    let window = Duration::from_secs(if quick { 4 } else { 10 });
    let points = points(quick);
    let (workers, rooms) = (workers(), rooms());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "server (SFU or relay) on CPU 0 (an SFU with --workers N on CPUs 0..N-1), load generator \
         on CPU 1: {}; window {} s per row; {rooms} room(s) per point",
        if pinned {
            "pinned"
        } else {
            "NOT pinned (fewer than 2 CPUs or no taskset)"
        },
        window.as_secs()
    );
    println!();
    println!(
        "| path | P×S | offered pps | forwarded pps | server CPU | forwarded pkts / server CPU-s | latency p50 | p99 | max | loss | generator CPU | CPU 0 / CPU 1 busy (all processes) | edge threads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for (n, (publishers, subscribers)) in points.into_iter().enumerate() {
        let sc = Scenario {
            publishers,
            subscribers,
            rooms,
            window,
            pinned,
            tick,
            cpus,
        };
        let mut sfus = Vec::new();
        for (k, &w) in workers.iter().enumerate() {
            let m = run_sfu(&sc, n * workers.len() + k, &this_server(), w).await;
            sfus.push((row(&sc, &m), m));
        }
        let other = match compare() {
            Some(bin) => {
                let label = format!("veil-server SFU ({})", bin.display());
                let m = run_sfu(&sc, n, &(bin, label), None).await;
                Some((row(&sc, &m), m))
            }
            None => None,
        };
        // The relays forward one room's schedule.
        let relays = if rooms == 1 {
            let relay = run_relay(&sc, false).await;
            let b = row(&sc, &relay);
            let batched = run_relay(&sc, true).await;
            let bb = row(&sc, &batched);
            Some(((b, relay), (bb, batched)))
        } else {
            None
        };
        let at = point(&sc, rooms);
        if std::env::args().any(|a| a == "--cascade") {
            let m = run_cascade(&sc, n).await;
            let c = row(&sc, &m);
            if let Some((a, _)) = sfus.first() {
                notes.push(format!(
                    "{at}: across a node-to-node leg {c:.0} forwarded packets per CPU-second of \
                     both nodes, {:.2}× what one node does with every participant on it (this \
                     point's first row); warm-up {:.1} s",
                    c / a,
                    m.w.warm_up.as_secs_f64()
                ));
            }
            notes.extend(warnings(&sc, &m));
        }
        for (a, sfu) in &sfus {
            let vs_relays = relays.as_ref().map_or_else(String::new, |((b, _), (bb, _))| {
                format!(
                    "forwards {:.0} % of the relay's packets per CPU-second (relay/SFU {:.1}×), \
                     {:.0} % of the batched relay's (batched/SFU {:.1}×); ",
                    100.0 * a / b,
                    b / a,
                    100.0 * a / bb,
                    bb / a,
                )
            });
            notes.push(format!(
                "{at} {}: {vs_relays}warm-up {:.1} s; SFU counter {}{}",
                sfu.path,
                sfu.w.warm_up.as_secs_f64(),
                sfu.w.counter.map_or_else(
                    || "n/a (veil-server's /metrics does not export veil_sfu_*)".to_owned(),
                    |c| format!("{:.0} in the window", c)
                ),
                if sfu.notes.is_empty() {
                    String::new()
                } else {
                    format!("; server log: {}", sfu.notes)
                },
            ));
        }
        notes.extend(scaling(&sc, &sfus));
        if let (Some((o, m)), Some((a, first))) = (&other, sfus.first()) {
            notes.push(format!(
                "{at}: {} / {}: {:.2}× the packets per CPU-second",
                first.path,
                m.path,
                a / o
            ));
            notes.extend(warnings(&sc, m));
        }
        for (_, m) in &sfus {
            notes.extend(warnings(&sc, m));
        }
        if let Some(((_, relay), (_, batched))) = &relays {
            notes.extend(warnings(&sc, relay));
            notes.extend(warnings(&sc, batched));
        }
    }
    println!();
    for n in notes {
        println!("- {n}");
    }
}

/// The worker rows of one point side by side: forwarded packets per second and per CPU-second,
/// the busiest edge thread, and what the busiest thread's share says the process could
/// forward before that thread's core saturates (forwarded pps / its share of one core).
fn scaling(sc: &Scenario, sfus: &[(f64, Measured)]) -> Vec<String> {
    if sfus.len() < 2 {
        return Vec::new();
    }
    let secs = sc.window.as_secs_f64();
    let parts: Vec<String> = sfus
        .iter()
        .map(|(per_cpu, m)| {
            let pps = m.stats.received.load(Ordering::Relaxed) as f64 / secs;
            let busiest = m.w.edge_threads.iter().fold(0.0f64, |a, c| a.max(c / secs));
            format!(
                "{}: {pps:.0} pps, {per_cpu:.0} per CPU-s, busiest edge thread {:.0} % \
                 (≈ {:.0} pps when it saturates)",
                m.path,
                100.0 * busiest,
                pps / busiest.max(1e-9)
            )
        })
        .collect();
    vec![format!(
        "{}: {}",
        point(sc, sfus[0].1.rooms),
        parts.join("; ")
    )]
}
