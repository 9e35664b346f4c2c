//! SFU-EDGE-01..02: participants reach the SFU's sans-I/O edge on one UDP port. Two webrtc-rs
//! peers (full ICE, DTLS client) connect to the same socket, each answer names that socket as
//! the only candidate, and every RTP packet each sends arrives on its own connection, payload
//! intact. A datagram from an address no STUN request has named reaches no connection.
//! The edge sends too: it adds a track to a participant's connection, renegotiates with its own
//! offer, and what one participant sends reaches the other through it. And a browser connects:
//! headless Chromium (full ICE, DTLS client) publishes its three simulcast layers to the edge.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::peer_connection::sdp::RTCSessionDescription;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use veil_sfu::connection::peer::{self, OPUS_PT};
use veil_sfu::edge::{ConnId, Edge, EdgeEvent, EdgeRoomEvent, EdgeRooms, SansIo};
use veil_sfu::routing::MediaKind;
use veil_sfu::session::metrics::RtxCount;
use veil_sfu::session::{Metrics, SfuConfig};

use crate::chromium::{Browser, PUBLISHER, read_request, respond};
use crate::common::*;
use crate::vanish::spawn_alice;

/// The I/O shell of the test: one socket, the timers, the events out on a channel.
async fn drive<S: SansIo<Event: Send> + Send + 'static>(
    socket: Arc<UdpSocket>,
    edge: Arc<Mutex<S>>,
    events: mpsc::UnboundedSender<S::Event>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (out, timeout) = {
            let mut e = edge.lock().unwrap();
            let mut out = Vec::new();
            while let Some(t) = e.poll_transmit() {
                out.push(t);
            }
            // A test that stopped listening still needs the edge driven.
            while let Some(ev) = e.poll_event() {
                let _ = events.send(ev);
            }
            (out, e.poll_timeout())
        };
        for (to, bytes) in out {
            let _ = socket.send_to(&bytes, to).await;
        }
        // Signalling (accept) happens outside this loop: look at the queues often.
        let wait = timeout
            .map_or(Duration::from_millis(10), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(10));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return };
                edge.lock().unwrap().handle_datagram(Instant::now(), from, &buf[..n]);
            }
            () = tokio::time::sleep(wait) => {
                edge.lock().unwrap().handle_timeout(Instant::now());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_connect_on_one_port_and_each_ones_packets_arrive_on_its_connection() {
    init_tracing();
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let local = socket.local_addr().unwrap();
    let edge = Arc::new(Mutex::new(Edge::new(local, Instant::now(), [7; 32])));
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(drive(socket.clone(), edge.clone(), tx));

    let mut peers = Vec::new();
    for (i, name) in ["alice", "bob"].into_iter().enumerate() {
        let mut p = Peer::new("edge", name, false).await;
        let mic = p
            .add_track(MediaKind::Audio, 0xED6E_0000 + i as u32, "mic")
            .await;
        let offer = p.offer().await;
        let (id, answer) = edge.lock().unwrap().accept(Instant::now(), &offer).unwrap();
        assert_eq!(candidate_port(&answer), local.port(), "{answer}");
        assert!(answer.contains("a=ice-lite"), "{answer}");
        p.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        p.connected().await;
        peers.push((id, p, mic));
    }
    assert_eq!(edge.lock().unwrap().len(), 2);

    // A stranger's datagram is claimed by no connection.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&[0x80; 40], local).await.unwrap();

    // 20 packets each; packet k of peer i carries payload(100 * i + k).
    const N: u64 = 20;
    for k in 0..N {
        for (i, (_, _, mic)) in peers.iter().enumerate() {
            let seed = 100 * i as u64 + k;
            mic.send(k as u16, 960 * k as u32, true, &[], payload(seed, 80))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); peers.len()];
    let mut connected = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.iter().map(Vec::len).sum::<usize>() < 2 * N as usize {
        let (id, ev) = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {got:?}"))
            .unwrap();
        let i = peers
            .iter()
            .position(|p| p.0 == id)
            .expect("a known connection");
        match ev {
            EdgeEvent::Connected => connected.push(id),
            EdgeEvent::Rtp { packet, .. } => {
                let seed = (0..N)
                    .map(|k| 100 * i as u64 + k)
                    .find(|s| packet.payload == payload(*s, 80))
                    .unwrap_or_else(|| panic!("connection {id} got a payload its peer never sent"));
                got[i].push(seed);
            }
            _ => {}
        }
    }
    for (i, g) in got.iter().enumerate() {
        let want: Vec<u64> = (0..N).map(|k| 100 * i as u64 + k).collect();
        assert_eq!(
            g, &want,
            "peer {i}: every packet, in order, on its own connection"
        );
    }
    connected.sort_unstable();
    assert_eq!(connected, [peers[0].0, peers[1].0]);
    let e = edge.lock().unwrap();
    assert!(e.unrouted() >= 1, "the stranger's datagram was routed");
    eprintln!(
        "2 peers on {local}: {N} packets each arrived; {} datagrams unrouted",
        e.unrouted()
    );
}

/// Connect `p` to the edge with its offer.
async fn connect(edge: &Mutex<Edge>, p: &mut Peer) -> ConnId {
    let offer = p.offer().await;
    let (id, answer) = edge.lock().unwrap().accept(Instant::now(), &offer).unwrap();
    p.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    p.connected().await;
    id
}

/// The outgoing SSRC of the edge's track to bob.
const OUT: u32 = 0x5EED_0001;

/// An edge with alice (publishing one track of `kind`) and bob, to whom the edge has added a
/// track (`OUT`) and renegotiated.
struct Pair {
    edge: Arc<Mutex<Edge>>,
    events: mpsc::UnboundedReceiver<(ConnId, EdgeEvent)>,
    alice: Peer,
    track: LocalTrack,
    a: ConnId,
    bob: Peer,
    b: ConnId,
    sender: rtc::rtp_transceiver::RTCRtpSenderId,
}

async fn pair(kind: MediaKind, ssrc: u32) -> Pair {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // The SFU's chain: GCC on every leg, RTX counted into the SFU's metrics.
    let rtx = Arc::new(RtxCount(Metrics::default().rtx.clone()));
    let edge = Arc::new(Mutex::new(
        Edge::new(socket.local_addr().unwrap(), Instant::now(), [7; 32])
            .with_congestion_control(rtx),
    ));
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(drive(socket.clone(), edge.clone(), tx));

    let mut alice = Peer::new("edge", "alice", false).await;
    let track = alice.add_track(kind, ssrc, "alice-track").await;
    let a = connect(&edge, &mut alice).await;
    let mut bob = Peer::new("edge", "bob", false).await;
    let b = connect(&edge, &mut bob).await;

    // The edge offers bob a track of its own, bob answers.
    let (sender, offer) = {
        let mut e = edge.lock().unwrap();
        let sender = e
            .add_track(b, "to-bob", kind, OUT, None, peer::codec(kind))
            .unwrap();
        (sender, e.offer(Instant::now(), b).unwrap())
    };
    let answer = answer_offer(&bob.pc, offer).await;
    edge.lock()
        .unwrap()
        .answer(Instant::now(), b, &answer)
        .unwrap();
    Pair {
        edge,
        events,
        alice,
        track,
        a,
        bob,
        b,
        sender,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_adds_a_track_renegotiates_and_forwards_one_participant_to_another() {
    init_tracing();
    let Pair {
        edge,
        mut events,
        alice: _alice,
        track: mic,
        a,
        mut bob,
        b,
        sender,
    } = pair(MediaKind::Audio, 0xA11C_E000).await;

    // Alice sends 30 packets; each one the edge hands out is written to bob on his track.
    const N: u16 = 30;
    for k in 0..N {
        mic.send(k, 960 * u32::from(k), true, &[], payload(u64::from(k), 90))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut forwarded = 0;
    while forwarded < N {
        let (id, ev) = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {forwarded} of {N} from alice"))
            .unwrap();
        if let (true, EdgeEvent::Rtp { mut packet, .. }) = (id == a, ev) {
            packet.header.ssrc = OUT;
            packet.header.payload_type = OPUS_PT;
            edge.lock()
                .unwrap()
                .write_rtp(Instant::now(), b, sender, packet)
                .unwrap();
            forwarded += 1;
        }
    }
    let mut got = Vec::new();
    while got.len() < usize::from(N) {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .unwrap_or_else(|_| panic!("bob got only {} of {N}", got.len()))
            .unwrap();
        assert_eq!(r.packet.header.ssrc, OUT);
        let k = (0..N)
            .find(|k| r.packet.payload == payload(u64::from(*k), 90))
            .expect("a payload alice sent, byte for byte");
        got.push(k);
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all of them, in order");
    // GCC on bob's leg estimates from his transport-cc feedback (SFU-BWE-01); alice's leg
    // carries nothing from the edge, so it has no estimate.
    eventually("an estimate for bob's leg", || {
        edge.lock().unwrap().estimate(b).is_some()
    })
    .await;
    assert_eq!(edge.lock().unwrap().estimate(a), None);
}

/// SFU-EDGE-05: Chromium connects to the ICE-lite edge on its one port (the step the research
/// rated riskiest: rtc 0.21.1 has no ICE-lite test of its own), and its audio and its simulcast
/// layers arrive, each layer announced with its rid before its packets. Which layers Chromium
/// sends is its own choice (its bandwidth estimate and CPU adaptation; on this 2-core machine
/// it often leaves out f), so two of q/h/f are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_connects_to_the_edge_and_its_simulcast_layers_arrive() {
    init_tracing();
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let edge = Arc::new(Mutex::new(Edge::new(
        socket.local_addr().unwrap(),
        Instant::now(),
        [7; 32],
    )));
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(drive(socket.clone(), edge.clone(), tx));
    // The page's signalling: its offer to the edge, the edge's answer back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let pages = edge.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let edge = pages.clone();
            tokio::spawn(async move {
                let (path, body, stream) = read_request(stream).await;
                match path.as_str() {
                    "/pub" => respond(stream, "200 OK", "text/html", PUBLISHER).await,
                    "/offer/chromium" => {
                        let answer = edge.lock().unwrap().accept(Instant::now(), &body);
                        match answer {
                            Ok((_, sdp)) => {
                                respond(stream, "200 OK", "application/sdp", &sdp).await
                            }
                            Err(e) => {
                                respond(stream, "400 Bad Request", "text/plain", &e.to_string())
                                    .await;
                            }
                        }
                    }
                    "/error" => {
                        eprintln!("the page failed: {body}");
                        respond(stream, "200 OK", "text/plain", "").await;
                    }
                    _ => respond(stream, "404 Not Found", "text/plain", "").await,
                }
            });
        }
    });
    let _browser = Browser::open(&format!("{url}/pub"), "edge-pub");

    // Until the connection is up and two layers have each sent 30 packets after their
    // announcement.
    let mut connected = false;
    let mut layers: std::collections::HashMap<u32, (Option<String>, u32)> = Default::default();
    let mut audio = 0u32;
    let done = |layers: &std::collections::HashMap<u32, (Option<String>, u32)>| {
        let mut rids: Vec<&str> = layers
            .values()
            .filter(|(_, n)| *n >= 30)
            .filter_map(|(rid, _)| rid.as_deref())
            .collect();
        rids.sort_unstable();
        rids.dedup();
        assert!(rids.iter().all(|r| ["q", "h", "f"].contains(r)), "{rids:?}");
        rids.len() >= 2
    };
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    while !(connected && audio >= 30 && done(&layers)) {
        let (_, ev) = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("connected {connected}, audio {audio}, layers {layers:?}"))
            .unwrap();
        match ev {
            EdgeEvent::Connected => connected = true,
            EdgeEvent::TrackOpen { ssrc, rid, .. } => {
                layers.entry(ssrc).or_insert((None, 0)).0 = rid;
            }
            EdgeEvent::Rtp { packet, .. } => {
                let ssrc = packet.header.ssrc;
                if packet.header.payload_type == OPUS_PT {
                    audio += 1;
                    // Audio's own announcement carries no rid: not a layer.
                    layers.remove(&ssrc);
                } else {
                    let l = layers
                        .get_mut(&ssrc)
                        .unwrap_or_else(|| panic!("video on SSRC {ssrc:#x} before its OnOpen"));
                    l.1 += 1;
                }
            }
            EdgeEvent::Closed => panic!("Chromium's connection closed"),
            EdgeEvent::KeyFrameRequest { .. } => {}
        }
    }
    eprintln!("Chromium on the edge: {audio} audio packets, layers {layers:?}");
}

