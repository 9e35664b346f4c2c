//! SFU-WRK-01..03: rooms spread over the SFU's workers, each worker its own UDP port and
//! thread; a room's participants are all on its worker (the answer's candidate is that
//! worker's port), media flows on every worker, and a room leaves the placement with its last
//! participant.

use std::time::Duration;

use bytes::Bytes;
use veil_sfu::connection::sdp::AUDIO_LEVEL_URI;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::{Permissions, SfuConfig, SfuError};
use veil_wire::audio_level::AudioLevel;

use crate::common::*;

const PACKETS: u16 = 30;

fn two_workers() -> EdgeSfu {
    EdgeSfu::new(SfuConfig {
        workers: 2,
        ..SfuConfig::default()
    })
    .unwrap()
}

/// Join `p` and return the port its answer names (its only candidate).
async fn join_on_port(p: &mut Peer, sfu: &EdgeSfu) -> u16 {
    let offer = p.offer().await;
    let session = sfu
        .join_with(&p.room, &p.identity, &offer, Permissions::ALL)
        .await
        .unwrap();
    let port = candidate_port(&session.answer);
    p.accept(sfu, session).await;
    p.connected().await;
    port
}

fn voice() -> Bytes {
    Bytes::from(vec![
        AudioLevel {
            voice: true,
            level: 30,
        }
        .to_byte()
        .unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_take_two_workers_and_media_flows_in_both() {
    init_tracing();
    let sfu = two_workers();
    let ports: Vec<u16> = sfu.local_addrs().iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1], "each worker has its own port");

    // Per room: a publisher of audio, then a subscriber.
    let mut rooms = Vec::new();
    for (room, publisher, subscriber, ssrc) in [
        ("east", "alice", "bob", 0xEA57_0001),
        ("west", "carol", "dave", 0x3E57_0001),
    ] {
        let mut p = Peer::new(room, publisher, true).await;
        let mic = p.add_track(MediaKind::Audio, ssrc, "mic").await;
        let p_port = join_on_port(&mut p, &sfu).await;
        let mut s = Peer::new(room, subscriber, false).await;
        let s_port = join_on_port(&mut s, &sfu).await;
        let worker = sfu.room_addr(room).expect("placed").port();
        assert_eq!(
            (p_port, s_port),
            (worker, worker),
            "{room}: both participants on its worker"
        );
        rooms.push((p, mic, s, worker));
    }
    // Both idle at first: east to worker 0 (ties go to the lowest), west to the idle one.
    assert_eq!((rooms[0].3, rooms[1].3), (ports[0], ports[1]));
    assert_eq!(sfu.worker_load(), vec![2, 2]);
    assert_eq!(sfu.metrics().rooms.get(), 2);

    // The SFU learns a track from its first packet: send until both are published.
    let ids = [
        rooms[0].1.ext_id(AUDIO_LEVEL_URI).await.unwrap(),
        rooms[1].1.ext_id(AUDIO_LEVEL_URI).await.unwrap(),
    ];
    for i in 0..500u16 {
        if sfu.metrics().tracks.get() == 2 {
            break;
        }
        for (r, id) in rooms.iter().zip(ids) {
            r.1.send(i, 0, true, &[(id, voice())], payload(1, 80)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sfu.metrics().tracks.get(), 2, "both tracks published");
    let mut tracks = Vec::new();
    for (p, _, s, _) in &mut rooms {
        let t = s.track_named(&p.identity, "mic").await;
        s.subscribe(&sfu, &t).await;
        tracks.push(t);
    }

    // Each publisher's packets, with payloads of its own, reach its room's subscriber.
    for i in 0..PACKETS {
        for (n, (r, id)) in rooms.iter().zip(ids).enumerate() {
            let seq = 1000 + i;
            let body = payload(100 * n as u64 + u64::from(i), 60 + usize::from(i));
            r.1.send(seq, 960 * u32::from(i), false, &[(id, voice())], body)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (n, ((_, _, s, _), track)) in rooms.iter_mut().zip(&tracks).enumerate() {
        let mut got = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < usize::from(PACKETS) {
            let r = tokio::time::timeout_at(deadline, s.received.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: {} of {PACKETS}", s.identity, got.len()))
                .unwrap();
            assert_eq!(&r.track, track);
            let i = r.packet.header.sequence_number.wrapping_sub(1000);
            if i < PACKETS {
                let body = payload(100 * n as u64 + u64::from(i), 60 + usize::from(i));
                assert_eq!(
                    r.packet.payload, body,
                    "{}: its own room's payload",
                    s.identity
                );
                got.insert(i);
            }
        }
    }

    // East ends: its entry leaves the placement and the gauge; west stays where it was.
    let west = sfu.room_addr("west");
    for who in ["bob", "alice"] {
        sfu.leave("east", who).await.unwrap();
    }
    assert_eq!(sfu.room_addr("east"), None, "an ended room is forgotten");
    assert_eq!(sfu.room_addr("west"), west);
    assert_eq!(sfu.metrics().rooms.get(), 1);
    assert_eq!(sfu.worker_load(), vec![0, 2]);
    assert!(sfu.participants("east").await.is_empty());
    assert_eq!(sfu.participants("west").await, ["carol", "dave"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_joins_of_one_room_land_on_one_worker() {
    init_tracing();
    let sfu = two_workers();
    // A room on worker 0 first, so that "busy" could go either way if placement raced.
    let mut first = Peer::new("first", "zed", false).await;
    let offer = first.offer().await;
    let _zed = sfu
        .join_with("first", "zed", &offer, Permissions::ALL)
        .await
        .unwrap();
    let mut peers = Vec::new();
    for i in 0..6 {
        let mut p = Peer::new("busy", &format!("p{i}"), false).await;
        let offer = p.offer().await;
        peers.push((p, offer));
    }
    let joins = peers.iter().map(|(p, offer)| {
        let sfu = sfu.clone();
        let (id, offer) = (p.identity.clone(), offer.clone());
        tokio::spawn(async move {
            let s = sfu.join_with("busy", &id, &offer, Permissions::ALL).await?;
            Ok::<_, SfuError>((candidate_port(&s.answer), s))
        })
    });
    let mut sessions = Vec::new();
    for j in joins.collect::<Vec<_>>() {
        sessions.push(j.await.unwrap().unwrap());
    }
    let busy = sfu.room_addr("busy").unwrap().port();
    assert!(
        sessions.iter().all(|(port, _)| *port == busy),
        "every joiner on the room's worker: {:?}",
        sessions.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert_ne!(Some(busy), sfu.room_addr("first").map(|a| a.port()));
    assert_eq!(sfu.participants("busy").await.len(), 6);

    // A refused join (already joined) gives its place back.
    let before = sfu.worker_load();
    let again = sfu
        .join_with("busy", "p0", &peers[1].1, Permissions::ALL)
        .await;
    assert!(matches!(again, Err(SfuError::AlreadyJoined { .. })));
    assert_eq!(sfu.worker_load(), before);

    for i in 0..6 {
        sfu.leave("busy", &format!("p{i}")).await.unwrap();
    }
    assert_eq!(sfu.room_addr("busy"), None);
    assert_eq!(sfu.worker_load().iter().sum::<usize>(), 1, "zed alone");
    assert!(matches!(
        sfu.leave("busy", "p0").await,
        Err(SfuError::NotJoined { .. })
    ));
}

#[test]
fn zero_workers_are_refused() {
    let e = EdgeSfu::new(SfuConfig {
        workers: 0,
        ..SfuConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, SfuError::Config(_)), "{e}");
}
