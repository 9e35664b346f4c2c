//! The end-to-end encrypted call: the real server (key service + blind SFU) on loopback and
//! three SDK participants. Every frame each one publishes (audio and video, SFrame-encrypted
//! before packetization) is received byte-identical after decryption by both others, in both
//! packetizations.

use std::collections::BTreeSet;
use std::time::Duration;

use veil_client::media::{MediaKind, Packetization};
use veil_client::room::Room;
use veil_e2e::{Got, Server, audio_frame, collect, metric, video_frame, warm_up};

const NAMES: [&str; 3] = ["alice", "bob", "carol"];

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

    warm_up(&mut rooms, 2).await;

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
    // Network statistics, like getStats: every received track counted, nothing lost on
    // loopback (NACK repairs what the kernel drops), jitter measured, an RTT to the SFU.
    for (me, r) in rooms.iter().enumerate() {
        let stats = r.stats();
        assert_eq!(stats.received.len(), 4, "{}: {stats:?}", NAMES[me]);
        for (track, t) in &stats.received {
            assert!(t.packets > 50, "{track}: {t:?}");
            assert!(t.packets_lost <= 0, "{track}: {t:?}");
            assert!(
                t.jitter > Duration::ZERO && t.jitter < Duration::from_secs(1),
                "{track}: {t:?}"
            );
        }
        let net = r.network_stats().await;
        let rtt = net.round_trip_time.expect("an RTT to the SFU");
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
        assert_eq!(net.outbound.len(), 2, "{net:?}");
        assert!(net.outbound.iter().all(|o| o.packets_sent > 50), "{net:?}");
        let mut tracks: Vec<_> = net.inbound.iter().filter_map(|i| i.track.clone()).collect();
        tracks.sort();
        let mut want: Vec<_> = stats.received.keys().cloned().collect();
        want.sort();
        assert_eq!(tracks, want, "{net:?}");
        for i in &net.inbound {
            let t = &stats.received[i.track.as_ref().unwrap()];
            assert!(i.packets_received >= t.packets, "{i:?} {t:?}");
        }
    }
    // One /metrics for both roles: the SFU forwarded each audio packet to two subscribers and
    // dropped nothing for spoofing; the key service accepted the joins' commits.
    let text = server.metrics_text().await;
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"));
    let received = metric(&text, "veil_sfu_received_packets_total{kind=\"audio\"}").unwrap();
    let forwarded = metric(&text, "veil_sfu_forwarded_packets_total{kind=\"audio\"}").unwrap();
    assert!(received >= 3.0 * 50.0, "{text}");
    assert!(
        forwarded >= 2.0 * 3.0 * 50.0 && forwarded <= 2.0 * received,
        "{text}"
    );
    assert_eq!(metric(&text, "veil_sfu_participants"), Some(3.0), "{text}");
    assert!(
        metric(&text, "veil_keys_commits_total").unwrap() >= 2.0,
        "{text}"
    );
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

/// SFU-ROOM-03: the room keeps the first packetization proposed; a participant that would
/// rather use the other one is told the room's and uses it, so every frame still decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_its_first_packetization_and_a_later_joiner_adopts_it() {
    let server = Server::start().await;
    let room = "packetization";
    let mut alice_cfg = server.room(room, "alice");
    alice_cfg.packetization = Packetization::Ietf;
    let alice = Room::join(alice_cfg).await.unwrap();
    let bob_cfg = server.room(room, "bob");
    assert_eq!(bob_cfg.packetization, Packetization::Browser);
    let bob = Room::join(bob_cfg).await.unwrap();
    assert_eq!(alice.packetization(), Packetization::Ietf);
    assert_eq!(bob.packetization(), Packetization::Ietf);
    let mut rooms = vec![alice, bob];
    for r in &rooms {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    warm_up(&mut rooms, 2).await;
    let base = 2_000_000u32;
    for i in 0..20u32 {
        rooms[1]
            .publish_audio(&audio_frame(1, i), base + i * 960, (true, 30))
            .await
            .unwrap();
        rooms[1]
            .publish_video(&video_frame(1, i), base + i * 3000, i == 0)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = collect(&mut rooms[0], |g| {
        [MediaKind::Audio, MediaKind::Video].iter().all(|k| {
            g.get(&("bob".to_owned(), *k))
                .is_some_and(|m| m.range(base..).count() >= 20)
        })
    })
    .await;
    for i in 0..20u32 {
        assert_eq!(
            got[&("bob".to_owned(), MediaKind::Audio)].get(&(base + i * 960)),
            Some(&audio_frame(1, i))
        );
        assert_eq!(
            got[&("bob".to_owned(), MediaKind::Video)].get(&(base + i * 3000)),
            Some(&video_frame(1, i))
        );
    }
    for (t, s) in &rooms[0].stats().received {
        assert!(s.decrypt_failures.is_empty(), "{t}: {s:?}");
    }
}