/// SFU-EDGE-06: a participant whose process dies (no DTLS close, no more STUN) is closed by the
/// edge after the silence and the grace of its ICE timers. An ICE-lite agent sends no checks of
/// its own: only the participant's consent checks (every 2 s from webrtc-rs) show it alive, so
/// the silence must be longer than that, and a live participant is never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_closed_after_its_timers() {
    init_tracing();
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let timers = peer::IceTimers {
        silence: Duration::from_secs(3),
        grace: Duration::from_secs(1),
        keepalive: Duration::from_millis(250),
    };
    let edge = Arc::new(Mutex::new(
        Edge::new(socket.local_addr().unwrap(), Instant::now(), [7; 32]).with_ice_timers(timers),
    ));
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(drive(socket.clone(), edge.clone(), tx));

    let (offer_tx, offer_rx) = tokio::sync::oneshot::channel();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel();
    let alice = spawn_alice("edge", offer_tx, answer_rx, kill_rx);
    let offer = offer_rx.await.unwrap();
    let (id, answer) = edge.lock().unwrap().accept(Instant::now(), &offer).unwrap();
    answer_tx.send(answer).unwrap();
    // Connected, and talking.
    let mut packets = 0;
    while packets < 10 {
        let (c, ev) = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("alice connects and talks")
            .unwrap();
        assert_eq!(c, id);
        if matches!(ev, EdgeEvent::Rtp { .. }) {
            packets += 1;
        }
    }
    // Still there well past one silence: her consent checks keep her alive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(edge.lock().unwrap().len(), 1, "closed while alive");

    kill_tx.send(()).unwrap();
    alice.join().unwrap();
    let died = Instant::now();
    loop {
        let (c, ev) = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("alice is closed")
            .unwrap();
        if matches!(ev, EdgeEvent::Closed) {
            assert_eq!(c, id);
            break;
        }
    }
    let after = died.elapsed();
    eprintln!("alice's connection closed {after:?} after her process died");
    assert!(
        after >= timers.silence,
        "closed before the silence ran out: {after:?}"
    );
    assert!(edge.lock().unwrap().is_empty());
}

