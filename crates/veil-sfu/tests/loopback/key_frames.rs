//! SFU-KF-01, SFU-KF-03: a subscriber's PLIs end at the SFU; however many and however fast,
//! the publisher gets at most one key-frame request per throttle interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use veil_sfu::SfuConfig;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;

use crate::common::*;

const INTERVAL: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_flood_gives_the_publisher_one_request_per_interval() {
    let sfu = EdgeSfu::new(SfuConfig {
        key_frame_interval: INTERVAL,
        ..SfuConfig::default()
    })
    .unwrap();
    init_tracing();
    let room = "plis";
    let mut alice = Peer::new(room, "alice", true).await;
    let video = Arc::new(alice.add_track(MediaKind::Video, 0x7777, "cam").await);
    let plis = video.count_plis();
    alice.join(&sfu).await;

    // Video without DD, one packet every 20 ms, until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (video, stop) = (video.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) {
                let ts = 3000 * u32::from(i);
                video
                    .send(i, ts, true, &[], payload(u64::from(i), 300))
                    .await;
                i = i.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually("the SFU to see the track", || {
        sfu.metrics().tracks.get() == 1
    })
    .await;

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let track = bob.track_named("alice", "cam").await;
    let start = Instant::now();
    let ssrc = bob.subscribe(&sfu, &track).await;
    // Media flows: bob's connection has the remote track now.
    tokio::time::timeout(WAIT, bob.received.recv())
        .await
        .expect("media")
        .unwrap();
    let remote = bob.remotes.lock().await.get(&track).cloned().unwrap();

    // 500 PLIs, one every 5 ms.
    let mut sent = 0;
    for _ in 0..500 {
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: ssrc,
        };
        if remote.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();

    let m = sfu.metrics();
    let received = m.subscriber_key_frame_requests.get();
    let at_publisher = plis.lock().unwrap().clone();
    let sfu_sent = m.publisher_key_frame_requests.get();
    eprintln!(
        "bob sent {sent} PLIs, the SFU got {received}; the SFU sent {sfu_sent}, alice got {} in {window:?}",
        at_publisher.len()
    );
    assert_eq!(sent, 500);
    assert!(
        received >= 250,
        "most of the flood reached the SFU: {received}"
    );
    // SFU-KF-01: at most one per interval over the whole window (plus the first).
    let bound = (window.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as usize + 1;
    assert!(
        at_publisher.len() <= bound && sfu_sent as usize <= bound,
        "{} / {sfu_sent} requests in {window:?}, at most {bound}",
        at_publisher.len()
    );
    assert!(at_publisher.len() >= 2, "the flood did make the SFU ask");
    // Spacing at the publisher (half the interval: loopback jitter only shortens a gap a bit).
    for w in at_publisher.windows(2) {
        assert!(
            w[1] - w[0] >= INTERVAL / 2,
            "two requests {:?} apart",
            w[1] - w[0]
        );
    }
}
