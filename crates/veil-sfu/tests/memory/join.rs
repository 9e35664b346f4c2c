//! SFU-EDGE-01, -02, -04, -09, SFU-ROOM-02, SFU-BLIND-03 in memory: two peers join a room, ICE
//! and DTLS connect through the harness, and each receives the other's audio and video byte for
//! byte, on its subscription's SSRC, as one continuous stream.

use std::time::Duration;

use veil_sfu::DropKind;
use veil_sfu::edge::{EdgeRoomEvent, track_name};
use veil_sfu::routing::MediaKind;

use crate::common::*;

#[test]
fn two_peers_join_connect_and_receive_each_others_media_byte_for_byte() {
    let started = std::time::Instant::now();
    let mut net = Net::new(config());
    let both = Publish {
        audio: true,
        video: true,
    };
    let alice = net.add_peer("alice", both);
    let bob = net.add_peer("bob", both);
    for i in [alice, bob] {
        let answer = net.join(i, "room");
        // SFU-EDGE-02: the answer's only candidate is the SFU's address.
        let mut candidates = answer.lines().filter(|l| l.starts_with("a=candidate:"));
        assert!(
            candidates.all(|c| c.ends_with(" 10.0.0.1 3478 typ host"))
                && answer.contains("a=candidate:"),
            "{answer}"
        );
    }
    net.connect(&[alice, bob]);
    let connected_at = net.elapsed();
    // Both are Connected, each on its own connection.
    let conns: Vec<_> = [alice, bob].map(|i| net.peers[i].conn.unwrap()).to_vec();
    for c in &conns {
        assert!(
            net.events
                .iter()
                .any(|(_, e)| *e == EdgeRoomEvent::Connected(*c))
        );
    }
    for i in [alice, bob] {
        assert_eq!(net.sfu.conn_at(net.peers[i].addr), net.peers[i].conn);
    }

    // Tracks are published with their first packets: kind and rids from the offer.
    for i in [alice, bob] {
        net.start_media(i);
    }
    assert!(net.run_until(Duration::from_secs(1), |n| n.published().len() == 4));
    for e in net.events.iter().map(|(_, e)| e) {
        if let EdgeRoomEvent::Published {
            kind,
            rids,
            publisher_track_id,
            ..
        } = e
        {
            let (id, want): (&str, &[&str]) = match kind {
                MediaKind::Audio => ("mic", &[]),
                MediaKind::Video => ("cam", &RIDS),
            };
            assert_eq!(publisher_track_id, id);
            assert_eq!(rids, want);
        }
    }

    for (sub, publ) in [(alice, bob), (bob, alice)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let t = net.track(publ, kind);
            net.subscribe(sub, t);
        }
    }
    net.run_for(Duration::from_secs(2));
    for i in [alice, bob] {
        net.peers[i].sending = false;
    }
    net.run_for(Duration::from_millis(200));

    let mut got_total = [0usize; 2];
    for (sub, publ) in [(alice, bob), (bob, alice)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let Flow {
                what,
                track: t,
                ssrc,
                got,
                sent,
                k,
            } = flow(&net, sub, publ, kind);
            // The subscription's SSRC, as the SFU announced it.
            let announced = net.events.iter().find_map(|(_, e)| match e {
                EdgeRoomEvent::Subscribed {
                    subscriber,
                    track,
                    ssrc,
                } if Some(*subscriber) == net.peers[sub].conn && *track == t => Some(*ssrc),
                _ => None,
            });
            assert_eq!(Some(got[0].packet.header.ssrc), announced, "{what}");
            assert_ne!(
                got[0].packet.header.ssrc, ssrc,
                "{what}: the publisher's SSRC leaked"
            );
            // Video starts at a key frame (the SFU asked for one on subscribe).
            if kind == MediaKind::Video {
                assert!(sent[k].key, "{what}: started on a delta frame");
                // The DD is forwarded, as the publisher wrote it.
                let wrote = dd((3 * (k as u32)) as u16, true, 320);
                let mut d = got[0].packet.header.extensions.iter().map(|e| &e.payload);
                assert!(d.any(|p| *p == wrote), "{what}: DD");
            } else {
                // The audio level rides along, unchanged.
                assert!(
                    got.iter().all(|g| g
                        .packet
                        .header
                        .extensions
                        .iter()
                        .any(|e| e.payload[..] == [0x80 | 30])),
                    "{what}: audio level"
                );
            }
            eprintln!("memory/join: {what}: {} packets from #{k}", got.len());
            got_total[usize::from(kind == MediaKind::Video)] += got.len();
        }
        // Nothing else reached it: no other layer, no other track.
        let tracks: std::collections::BTreeSet<_> =
            net.peers[sub].got.iter().map(|g| g.track.clone()).collect();
        let want: std::collections::BTreeSet<_> = [MediaKind::Audio, MediaKind::Video]
            .map(|k| track_name(net.track(publ, k)))
            .into_iter()
            .collect();
        assert_eq!(tracks, want);
    }

    let c = &net.counters;
    let sent_audio: usize = [alice, bob]
        .iter()
        .map(|&i| {
            net.peers[i]
                .sent
                .iter()
                .filter(|s| s.ssrc == audio_ssrc(i))
                .count()
        })
        .sum();
    assert_eq!(
        c.received[0] as usize, sent_audio,
        "every audio packet reached the SFU"
    );
    assert_eq!(c.forwarded[0] as usize, got_total[0]);
    assert_eq!(c.forwarded[1] as usize, got_total[1]);
    for kind in [
        DropKind::SpoofedSsrc,
        DropKind::Metadata,
        DropKind::WriteFailed,
        DropKind::UnknownTrack,
    ] {
        assert_eq!(c.drops(kind), 0, "{kind:?}");
    }
    assert_eq!((c.tracks, c.subscriptions), (4, 4));
    assert_eq!(
        (
            net.sfu.len("room"),
            net.sfu.rooms(),
            net.sfu.subscriptions()
        ),
        (2, 1, 4)
    );
    assert_eq!(net.sfu.unrouted(), 0);
    eprintln!(
        "memory/join: connected at {connected_at:?}; {:?} virtual in {:?} real; {c:?}",
        net.elapsed(),
        started.elapsed()
    );
}