/// SFU-EDGE-07: key-frame requests cross the edge both ways. Bob's PLI on the edge's video
/// track to him comes out as a request about that track; the edge's own PLI to alice, on the
/// receiver her track arrived on, reaches her sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_frame_requests_cross_the_edge_both_ways() {
    init_tracing();
    const CAM: u32 = 0xCA11_0001;
    let Pair {
        edge,
        mut events,
        alice: _alice,
        track: cam,
        a,
        bob,
        b,
        sender,
    } = pair(MediaKind::Video, CAM).await;
    let plis = cam.count_plis();
    // Video flows to bob until his connection has the remote track; alice's receiver is known.
    let mut receiver = None;
    let mut seq = 0u16;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.remotes.lock().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no video reached bob"
        );
        cam.send(seq, 3000 * u32::from(seq), true, &[], payload(0, 300))
            .await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok((id, ev)) = events.try_recv() {
            match (id == a, ev) {
                (true, EdgeEvent::TrackOpen { receiver: r, .. }) => receiver = Some(r),
                (true, EdgeEvent::Rtp { mut packet, .. }) => {
                    packet.header.ssrc = OUT;
                    packet.header.payload_type = peer::VP8_PT;
                    let _ = edge
                        .lock()
                        .unwrap()
                        .write_rtp(Instant::now(), b, sender, packet);
                }
                _ => {}
            }
        }
    }
    let receiver = receiver.expect("alice's track was announced");
    let remote = bob.remotes.lock().await.values().next().cloned().unwrap();

    // Bob asks for a key frame; the edge hands the request out, and asks alice in turn.
    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
        sender_ssrc: 1,
        media_ssrc: OUT,
    };
    remote.write_rtcp(vec![Box::new(pli)]).await.unwrap();
    let track = loop {
        let (id, ev) = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("bob's request at the edge")
            .unwrap();
        if let EdgeEvent::KeyFrameRequest { track } = ev {
            assert_eq!(id, b);
            break track;
        }
    };
    assert_eq!(track, "to-bob");
    assert!(
        plis.lock().unwrap().is_empty(),
        "alice asked before the edge did"
    );
    edge.lock()
        .unwrap()
        .request_key_frame(Instant::now(), a, receiver, CAM)
        .unwrap();
    eventually("the edge's PLI at alice", || {
        !plis.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(plis.lock().unwrap().len(), 1);
}

type Room = Arc<Mutex<EdgeRooms>>;

/// A room on a new edge, driven on its own socket; its events come out on the receiver. A
/// participant that goes silent for 3 s (webrtc-rs peers send consent checks every 2 s) is
/// gone a second later.
fn start_room() -> (Room, mpsc::UnboundedReceiver<EdgeRoomEvent>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = Arc::new(UdpSocket::from_std(socket).unwrap());
    let config = SfuConfig {
        silence_timeout: Duration::from_secs(3),
        departure_grace: Duration::from_secs(1),
        keepalive_interval: Duration::from_millis(250),
        key_frame_interval: Duration::from_millis(500),
        ..SfuConfig::default()
    };
    let room = Arc::new(Mutex::new(EdgeRooms::new(
        socket.local_addr().unwrap(),
        config,
        Instant::now(),
        [7; 32],
    )));
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(drive(socket, room.clone(), tx));
    (room, events)
}

/// `p` joins the room with its offer and connects.
async fn join_room(room: &Room, p: &mut Peer) -> ConnId {
    let offer = p.offer().await;
    let (id, answer) = room
        .lock()
        .unwrap()
        .join(Instant::now(), "edge", &p.identity, &offer, true)
        .unwrap();
    p.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    p.connected().await;
    id
}

/// The edge's next offer to `to`, from the room's events (others on the way are dropped).
async fn offer_to(events: &mut mpsc::UnboundedReceiver<EdgeRoomEvent>, to: ConnId) -> String {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(EdgeRoomEvent::Offer { to: t, sdp })) if t == to => return sdp,
            Ok(Some(_)) => {}
            _ => panic!("no offer to {to}"),
        }
    }
}

