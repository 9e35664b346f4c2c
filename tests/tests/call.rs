//! The end-to-end encrypted call: the real server (key service + blind SFU) on loopback and
//! three SDK participants. Every frame each one publishes (audio and video, SFrame-encrypted
//! before packetization) is received byte-identical after decryption by both others, in both
//! packetizations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use veil_client::media::{MediaKind, Packetization};
use veil_client::room::{RemoteFrame, Room};
use veil_e2e::Server;

const NAMES: [&str; 3] = ["alice", "bob", "carol"];

fn audio_frame(who: usize, i: u32) -> Vec<u8> {
    (0..60 + i % 40)
        .map(|j| (who as u32 * 77 + i * 3 + j) as u8)
        .collect()
}

fn video_frame(who: usize, i: u32) -> Vec<u8> {
    (0..300 + (i * 211) % 3000)
        .map(|j| ((who as u32 * 13) ^ i ^ j) as u8)
        .collect()
}

type Got = BTreeMap<(String, MediaKind), BTreeMap<u32, Vec<u8>>>;

async fn collect(room: &mut Room, until: impl Fn(&Got) -> bool) -> Got {
    let mut got: Got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !until(&got) {
        let f: RemoteFrame = tokio::time::timeout_at(deadline, room.next_frame())
            .await
            .unwrap_or_else(|_| panic!("frames missing: {:?}", summary(&got)))
            .expect("room open");
        got.entry((f.participant, f.kind))
            .or_default()
            .insert(f.timestamp, f.frame);
    }
    got
}

fn summary(got: &Got) -> Vec<(String, MediaKind, usize)> {
    got.iter()
        .map(|((p, k), v)| (p.clone(), *k, v.len()))
        .collect()
}

async fn call(packetization: Packetization) {
    let server = Server::start().await;
    let room_name = format!("e2e-{packetization:?}").to_lowercase();
    let mut rooms = Vec::new();
    for name in NAMES {
        let mut cfg = server.room(&room_name, name);
        cfg.packetization = packetization;
        rooms.push(Room::join(cfg).await.unwrap());
    }
    for r in &rooms {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 3)
            .await
            .unwrap();
    }

    // Warm-up: everyone sends until everyone hears everyone (subscriptions negotiated), with
    // timestamps below the counted phase's.
    let mut warm = 0u32;
    loop {
        warm += 1;
        for (w, r) in rooms.iter().enumerate() {
            r.publish_audio(&audio_frame(w, warm), warm * 960, (true, 30))
                .await
                .unwrap();
            r.publish_video(&video_frame(w, warm), warm * 3000, true)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ready = rooms.iter().all(|r| {
            let s = r.stats();
            s.received.len() == 4 && s.received.values().all(|t| t.decrypted > 0)
        });
        if ready {
            break;
        }
        assert!(warm < 500, "subscriptions never settled");
    }
    // Drain what the warm-up delivered.
    for r in &mut rooms {
        while tokio::time::timeout(Duration::from_millis(100), r.next_frame())
            .await
            .is_ok()
        {}
    }

    // Counted phase: 50 audio and 25 video frames each, the first video frame a key frame.
    let base = 1_000_000u32;
    for i in 0..50u32 {
        for (w, r) in rooms.iter().enumerate() {
            r.publish_audio(&audio_frame(w, i), base + i * 960, (true, 30))
                .await
                .unwrap();
            if i % 2 == 0 {
                r.publish_video(&video_frame(w, i), base + i * 3000, i % 20 == 0)
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (me, r) in rooms.iter_mut().enumerate() {
        let complete = |got: &Got| {
            NAMES
                .iter()
                .enumerate()
                .filter(|(w, _)| *w != me)
                .all(|(_, p)| {
                    let n = |k| {
                        got.get(&((*p).to_owned(), k))
                            .map_or(0, |m| m.range(base..).count())
                    };
                    n(MediaKind::Audio) >= 50 && n(MediaKind::Video) >= 25
                })
        };
        let got = collect(r, complete).await;
        for (w, p) in NAMES.iter().enumerate().filter(|(w, _)| *w != me) {
            let audio = &got[&((*p).to_owned(), MediaKind::Audio)];
            let video = &got[&((*p).to_owned(), MediaKind::Video)];
            for i in 0..50u32 {
                assert_eq!(audio.get(&(base + i * 960)), Some(&audio_frame(w, i)));
                if i % 2 == 0 {
                    assert_eq!(video.get(&(base + i * 3000)), Some(&video_frame(w, i)));
                }
            }
        }
        let stats = r.stats();
        for (track, t) in &stats.received {
            assert!(
                t.decrypt_failures.is_empty(),
                "{} {track}: {:?}",
                NAMES[me],
                t.decrypt_failures
            );
        }
    }
    let epochs: BTreeSet<_> = rooms.iter().map(|r| r.group().status().epoch).collect();
    assert_eq!(epochs.len(), 1, "one epoch for all: {epochs:?}");
    for r in rooms {
        r.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_every_frame_arrives_decrypted_browser_packetization() {
    call(Packetization::Browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_every_frame_arrives_decrypted_ietf_packetization() {
    call(Packetization::Ietf).await;
}
