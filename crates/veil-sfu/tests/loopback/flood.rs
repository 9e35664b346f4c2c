//! SFU-LIVE-04: a participant that floods the SFU is cut to its packet-rate limit at the door
//! (counted as `rate_limited`), and another publisher in the room loses nothing.
//! SFU-LIVE-05: one that does not read its signalling events is removed, not queued for.
//! SFU-LIVE-03: bursts go out to every subscriber with nothing queued per subscriber to fill
//! or wait on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::{MediaKind, RateLimit};
use veil_sfu::session::DropKind;
use veil_sfu::{LeaveReason, ParticipantEvent, Permissions, SfuConfig, SignalEvent};

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
    let sfu = EdgeSfu::new(flood_config()).unwrap();
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
        if sfu.metrics().tracks.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("both tracks", || sfu.metrics().tracks.get() == 2).await;
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    for (who, name) in [("mallory", "cam"), ("alice", "mic")] {
        let t = bob.track_named(who, name).await;
        bob.subscribe(&sfu, &t).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while bob.received.try_recv().is_ok() {}
    let limited_before = sfu.metrics().drops(DropKind::RateLimited);
    let flooded_before = sfu.metrics().drops(DropKind::Flooded);
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
    let limited = sfu.metrics().drops(DropKind::RateLimited) - limited_before;
    // The edge cuts a flood at the door first, by datagram (SFU-EDGE-13). The door's datagrams
    // include the retransmissions its own gaps provoke, so they are not RTP packets of the
    // flood, and are counted apart.
    let at_the_door = sfu.metrics().drops(DropKind::Flooded) - flooded_before;
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
    // Alice, under her own limit, lost nothing to the SFU. She shares the edge's socket with
    // mallory: if the flood outruns the edge's thread (a debug build does), the kernel
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
    let sfu = EdgeSfu::new(SfuConfig {
        event_queue: 4,
        ..SfuConfig::default()
    })
    .unwrap();
    init_tracing();
    let room = "deaf";
    let mut room_events = sfu.room_events();
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
        sfu.metrics()
            .left
            .get_or_create(&veil_sfu::session::metrics::Reason {
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
    assert!(sfu.participants(room).await.is_empty());
}

/// SFU-LIVE-03: no subscriber has a queue of its own to fill or wait on. A publisher's bursts
/// of 64 back-to-back packets go to two subscribers: every copy the core routed is written to
/// its subscriber's connection exactly once (nothing dropped, nothing failed), each subscriber
/// ends up with every packet alice sent, byte for byte and none twice (a loss on loopback is
/// repaired by RTX), and the steady traffic after the bursts reaches both in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_reach_every_subscriber_with_nothing_queued_per_subscriber() {
    init_tracing();
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let (_alice, cam, mut seq, mut subs) =
        camera_and_subscribers(&sfu, "queue", 0x5100_0001, &["bob", "carol"], 300).await;
    let m = sfu.metrics();
    let forwarded_before = m.forwarded("video");
    let failed_before = m.drops(DropKind::WriteFailed);

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
    eventually("every copy forwarded", || {
        sfu.metrics().forwarded("video") - forwarded_before >= copies
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = sfu.metrics();
    assert_eq!(
        m.forwarded("video") - forwarded_before,
        copies,
        "each copy exactly once"
    );
    assert_eq!(
        m.drops(DropKind::WriteFailed),
        failed_before,
        "no write failed"
    );
    for p in &mut subs {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while (got.len() as u64) < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(r)) = tokio::time::timeout(left, p.received.recv()).await else {
                break;
            };
            let k = (0..total)
                .find(|k| r.packet.payload == payload(k + 1, 300))
                .expect("a payload alice sent, byte for byte");
            got.push(k);
        }
        let mut once = got.clone();
        once.sort_unstable();
        once.dedup();
        assert_eq!(once.len(), got.len(), "{}: a packet twice", p.identity);
        assert_eq!(got.len() as u64, total, "{}: every packet", p.identity);
        let steady: Vec<u64> = got
            .iter()
            .copied()
            .filter(|k| *k >= BURSTS * BURST)
            .collect();
        assert!(
            steady.windows(2).all(|w| w[0] < w[1]),
            "{}: the steady packets in order",
            p.identity
        );
    }
}

/// SFU-EDGE-15: the edge's batched I/O (a pass's datagrams grouped per destination, equal-sized
/// runs sent as one GSO write) loses, duplicates and reorders nothing. Alice sends bursts of 48
/// back-to-back packets of one size (what GSO coalesces) to six subscribers: each receives
/// every packet exactly once, byte for byte, in the order alice sent them (a loss repaired by
/// RTX would arrive out of order and fail this too), and no write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sends_reach_every_subscriber_once_and_in_order() {
    init_tracing();
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let names = ["bob", "carol", "dave", "erin", "frank", "grace"];
    let (_alice, cam, mut seq, mut subs) =
        camera_and_subscribers(&sfu, "batched", 0x5200_0001, &names, 400).await;
    let m = sfu.metrics();
    let forwarded_before = m.forwarded("video");
    let failed_before = m.drops(DropKind::WriteFailed);

    const BURSTS: u64 = 8;
    const BURST: u64 = 48;
    let mut i = 0u64;
    for _ in 0..BURSTS {
        for _ in 0..BURST {
            cam.send(seq, 3000 * u32::from(seq), true, &[], payload(i + 1, 400))
                .await;
            (seq, i) = (seq.wrapping_add(1), i + 1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = i;
    let copies = subs.len() as u64 * total;
    eventually("every copy forwarded", || {
        sfu.metrics().forwarded("video") - forwarded_before >= copies
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = sfu.metrics();
    assert_eq!(m.forwarded("video") - forwarded_before, copies);
    assert_eq!(m.drops(DropKind::WriteFailed), failed_before);
    for p in &mut subs {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while (got.len() as u64) < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(r)) = tokio::time::timeout(left, p.received.recv()).await else {
                break;
            };
            let k = (0..total)
                .find(|k| r.packet.payload == payload(k + 1, 400))
                .expect("a payload alice sent, byte for byte");
            got.push(k);
        }
        assert_eq!(
            got,
            (0..total).collect::<Vec<_>>(),
            "{}: every packet once, in order",
            p.identity
        );
    }
}

/// The start of a burst test: alice publishes a camera (`ssrc`) in `room`, and `names` join
/// and subscribe to it; packets of `size` bytes go out until every subscriber has received one,
/// then every queue is drained. Returns alice (keep her), her track, the next sequence number,
/// and the subscribers.
async fn camera_and_subscribers(
    sfu: &EdgeSfu,
    room: &str,
    ssrc: u32,
    names: &[&str],
    size: usize,
) -> (Peer, LocalTrack, u16, Vec<Peer>) {
    let mut alice = Peer::new(room, "alice", true).await;
    let cam = alice.add_track(MediaKind::Video, ssrc, "cam").await;
    alice.join(sfu).await;
    let mut seq = 0u16;
    for _ in 0..50 {
        cam.send(seq, 0, true, &[], payload(0, size)).await;
        seq += 1;
        if sfu.metrics().tracks.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the track", || sfu.metrics().tracks.get() > 0).await;
    let mut subs = Vec::new();
    for name in names {
        let mut p = Peer::new(room, name, false).await;
        p.join(sfu).await;
        let t = p.track_named("alice", "cam").await;
        p.subscribe(sfu, &t).await;
        subs.push(p);
    }
    // Until each receives, then drain.
    for p in &mut subs {
        let deadline = Instant::now() + WAIT;
        loop {
            cam.send(seq, 3000 * u32::from(seq), true, &[], payload(0, size))
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
    (alice, cam, seq, subs)
}
