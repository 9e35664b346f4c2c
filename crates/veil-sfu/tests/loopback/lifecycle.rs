//! Subscription and membership lifecycle on real connections: unsubscribe stops forwarding at
//! once and renegotiates, a new subscription works, and a publisher's `leave` ends its tracks
//! for the room (SFU-ROOM-02, SFU-NEG-02, SFU-LIVE-01 for the explicit case).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::{LeaveReason, ParticipantEvent, SfuConfig, SignalEvent};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_resubscribe_and_leave() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "lifecycle";
    let mut room_events = sfu.room_events();
    let mut alice = Peer::new(room, "alice", true).await;
    let mic = Arc::new(alice.add_track(MediaKind::Audio, 0xA1, "mic").await);
    alice.join(&sfu).await;
    let stop = Arc::new(AtomicBool::new(false));
    let talk = {
        let (mic, stop) = (mic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) {
                mic.send(
                    i,
                    960 * u32::from(i),
                    false,
                    &[],
                    Bytes::from_static(&[1; 50]),
                )
                .await;
                i = i.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually("alice's track", || sfu.metrics().tracks.get() == 1).await;

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let track = bob.track_named("alice", "mic").await;
    bob.subscribe(&sfu, &track).await;
    tokio::time::timeout(WAIT, bob.received.recv())
        .await
        .expect("media")
        .unwrap();

    // Unsubscribe: forwarding stops at once (the core forgets the subscription before the call
    // returns), and the SFU renegotiates the m-section away (bob answers in the background).
    sfu.unsubscribe(room, "bob", &track).await.unwrap();
    let frozen = sfu.metrics().forwarded("audio");
    assert_eq!(sfu.metrics().subscriptions.get(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sfu.metrics().forwarded("audio"),
        frozen,
        "packets forwarded after unsubscribe"
    );
    assert!(matches!(
        sfu.unsubscribe(room, "bob", &track).await,
        Err(veil_sfu::SfuError::NotSubscribed(_))
    ));

    // Subscribe again: a new leg, packets flow again.
    bob.subscribe(&sfu, &track).await;
    eventually("packets after resubscribing", || {
        sfu.metrics().forwarded("audio") > frozen
    })
    .await;

    // Alice leaves: her track ends for bob, the room hears why.
    sfu.leave(room, "alice").await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = talk.await;
    bob.next_event("TrackUnpublished", |e| {
        matches!(e, SignalEvent::TrackUnpublished { track: t } if *t == track).then_some(())
    })
    .await;
    let reason = bob
        .next_event("ParticipantLeft", |e| match e {
            SignalEvent::ParticipantLeft { identity, reason } if identity == "alice" => {
                Some(*reason)
            }
            _ => None,
        })
        .await;
    assert_eq!(reason, LeaveReason::Left);
    let left = tokio::time::timeout(WAIT, async {
        loop {
            if let ParticipantEvent::ParticipantLeft {
                identity, reason, ..
            } = room_events.recv().await.unwrap()
            {
                return (identity, reason);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(left, ("alice".to_owned(), LeaveReason::Left));
    assert_eq!(sfu.participants(room).await, ["bob"]);
    assert_eq!(
        (
            sfu.metrics().tracks.get(),
            sfu.metrics().subscriptions.get()
        ),
        (0, 0)
    );
}
