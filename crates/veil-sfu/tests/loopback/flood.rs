//! SFU-LIVE-04: a participant that floods the SFU is cut to its packet-rate limit at the door
//! (counted as `rate_limited`), and another publisher in the room loses nothing.
//! SFU-LIVE-05: one that does not read its signalling events is removed, not queued for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_sfu::routing::{MediaKind, RateLimit};
use veil_sfu::shell::DropKind;
use veil_sfu::{LeaveReason, RoomEvent, Sfu, SfuConfig, SignalEvent};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_to_the_limit_and_the_others_lose_nothing() {
    init_tracing();
    let sfu = Sfu::new(SfuConfig {
        rate_limit: Some(RateLimit {
            packets_per_second: 500.0,
            burst: 50.0,
        }),
        ..SfuConfig::default()
    });
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
        if sfu.tracks(room).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("both tracks", || sfu.tracks(room).len() == 2).await;
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    for (who, name) in [("mallory", "cam"), ("alice", "mic")] {
        let t = bob.track_named(who, name).await;
        bob.subscribe(&sfu, &t).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while bob.received.try_recv().is_ok() {}
    let limited_before = sfu.metrics().drops(DropKind::RateLimited);

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
    let window = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut from_mallory, mut from_alice) = (0u64, 0u64);
    while let Ok(r) = bob.received.try_recv() {
        if r.packet.payload.len() == 200 {
            from_mallory += 1;
        } else {
            from_alice += 1;
        }
    }
    let limited = sfu.metrics().drops(DropKind::RateLimited) - limited_before;
    // Mallory: at most the burst plus the rate over the window reach bob; the rest is counted.
    let allowed = 50 + (500.0 * window.as_secs_f64()) as u64 + 10;
    assert!(
        flooded > 3 * allowed,
        "the flood was not a flood: {flooded} packets"
    );
    assert!(
        from_mallory <= allowed,
        "{from_mallory} of {flooded} forwarded"
    );
    assert!(
        limited > 0 && limited + from_mallory <= flooded,
        "{limited}"
    );
    // Alice, under her own limit, lost nothing.
    assert_eq!(
        from_alice, 100,
        "mallory {from_mallory} of {flooded}, limited {limited}"
    );
}

/// SFU-LIVE-05: a participant that never reads its signalling events is removed once
/// `event_queue` of them wait, and its event stream ends; the SFU does not queue for it
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_does_not_read_its_events_is_removed() {
    init_tracing();
    let sfu = Sfu::new(SfuConfig {
        event_queue: 4,
        ..SfuConfig::default()
    });
    let room = "deaf";
    let mut room_events = sfu.room_events();
    let mut alice = Peer::new(room, "alice", false).await;
    let offer = alice.offer().await;
    // Alice's session is kept but never read.
    let mut deaf = sfu.join(room, "alice", &offer).await.unwrap();
    // Bob comes and goes: each visit is two events for alice.
    for _ in 0..3 {
        let mut bob = Peer::new(room, "bob", false).await;
        let offer = bob.offer().await;
        let _bob = sfu.join(room, "bob", &offer).await.unwrap();
        sfu.leave(room, "bob").await.unwrap();
    }
    let left = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(RoomEvent::ParticipantLeft {
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
    assert!(sfu.participants(room).is_empty());
}