/// Subscribe `p` (connection `id`) to `track`: the edge offers, `p` answers.
async fn subscribe_room(
    room: &Room,
    events: &mut mpsc::UnboundedReceiver<EdgeRoomEvent>,
    p: &Peer,
    id: ConnId,
    track: veil_sfu::routing::TrackId,
) {
    room.lock()
        .unwrap()
        .subscribe(Instant::now(), id, track)
        .unwrap();
    let offer = offer_to(events, id).await;
    let answer = answer_offer(&p.pc, offer).await;
    room.lock()
        .unwrap()
        .answer(Instant::now(), id, &answer)
        .unwrap();
}

/// A room on the edge: alice publishing one track of `kind`, and `subscribers` subscribed to
/// it (the edge offered, they answered).
struct RoomWith {
    room: Room,
    events: mpsc::UnboundedReceiver<EdgeRoomEvent>,
    publisher: Peer,
    track: LocalTrack,
    /// Alice's next sequence number.
    seq: u16,
    tid: veil_sfu::routing::TrackId,
    /// The subscribers, with their connections.
    subs: Vec<Peer>,
    sub_ids: Vec<ConnId>,
}

async fn room_with(kind: MediaKind, ssrc: u32, subscribers: &[&str]) -> RoomWith {
    let (room, mut events) = start_room();
    let mut alice = Peer::new("edge", "alice", true).await;
    let track = alice.add_track(kind, ssrc, "alice-track").await;
    let a = join_room(&room, &mut alice).await;
    // Send until the track is published.
    let mut seq = 0u16;
    let tid = loop {
        track
            .send(seq, 960 * u32::from(seq), true, &[], payload(0, 50))
            .await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(EdgeRoomEvent::Published {
            publisher,
            track,
            kind: k,
            ..
        }) = events.try_recv()
        {
            assert_eq!((publisher, k), (a, kind));
            break track;
        }
        assert!(seq < 500, "alice's track was never published");
    };
    let (mut subs, mut sub_ids) = (Vec::new(), Vec::new());
    for name in subscribers {
        let mut p = Peer::new("edge", name, false).await;
        let id = join_room(&room, &mut p).await;
        subscribe_room(&room, &mut events, &p, id, tid).await;
        subs.push(p);
        sub_ids.push(id);
    }
    RoomWith {
        room,
        events,
        publisher: alice,
        track,
        seq,
        tid,
        subs,
        sub_ids,
    }
}

