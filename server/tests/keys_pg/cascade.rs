//! A room across two SFU nodes, in this process so that both nodes' taps can be read
//! (SFU-CAS-02..06, SFU-BLIND-03, SFU-TAP-01): two `veil-server`s on one PostgreSQL database
//! and one token key. Alice (publishing three simulcast layers and audio) and bob sit on the
//! first node, carol on the second. Alice makes a key frame only when one is asked for.
//!
//! - Everyone decrypts everyone's audio.
//! - Carol's subscription to alice's video gets its first key frame, and her switches to f and
//!   then h land, only because the second node's key-frame requests cross the leg to alice's
//!   node: each switch brings alice a new request for that layer (her SDK names the layer of
//!   the SSRC the first node's PLI names). Each switch is at a key frame.
//! - Both taps: nothing that was published appears in clear in any packet either node
//!   received; the second node received alice's and bob's packets over the leg, the first
//!   carol's; and every payload of alice's video that the second node routed is one the first
//!   node received from alice, byte for byte (the leg relays, it does not re-encode).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use veil_auth::TokenKey;
use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomConfig, RoomEvent, VideoLayer};
use veil_testkit::postgres::TempPostgres;
use veil_testkit::server::InProcess;

const ROOM: &str = "spanning";

/// Layer `l`'s frame `i`: `[l, i (4 bytes)]` then 195 pseudo-random bytes, so that a window
/// of it found in a packet can only have come from it.
fn video_frame(l: u8, i: u32) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(l) << 40 | u64::from(i));
    let mut f = vec![l];
    f.extend_from_slice(&i.to_le_bytes());
    f.extend((0..195).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }));
    f
}

/// What the test sees of the call.
#[derive(Default)]
struct Log {
    /// (listener, speaker) → when the listener last decrypted the speaker's audio.
    heard: HashMap<(String, String), Instant>,
    /// Carol's decrypted video frames of alice: (frame index, layer), in arrival order.
    carol_video: Vec<(u32, u8)>,
    /// Alice's video track at carol.
    carol_track: Option<String>,
    /// Key-frame requests alice's SDK reported, per layer.
    requests: [u32; 3],
    /// The frame indices alice published as key frames.
    keys: HashSet<u32>,
}

