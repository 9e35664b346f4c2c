//! SFU-SVC-10 with real browsers: Chromium publishes one VP8 `L1T3` stream (as the call page
//! does; Chromium negotiates the dependency descriptor for it), another Chromium views it, and
//! the viewer's temporal cap is set through the signalling call `SetSvcLayer` maps to. The
//! viewer's own `getStats` (`inbound-rtp`) shows the frame rate follow: all three temporal
//! layers, then T0 (a quarter of the frames), T1 (half), and all again once the cap is lifted;
//! the resolution stays (L1T3 has one spatial layer). The SFU's decode-target gauges say the
//! same.

use std::time::Duration;

use serde_json::Value;
use veil_sfu::grpc::Backend;
use veil_sfu::routing::{MediaKind, SvcLayer};
use veil_sfu::session::metrics::{Subscriber, SubscriberTrack};
use veil_sfu::{EdgeSfu, SfuConfig, SignalEvent};

use crate::chromium_page::{ChromiumPeer, Role, serve_blank};
use crate::common::*;

/// How long each frame rate is measured over.
const WINDOW: Duration = Duration::from_secs(3);
/// How long a change is given to take effect before measuring (a step down is at the next
/// frame; a step up waits for a switch point, at most a few frames of L1T3).
const SETTLE: Duration = Duration::from_millis(1500);

/// The viewer's video `inbound-rtp`: frames decoded, and the stats' timestamp (ms).
async fn decoded(viewer: &ChromiumPeer) -> Option<(f64, f64, Value)> {
    let s = viewer.stats("inbound-rtp").await.into_iter().next()?;
    Some((s["framesDecoded"].as_f64()?, s["timestamp"].as_f64()?, s))
}

/// Frames decoded per second over [`WINDOW`], and the last stats entry.
async fn frame_rate(viewer: &ChromiumPeer) -> (f64, Value) {
    let (f0, t0, _) = decoded(viewer).await.expect("the viewer's inbound-rtp");
    tokio::time::sleep(WINDOW).await;
    let (f1, t1, s) = decoded(viewer).await.expect("the viewer's inbound-rtp");
    ((f1 - f0) * 1000.0 / (t1 - t0), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_temporal_cap_sets_the_frame_rate_it_decodes() {
    init_tracing();
    let room = "svc";
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let url = serve_blank().await;
    let _publisher = ChromiumPeer::join(
        &sfu,
        &url,
        room,
        "chromium",
        // Below where GCC starts on the viewer's leg (1.5 Mbit/s), so that the SFU's own
        // ladder (SFU-SVC-08) keeps every temporal layer and the cap alone decides.
        Role::Publish("[{scalabilityMode: 'L1T3', maxBitrate: 800000}]"),
    )
    .await;
    let mut viewer = ChromiumPeer::join(&sfu, &url, room, "viewer", Role::View).await;
    let track = viewer
        .next_event("Chromium's video", WAIT, |e| match e {
            SignalEvent::TrackPublished(t)
                if t.publisher == "chromium" && t.kind == MediaKind::Video =>
            {
                Some(t.track.clone())
            }
            _ => None,
        })
        .await;
    sfu.subscribe(room, "viewer", &track).await.unwrap();
    viewer
        .next_event("the viewer's Subscribed", WAIT, |e| {
            matches!(e, SignalEvent::Subscribed { track: t, .. } if *t == track).then_some(())
        })
        .await;
    // Chromium's encoder starts low and ramps up with its bandwidth estimate: measure from
    // where it sends a steady rate.
    viewer
        .page
        .wait_for(
            "veil.stats('inbound-rtp').then(s => s.length > 0 && s[0].framesPerSecond >= 12)",
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("the viewer never decoded 12 frames/s: {e}"));
    let labels = SubscriberTrack {
        room: room.to_owned(),
        subscriber: "viewer".to_owned(),
        track: track.clone(),
    };
    let temporal = || {
        sfu.metrics()
            .subscriber_temporal_layer
            .get_or_create(&labels)
            .get()
    };

    // The SFU forwards all three temporal layers before anything is asked of it, with an
    // estimate of the viewer's leg well above the stream: GCC sometimes falls at the start on
    // a loaded machine (to 300 kbit/s in one run), and the SFU's ladder then thins by itself
    // (SFU-SVC-08) until it recovers.
    let estimate = || {
        let leg = Subscriber {
            room: room.to_owned(),
            subscriber: "viewer".to_owned(),
        };
        sfu.metrics().subscriber_estimate.get_or_create(&leg).get()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut steady = 0;
    while steady < 10 {
        steady = if temporal() == 2 && estimate() >= 1_200_000 {
            steady + 1
        } else {
            0
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the SFU never forwarded T2 uncapped for 2 s (gauge {}, estimate {})",
            temporal(),
            estimate()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut rates = Vec::new();
    for (name, cap, gauge) in [
        ("T2", None, 2),
        ("T0", Some(SvcLayer::new(0, 0)), 0),
        ("T1", Some(SvcLayer::new(0, 1)), 1),
        ("uncapped", Some(SvcLayer::ALL), 2),
    ] {
        if let Some(cap) = cap {
            sfu.set_svc_layer(room, "viewer", &track, cap)
                .await
                .unwrap();
        }
        tokio::time::sleep(SETTLE).await;
        let (fps, s) = frame_rate(&viewer).await;
        eprintln!(
            "viewer at {name}: {fps:.1} frames/s decoded, getStats framesPerSecond {}, {}x{}; \
             SFU's temporal gauge {}, estimate {} bit/s",
            s["framesPerSecond"],
            s["frameWidth"],
            s["frameHeight"],
            temporal(),
            estimate()
        );
        assert_eq!(
            (s["frameWidth"].as_u64(), s["frameHeight"].as_u64()),
            (Some(640), Some(360)),
            "one spatial layer: the resolution stays at {name}"
        );
        assert_eq!(temporal(), gauge, "the SFU's decode-target gauge at {name}");
        rates.push(fps);
    }
    let [full, t0, t1, again] = rates[..] else {
        unreachable!()
    };
    // L1T3: T0 is every fourth frame, T1 every second. Chromium's encoder drops frames of its
    // own under load, so the bounds leave room; each is still far from its neighbours'.
    assert!(full > 8.0, "all layers: {full:.1} frames/s");
    assert!(
        t0 > 0.0 && t0 < 0.4 * full,
        "T0 ({t0:.1}) is about a quarter of all ({full:.1})"
    );
    assert!(
        t1 > 1.3 * t0 && t1 < 0.7 * full,
        "T1 ({t1:.1}) is about half of all ({full:.1}), twice T0 ({t0:.1})"
    );
    assert!(
        again > 0.8 * full,
        "uncapped again: {again:.1} of {full:.1}"
    );
}
