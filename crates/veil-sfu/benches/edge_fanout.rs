//! What forwarding one packet to one subscriber costs on the SFU's one-socket edge (a bench
//! binary, not a timed test), bare and with the whole SFU on it, measured in the same run.
//!
//! - One publisher (a webrtc-rs peer) sends `--pps` packets a second of `--size` bytes on one
//!   track; `--subscribers` webrtc-rs peers each receive every one of them.
//! - The forwarder under test runs on its own thread ("fwd"), pinned to CPU 0; the peers run on
//!   CPU 1. Its CPU time is read from `/proc/self/task/*/stat` (every thread named "fwd").
//! - `edge`: one UDP socket and one [`Edge`]; each packet is rewritten (SSRC, payload type) and
//!   written to every subscriber's connection, and each connection is drained once per
//!   received packet. No routing core: the floor the SFU stands on.
//! - `room`: the SFU's rooms on the edge ([`EdgeRooms`], with its routing core, metrics and
//!   congestion control), joined and subscribed through its sans-I/O API.
//!
//! `cargo bench -p veil-sfu --bench edge_fanout` (`-- --subscribers 20 --pps 1000 --size 1000`;
//! `-- --only edge` runs one forwarder, e.g. under `perf`)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, oneshot, watch};
use veil_sfu::SfuConfig;
use veil_sfu::connection::peer::{self, OPUS_PT};
use veil_sfu::edge::{Edge, EdgeEvent, EdgeRoomEvent, EdgeRooms, SansIo};
use veil_sfu::routing::MediaKind;
use veil_testkit::webrtc::{Events, Handler, OnTrack, loopback_addrs};
use webrtc::media_stream::track_local::TrackLocal as _;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, RTCPeerConnectionState};

const WAIT: Duration = Duration::from_secs(20);
const PUBLISHER_SSRC: u32 = 0x00C0_FFEE;

/// Signalling between the peers and the forwarder under test.
enum Cmd {
    /// A participant's offer; the reply is the answer. The first to join publishes.
    Join(String, oneshot::Sender<String>),
    /// Add a track to subscriber `n` (join order); the reply is the forwarder's offer.
    Subscribe(usize, oneshot::Sender<String>),
    /// Subscriber `n`'s answer to that offer.
    Answer(usize, String, oneshot::Sender<()>),
}

fn out_ssrc(n: usize) -> u32 {
    0x5000_0000 + n as u32
}

fn pin(what: &str, cpu: u32) -> bool {
    let id = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let Some(id) = id else { return false };
    let flag = if what == "process" { "-a" } else { "" };
    std::process::Command::new("taskset")
        .args(
            [flag, "-p", "-c", &cpu.to_string(), &id]
                .iter()
                .filter(|a| !a.is_empty()),
        )
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CPU seconds of every thread named "fwd".
fn fwd_cpu() -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut sum = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fwd") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |r| r.1);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        sum += get(14) + get(15);
    }
    sum as f64 / tick
}

// ---- the forwarder on the sans-I/O edge -------------------------------------------------

