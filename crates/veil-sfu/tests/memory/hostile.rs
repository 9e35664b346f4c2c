//! SFU-SEC-01, -02, SFU-EDGE-01, -03 in memory: hostile input from a participant and from
//! strangers. Garbage from unknown addresses, a STUN request naming another participant's
//! ufrag (from a third address, and from the attacker's own), RTP with another participant's
//! SSRC, unreadable extensions and truncated datagrams: nothing panics, the others' media is
//! untouched, and the core's counters say what was dropped and why.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
use rtc::stun::textattrs::TextAttribute;
use veil_sfu::DropKind;
use veil_sfu::routing::MediaKind;

use crate::common::*;

/// A STUN binding request with this USERNAME and no valid MESSAGE-INTEGRITY.
fn binding_request(username: &str) -> Vec<u8> {
    let mut m = Message::new();
    let setters: [Box<dyn Setter>; 3] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
    ];
    m.build(&setters).unwrap();
    m.marshal_binary().unwrap()
}

#[test]
fn hostile_input_is_dropped_counted_and_harms_nobody() {
    let mut net = Net::new(config());
    let alice = net.add_peer(
        "alice",
        Publish {
            audio: true,
            video: true,
        },
    );
    let bob = net.add_peer(
        "bob",
        Publish {
            audio: true,
            video: false,
        },
    );
    // mallory sends alice's audio SSRC, and video whose DDs are cut short.
    let mallory = net.add_peer_with_ssrcs(
        "mallory",
        Publish {
            audio: true,
            video: true,
        },
        audio_ssrc(alice),
        video_ssrc(2, 0),
    );
    net.peers[mallory].truncate_dd = true;
    net.join(alice, "room");
    let bob_answer = net.join(bob, "room");
    net.join(mallory, "room");
    net.connect(&[alice, bob, mallory]);
    net.start_media(alice);
    net.run_for(Duration::from_millis(100));
    net.start_media(bob);
    net.start_media(mallory);
    assert!(net.run_until(Duration::from_secs(1), |n| n.published().len() == 5));
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let t = net.track(alice, kind);
        net.subscribe(bob, t);
    }
    net.run_for(Duration::from_secs(1));
    let c = net.take_counters();
    let spoofed = net.peers[mallory]
        .sent
        .iter()
        .filter(|s| s.ssrc == audio_ssrc(alice))
        .count();
    let unreadable = net.peers[mallory].sent.len() - spoofed;
    // SFU-SEC-01: every packet on alice's SSRC from mallory's connection is dropped as spoofed.
    assert_eq!(c.drops(DropKind::SpoofedSsrc) as usize, spoofed);
    assert_eq!(net.sfu.spoofs("room") as usize, spoofed);
    // SFU-SEC-02: every packet with a cut DD is dropped as unreadable metadata.
    assert_eq!(c.drops(DropKind::Metadata) as usize, unreadable);
    for k in [
        DropKind::UnknownTrack,
        DropKind::Flooded,
        DropKind::WriteFailed,
    ] {
        assert_eq!(c.drops(k), 0, "{k:?}");
    }
    let mallory_sent = net.peers[mallory].sent.len();

    // Strangers: random bytes, RTP-, DTLS- and STUN-looking fragments, an empty datagram, from
    // an address no request claimed. None reaches a connection; each is counted.
    let stranger: SocketAddr = "10.0.9.9:666".parse().unwrap();
    let mut rng = StdRng::seed_from_u64(24);
    let mut junk: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let n = rng.random_range(0..300);
            (0..n).map(|_| rng.random()).collect()
        })
        .collect();
    junk.extend([
        vec![],
        vec![0x80, 0x60, 0, 1],
        vec![0x16, 0xfe, 0xfd],
        vec![0x00, 0x01, 0x00],
        binding_request("nobody:x"),
    ]);
    let unrouted = net.sfu.unrouted();
    for d in &junk {
        net.inject(stranger, d);
    }
    assert_eq!(net.sfu.unrouted() - unrouted, junk.len() as u64);

    // A request naming bob's connection from a third address, without bob's password: that
    // connection checks it (SFU-EDGE-01) and rtc refuses it: no answer goes out, and bob's
    // connection goes on as before.
    let eve: SocketAddr = "10.0.9.10:4444".parse().unwrap();
    let bob_ufrag = ufrag(&bob_answer);
    net.inject(eve, &binding_request(&format!("{bob_ufrag}:evil")));
    net.run_for(Duration::from_millis(200));
    assert!(
        net.undelivered.iter().all(|(_, to, _)| *to != eve),
        "eve got an answer"
    );
    // The request claimed eve's address for bob's connection, as SFU-EDGE-01 says: from now on
    // only bob's connection reads what comes from there, and rtc refuses it.
    assert_eq!(net.sfu.conn_at(eve), net.peers[bob].conn);
    for d in &junk {
        net.inject(eve, d);
    }
    // The same request from mallory's own address: that address is mallory's connection's, so
    // it is dropped before any connection sees it (SFU-EDGE-03).
    let unrouted = net.sfu.unrouted();
    let mallory_addr = net.peers[mallory].addr;
    net.inject(mallory_addr, &binding_request(&format!("{bob_ufrag}:evil")));
    assert_eq!(net.sfu.unrouted() - unrouted, 1);
    assert_eq!(net.sfu.conn_at(mallory_addr), net.peers[mallory].conn);

    // Truncated and garbled datagrams from mallory's own address reach her connection, where
    // rtc drops them (SRTP authentication, DTLS record checks).
    let mut short = 0;
    for n in [1usize, 2, 11, 12, 13, 20, 40] {
        let mut d = vec![0x80, 0x60];
        d.extend((0..n.saturating_sub(2)).map(|_| rng.random::<u8>()));
        d.truncate(n);
        net.inject(mallory_addr, &d);
        net.inject(mallory_addr, &[0x16, 0xfe, 0xfd, 0, 0][..n.min(5)]);
        net.inject(mallory_addr, &[0x81, 0xc8, 0, 6][..n.min(4)]);
        short += 3;
    }
    let before = net.take_counters();
    net.run_for(Duration::from_secs(1));
    for i in [alice, bob, mallory] {
        net.peers[i].sending = false;
    }
    net.run_for(Duration::from_millis(200));
    let after = net.take_counters();
    // Nobody left, and nothing was counted as dropped but mallory's own packets, each once.
    assert!(
        net.events
            .iter()
            .all(|(_, e)| !matches!(e, veil_sfu::edge::EdgeRoomEvent::Left(_)))
    );
    assert_eq!(net.sfu.len("room"), 3);
    let since = net.peers[mallory].sent.len() - mallory_sent;
    let drops = |k| before.drops(k) + after.drops(k);
    assert_eq!(
        (drops(DropKind::SpoofedSsrc) + drops(DropKind::Metadata)) as usize,
        since
    );
    for k in [
        DropKind::UnknownTrack,
        DropKind::Flooded,
        DropKind::WriteFailed,
    ] {
        assert_eq!(drops(k), 0, "{k:?}");
    }

    // bob received alice's audio and video, every packet from the first, byte for byte, and
    // nothing else.
    for (kind, ssrc) in [
        (MediaKind::Audio, audio_ssrc(alice)),
        (MediaKind::Video, video_ssrc(alice, 0)),
    ] {
        let t = net.track(alice, kind);
        let got = net.peers[bob].got_on(t);
        let sent = sent_on(&net.peers[alice], ssrc);
        let what = format!("bob ← alice {kind:?}");
        let k = assert_continuous_suffix(&what, &got, &sent);
        eprintln!("memory/hostile: {what}: {} packets from #{k}", got.len());
    }
    assert_eq!(
        net.peers[bob].got.len(),
        net.peers[bob]
            .got_on(net.track(alice, MediaKind::Audio))
            .len()
            + net.peers[bob]
                .got_on(net.track(alice, MediaKind::Video))
                .len()
    );
    eprintln!(
        "memory/hostile: {spoofed} spoofed and {unreadable} unreadable dropped, {} junk datagrams unrouted, {short} short ones to mallory's connection; unrouted total {}",
        junk.len(),
        net.sfu.unrouted()
    );
}