enum Cmd {
    Layer(String, &'static str),
}

/// Run `name` in `room`: audio every 20 ms, alice's video every 33 ms (a key frame only when
/// asked), and everything it decrypts into `log`.
fn run(name: &'static str, mut room: Room, log: Arc<Mutex<Log>>) -> mpsc::Sender<Cmd> {
    let (tx, mut cmds) = mpsc::channel(8);
    let mut events = room.events();
    let publishes_video = name == "alice";
    tokio::spawn(async move {
        let mut audio = tokio::time::interval(Duration::from_millis(20));
        let mut video = tokio::time::interval(Duration::from_millis(33));
        let (mut n, mut i) = (0u32, 0u32);
        let want_key = AtomicBool::new(false);
        loop {
            tokio::select! {
                _ = audio.tick() => {
                    n += 1;
                    let _ = room.publish_audio(&[0xfc, n as u8, (n >> 8) as u8], n * 960, (true, 40)).await;
                }
                _ = video.tick(), if publishes_video => {
                    let key = want_key.swap(false, Ordering::Relaxed);
                    let frames: Vec<Vec<u8>> = (0..3).map(|l| video_frame(l, i)).collect();
                    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                    if room.publish_video_layers(&refs, i * 3000, key).await.is_ok() && key {
                        log.lock().unwrap().keys.insert(i);
                    }
                    i += 1;
                }
                e = events.recv() => match e {
                    Ok(RoomEvent::KeyFrameRequested { layer }) => {
                        want_key.store(true, Ordering::Relaxed);
                        if let Some(c) = log.lock().unwrap().requests.get_mut(layer) {
                            *c += 1;
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                c = cmds.recv() => match c {
                    Some(Cmd::Layer(track, rid)) => room.set_video_layer(&track, rid).await.unwrap(),
                    None => return,
                },
                f = room.next_frame() => {
                    let Some(f) = f else { return };
                    let mut log = log.lock().unwrap();
                    match f.kind {
                        MediaKind::Audio => {
                            log.heard.insert((name.to_owned(), f.participant), Instant::now());
                        }
                        MediaKind::Video if name == "carol" => {
                            assert_eq!(f.participant, "alice");
                            let l = f.frame[0];
                            let i = u32::from_le_bytes(f.frame[1..5].try_into().unwrap());
                            assert_eq!(f.frame, video_frame(l, i), "carol decrypted another frame");
                            log.carol_track.get_or_insert(f.track);
                            log.carol_video.push((i, l));
                        }
                        MediaKind::Video => {}
                    }
                }
            }
        }
    });
    tx
}

/// Wait until `ok(log)`, for at most 60 s.
async fn until(log: &Mutex<Log>, what: &str, ok: impl Fn(&Log) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok(&log.lock().unwrap()) {
        let l = log.lock().unwrap();
        assert!(
            Instant::now() < deadline,
            "{what}: not after 60 s; requests {:?}, carol's video {:?}",
            l.requests,
            &l.carol_video[l.carol_video.len().saturating_sub(20)..]
        );
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frames of layer `l` carol decrypted after the first `from`.
fn layer_frames(log: &Log, from: usize, l: u8) -> usize {
    log.carol_video[from.min(log.carol_video.len())..]
        .iter()
        .filter(|(_, x)| *x == l)
        .count()
}

type Tapped = Arc<Mutex<Vec<(String, veil_sfu::routing::MediaKind, Vec<u8>)>>>;

/// Every packet payload `tap` hands out, with its publisher and kind.
fn record(tap: &veil_sfu::Tap) -> (Tapped, Arc<AtomicU64>) {
    let (store, lost) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicU64::new(0)),
    );
    let mut rx = tap.subscribe();
    let (s, l) = (store.clone(), lost.clone());
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(p) => s
                    .lock()
                    .unwrap()
                    .push((p.publisher, p.kind, p.payload.to_vec())),
                Err(RecvError::Lagged(n)) => _ = l.fetch_add(n, Ordering::Relaxed),
                Err(RecvError::Closed) => return,
            }
        }
    });
    (store, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_two_nodes_with_layers_key_frames_and_blindness_across_the_leg() {
    let db = TempPostgres::shared().database();
    let key = TokenKey::generate("deployment").unwrap();
    let taps = [veil_sfu::Tap::new(1 << 17), veil_sfu::Tap::new(1 << 17)];
    let mut nodes = Vec::new();
    for tap in &taps {
        let (db, key, tap) = (db.clone(), key.clone(), tap.clone());
        nodes.push(
            InProcess::start("deployment", move |cfg| {
                cfg.database = veil_server::database::Database::Postgres(db);
                cfg.token_keys = vec![key];
                cfg.sfu.as_mut().expect("loopback runs the SFU").tap = Some(tap);
            })
            .await,
        );
    }
    let recorded: Vec<_> = taps.iter().map(record).collect();
    let token = |who: &str| veil_testkit::token::mint(&key, ROOM, who, Duration::from_secs(600));
    let config = |node: &InProcess, who: &str| {
        let mut c = RoomConfig::new(&node.url, &token(who), ROOM, who);
        c.sfu_url = node.url.clone();
        c.group.proposal_commit_delay = Duration::from_millis(50);
        c
    };
    let log = Arc::new(Mutex::new(Log::default()));
    let mut alice_cfg = config(&nodes[0], "alice");
    alice_cfg.simulcast = VideoLayer::browser_defaults(1280, 720);
    let alice = Room::join(alice_cfg).await.unwrap();
    let bob = Room::join(config(&nodes[0], "bob")).await.unwrap();
    let carol = Room::join(config(&nodes[1], "carol")).await.unwrap();
    for r in [&alice, &bob, &carol] {
        r.group()
            .wait(Duration::from_secs(30), |s| s.members.len() == 3)
            .await
            .unwrap();
    }
    let _alice = run("alice", alice, log.clone());
    let _bob = run("bob", bob, log.clone());
    let carol = run("carol", carol, log.clone());
    let names = ["alice", "bob", "carol"];
    let start = Instant::now();
    until(&log, "everyone hears everyone", |l| {
        names.iter().all(|a| {
            names
                .iter()
                .filter(|b| *b != a)
                .all(|b| l.heard.contains_key(&((*a).to_owned(), (*b).to_owned())))
        })
    })
    .await;
    eprintln!(
        "everyone heard everyone {:?} after the joins",
        start.elapsed()
    );

    // Carol's first video (layer q) starts at a key frame asked for across the leg.
    until(&log, "carol gets alice's q", |l| {
        layer_frames(l, 0, 0) >= 10
    })
    .await;
    let track = log.lock().unwrap().carol_track.clone().unwrap();
    for (rid, layer) in [("f", 2u8), ("h", 1u8)] {
        let l = layer;
        let (from, before) = {
            let l = log.lock().unwrap();
            (l.carol_video.len(), l.requests[usize::from(layer)])
        };
        carol.send(Cmd::Layer(track.clone(), rid)).await.unwrap();
        until(&log, &format!("carol switches to {rid}"), |log| {
            layer_frames(log, from, l) >= 10
        })
        .await;
        let requests = log.lock().unwrap().requests;
        assert!(
            requests[usize::from(l)] > before,
            "carol's switch to {rid} brought alice no request for it: {requests:?}"
        );
        eprintln!("carol on {rid}; alice's key-frame requests per layer {requests:?}");
    }
    {
        let l = log.lock().unwrap();
        // The layers carol got in order, each change at a key frame alice made on request.
        let mut runs = Vec::new();
        for w in l.carol_video.windows(2) {
            let ((_, a), (i, b)) = (w[0], w[1]);
            if a != b {
                assert!(l.keys.contains(&i), "switched {a} → {b} at delta frame {i}");
            }
        }
        for (_, x) in &l.carol_video {
            if runs.last() != Some(x) {
                runs.push(*x);
            }
        }
        assert_eq!(runs, vec![0, 2, 1], "layers carol decrypted, in order");
        assert!(
            l.keys.contains(&l.carol_video[0].0),
            "carol's first frame is a key frame"
        );
    }

    // Blindness on both nodes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut windows: Vec<HashSet<[u8; 16]>> = Vec::new();
    let mut alice_video: Vec<HashSet<Vec<u8>>> = Vec::new();
    // The second node's packets first: every one of them reached the first node before.
    let second = recorded[1].0.lock().unwrap().clone();
    let first = recorded[0].0.lock().unwrap().clone();
    for (i, (packets, lost)) in [(first, &recorded[0].1), (second, &recorded[1].1)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            lost.load(Ordering::Relaxed),
            0,
            "node {i}'s tap lost packets"
        );
        let from = |who: &str| packets.iter().filter(|(p, _, _)| p == who).count();
        eprintln!(
            "node {i} tapped {} packets: alice {}, bob {}, carol {}",
            packets.len(),
            from("alice"),
            from("bob"),
            from("carol")
        );
        for who in names {
            assert!(from(who) > 0, "node {i} routed nothing of {who}");
        }
        windows.push(
            packets
                .iter()
                .flat_map(|(_, _, p)| p.windows(16).map(|w| w.try_into().unwrap()))
                .collect(),
        );
        alice_video.push(
            packets
                .iter()
                .filter(|(p, k, _)| p == "alice" && *k == veil_sfu::routing::MediaKind::Video)
                .map(|(_, _, p)| p.clone())
                .collect(),
        );
    }
    let published = log.lock().unwrap().keys.iter().max().copied().unwrap_or(0) + 30;
    let mut searched = 0;
    for i in 0..published {
        for l in 0..3 {
            let f = video_frame(l, i);
            for w in f.windows(16).step_by(16) {
                searched += 1;
                for (n, set) in windows.iter().enumerate() {
                    assert!(
                        !set.contains::<[u8; 16]>(w.try_into().unwrap()),
                        "node {n} saw frame {i} of layer {l} in clear"
                    );
                }
            }
        }
    }
    assert!(searched > 1000);
    assert!(!alice_video[1].is_empty());
    let relayed_unchanged = alice_video[1].is_subset(&alice_video[0]);
    assert!(
        relayed_unchanged,
        "the second node routed alice's video payloads the first never received"
    );
}

/// SFU-CAS-06: a node-to-node leg opens only with a node token of this deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leg_opens_only_with_a_node_token_of_the_deployment() {
    use veil_proto::sfu::v1 as pb;
    use veil_proto::sfu::v1::cascade_client::CascadeClient;

