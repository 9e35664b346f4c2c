//! SFU-FWD-01..03, SFU-STR-01, SFU-STR-04, SFU-KF-03 over real connections: a webrtc-rs
//! publisher sends three simulcast layers (rid q/h/f, DD on every packet, mid/rid only on the
//! first packets, as Chromium does); a subscriber gets q, then f, then h, each switch at a key
//! frame, as one continuous stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use veil_sfu::{EdgeSfu, SfuConfig, SignalEvent};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_switches_layers_at_key_frames_as_one_stream() {
    init_tracing();
    let sfu = EdgeSfu::new(SfuConfig {
        key_frame_interval: Duration::from_millis(100),
        ..SfuConfig::default()
    })
    .unwrap();
    let room = "simulcast";
    let mut alice = Peer::new(room, "alice", true).await;
    let cam = Simulcast::add(&alice).await;
    alice.join(&sfu).await;
    let sender = cam.start().await;
    let (stop, announce) = (cam.stop.clone(), cam.announce.clone());
    eventually("the SFU to see the track", || {
        sfu.metrics().tracks.get() == 1
    })
    .await;

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let info = bob
        .next_event("TrackPublished", |e| match e {
            SignalEvent::TrackPublished(t) if t.publisher == "alice" => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(info.rids, SIMULCAST_RIDS);
    let t = info.track;
    bob.subscribe(&sfu, &t).await;
    // From now on packets carry no mid/rid: the SFU maps them through what it latched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce.store(false, Ordering::Relaxed);

    // Receive: q for a while, then ask for f, then for h.
    let mut rx = LayerReceiver::new(&bob).await;
    for (want, rid) in [(b'q', None), (b'f', Some("f")), (b'h', Some("h"))] {
        if let Some(rid) = rid {
            sfu.set_layer_preference(room, "bob", &t, Some(rid))
                .await
                .unwrap();
        }
        rx.receive(&mut bob, want).await;
    }
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    rx.assert_one_stream(b"qfh");
    assert_eq!(sfu.layer(room, "bob", &t).await, Some(1));
    assert!(
        sfu.metrics()
            .encode()
            .contains("veil_sfu_subscriber_layer{room=\"simulcast\",subscriber=\"bob\"")
    );
}
