//! SFU-LIVE-04: a participant that floods the SFU is cut to its packet-rate limit at the door
//! (counted as `rate_limited`), and another publisher in the room loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_sfu::routing::{MediaKind, RateLimit};
use veil_sfu::shell::DropKind;
use veil_sfu::{Sfu, SfuConfig};

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
