//! SFU-EDGE-09, -11, SFU-NEG-02, SFU-ROOM-02 in memory: a third peer joins a call in progress;
//! it subscribes to the tracks the SFU tells a joiner of and the SFU offers them; the others
//! subscribe to its tracks and the SFU offers those to each; media keeps flowing to everyone
//! through the renegotiations, with no gap. And the SFU as the impolite peer: one offer out at
//! a time, changes merged into the next, a participant's own offer refused meanwhile.

use std::time::Duration;

use veil_sfu::SfuError;
use veil_sfu::edge::EdgeRoomEvent;
use veil_sfu::routing::{MediaKind, TrackId};

use crate::common::*;

/// Subscribe `sub` to every track of `publ`.
fn subscribe_all(net: &mut Net, sub: usize, publ: usize) {
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let t = net.track(publ, kind);
        net.subscribe(sub, t);
    }
}

#[test]
fn a_late_joiner_is_offered_the_room_and_the_room_its_tracks_while_media_flows() {
    let mut net = Net::new(config());
    let alice = net.add_peer("alice", Publish::BOTH);
    let bob = net.add_peer("bob", Publish::BOTH);
    net.join(alice, "room");
    net.join(bob, "room");
    net.connect(&[alice, bob]);
    net.start_media(alice);
    net.start_media(bob);
    assert!(net.run_until(Duration::from_secs(1), |n| n.published().len() == 4));
    subscribe_all(&mut net, alice, bob);
    subscribe_all(&mut net, bob, alice);
    // Past the 32 frames that announce mid/rid.
    net.run_for(Duration::from_secs(1));
    let answered_before = [alice, bob].map(|i| net.peers[i].answered);

    // carol joins: the SFU tells a joiner what is published (as `edge/serve.rs` does), and she
    // subscribes to all of it.
    let carol = net.add_peer("carol", Publish::BOTH);
    net.join(carol, "room");
    let told = net.sfu.published(net.peers[carol].conn.unwrap());
    assert_eq!(told.len(), 4, "{told:?}");
    for ev in told {
        let EdgeRoomEvent::Published { track, .. } = ev else {
            panic!("{ev:?}")
        };
        net.subscribe(carol, track);
    }
    net.connect(&[carol]);
    net.start_media(carol);
    assert!(net.run_until(Duration::from_secs(1), |n| n.published().len() == 6));
    // alice and bob subscribe to carol's tracks: the SFU offers each of them a new session.
    let renegotiated = net.elapsed();
    subscribe_all(&mut net, alice, carol);
    subscribe_all(&mut net, bob, carol);
    net.run_for(Duration::from_secs(1));
    // Each of alice and bob was offered carol's tracks and answered (one or two offers: a
    // subscription made while an offer waits joins the next one).
    for (k, i) in [alice, bob].into_iter().enumerate() {
        let more = net.peers[i].answered - answered_before[k];
        assert!(
            (1..=2).contains(&more),
            "{}: {more} offers",
            net.peers[i].name
        );
    }

    // SFU-NEG-03: the publishers renegotiated after their announcing packets (mid/rid only on
    // the first 32 frames), and their layers stay bound: nothing freezes, nobody has to ask for
    // a key frame. (Before the rid latch, rtc forgot the bound SSRCs here and every subscriber
    // of alice's and bob's video lost it until a PLI brought a key frame: 51 packets each.)
    net.run_for(Duration::from_secs(1));
    for i in [alice, bob, carol] {
        net.peers[i].sending = false;
    }
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.sfu.subscriptions(), 12);
    assert_eq!(net.sfu.len("room"), 3);
    eprintln!("memory/renegotiation: {:?}", net.counters);

    // Everyone receives everyone else's audio and video, byte for byte, on one SSRC each, every
    // packet from the first it got to the last sent: the renegotiations cost nothing.
    for sub in [alice, bob, carol] {
        for publ in [alice, bob, carol] {
            if sub == publ {
                continue;
            }
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let Flow { what, got, k, .. } = flow(&net, sub, publ, kind);
                if publ != carol && sub != carol {
                    assert!(got[0].at < renegotiated, "{what} started late");
                }
                eprintln!(
                    "memory/renegotiation: {what}: {} packets from #{k}",
                    got.len()
                );
            }
        }
    }
}

#[test]
fn the_sfu_has_one_offer_out_and_merges_what_changes_meanwhile() {
    let mut net = Net::new(config());
    let alice = net.add_peer("alice", Publish::BOTH);
    let bob = net.add_peer("bob", Publish::BOTH);
    net.join(alice, "room");
    net.join(bob, "room");
    net.connect(&[alice, bob]);
    net.start_media(alice);
    assert!(net.run_until(Duration::from_secs(1), |n| n.published().len() == 2));
    let (mic, cam) = (
        net.track(alice, MediaKind::Audio),
        net.track(alice, MediaKind::Video),
    );
    let bob_conn = net.peers[bob].conn.unwrap();
    net.peers[bob].auto_answer = false;
    let from = net.events.len();
    net.subscribe(bob, mic);
    net.subscribe(bob, cam);
    let offers: Vec<String> = net
        .events_since(from)
        .filter_map(|e| match e {
            EdgeRoomEvent::Offer { to, sdp } if *to == bob_conn => Some(sdp.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), 1, "one offer out at a time");
    let msid = |t: TrackId| format!("a=msid:t{0}-stream t{0}", t.0);
    assert!(offers[0].contains(&msid(mic)));
    assert!(
        !offers[0].contains(&msid(cam)),
        "the second subscription waits for the next offer"
    );

    // bob's own offer is refused while the SFU's waits; so is an answer with none waiting later.
    let now = net.now();
    let own = net.peers[bob].pc.create_offer(None).unwrap().sdp;
    assert!(matches!(
        net.sfu.offer(now, bob_conn, &own),
        Err(SfuError::Negotiation(_))
    ));

    // bob answers; the merged offer follows at once, and he answers that too.
    net.peers[bob].auto_answer = true;
    net.answer_pending(bob, &offers[0]);
    net.run_for(Duration::from_millis(500));
    let offers_now = net
        .events_since(from)
        .filter(|e| matches!(e, EdgeRoomEvent::Offer { to, .. } if *to == bob_conn))
        .count();
    assert_eq!(offers_now, 2);
    assert!(net.subscribed(bob, mic) && net.subscribed(bob, cam));
    let answer = net.peers[bob].pc.local_description().unwrap().sdp;
    assert!(matches!(
        net.sfu.answer(net.now(), bob_conn, &answer),
        Err(SfuError::Negotiation(_))
    ));
    assert!(!net.peers[bob].got_on(mic).is_empty() && !net.peers[bob].got_on(cam).is_empty());
}
