//! A call whose membership changes under a running media stream: Alice sends audio over
//! WebRTC to Bob every 5 ms while members join (Welcome and external commit), leave, and
//! self-update through the real key service. Bob decrypts every frame Alice sent, byte for byte,
//! across every epoch: frames of an epoch whose commit Bob has not processed yet are held and
//! come back when it arrives; none is lost (key-schedule.md MLS-KEY-04, held frames).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use veil_client::group::{Group, GroupConfig};
use veil_client::media::{
    FrameCounter, MediaKind, Packetization, ReceivedFrame, TrackReceiver, TrackSender,
    split_held_tag,
};
use veil_client::transport::{LocalTrack, negotiated_ext_ids};
use veil_testkit::server::InProcess;

use crate::common::{connect, peer};

/// The real server in this process, its departure grace cut to 2 s.
async fn start() -> InProcess {
    InProcess::start("test", |cfg| {
        cfg.kds.departure_grace = Duration::from_secs(2)
    })
    .await
}

fn cfg(svc: &InProcess, identity: &str) -> GroupConfig {
    let token = svc.token("call", identity, Duration::from_secs(600));
    let mut c = GroupConfig::new(&svc.url, &token, "call", identity);
    c.proposal_commit_delay = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_is_lost_while_the_membership_changes() {
    let svc = start().await;
    let alice = Group::create(cfg(&svc, "alice")).await.unwrap();
    let bob = Group::join_external(cfg(&svc, "bob")).await.unwrap();
    bob.wait(Duration::from_secs(10), |s| s.epoch == Some(1))
        .await
        .unwrap();
    alice
        .wait(Duration::from_secs(10), |s| s.epoch == Some(1))
        .await
        .unwrap();

    let (rx_tx, mut incoming) = mpsc::channel(8192);
    let mut a = peer(None).await;
    let mut b = peer(Some(rx_tx)).await;
    let audio = LocalTrack::new(MediaKind::Audio, "alice", "mic", 0x3333);
    let sender = a.pc.add_track(audio.track()).await.unwrap();
    connect(&mut a, &mut b).await;
    let ext = negotiated_ext_ids(&sender).await.unwrap();

    // Alice's media loop: one 80-byte frame every 5 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let alice_keys = alice.frame_keys();
    let sending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tx = TrackSender::new(
                MediaKind::Audio,
                Packetization::Browser,
                ext,
                1,
                FrameCounter::default(),
            )
            .unwrap();
            let mut sent = BTreeMap::new();
            let mut ts = 0u32;
            while !stop.load(Ordering::Relaxed) {
                ts += 960;
                let frame: Vec<u8> = (0..80u32).map(|j| (ts / 960 + j) as u8).collect();
                let pkts = tx
                    .send(&alice_keys, &frame, ts, false, Some((true, 50)))
                    .unwrap();
                audio.send(&pkts).await.unwrap();
                sent.insert(ts, frame);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };

    // Bob's media loop: reassemble, decrypt, and collect released frames, on Bob's frame keys
    // (never his MLS session): held frames come back when a packet arrives after their epoch
    // was published, or when the epoch change itself wakes the loop.
    let mut decryptor = bob.frame_keys().decryptor();
    let mut key_changes = bob.watch_status();
    let start = std::time::Instant::now();
    let receiving = tokio::spawn(async move {
        let mut rx = TrackReceiver::new(MediaKind::Audio, Packetization::Browser).with_track_tag(7);
        let mut keys_open = true;
        let mut got = BTreeMap::new();
        let mut held = 0;
        let mut lost = Vec::new();
        loop {
            tokio::select! {
                p = incoming.recv() => {
                    let Some((_, p)) = p else { break };
                    rx.push(p.seq, p.timestamp, p.marker, &p.payload);
                    let frames = rx.drain(&mut decryptor, start.elapsed());
                    for f in frames {
                        match f {
                            ReceivedFrame::Frame { timestamp, data, .. } => {
                                got.insert(timestamp, data);
                            }
                            ReceivedFrame::Held => held += 1,
                            ReceivedFrame::Lost(l) => lost.push(l),
                        }
                    }
                }
                changed = key_changes.changed(), if keys_open => {
                    keys_open = changed.is_ok();
                    decryptor.refresh(start.elapsed());
                }
                () = tokio::time::sleep(Duration::from_secs(3)) => break,
            }
            for r in decryptor.take_released() {
                let (track, ts) = split_held_tag(r.tag);
                assert_eq!(track, 7);
                got.insert(ts, r.plaintext);
            }
        }
        (got, held, lost)
    });

    // Membership changes while media flows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let carol = Group::await_welcome(cfg(&svc, "carol")).await.unwrap();
    alice.add(&["carol"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dave = Group::join_external(cfg(&svc, "dave")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    bob.self_update().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    carol.leave().await.unwrap();
    dave.wait(Duration::from_secs(15), |s| s.members.len() == 3)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    alice.self_update().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let sent = sending.await.unwrap();
    let (got, held, lost) = receiving.await.unwrap();
    let end = alice.status().epoch.unwrap();
    // create 0, bob 1, carol 2, dave 3, bob's update 4, carol's removal 5, alice's update 6.
    assert_eq!(end, 6, "{:?}", alice.status());
    assert_eq!(bob.status().epoch, Some(end));
    assert!(lost.is_empty(), "lost frames: {lost:?}");
    assert_eq!(got.len(), sent.len(), "held {held}");
    assert!(got == sent, "every frame decrypted byte for byte");
    eprintln!(
        "{} frames across epochs 1..={end}; {held} held until their commit arrived",
        sent.len()
    );
}
