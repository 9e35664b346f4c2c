//! A late joiner cannot decrypt what was said before it joined (MLS-SEC-02, specs/threat-model.md),
//! end to end on the real key service and blind SFU, in both packetizations.
//!
//! The SFU's tap (SFU-TAP-01) records alice's packets as the SFU received them, before and
//! after dave joins: exactly what an adversary who recorded the call and later got dave's
//! keys would hold. Dave's own keys (a receiver of his frame keys) then decrypt none of the
//! packets sent before his join, and every packet sent after it: the same captured path, so
//! the contrast is the epoch, not the plumbing.

use std::time::Duration;

use veil_client::media::{MediaKind, Packetization, ReceivedFrame, TrackReceiver};
use veil_client::room::Room;
use veil_e2e::{Server, audio_frame, collect, drain, warm_up};
use veil_sfu::TappedPacket;

const BASE: u32 = 2_000_000;
const BEFORE: u32 = 30;
const AFTER: u32 = 30;

async fn alice_talks(alice: &Room, from: u32, n: u32) {
    for i in from..from + n {
        alice
            .publish_audio(&audio_frame(0, i), BASE + i * 960, (true, 30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Alice's audio packets from the tap, from timestamp `BASE` on, until `n` frames are in.
async fn tapped_audio(
    tap: &mut tokio::sync::broadcast::Receiver<TappedPacket>,
    n: usize,
) -> Vec<TappedPacket> {
    let mut got = Vec::new();
    let mut frames = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while frames.len() < n {
        let p = tokio::time::timeout_at(deadline, tap.recv())
            .await
            .unwrap_or_else(|_| panic!("the tap saw {} of {n} frames", frames.len()))
            .expect("tap open, not lagging");
        if p.publisher == "alice"
            && p.kind == veil_sfu::routing::MediaKind::Audio
            && p.timestamp >= BASE
        {
            frames.insert(p.timestamp);
            got.push(p);
        }
    }
    got
}

async fn late_joiner(packetization: Packetization) {
    let server = Server::start().await;
    let room = "late";
    let cfg = |name: &str| {
        let mut c = server.room(room, name);
        c.packetization = packetization;
        c
    };
    let mut rooms = vec![
        Room::join(cfg("alice")).await.unwrap(),
        Room::join(cfg("bob")).await.unwrap(),
    ];
    for r in &rooms {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    warm_up(&mut rooms, 2).await;
    let mut tap = server.tap.subscribe();

    // Before dave: alice says frames 0..30.
    alice_talks(&rooms[0], 0, BEFORE).await;
    let epoch_before = rooms[0].group().status().epoch.unwrap();

    // Dave joins; everyone moves to the epoch that adds him.
    let mut dave = Room::join(cfg("dave")).await.unwrap();
    for r in rooms.iter().chain(std::iter::once(&dave)) {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 3)
            .await
            .unwrap();
    }
    let epoch_after = dave.group().status().epoch.unwrap();
    assert!(epoch_after > epoch_before);
    assert_eq!(rooms[0].group().status().epoch, Some(epoch_after));

    // After: frames 30..60. Bob (a member throughout) decrypts all 60.
    alice_talks(&rooms[0], BEFORE, AFTER).await;
    let all = (BEFORE + AFTER) as usize;
    let got = collect(&mut rooms[1], |g| {
        g.get(&("alice".to_owned(), MediaKind::Audio))
            .is_some_and(|m| m.range(BASE..).count() >= all)
    })
    .await;
    let bob_heard = &got[&("alice".to_owned(), MediaKind::Audio)];
    for i in 0..BEFORE + AFTER {
        assert_eq!(bob_heard.get(&(BASE + i * 960)), Some(&audio_frame(0, i)));
    }
    // Dave, live: nothing from before his join (the SFU starts forwarding to him at his
    // subscription); frames after it, as far as his subscription was up in time.
    let got = drain(&mut dave, Duration::from_millis(500)).await;
    let dave_heard = got
        .get(&("alice".to_owned(), MediaKind::Audio))
        .expect("dave hears alice");
    assert_eq!(
        dave_heard.range(BASE..BASE + BEFORE * 960).count(),
        0,
        "dave decrypted frames from before he joined"
    );
    assert!(dave_heard.range(BASE + BEFORE * 960..).count() > 0);

    // The recording: every frame alice sent from BASE on, as the SFU saw it.
    let recorded = tapped_audio(&mut tap, all).await;
    // One receiver of dave's keys, with its own replay windows (MLS-KEY-08), on the SDK's
    // clock convention (time since this receiver started).
    let mut decryptor = dave.group().frame_keys().decryptor();
    let start = std::time::Instant::now();
    let mut replay = |before: bool| {
        let mut rx = TrackReceiver::new(MediaKind::Audio, packetization);
        let mut out = Vec::new();
        for p in recorded
            .iter()
            .filter(|p| (p.timestamp < BASE + BEFORE * 960) == before)
        {
            rx.push(p.seq, p.timestamp, p.marker, &p.payload);
            out.extend(rx.drain(&mut decryptor, start.elapsed()));
        }
        (out, rx.stats().clone())
    };

    // Before the join: nothing decrypts, nothing is held for later; every frame fails for want
    // of a key dave never had.
    let (out, stats) = replay(true);
    assert_eq!(stats.frames, u64::from(BEFORE), "{stats:?}");
    assert_eq!(stats.decrypted, 0, "{stats:?}");
    assert_eq!(stats.held, 0, "{stats:?}");
    assert_eq!(
        stats.decrypt_failures.get("unknown_key").copied(),
        Some(u64::from(BEFORE)),
        "{stats:?}"
    );
    assert!(out.iter().all(|f| matches!(f, ReceivedFrame::Lost(_))));

    // After the join: the same recording path finds dave's key for every frame and decrypts
    // it, byte-identical to what alice sent and to what dave heard live (this receiver's
    // replay windows are its own, not those of the room's receive path).
    let (out, stats) = replay(false);
    assert_eq!(stats.frames, u64::from(AFTER), "{stats:?}");
    assert_eq!(stats.decrypted, u64::from(AFTER), "{stats:?}");
    assert!(stats.decrypt_failures.is_empty(), "{stats:?}");
    let mut plaintexts = std::collections::BTreeMap::new();
    for f in out {
        if let ReceivedFrame::Frame {
            timestamp, data, ..
        } = f
        {
            assert!(
                plaintexts.insert(timestamp, data).is_none(),
                "frame {timestamp} decrypted twice"
            );
        }
    }
    assert_eq!(plaintexts.len(), AFTER as usize);
    for i in BEFORE..BEFORE + AFTER {
        let ts = BASE + i * 960;
        assert_eq!(plaintexts.get(&ts), Some(&audio_frame(0, i)));
        if let Some(live) = dave_heard.get(&ts) {
            assert_eq!(live, &audio_frame(0, i), "frame {ts} as dave heard it live");
        }
    }
    // The same receiver refuses the recording a second time: every frame is a replay (the
    // replay check comes after the key lookup, SF-RPL-01).
    let (_, stats) = replay(false);
    assert_eq!(stats.decrypted, 0, "{stats:?}");
    assert_eq!(
        stats.decrypt_failures.get("replay").copied(),
        Some(u64::from(AFTER)),
        "{stats:?}"
    );
    for r in rooms {
        r.leave().await.unwrap();
    }
    dave.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_cannot_decrypt_what_was_sent_before_it_joined_browser_packetization() {
    late_joiner(Packetization::Browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_cannot_decrypt_what_was_sent_before_it_joined_ietf_packetization() {
    late_joiner(Packetization::Ietf).await;
}