/// SFU-EDGE-09: a room on the edge is the SFU's routing core on one socket. Alice's track is
/// published to the core when its stream opens; bob and carol subscribe (the edge offers, they
/// answer); every packet alice sends reaches both through `Room::on_rtp`, rewritten per leg:
/// on the leg's SSRC, sequence numbers contiguous, payloads byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_the_edge_routes_a_publisher_to_its_subscribers() {
    init_tracing();
    let RoomWith {
        room: _room,
        publisher: _alice,
        track: mic,
        mut seq,
        mut subs,
        ..
    } = room_with(MediaKind::Audio, 0xA11C_E001, &["bob", "carol"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for p in &mut subs {
        while p.received.try_recv().is_ok() {}
    }

    // Packet k carries payload(k + 1); alice numbers on from where she was.
    const N: u64 = 40;
    for k in 0..N {
        mic.send(
            seq,
            960 * u32::from(seq),
            false,
            &[],
            payload(k + 1, 70 + k as usize),
        )
        .await;
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in &mut subs {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < N as usize {
            let r = tokio::time::timeout_at(deadline, p.received.recv())
                .await
                .unwrap_or_else(|_| panic!("{} got {} of {N}", p.identity, got.len()))
                .unwrap();
            let k = (0..N)
                .find(|k| r.packet.payload == payload(k + 1, 70 + *k as usize))
                .expect("a payload alice sent, byte for byte");
            got.push((k, r.packet.header.sequence_number, r.packet.header.ssrc));
        }
        let order: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            order,
            (0..N).collect::<Vec<_>>(),
            "{}: all, in order",
            p.identity
        );
        assert!(
            got.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
            "{}: contiguous sequence numbers",
            p.identity
        );
        // One SSRC per leg, the edge's rather than alice's.
        assert!(got.iter().all(|g| g.2 == got[0].2));
        assert_ne!(got[0].2, 0xA11C_E001, "{}: SSRC rewritten", p.identity);
    }
}

/// SFU-EDGE-09, key frames (SFU-KF-01, SFU-KF-03 on the edge): a new subscriber's start makes
/// the room ask alice for a key frame, and a flood of bob's PLIs ends at the edge: alice hears
/// at most one request per throttle interval (500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_the_edge_asks_for_key_frames_and_throttles_a_pli_flood() {
    init_tracing();
    const CAM: u32 = 0xCA11_0002;
    let RoomWith {
        room: _room,
        publisher: _alice,
        track: cam,
        mut seq,
        mut subs,
        ..
    } = room_with(MediaKind::Video, CAM, &["bob"]).await;
    let plis = cam.count_plis();
    let bob = &mut subs[0];
    // Video until bob has the track.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.remotes.lock().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no video reached bob"
        );
        cam.send(seq, 3000 * u32::from(seq), true, &[], payload(1, 300))
            .await;
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let remote = bob.remotes.lock().await.values().next().cloned().unwrap();
    let ssrc = remote.ssrcs().await[0];
    let start = Instant::now();
    // 200 PLIs over 2 s, while video flows.
    for _ in 0..200 {
        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: ssrc,
        };
        remote.write_rtcp(vec![Box::new(pli)]).await.unwrap();
        cam.send(seq, 3000 * u32::from(seq), true, &[], payload(1, 300))
            .await;
        seq = seq.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let window = start.elapsed();
    let at_alice = plis.lock().unwrap().len();
    // The subscription's own request, plus one per 500 ms of flood at most.
    let most = 2 + (window.as_millis() / 500) as usize;
    eprintln!("200 PLIs from bob in {window:?}: {at_alice} at alice");
    assert!(at_alice >= 1, "the room never asked alice");
    assert!(
        at_alice <= most,
        "{at_alice} requests reached alice, at most {most} allowed"
    );
}

