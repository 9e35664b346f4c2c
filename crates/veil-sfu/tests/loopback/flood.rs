//! SFU-LIVE-04: a participant that floods the SFU is cut to its packet-rate limit at the door
//! (counted as `rate_limited`), and another publisher in the room loses nothing.
//! SFU-LIVE-05: one that does not read its signalling events is removed, not queued for.
//! SFU-LIVE-03: bursts larger than a subscription's send queue drop copies (counted as
//! `queue_full`) instead of waiting, and delivery carries on once the bursts stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::{MediaKind, RateLimit};
use veil_sfu::shell::DropKind;
use veil_sfu::{LeaveReason, ParticipantEvent, Permissions, Sfu, SfuConfig, SignalEvent};

use crate::common::*;

fn flood_config() -> SfuConfig {
    SfuConfig {
        rate_limit: Some(RateLimit {
            packets_per_second: 500.0,
            burst: 50.0,
        }),
        ..SfuConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_to_the_limit_and_the_others_lose_nothing() {
    flood(Sfu::new(flood_config())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_edge_is_cut_to_the_limit_and_the_others_lose_nothing() {
    flood(EdgeSfu::new(flood_config()).unwrap()).await;
}

async fn flood(sfu: impl Shell) {
    init_tracing();
    let room = "flood";

    let mut mallory = Peer::new(room, "mallory", true).await;
    let m_video = Arc::new(
        mallory
            .add_track(MediaKind::Video, 0x6600_0001, "cam")
            .await,
    );
    mallory.join(&sfu).await;
    let mut alice = Peer::new(room, "alice", true).await;
    let a_audio = Arc::new(alice.add_track(MediaKind::Audio, 0xA100_0001, "mic").await);
    alice.join(&sfu).await;
    // Both tracks known to the SFU (their first packets), then bob subscribes to both.
    for i in 0..50u16 {
        m_video.send(i, 0, true, &[], payload(0, 200)).await;
        a_audio.send(i, 0, true, &[], payload(0, 100)).await;
        if sfu.counters().tracks.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("both tracks", || sfu.counters().tracks.get() == 2).await;
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    for (who, name) in [("mallory", "cam"), ("alice", "mic")] {
        let t = bob.track_named(who, name).await;
        bob.subscribe(&sfu, &t).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while bob.received.try_recv().is_ok() {}
    let limited_before = sfu.counters().drops(DropKind::RateLimited);
    let flooded_before = sfu.counters().drops(DropKind::Flooded);
    let kernel_before = udp_rcvbuf_errors();

    // Two seconds: mallory sends as fast as webrtc-rs lets her, alice 50 packets/s.
    let start = Instant::now();
    let flood = {
        let m = m_video.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                let seq = 100u16.wrapping_add(sent as u16);
                m.send(seq, 3000 * u32::from(seq), true, &[], payload(sent, 200))
                    .await;
                sent += 1;
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    for i in 100..200u16 {
        a_audio
            .send(i, 960 * u32::from(i), true, &[], payload(u64::from(i), 100))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flooded = flood.await.unwrap();
    // webrtc-rs's queues still hold some of mallory's flood when `send` returns: the limit
    // holds over the whole span, from her first packet to the last count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let span = start.elapsed();

    let (mut from_mallory, mut from_alice) = (0u64, 0u64);
    while let Ok(r) = bob.received.try_recv() {
        if r.packet.payload.len() == 200 {
            from_mallory += 1;
        } else {
            from_alice += 1;
        }
    }
    let limited = sfu.counters().drops(DropKind::RateLimited) - limited_before;
    // The edge cuts a flood at the door first, by datagram (SFU-EDGE-13); the task shell has
    // no door. The door's datagrams include the retransmissions its own gaps provoke, so they
    // are not RTP packets of the flood, and are counted apart.
    let at_the_door = sfu.counters().drops(DropKind::Flooded) - flooded_before;
    // Mallory: at most the burst plus the rate over the span reach bob; the rest is counted.
    let allowed = 50 + (500.0 * span.as_secs_f64()) as u64 + 10;
    assert!(
        flooded > 3 * allowed,
        "the flood was not a flood: {flooded} packets"
    );
    assert!(
        from_mallory <= allowed,
        "{from_mallory} of {flooded} forwarded"
    );
    assert!(
        limited + at_the_door > 0 && limited + from_mallory <= flooded,
        "{limited} limited, {at_the_door} at the door"
    );
    // Alice, under her own limit, lost nothing to the SFU. On the edge she shares the socket
    // with mallory: if the flood outruns the edge's thread (a debug build does), the kernel
    // drops datagrams of both from the full receive buffer. Those are counted system-wide,
    // and they are the only loss allowed.
    let kernel = udp_rcvbuf_errors() - kernel_before;
    eprintln!(
        "mallory {from_mallory} of {flooded} forwarded, {limited} limited, {at_the_door} at the \
         door; alice {from_alice} of 100; the kernel dropped {kernel} datagrams"
    );
    assert!(
        100 - from_alice <= kernel,
        "alice lost {} of 100, the kernel dropped {kernel}",
        100 - from_alice
    );
}

/// UDP datagrams the kernel dropped for full receive buffers, system-wide.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// SFU-LIVE-05: a participant that never reads its signalling events is removed once
/// `event_queue` of them wait, and its event stream ends; the SFU does not queue for it
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_does_not_read_its_events_is_removed() {
    deaf(Sfu::new(SfuConfig {
        event_queue: 4,
        ..SfuConfig::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_does_not_read_its_events_is_removed_from_the_edge() {
    deaf(
        EdgeSfu::new(SfuConfig {
            event_queue: 4,
            ..SfuConfig::default()
        })
        .unwrap(),
    )
    .await;
}

async fn deaf(sfu: impl Shell) {
    init_tracing();
    let room = "deaf";
    let mut room_events = sfu.events();
    let mut alice = Peer::new(room, "alice", false).await;
    let offer = alice.offer().await;
    // Alice's session is kept but never read.
    let mut deaf = sfu
        .join_with(room, "alice", &offer, Permissions::ALL)
        .await
        .unwrap();
    // Bob comes and goes: each visit is two events for alice.
    for _ in 0..3 {
        let mut bob = Peer::new(room, "bob", false).await;
        let offer = bob.offer().await;
        let _bob = sfu
            .join_with(room, "bob", &offer, Permissions::ALL)
            .await
            .unwrap();
        sfu.leave(room, "bob").await.unwrap();
    }
    let left = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ParticipantEvent::ParticipantLeft {
                identity, reason, ..
            }) = room_events.recv().await
                && identity == "alice"
            {
                return reason;
            }
        }
    })
    .await
    .expect("alice removed");
    assert_eq!(left, LeaveReason::SlowSignalling);
    assert_eq!(
        sfu.counters()
            .left
            .get_or_create(&veil_sfu::shell::metrics::Reason {
                reason: "slow_signalling"
            })
            .get(),
        1
    );
    // What was queued is still delivered, then the stream ends.
    let mut queued = 0;
    while let Some(ev) = tokio::time::timeout(WAIT, deaf.events.recv())
        .await
        .expect("the stream ends")
    {
        assert!(
            !matches!(ev, SignalEvent::Closed { .. }),
            "no room left for it"
        );
        queued += 1;
    }
    assert_eq!(queued, 4);
    assert!(sfu.roster(room).await.is_empty());
}

/// SFU-LIVE-03: with a send queue of 4 packets per subscription, a publisher's bursts of 64
/// back-to-back packets overflow it. The copies that do not fit are dropped and counted, never
/// waited for: every copy the core routed is either forwarded or counted as `queue_full`, each
/// subscriber gets what was forwarded to it in order and byte for byte, and steady traffic
/// after the bursts reaches both subscribers in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_drops_and_counts_and_delivery_recovers() {
    init_tracing();
    let sfu = Sfu::new(SfuConfig {
        subscriber_queue: 4,
        ..SfuConfig::default()
    });
    let room = "queue";
    let mut alice = Peer::new(room, "alice", true).await;
    let cam = alice.add_track(MediaKind::Video, 0x5100_0001, "cam").await;
    alice.join(&sfu).await;
    let mut seq = 0u16;
    for _ in 0..50 {
        cam.send(seq, 0, true, &[], payload(0, 300)).await;
        seq += 1;
        if !sfu.tracks(room).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the track", || !sfu.tracks(room).is_empty()).await;
    let mut subs = Vec::new();
    for name in ["bob", "carol"] {
        let mut p = Peer::new(room, name, false).await;
        p.join(&sfu).await;
        let t = p.track_named("alice", "cam").await;
        p.subscribe(&sfu, &t).await;
        subs.push(p);
    }
    // Until both receive, then drain.
    for p in &mut subs {
        let deadline = Instant::now() + WAIT;
        loop {
            cam.send(seq, 3000 * u32::from(seq), true, &[], payload(0, 300))
                .await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if p.received.try_recv().is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "a subscriber never received");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &mut subs {
        while p.received.try_recv().is_ok() {}
    }
    let m = sfu.metrics();
    let routed = |m: &veil_sfu::shell::Metrics| m.forwarded("video") + m.drops(DropKind::QueueFull);
    let (routed_before, full_before) = (routed(m), m.drops(DropKind::QueueFull));

    // Packet i carries payload(i + 1, 300): 10 bursts of 64, then 50 packets 20 ms apart.
    const BURSTS: u64 = 10;
    const BURST: u64 = 64;
    const STEADY: u64 = 50;
    let mut i = 0u64;
    for _ in 0..BURSTS {
        for _ in 0..BURST {
            cam.send(seq, 3000 * u32::from(seq), true, &[], payload(i + 1, 300))
                .await;
            (seq, i) = (seq.wrapping_add(1), i + 1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..STEADY {
        cam.send(seq, 3000 * u32::from(seq), true, &[], payload(i + 1, 300))
            .await;
        (seq, i) = (seq.wrapping_add(1), i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = i;
    let copies = 2 * total;
    eventually("every copy forwarded or counted", || {
        routed(sfu.metrics()) - routed_before >= copies
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let m = sfu.metrics();
    let full = m.drops(DropKind::QueueFull) - full_before;
    assert_eq!(routed(m) - routed_before, copies, "each copy exactly once");
    assert!(full > 0, "64-packet bursts never filled a queue of 4");
    let mut received = 0;
    for p in &mut subs {
        let mut got = Vec::new();
        while let Ok(r) = p.received.try_recv() {
            let k = (0..total)
                .find(|k| r.packet.payload == payload(k + 1, 300))
                .expect("a payload alice sent, byte for byte");
            got.push(k);
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once each");
        // Once the bursts stop, nothing is lost.
        let steady = got.iter().filter(|k| **k >= BURSTS * BURST).count();
        assert_eq!(steady as u64, STEADY, "{} after the bursts", p.identity);
        received += got.len() as u64;
    }
    // What did not arrive is what was counted.
    assert_eq!(received + full, copies, "{full} dropped at full queues");
    eprintln!("{full} of {copies} copies dropped at full queues, {received} delivered");
}
