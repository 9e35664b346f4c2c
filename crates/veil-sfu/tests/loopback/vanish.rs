//! SFU-LIVE-01: a participant whose transport goes silent (its process dies: no BYE, no DTLS
//! close, no ICE) is removed after the configured silence and grace, its tracks end for the
//! others, and the room hears `ParticipantLeft { reason: Timeout }`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::{LeaveReason, ParticipantEvent, Permissions, SfuConfig, SignalEvent};
use webrtc::peer_connection::RTCSessionDescription;

use crate::common::*;

/// Alice lives on her own thread and tokio runtime; dropping that runtime kills her
/// connection's driver and sockets at once, like a crashed process.
pub(crate) fn spawn_alice(
    room: &'static str,
    offer_tx: oneshot::Sender<String>,
    answer_rx: oneshot::Receiver<String>,
    kill_rx: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut alice = Peer::new(room, "alice", true).await;
            let mic = alice.add_track(MediaKind::Audio, 0xA11CE, "mic").await;
            offer_tx.send(alice.offer().await).unwrap();
            let answer = answer_rx.await.unwrap();
            alice
                .pc
                .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
                .await
                .unwrap();
            alice.connected().await;
            let talk = tokio::spawn(async move {
                for i in 0u16.. {
                    mic.send(
                        i,
                        960 * u32::from(i),
                        false,
                        &[],
                        Bytes::from_static(&[7; 60]),
                    )
                    .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let _ = kill_rx.await;
            talk.abort();
        });
        // Dropping the runtime drops every task of alice's connection, sockets included.
        drop(rt);
    })
}

/// The edge's connections are ICE-lite: only the participant's consent checks (every 2 s from
/// webrtc-rs) prove it alive, so the silence must be longer than that (SFU-EDGE-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_is_timed_out_and_the_room_is_told() {
    let sfu = EdgeSfu::new(SfuConfig {
        silence_timeout: Duration::from_secs(3),
        departure_grace: Duration::from_secs(1),
        ..SfuConfig::default()
    })
    .unwrap();
    init_tracing();
    let room = "vanish";
    let mut room_events = sfu.room_events();

    let (offer_tx, offer_rx) = oneshot::channel();
    let (answer_tx, answer_rx) = oneshot::channel();
    let (kill_tx, kill_rx) = oneshot::channel();
    let alice = spawn_alice(room, offer_tx, answer_rx, kill_rx);
    let session = sfu
        .join_with(room, "alice", &offer_rx.await.unwrap(), Permissions::ALL)
        .await
        .unwrap();
    answer_tx.send(session.answer).unwrap();

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let track = bob.track_named("alice", "mic").await;
    bob.subscribe(&sfu, &track).await;
    tokio::time::timeout(WAIT, bob.received.recv())
        .await
        .expect("alice's audio")
        .unwrap();

    // Alice's process dies.
    kill_tx.send(()).unwrap();
    alice.join().unwrap();
    let died = Instant::now();

    let left = tokio::time::timeout(WAIT, async {
        loop {
            match room_events.recv().await.unwrap() {
                ParticipantEvent::ParticipantLeft {
                    room: r,
                    identity,
                    reason,
                } if identity == "alice" => {
                    return (r, reason);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("alice is timed out");
    eprintln!("alice removed {:?} after her process died", died.elapsed());
    assert_eq!(left, (room.to_owned(), LeaveReason::Timeout));
    let reason = bob
        .next_event("ParticipantLeft", |e| match e {
            SignalEvent::ParticipantLeft { identity, reason } if identity == "alice" => {
                Some(*reason)
            }
            _ => None,
        })
        .await;
    assert_eq!(reason, LeaveReason::Timeout);
    bob.next_event("TrackUnpublished", |e| {
        matches!(e, SignalEvent::TrackUnpublished { track: t } if *t == track).then_some(())
    })
    .await;
    assert_eq!(sfu.participants(room).await, ["bob"]);
    let m = sfu.metrics();
    assert_eq!((m.participants.get(), m.tracks.get()), (1, 0));
}

/// SFU-LIVE-02: a participant that joins but never connects (it never applies the answer) is
/// removed after `connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_connects_is_removed() {
    let sfu = EdgeSfu::new(SfuConfig {
        connect_timeout: Duration::from_secs(1),
        ..SfuConfig::default()
    })
    .unwrap();
    init_tracing();
    let mut events = sfu.room_events();
    let mut ghost = Peer::new("never", "ghost", false).await;
    let offer = ghost.offer().await;
    let mut session = sfu
        .join_with("never", "ghost", &offer, Permissions::ALL)
        .await
        .unwrap();
    let left = tokio::time::timeout(WAIT, async {
        loop {
            if let ParticipantEvent::ParticipantLeft {
                identity, reason, ..
            } = events.recv().await.unwrap()
            {
                return (identity, reason);
            }
        }
    })
    .await
    .expect("ghost removed");
    assert_eq!(left, ("ghost".to_owned(), LeaveReason::NeverConnected));
    let closed = loop {
        match session.events.recv().await {
            Some(SignalEvent::Closed { reason }) => break reason,
            Some(_) => continue,
            None => panic!("no Closed event"),
        }
    };
    assert_eq!(closed, LeaveReason::NeverConnected);
    assert!(sfu.participants("never").await.is_empty());
    assert_eq!(sfu.metrics().rooms.get(), 0);
}