/// SFU-EDGE-09, simulcast (SFU-FWD-01..03, SFU-STR-04 on the edge): alice sends three layers
/// the way Chromium does (mid/rid only on the first packets); bob gets q, then f, then h from
/// the room on the edge, each switch at a key frame, as one continuous stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_the_edge_switches_simulcast_layers_at_key_frames() {
    init_tracing();
    let (room, mut events) = start_room();
    let mut alice = Peer::new("edge", "alice", true).await;
    let cam = Simulcast::add(&alice).await;
    join_room(&room, &mut alice).await;
    let sender = cam.start().await;
    let track = loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(EdgeRoomEvent::Published { track, kind, .. })) => {
                assert_eq!(kind, MediaKind::Video);
                break track;
            }
            Ok(Some(_)) => {}
            _ => panic!("alice's track was never published"),
        }
    };
    let mut bob = Peer::new("edge", "bob", false).await;
    let b = join_room(&room, &mut bob).await;
    subscribe_room(&room, &mut events, &bob, b, track).await;
    // A second subscription to the same track is refused, not a second leg.
    let again = room.lock().unwrap().subscribe(Instant::now(), b, track);
    assert!(again.is_err(), "{again:?}");
    // From now on packets carry no mid/rid: the room maps them through what it latched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cam.announce
        .store(false, std::sync::atomic::Ordering::Relaxed);

    let mut rx = LayerReceiver::new(&bob).await;
    for (want, rid) in [(b'q', None), (b'f', Some("f")), (b'h', Some("h"))] {
        if let Some(rid) = rid {
            room.lock()
                .unwrap()
                .set_layer(Instant::now(), b, track, Some(rid))
                .unwrap();
        }
        rx.receive(&mut bob, want).await;
    }
    cam.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    rx.assert_one_stream(b"qfh");
}

