//! SFU-CAS-02..05 in memory: a room on two edges joined by a leg, the leg being the test moving
//! what one edge's rooms relay (`poll_relay`) into the other's (`remote_*`), as the shell's leg
//! does over gRPC. Alice publishes on the east edge (audio and three simulcast layers, key
//! frames only when asked); bob subscribes on the west edge. Every key frame bob's stream
//! needs is asked for across the leg; bob gets alice's packets byte for byte, as one stream,
//! and switches q → f → h at key frames; when the leg goes, alice's tracks end at the west.

use std::time::Duration;

use veil_sfu::edge::{EdgeRoomEvent, LegId, RelayOut};
use veil_sfu::routing::{MediaKind, TrackId};

use crate::common::*;

const LEG: LegId = 7;

/// Carry what `from`'s rooms relay to `to`; returns how many messages crossed.
fn carry(from: &mut Net, to: &mut Net) -> usize {
    let mut n = 0;
    while let Some(o) = from.sfu.poll_relay() {
        n += 1;
        let now = to.now();
        match o {
            RelayOut::Track(t) => to.sfu.remote_track(LEG, t),
            RelayOut::TrackEnd { room, track } => {
                to.sfu.remote_track_end(now, LEG, &room, track);
            }
            RelayOut::Packet {
                room,
                track,
                rid,
                rtp,
            } => to.sfu.remote_packet(now, LEG, &room, track, &rid, rtp),
            RelayOut::KeyFrame {
                room, track, ssrc, ..
            } => to.sfu.remote_key_frame(now, &room, track, ssrc),
        }
    }
    n
}

/// Run both edges for `d`, 5 ms at a time, carrying the leg both ways after each step.
fn run_both(east: &mut Net, west: &mut Net, d: Duration) -> usize {
    let mut crossed = 0;
    let end = east.elapsed() + d;
    while east.elapsed() < end {
        east.run_for(Duration::from_millis(5));
        crossed += carry(east, west);
        west.run_for(Duration::from_millis(5));
        crossed += carry(west, east);
    }
    crossed
}