fn run_edge(mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut edge = Edge::new(local, Instant::now(), [7; 32]);
    let mut conns = Vec::new();
    let mut senders = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        match cmds.try_recv() {
            Ok(Cmd::Join(offer, reply)) => {
                let (id, answer) = edge.accept(now, &offer).unwrap();
                conns.push(id);
                let _ = reply.send(answer);
            }
            Ok(Cmd::Subscribe(n, reply)) => {
                let codec = peer::codec(MediaKind::Audio);
                let s = edge
                    .add_track(conns[n], "fwd", MediaKind::Audio, out_ssrc(n), None, codec)
                    .unwrap();
                senders.push((conns[n], s, out_ssrc(n)));
                let _ = reply.send(edge.offer(now, conns[n]).unwrap());
            }
            Ok(Cmd::Answer(n, sdp, reply)) => {
                edge.answer(now, conns[n], &sdp).unwrap();
                let _ = reply.send(());
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        while let Some((id, ev)) = edge.poll_event() {
            if let EdgeEvent::Rtp { packet, .. } = ev
                && Some(&id) == conns.first()
            {
                for (conn, sender, ssrc) in &senders {
                    let mut p = packet.clone();
                    p.header.ssrc = *ssrc;
                    p.header.payload_type = OPUS_PT;
                    let _ = edge.write_rtp(now, *conn, *sender, p);
                }
            }
        }
        io_turn(&mut edge, &sock, &mut buf, now);
    }
}

/// One turn of a forwarder's loop: send what is queued, then wait (at most 5 ms, and no longer
/// than its next timer) for a datagram, and run the timers that are due.
fn io_turn(s: &mut impl SansIo, sock: &std::net::UdpSocket, buf: &mut [u8], now: Instant) {
    while let Some((to, bytes)) = s.poll_transmit() {
        let _ = sock.send_to(&bytes, to);
    }
    let wait = s
        .poll_timeout()
        .map_or(Duration::from_millis(5), |t| {
            t.saturating_duration_since(now)
        })
        .clamp(Duration::from_millis(1), Duration::from_millis(5));
    sock.set_read_timeout(Some(wait)).unwrap();
    match sock.recv_from(buf) {
        Ok((n, from)) => s.handle_datagram(Instant::now(), from, &buf[..n]),
        Err(_) => s.handle_timeout(Instant::now()),
    }
    if s.poll_timeout().is_some_and(|t| t <= Instant::now()) {
        s.handle_timeout(Instant::now());
    }
}

// ---- the peers and the measurement ---------------------------------------------------------

/// A peer's subscriber connection counts what it receives in `count`.
fn on_track(count: Option<Arc<AtomicU64>>) -> OnTrack {
    Box::new(move |track: Arc<dyn TrackRemote>| {
        let count = count.clone();
        Box::pin(async move {
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    if let (TrackRemoteEvent::OnRtpPacket(_), Some(c)) = (ev, &count) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        })
    })
}

struct Pc {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

async fn pc(count: Option<Arc<AtomicU64>>) -> Pc {
    let (handler, Events { gathered, state }) = Handler::new(Some(on_track(count)));
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
    Pc {
        pc,
        gathered,
        state,
    }
}

impl Pc {
    async fn local_sdp(&mut self) -> String {
        tokio::time::timeout(WAIT, self.gathered.wait_for(|g| *g))
            .await
            .expect("gathering")
            .unwrap();
        self.pc.local_description().await.unwrap().sdp
    }

    async fn connected(&mut self) {
        tokio::time::timeout(
            WAIT,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .expect("connection")
        .unwrap();
    }
}

fn audio_track(id: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{id}-stream"),
        id.to_owned(),
        id.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: peer::codec(MediaKind::Audio),
            ..Default::default()
        }],
    )))
}

fn sendonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        ..Default::default()
    })
}

// ---- the whole SFU on the edge ----------------------------------------------------------

