//! SFU-SEC-01: a participant who sends RTP with an SSRC another participant owns is dropped and
//! counted; the owner's subscribers never see a spoofed packet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use veil_sfu::SfuConfig;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::session::DropKind;

use crate::common::*;

const SSRC: u32 = 0x5500_0001;

/// Send packets whose payloads all start with `tag`, every 10 ms, until `stop`.
fn send_tagged(
    track: Arc<LocalTrack>,
    tag: u8,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u16> {
    tokio::spawn(async move {
        let mut i = 0u16;
        while !stop.load(Ordering::Relaxed) {
            let mut body = payload(u64::from(i), 200).to_vec();
            body[0] = tag;
            track
                .send(i, 3000 * u32::from(i), true, &[], body.into())
                .await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        i
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_ssrc_is_dropped_and_counted() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "spoof";
    let stop = Arc::new(AtomicBool::new(false));

    let mut alice = Peer::new(room, "alice", true).await;
    let a_video = Arc::new(alice.add_track(MediaKind::Video, SSRC, "cam").await);
    alice.join(&sfu).await;
    let alice_sends = send_tagged(a_video, 0xA1, stop.clone());
    eventually("alice's track", || sfu.metrics().tracks.get() == 1).await;

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let track = bob.track_named("alice", "cam").await;
    bob.subscribe(&sfu, &track).await;

    // Mallory's own connection announces and sends alice's SSRC.
    let mut mallory = Peer::new(room, "mallory", true).await;
    let m_video = Arc::new(mallory.add_track(MediaKind::Video, SSRC, "cam").await);
    mallory.join(&sfu).await;
    let mallory_sends = send_tagged(m_video, 0x66, stop.clone());
    eventually("spoofed packets to be counted", || {
        sfu.metrics().drops(DropKind::SpoofedSsrc) >= 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (sent_a, sent_m) = (alice_sends.await.unwrap(), mallory_sends.await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let spoofed = sfu.metrics().drops(DropKind::SpoofedSsrc);
    assert_eq!(
        spoofed,
        sfu.spoofs(room).await,
        "the metric and the room's counter agree"
    );
    assert!(spoofed <= u64::from(sent_m));
    // Bob received alice's packets and none of mallory's.
    let mut from_alice = 0;
    while let Ok(r) = bob.received.try_recv() {
        assert_eq!(r.packet.payload[0], 0xA1, "a spoofed packet was forwarded");
        from_alice += 1;
    }
    eprintln!(
        "alice sent {sent_a}, bob got {from_alice}; mallory sent {sent_m}, {spoofed} dropped as spoofed"
    );
    assert!(from_alice > 10);
}