/// Count what each subscriber receives over `d` (after draining what came before).
async fn received_during(
    subs: &mut [Peer],
    d: Duration,
    mut send: impl AsyncFnMut(),
) -> Vec<usize> {
    for p in subs.iter_mut() {
        while p.received.try_recv().is_ok() {}
    }
    let until = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < until {
        send().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    subs.iter_mut()
        .map(|p| std::iter::from_fn(|| p.received.try_recv().ok()).count())
        .collect()
}

/// SFU-EDGE-10: unsubscribing renegotiates the track away: bob stops receiving, carol does not.
/// A publisher that leaves takes its tracks with it: the room announces them gone and offers
/// each of their subscribers a session without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_leave_by_unsubscribing_and_with_their_publisher() {
    init_tracing();
    let RoomWith {
        room,
        mut events,
        publisher: alice,
        track: mic,
        mut seq,
        tid,
        mut subs,
        sub_ids,
    } = room_with(MediaKind::Audio, 0xA11C_E003, &["bob", "carol"]).await;
    let mut talk = async || {
        mic.send(seq, 960 * u32::from(seq), false, &[], payload(3, 60))
            .await;
        seq = seq.wrapping_add(1);
    };
    let before = received_during(&mut subs, Duration::from_millis(600), &mut talk).await;
    assert!(before.iter().all(|n| *n >= 20), "both receive: {before:?}");

    room.lock()
        .unwrap()
        .unsubscribe(Instant::now(), sub_ids[0], tid)
        .unwrap();
    let offer = offer_to(&mut events, sub_ids[0]).await;
    let answer = answer_offer(&subs[0].pc, offer).await;
    room.lock()
        .unwrap()
        .answer(Instant::now(), sub_ids[0], &answer)
        .unwrap();
    let after = received_during(&mut subs, Duration::from_millis(600), &mut talk).await;
    assert_eq!(after[0], 0, "bob unsubscribed: {after:?}");
    assert!(after[1] >= 20, "carol still receives: {after:?}");
    let again = room
        .lock()
        .unwrap()
        .unsubscribe(Instant::now(), sub_ids[0], tid);
    assert!(again.is_err(), "{again:?}");

    // Alice leaves (her connection closes; the room notices within its ICE timers): her track
    // is gone, and carol (still subscribed) gets an offer without it.
    alice.pc.close().await.unwrap();
    let (mut unpublished, mut offered, mut left) = (false, None, false);
    while !(unpublished && offered.is_some() && left) {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(EdgeRoomEvent::Unpublished { track, .. })) => unpublished = track == tid,
            Ok(Some(EdgeRoomEvent::Offer { to, sdp })) => {
                assert_eq!(to, sub_ids[1], "only carol still had the track");
                offered = Some(sdp);
            }
            Ok(Some(EdgeRoomEvent::Left(_))) => left = true,
            Ok(Some(_)) => {}
            _ => panic!(
                "unpublished {unpublished}, offered {}, left {left}",
                offered.is_some()
            ),
        }
    }
    let answer = answer_offer(&subs[1].pc, offered.unwrap()).await;
    room.lock()
        .unwrap()
        .answer(Instant::now(), sub_ids[1], &answer)
        .unwrap();
}