#[test]
fn a_room_on_two_edges_is_relayed_over_a_leg_with_key_frames_and_layers() {
    let mut east = Net::new(config());
    let mut west = Net::new(config());
    let alice = east.add_peer(
        "alice",
        Publish {
            audio: true,
            video: true,
        },
    );
    // Each net numbers its peers from 0, and a peer's SSRCs follow its number: bob's are
    // chosen so that they are not alice's (the core refuses an SSRC another owns, SFU-SEC-01,
    // remote publishers included).
    let bob = west.add_peer_with_ssrcs(
        "bob",
        Publish {
            audio: true,
            video: false,
        },
        0x0B0B_0001,
        0x0B0B_0100,
    );
    east.join(alice, "room");
    west.join(bob, "room");
    // The leg wants the room at both ends (the shell's attach).
    east.sfu.set_relayed("room", true);
    west.sfu.set_relayed("room", true);
    east.connect(&[alice]);
    west.connect(&[bob]);
    east.start_media(alice);
    west.start_media(bob);
    let crossed = run_both(&mut east, &mut west, Duration::from_secs(1));

    // Alice's tracks are published at the west under a remote publisher, and bob's at the east.
    let remote: Vec<(TrackId, MediaKind)> = west
        .published()
        .into_iter()
        .filter(|(p, _, _)| Some(*p) != west.peers[bob].conn)
        .map(|(_, t, k)| (t, k))
        .collect();
    assert_eq!(
        remote.len(),
        2,
        "alice's audio and video at the west: {remote:?}"
    );
    let publisher = west
        .published()
        .into_iter()
        .find(|(p, _, _)| Some(*p) != west.peers[bob].conn)
        .unwrap()
        .0;
    assert_eq!(west.sfu.remote(publisher), Some(("room", "alice")));
    assert_eq!(
        east.published().len(),
        3,
        "alice's two tracks and bob's audio at the east"
    );

    let cam = remote
        .iter()
        .find(|(_, k)| *k == MediaKind::Video)
        .unwrap()
        .0;
    let mic = remote
        .iter()
        .find(|(_, k)| *k == MediaKind::Audio)
        .unwrap()
        .0;

    // Bob subscribes: his first video is a key frame alice made because the west asked over
    // the leg (alice makes none unasked).
    west.subscribe(bob, mic);
    west.subscribe(bob, cam);
    run_both(&mut east, &mut west, Duration::from_secs(1));
    assert!(west.subscribed(bob, cam) && west.subscribed(bob, mic));
    let video = west.peers[bob].got_on(cam);
    assert!(!video.is_empty(), "no video crossed the leg");
    let first = east.peers[alice]
        .sent
        .iter()
        .find(|s| s.payload == video[0].packet.payload)
        .expect("bob's first packet is one alice sent");
    assert!(first.key, "bob's first video packet is not a key frame");
    assert!(
        east.peers[alice]
            .plis
            .iter()
            .any(|p| p.media_ssrc == video_ssrc(alice, 0)),
        "the west's request for q never reached alice"
    );
    // Byte for byte: every packet bob got is one alice sent.
    for g in &west.peers[bob].got {
        assert!(
            east.peers[alice]
                .sent
                .iter()
                .any(|s| s.payload == g.packet.payload),
            "bob got a packet alice never sent"
        );
    }
    assert!(!west.peers[bob].got_on(mic).is_empty(), "no audio crossed");

    // Layer switches, decided at the west, each landing on a key frame asked for across the leg.
    let conn = west.peers[bob].conn.unwrap();
    for (rid, layer) in [("f", 2usize), ("h", 1)] {
        let before = west.peers[bob].got.len();
        let plis = east.peers[alice].plis.len();
        let now = west.now();
        west.sfu.set_layer(now, conn, cam, Some(rid)).unwrap();
        let tag = rid.as_bytes()[0];
        let mut switched = false;
        for _ in 0..60 {
            run_both(&mut east, &mut west, Duration::from_millis(50));
            if west.peers[bob].got[before..]
                .iter()
                .any(|g| g.packet.payload[0] == tag)
            {
                switched = true;
                break;
            }
        }
        assert!(switched, "never switched to {rid}");
        assert!(
            east.peers[alice].plis[plis..]
                .iter()
                .any(|p| p.media_ssrc == video_ssrc(alice, layer)),
            "the west's request for {rid} never reached alice"
        );
        let got = &west.peers[bob].got[before..];
        let at = got.iter().position(|g| g.packet.payload[0] == tag).unwrap();
        let sent = east.peers[alice]
            .sent
            .iter()
            .find(|s| s.payload == got[at].packet.payload)
            .unwrap();
        assert!(sent.key, "the switch to {rid} is not at a key frame");
    }
    let all = west.peers[bob].got_on(cam);
    assert_one_stream("bob ← alice video over the leg", &all);
    let mut runs: Vec<u8> = all.iter().map(|g| g.packet.payload[0]).collect();
    runs.dedup();
    assert_eq!(runs, b"qfh");
    let video_packets = all.len();
    let spoofed = veil_sfu::DropKind::SpoofedSsrc as usize;
    assert_eq!(west.counters.drops[spoofed], 0);
    assert_eq!(east.counters.drops[spoofed], 0);
    // Counted for `veil_sfu_leg_packets_total`: out at the east, in at the west.
    assert!(east.counters.relayed[0] > 0 && west.counters.relayed[1] > 0);
    assert!(west.counters.relayed[1] <= east.counters.relayed[0]);

    // The leg goes (SFU-CAS-05): alice's tracks end at the west, bob is offered a session
    // without them.
    let from = west.events.len();
    let now = west.now();
    west.sfu.drop_remotes(now, LEG, None);
    west.run_for(Duration::from_millis(100));
    let ended: Vec<TrackId> = west
        .events_since(from)
        .filter_map(|e| match e {
            EdgeRoomEvent::Unpublished { track, .. } => Some(*track),
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(ended.contains(&cam) && ended.contains(&mic));
    assert_eq!(west.sfu.remote(publisher), None);
    eprintln!(
        "memory/cascade: {crossed} leg messages in the first second; bob got {} video packets \
         over the leg; west {:?}",
        video_packets, west.counters
    );
}