fn run_room(mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut room = EdgeRooms::new(
        sock.local_addr().unwrap(),
        SfuConfig::default(),
        Instant::now(),
        [7; 32],
    );
    let mut conns = Vec::new();
    let mut track = None;
    let mut waiting: Option<(usize, oneshot::Sender<String>)> = None;
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        while let Some(ev) = room.poll_event() {
            if let EdgeRoomEvent::Published { track: t, .. } = ev {
                track = Some(t);
            }
        }
        if let (Some(t), Some((n, reply))) = (track, waiting.take()) {
            room.subscribe(now, conns[n], t).unwrap();
            let offer = std::iter::from_fn(|| room.poll_event()).find_map(|e| match e {
                EdgeRoomEvent::Offer { sdp, .. } => Some(sdp),
                _ => None,
            });
            let _ = reply.send(offer.unwrap());
        }
        match cmds.try_recv() {
            Ok(Cmd::Join(offer, reply)) => {
                let (id, answer) = room.join(now, "bench", "p", &offer, true).unwrap();
                conns.push(id);
                let _ = reply.send(answer);
            }
            // Once the publisher's track is published.
            Ok(Cmd::Subscribe(n, reply)) => waiting = Some((n, reply)),
            Ok(Cmd::Answer(n, sdp, reply)) => {
                room.answer(now, conns[n], &sdp).unwrap();
                let _ = reply.send(());
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        io_turn(&mut room, &sock, &mut buf, now);
    }
}

struct Args {
    subscribers: usize,
    pps: u64,
    size: usize,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    Args {
        subscribers: get("--subscribers", 20) as usize,
        pps: get("--pps", 1000),
        size: get("--size", 1000) as usize,
    }
}

async fn ask<T>(cmds: &mpsc::UnboundedSender<Cmd>, f: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> T {
    let (tx, rx) = oneshot::channel();
    assert!(cmds.send(f(tx)).is_ok(), "forwarder gone");
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("forwarder answered")
        .unwrap()
}

/// One run through the forwarder `mode`: (forwarded packets per second, forwarder CPU share).
async fn measure(mode: &'static str, a: &Args) -> (f64, f64) {
    let (cmds, rx) = mpsc::unbounded_channel();
    let fwd = std::thread::Builder::new()
        .name("fwd".to_owned())
        .spawn(move || {
            pin("thread", 0);
            match mode {
                "edge" => run_edge(rx),
                _ => run_room(rx),
            }
        })
        .unwrap();

    // The publisher.
    let mut publisher = pc(None).await;
    let track = audio_track("mic", PUBLISHER_SSRC);
    publisher
        .pc
        .add_transceiver_from_track(track.clone(), sendonly())
        .await
        .unwrap();
    let offer = publisher.pc.create_offer(None).await.unwrap();
    publisher.pc.set_local_description(offer).await.unwrap();
    let offer = publisher.local_sdp().await;
    let answer = ask(&cmds, |r| Cmd::Join(offer, r)).await;
    publisher
        .pc
        .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    publisher.connected().await;

    // Send at the rate from now on (the SFU publishes a track when its first packet arrives), until every subscriber receives; then measure a window.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, size, pps) = (stop.clone(), a.size, a.pps);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (pps / 100).max(1);
            let mut seq = 0u16;
            let body = Bytes::from(vec![0x5A; size]);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    let header = rtp::header::Header {
                        version: 2,
                        payload_type: OPUS_PT,
                        sequence_number: seq,
                        timestamp: u32::from(seq) * 960,
                        ssrc: PUBLISHER_SSRC,
                        ..Default::default()
                    };
                    let _ = track
                        .write_rtp(rtp::Packet {
                            header,
                            payload: body.clone(),
                        })
                        .await;
                    seq = seq.wrapping_add(1);
                }
            }
        })
    };

    // The subscribers: join with a data channel, then take the forwarder's track.
    let mut counts = Vec::new();
    let mut subs = Vec::new();
    for n in 1..=a.subscribers {
        let count = Arc::new(AtomicU64::new(0));
        let mut s = pc(Some(count.clone())).await;
        s.pc.create_data_channel("veil", None).await.unwrap();
        let offer = s.pc.create_offer(None).await.unwrap();
        s.pc.set_local_description(offer).await.unwrap();
        let offer = s.local_sdp().await;
        let answer = ask(&cmds, |r| Cmd::Join(offer, r)).await;
        s.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        s.connected().await;
        let offer = ask(&cmds, |r| Cmd::Subscribe(n, r)).await;
        s.pc.set_remote_description(RTCSessionDescription::offer(offer).unwrap())
            .await
            .unwrap();
        let answer = s.pc.create_answer(None).await.unwrap();
        s.pc.set_local_description(answer).await.unwrap();
        let answer = s.pc.local_description().await.unwrap().sdp;
        ask(&cmds, |r| Cmd::Answer(n, answer, r)).await;
        counts.push(count);
        subs.push(s);
    }

    let warm = Instant::now();
    while counts.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
        assert!(warm.elapsed() < WAIT, "{mode}: a subscriber never received");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(8);
    let total = |c: &[Arc<AtomicU64>]| c.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let (r0, c0, t0) = (total(&counts), fwd_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let (r1, c1, secs) = (total(&counts), fwd_cpu(), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    for s in subs {
        let _ = s.pc.close().await;
    }
    let _ = publisher.pc.close().await;
    drop(cmds);
    // The forwarder's thread ends with the command channel.
    let _ = tokio::task::spawn_blocking(move || fwd.join()).await;
    ((r1 - r0) as f64 / secs, (c1 - c0) / secs)
}

fn main() {
    let a = args();
    let pinned =
        std::thread::available_parallelism().map_or(1, usize::from) >= 2 && pin("process", 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "1 publisher × {} subscribers, {} pps of {} bytes; forwarder on CPU 0, peers on CPU 1: {}",
        a.subscribers,
        a.pps,
        a.size,
        if pinned { "pinned" } else { "NOT pinned" }
    );
    println!();
    println!("| forwarder | forwarded pps | forwarder CPU | forwarded pkts / CPU-s |");
    println!("|---|---|---|---|");
    let mut per = Vec::new();
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    for mode in ["edge", "room", "edge", "room"] {
        if only.as_deref().is_some_and(|o| o != mode) {
            continue;
        }
        let (pps, cpu) = rt.block_on(measure(mode, &a));
        let p = pps / cpu.max(1e-9);
        per.push((mode, p));
        println!("| {mode} | {pps:.0} | {:.0} % | {p:.0} |", 100.0 * cpu);
    }
    let mean = |m: &str| {
        let v: Vec<f64> = per.iter().filter(|x| x.0 == m).map(|x| x.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    if only.is_none() {
        println!();
        println!(
            "room / edge, packets per CPU-second (mean of 2 runs each): {:.2}×",
            mean("room") / mean("edge")
        );
    }
}