    let db = TempPostgres::shared().database();
    let key = TokenKey::generate("deployment").unwrap();
    let node = {
        let key = key.clone();
        InProcess::start("deployment", move |cfg| {
            cfg.database = veil_server::database::Database::Postgres(db);
            cfg.token_keys = vec![key];
        })
        .await
    };
    let other = TokenKey::generate("deployment").unwrap();
    let node_room = veil_sfu::cascade::NODE_ROOM;
    let cases = [
        (None, tonic::Code::Unauthenticated),
        (
            Some(veil_testkit::token::mint(
                &other,
                node_room,
                "http://x",
                Duration::from_secs(60),
            )),
            tonic::Code::Unauthenticated,
        ),
        (
            Some(veil_testkit::token::mint(
                &key,
                ROOM,
                "alice",
                Duration::from_secs(60),
            )),
            tonic::Code::PermissionDenied,
        ),
    ];
    for (token, code) in cases {
        let mut client = CascadeClient::connect(node.url.clone()).await.unwrap();
        let mut req = tonic::Request::new(tokio_stream::iter(Vec::<pb::LegFrame>::new()));
        if let Some(t) = &token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let status = client.leg(req).await.expect_err("the leg must be refused");
        assert_eq!(status.code(), code, "{token:?}: {status:?}");
    }
    // The deployment's own node token opens it; a second leg from the same node does not.
    let token = veil_testkit::token::mint(&key, node_room, "http://peer", Duration::from_secs(60));
    let open = |token: String| {
        let url = node.url.clone();
        async move {
            let mut client = CascadeClient::connect(url).await.unwrap();
            let (tx, rx) = mpsc::channel::<pb::LegFrame>(1);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            (client.leg(req).await, tx)
        }
    };
    let (first, _keep) = open(token.clone()).await;
    assert!(first.is_ok(), "{first:?}");
    let (second, _) = open(token).await;
    assert_eq!(second.unwrap_err().code(), tonic::Code::AlreadyExists);
}
