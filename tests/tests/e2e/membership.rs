//! Joins and leaves during a call, end to end (real key service + blind SFU on loopback):
//! - the participants who stay decrypt every frame, with zero decrypt failures, while dave
//!   joins and carol is removed;
//! - carol cheats: she leaves the MLS group but keeps her SFU session, so the packets keep
//!   arriving. After the rekey that removes her she decrypts none of them (they fail with an
//!   unknown key).

use std::time::Duration;

use veil_client::keys::KeyClient;
use veil_client::media::{MediaKind, Packetization};
use veil_client::room::Room;
use veil_e2e::{Server, audio_frame, collect, drain, warm_up};

/// Alice and Bob each publish `n` audio frames from index `from`, 10 ms apart.
async fn talk(rooms: &[Room], from: u32, n: u32) {
    for i in from..from + n {
        for (w, r) in rooms.iter().enumerate().take(2) {
            r.publish_audio(&audio_frame(w, i), 1_000_000 + i * 960, (true, 30))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stayers_lose_nothing_and_a_cheating_leaver_decrypts_nothing_new_browser_packetization() {
    membership(Packetization::Browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stayers_lose_nothing_and_a_cheating_leaver_decrypts_nothing_new_ietf_packetization() {
    membership(Packetization::Ietf).await;
}

async fn membership(packetization: Packetization) {
    let server = Server::start().await;
    let room = "members";
    let cfg = |name: &str| {
        let mut c = server.room(room, name);
        c.packetization = packetization;
        c
    };
    let mut rooms = Vec::new();
    for name in ["alice", "bob", "carol"] {
        rooms.push(Room::join(cfg(name)).await.unwrap());
    }
    for r in &rooms {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 3)
            .await
            .unwrap();
    }
    warm_up(&mut rooms, 2).await;

    // Phase 1: dave joins while alice and bob talk.
    let dave_cfg = cfg("dave");
    let dave = tokio::spawn(async move { Room::join(dave_cfg).await.unwrap() });
    talk(&rooms, 0, 40).await;
    let dave = dave.await.unwrap();
    for r in rooms.iter().chain(std::iter::once(&dave)) {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 4)
            .await
            .unwrap();
    }
    let epoch_with_carol = rooms[0].group().status().epoch.unwrap();

    // Phase 2: carol leaves the group (the service proposes her removal, a member commits it)
    // but keeps her SFU session; alice and bob keep talking.
    let mut carol_keys = KeyClient::connect(&server.url, &server.token(room, "carol"), room)
        .await
        .unwrap();
    carol_keys.leave().await.unwrap();
    let leave_talk = talk(&rooms, 40, 40);
    let removed = async {
        for r in &rooms[..2] {
            r.group()
                .wait(Duration::from_secs(20), |s| {
                    s.members.len() == 3 && !s.members.contains(&"carol".to_owned())
                })
                .await
                .unwrap();
        }
        rooms[2]
            .group()
            .wait(Duration::from_secs(20), |s| s.removed)
            .await
            .unwrap();
    };
    tokio::join!(leave_talk, removed);
    let epoch_without_carol = rooms[0].group().status().epoch.unwrap();
    assert!(epoch_without_carol > epoch_with_carol);

    // Phase 3: after the rekey.
    talk(&rooms, 80, 30).await;

    // Alice and Bob received every one of each other's 110 frames, with no decrypt failure.
    for (me, other, other_name) in [(0usize, 1usize, "bob"), (1, 0, "alice")] {
        let r = &mut rooms[me];
        let got = collect(r, |g| {
            g.get(&(other_name.to_owned(), MediaKind::Audio))
                .is_some_and(|m| m.range(1_000_000..).count() >= 110)
        })
        .await;
        let audio = &got[&(other_name.to_owned(), MediaKind::Audio)];
        for i in 0..110u32 {
            assert_eq!(
                audio.get(&(1_000_000 + i * 960)),
                Some(&audio_frame(other, i)),
                "frame {i} of {other_name}"
            );
        }
        for (track, t) in &r.stats().received {
            assert!(t.decrypt_failures.is_empty(), "{track}: {t:?}");
        }
    }

    // Carol kept receiving packets but decrypts nothing of phase 3, and her failures are
    // unknown keys.
    let carol = &mut rooms[2];
    let got = drain(carol, Duration::from_millis(500)).await;
    for name in ["alice", "bob"] {
        let phase3 = got
            .get(&(name.to_owned(), MediaKind::Audio))
            .map_or(0, |m| m.range(1_000_000 + 80 * 960..).count());
        assert_eq!(
            phase3, 0,
            "carol decrypted {name}'s frames after her removal"
        );
    }
    let stats = carol.stats();
    let unknown: u64 = stats
        .received
        .values()
        .map(|t| t.decrypt_failures.get("unknown_key").copied().unwrap_or(0))
        .sum();
    let packets: u64 = stats.received.values().map(|t| t.packets).sum();
    assert!(
        unknown >= 30,
        "carol's frames after removal must fail with an unknown key: {stats:?}"
    );
    assert!(packets > 0);
}
