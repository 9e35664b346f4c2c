//! NACK and RTX per hop (SFU-NACK-01..02, SFU-RTX-01..03) through a userspace UDP relay that
//! drops every 7th RTP packet in one direction:
//! - towards a subscriber: the subscriber's NACKs are answered by the SFU from the rewritten
//!   packets it sent on that leg (the publisher's leg is loss-free, so the repair comes from
//!   the SFU);
//! - from a publisher: the SFU's NACKs are answered by the publisher, and the repaired packets
//!   are forwarded like any other.
//!
//! Either way every packet reaches the subscriber, byte for byte and with its dependency
//! descriptor; every repair crosses the lossy hop as RTX (PT 97 on the RTX SSRC, never a repeat
//! on the media SSRC), and each loss is repaired about once, not re-requested after it arrived.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use veil_sfu::connection::sdp::DD_URI;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::{Permissions, SfuConfig};

use crate::common::*;

/// Alice publishes video, bob subscribes; one of them reaches the SFU through a lossy relay.
async fn run(sfu: EdgeSfu, lossy_publisher: bool) {
    init_tracing();
    let room = if lossy_publisher {
        "nack-up"
    } else {
        "nack-down"
    };
    let through_relay = |answer: &str, to_sfu: bool| {
        let sfu_port = candidate_port(answer);
        async move {
            let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], sfu_port)), 7, to_sfu).await;
            let relay_port = relay.port();
            (
                relay,
                Arc::new(move |sdp: &str| via(sdp, sfu_port, relay_port)) as SdpFilter,
            )
        }
    };
    let mut alice = Peer::new(room, "alice", true).await;
    let video = alice.add_track(MediaKind::Video, 0xBEEF, "cam").await;
    let dd_id = video.ext_id(DD_URI).await.expect("DD negotiated");
    let offer = alice.offer().await;
    let session = sfu
        .join_with(room, "alice", &offer, Permissions::ALL)
        .await
        .unwrap();
    let mut relays = Vec::new();
    if lossy_publisher {
        let (relay, filter) = through_relay(&session.answer, true).await;
        alice.sdp_filter = Some(filter);
        relays.push(relay);
    }
    alice.accept(&sfu, session).await;
    alice.connected().await;
    // Frame numbers run on from these announcing key frames.
    let mut announced = 0u16;
    for i in 0..1000u16 {
        if sfu.metrics().tracks.get() > 0 {
            break;
        }
        video
            .send(i, 0, true, &[(dd_id, dd(i, true))], payload(1, 100))
            .await;
        announced = i + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut bob = Peer::new(room, "bob", false).await;
    let offer = bob.offer().await;
    let session = sfu
        .join_with(room, "bob", &offer, Permissions::ALL)
        .await
        .unwrap();
    if !lossy_publisher {
        let (relay, filter) = through_relay(&session.answer, false).await;
        bob.sdp_filter = Some(filter);
        relays.push(relay);
    }
    bob.accept(&sfu, session).await;
    bob.connected().await;
    let track = bob.track_named("alice", "cam").await;
    bob.subscribe(&sfu, &track).await;

    // 200 one-packet frames, 10 ms apart, numbered from 5000; a key frame every 50.
    let bob_dd = remote_ext_ids(&bob.pc).await.dd.expect("DD towards bob");
    let frame = |i: u16| dd(announced + i, i.is_multiple_of(50));
    let mut sent = BTreeMap::new();
    for i in 0..200u16 {
        let body = payload(7000 + u64::from(i), 400 + usize::from(i));
        video
            .send(
                5000 + i,
                3000 * u32::from(i),
                true,
                &[(dd_id, frame(i))],
                body.clone(),
            )
            .await;
        sent.insert(5000 + i, (body, frame(i)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A loss is noticed from the packets after it: the stream goes on a little.
    for i in 200..230u16 {
        video
            .send(
                5000 + i,
                3000 * u32::from(i),
                true,
                &[(dd_id, frame(i))],
                payload(9, 100),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got: BTreeMap<u16, (Bytes, Option<Bytes>)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sent.keys().all(|s| got.contains_key(s)) {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = sent.keys().filter(|s| !got.contains_key(s)).collect();
                panic!("missing {} packets: {missing:?}", missing.len())
            })
            .unwrap();
        let dd = r.packet.header.get_extension(bob_dd);
        got.insert(r.packet.header.sequence_number, (r.packet.payload, dd));
    }
    for (seq, (body, dd)) in &sent {
        assert_eq!(&got[seq].0, body, "packet {seq}");
        assert_eq!(got[seq].1.as_ref(), Some(dd), "packet {seq}'s DD");
    }
    let lossy = &relays[0].dropped;
    let dropped = lossy.dropped.load(Ordering::Relaxed);
    let rtx = lossy.rtx.load(Ordering::Relaxed);
    let repeats = lossy.repeats.load(Ordering::Relaxed);
    eprintln!(
        "{room}: the relay dropped {dropped} RTP packets and saw {rtx} RTX packets and {repeats} \
         repeats on the media SSRC; all {} arrived",
        sent.len()
    );
    assert!(dropped >= 20, "the relay did drop packets: {dropped}");
    assert_eq!(repeats, 0, "retransmissions go as RTX");
    // Each lost packet (media or RTX) takes one RTX; a packet NACKed again after its RTX arrived
    // (the RTX unwrapped only after the NACK generator looked) would push this far above.
    assert!(
        rtx >= dropped / 2 && rtx <= dropped + 5,
        "{rtx} RTX packets for {dropped} losses"
    );
    // The SFU's own account of it, on /metrics.
    let m = sfu.metrics();
    if lossy_publisher {
        let arrived = rtx - lossy.rtx_dropped.load(Ordering::Relaxed);
        assert_eq!(m.rtx("in", "unwrapped"), arrived, "{}", m.encode());
    } else {
        assert_eq!(m.rtx("out", "resent"), rtx, "{}", m.encode());
        assert_eq!(m.rtx("out", "missing"), 0);
    }
}

/// SFU-NACK-01: RTX towards a subscriber from the SFU's own history of that leg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_towards_a_subscriber_are_repaired_by_the_sfu() {
    run(EdgeSfu::new(SfuConfig::default()).unwrap(), false).await;
}

/// SFU-NACK-02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_from_a_publisher_are_repaired_on_its_leg() {
    run(EdgeSfu::new(SfuConfig::default()).unwrap(), true).await;
}
