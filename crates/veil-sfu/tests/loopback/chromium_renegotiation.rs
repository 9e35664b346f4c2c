//! SFU-NEG-03 with a real browser: Chromium publishes three simulcast layers, and puts `mid`/
//! `rid` only on each stream's first packets (until a receiver report acknowledges it). Then
//! it renegotiates (it subscribes to another participant's track: an SFU offer, its answer),
//! and a subscriber that comes after that still receives its video and switches between its
//! layers. Before the rid latch, webrtc-rs forgot the layers' SSRCs at that answer and dropped
//! every later packet of them: the late subscriber got nothing.

use std::time::Duration;

use veil_sfu::grpc::Backend;
use veil_sfu::routing::MediaKind;
use veil_sfu::{EdgeSfu, SfuConfig, SignalEvent};

use crate::chromium::Received;
use crate::chromium_page::{ChromiumPeer, Role, serve_blank};
use crate::common::*;

/// Three layers as the page used to send them (and Chromium's simulcast tests do).
const SIMULCAST: &str = "[{rid: 'q', scaleResolutionDownBy: 4}, \
    {rid: 'h', scaleResolutionDownBy: 2}, {rid: 'f'}]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast_survives_the_publishers_renegotiation() {
    init_tracing();
    let room = "renegotiation";
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let url = serve_blank().await;
    let mut chromium =
        ChromiumPeer::join(&sfu, &url, room, "chromium", Role::Publish(SIMULCAST)).await;

    // q and h sent and acknowledged: a receiver report for each SSRC has reached Chromium (it
    // shows as `remote-inbound-rtp`), after which its packets carry no mid/rid. (f waits for
    // Chromium's estimate to allow it, which on loopback with nobody watching it rarely does;
    // a layer that starts later announces itself with mid/rid and is bound then.)
    let acked = "Promise.all([veil.stats('outbound-rtp'), veil.stats('remote-inbound-rtp')])
        .then(([out, acked]) => {
          const sent = out.filter(s => s.framesEncoded > 0).map(s => s.ssrc);
          return sent.length >= 2 && sent.every(x => acked.some(a => a.ssrc === x));
        })";
    chromium
        .page
        .wait_for(acked, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("Chromium's layers never acknowledged: {e}"));

    // Chromium renegotiates: carol publishes, Chromium subscribes to her track.
    let mut carol = Peer::new(room, "carol", true).await;
    let voice = carol
        .add_track(MediaKind::Audio, 0x0CA0_0001, "carol-voice")
        .await;
    carol.join(&sfu).await;
    let talking = tokio::spawn(async move {
        for i in 0u16..1500 {
            voice
                .send(i, u32::from(i) * 960, false, &[], payload(u64::from(i), 60))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let carols = chromium
        .next_event("carol's TrackPublished", WAIT, |e| match e {
            SignalEvent::TrackPublished(t) if t.publisher == "carol" => Some(t.track.clone()),
            _ => None,
        })
        .await;
    sfu.subscribe(room, "chromium", &carols).await.unwrap();
    chromium
        .next_event("Chromium's Subscribed", WAIT, |e| {
            matches!(e, SignalEvent::Subscribed { track, .. } if *track == carols).then_some(())
        })
        .await;

    // bob comes after that renegotiation, subscribes to Chromium's video, and asks for h, then
    // q (a step down: see chromium.rs for why not up).
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let video = bob
        .next_event("Chromium's video", |e| match e {
            SignalEvent::TrackPublished(t)
                if t.publisher == "chromium" && t.kind == MediaKind::Video =>
            {
                Some(t.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(video.rids, ["q", "h", "f"]);
    bob.subscribe(&sfu, &video.track).await;
    let dd = remote_ext_ids(&bob.pc).await.dd.expect("DD towards bob");
    let mut rx = Received::default();
    for (rid, width) in [("h", 320), ("q", 160)] {
        sfu.set_layer_preference(room, "bob", &video.track, Some(rid))
            .await
            .unwrap();
        tokio::time::timeout(3 * WAIT, async {
            while rx.width != Some(width) {
                let r = bob.received.recv().await.expect("bob's track ended");
                rx.add(&r.packet, dd);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("no {width}-wide key frame after the renegotiation, asking for {rid}: {rx:?}")
        });
        rx.switches.push(width);
    }
    // And q keeps coming: two more seconds of it, not only the key frames of the switches.
    let before = rx.packets;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(r)) = tokio::time::timeout_at(until, bob.received.recv()).await {
        rx.add(&r.packet, dd);
    }
    talking.abort();
    eprintln!("bob after Chromium's renegotiation: {rx:?}");
    assert_eq!(rx.switches, [320, 160]);
    assert!(
        rx.packets - before >= 20,
        "{} packets of q in 2 s",
        rx.packets - before
    );
    assert_eq!(rx.width, Some(160), "still q");
    assert_eq!(
        rx.unreadable, 0,
        "every DD reads against the latched structure"
    );
}