/// SFU-EDGE-11: one offer out per participant. Bob subscribes to alice's two tracks in a row:
/// the second waits for the answer to the first offer, and one offer with it follows that
/// answer. His own offer while the edge's waits, and an answer nobody asked for, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_renegotiation_waits_for_the_answer() {
    init_tracing();
    let (room, mut events) = start_room();
    let mut alice = Peer::new("edge", "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, 0xA11C_E011, "mic").await;
    let cam = alice.add_track(MediaKind::Video, 0xA11C_E012, "cam").await;
    join_room(&room, &mut alice).await;
    let mut tracks = Vec::new();
    for seq in 0u16.. {
        mic.send(seq, 960 * u32::from(seq), false, &[], payload(1, 50))
            .await;
        cam.send(seq, 3000 * u32::from(seq), true, &[], payload(2, 300))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(ev) = events.try_recv() {
            if let EdgeRoomEvent::Published { track, .. } = ev {
                tracks.push(track);
            }
        }
        if tracks.len() == 2 {
            break;
        }
        assert!(seq < 500, "alice's tracks were not both published");
    }
    let mut bob = Peer::new("edge", "bob", false).await;
    let b = join_room(&room, &mut bob).await;
    let now = Instant::now;

    room.lock().unwrap().subscribe(now(), b, tracks[0]).unwrap();
    let first = offer_to(&mut events, b).await;
    room.lock().unwrap().subscribe(now(), b, tracks[1]).unwrap();
    let live = || room.lock().unwrap().subscriptions();
    assert_eq!(live(), 0, "nothing is live before an answer");
    // An offer of bob's own now (a real one: another peer's, so that bob stays able to answer).
    let own = Peer::new("edge", "bob", false).await.offer().await;
    let refused = room.lock().unwrap().offer(now(), b, &own);
    assert!(
        matches!(refused, Err(veil_sfu::SfuError::Negotiation(_))),
        "{refused:?}"
    );
    let answer = answer_offer(&bob.pc, first.clone()).await;
    room.lock().unwrap().answer(now(), b, &answer).unwrap();
    // The first subscription is live, and the second comes in the next offer.
    let (mut live, mut second) = (Vec::new(), None);
    while live.is_empty() || second.is_none() {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(EdgeRoomEvent::Subscribed {
                subscriber, track, ..
            })) if subscriber == b => live.push(track),
            Ok(Some(EdgeRoomEvent::Offer { to, sdp })) if to == b => second = Some(sdp),
            Ok(Some(_)) => {}
            _ => panic!("live {live:?}, second offer {}", second.is_some()),
        }
    }
    assert_eq!(live, [tracks[0]], "only the answered track is live");
    assert_eq!(room.lock().unwrap().subscriptions(), 1);
    let second = second.unwrap();
    let m_lines = |sdp: &str| sdp.lines().filter(|l| l.starts_with("m=")).count();
    assert_eq!(
        m_lines(&second),
        m_lines(&first) + 1,
        "the waiting track is offered"
    );
    let answer = answer_offer(&bob.pc, second).await;
    room.lock().unwrap().answer(now(), b, &answer).unwrap();
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(EdgeRoomEvent::Subscribed {
                subscriber, track, ..
            })) if subscriber == b => {
                assert_eq!(track, tracks[1]);
                assert_eq!(room.lock().unwrap().subscriptions(), 2);
                break;
            }
            Ok(Some(EdgeRoomEvent::Offer { to, .. })) if to == b => {
                panic!("a third offer: nothing changed")
            }
            Ok(Some(_)) => {}
            _ => panic!("the second subscription never went live"),
        }
    }
    let stray = room.lock().unwrap().answer(now(), b, &answer);
    assert!(
        matches!(stray, Err(veil_sfu::SfuError::Negotiation(_))),
        "{stray:?}"
    );
}
