//! Room events end to end (real key service + blind SFU): who joins and leaves the call, the
//! SFU's key-frame requests, the active speaker from the audio levels the SFU reads, every
//! epoch change with the authenticator all members share, and a removal.

use std::time::Duration;

use tokio::sync::broadcast;
use veil_client::keys::KeyClient;
use veil_client::room::{Room, RoomEvent};
use veil_e2e::{Server, audio_frame, video_frame};

/// The next event that `pick` accepts, within 20 s.
async fn wait_for<T>(
    events: &mut broadcast::Receiver<RoomEvent>,
    what: &str,
    pick: impl Fn(&RoomEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 20 s"))
            .expect("events open, not lagging");
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_leaves_the_active_speaker_epochs_and_a_removal_arrive_as_events() {
    let server = Server::start().await;
    let room = "events";
    let alice = Room::join(server.room(room, "alice")).await.unwrap();
    let mut a_events = alice.events();
    let bob = Room::join(server.room(room, "bob")).await.unwrap();

    // Bob's join: the group moves to an epoch with both members, and the SFU says he joined
    // (in either order: the epoch may be alice's commit or bob's external one).
    let mut epoch_with_bob = None;
    let mut bob_joined = false;
    while epoch_with_bob.is_none() || !bob_joined {
        let e = tokio::time::timeout(Duration::from_secs(20), a_events.recv())
            .await
            .unwrap_or_else(|_| panic!("bob's join: epoch {epoch_with_bob:?}, joined {bob_joined}"))
            .unwrap();
        match e {
            RoomEvent::EpochChanged {
                epoch,
                authenticator,
                members,
            } if members.contains(&"bob".to_owned()) => {
                epoch_with_bob = Some((epoch, authenticator));
            }
            RoomEvent::ParticipantJoined { identity } if identity == "bob" => bob_joined = true,
            _ => {}
        }
    }
    let (epoch, auth) = epoch_with_bob.unwrap();
    let b = bob
        .group()
        .wait(Duration::from_secs(20), |s| s.epoch == Some(epoch))
        .await
        .unwrap();
    assert_eq!(b.epoch_authenticator.as_ref(), Some(&auth));

    // Active speaker: bob talks loudly (10 -dBov, voice), alice is silent (127 -dBov).
    let mut b_events = bob.events();
    let talk = async {
        for i in 0..150u32 {
            alice
                .publish_audio(&audio_frame(0, i), i * 960, (false, 127))
                .await
                .unwrap();
            bob.publish_audio(&audio_frame(1, i), i * 960, (true, 10))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let heard = async {
        wait_for(&mut b_events, "an active speaker", |e| match e {
            RoomEvent::ActiveSpeaker { identity } => Some(identity.clone()),
            _ => None,
        })
        .await
    };
    let ((), speaker) = tokio::join!(talk, heard);
    assert_eq!(speaker, "bob");

    // Bob leaves the group but keeps his media session (as in the cheating-leaver test): he
    // gets `Removed`; alice gets the epoch without him.
    let mut keys = KeyClient::connect(&server.url, &server.token(room, "bob"), room)
        .await
        .unwrap();
    keys.leave().await.unwrap();
    wait_for(&mut b_events, "bob's removal", |e| {
        matches!(e, RoomEvent::Removed).then_some(())
    })
    .await;
    let members = wait_for(&mut a_events, "the epoch without bob", |e| match e {
        RoomEvent::EpochChanged { members, .. } if !members.contains(&"bob".to_owned()) => {
            Some(members.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(members, vec!["alice".to_owned()]);

    // Then he leaves the call: the SFU says so.
    bob.leave().await.unwrap_or(());
    wait_for(&mut a_events, "bob leaving the call", |e| {
        matches!(e, RoomEvent::ParticipantLeft { identity } if identity == "bob").then_some(())
    })
    .await;
    alice.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_makes_the_sfu_ask_the_publisher_for_a_key_frame() {
    let server = Server::start().await;
    let room = "key-frames";
    let alice = std::sync::Arc::new(Room::join(server.room(room, "alice")).await.unwrap());
    let mut events = alice.events();
    // Alice's video: one key frame, then delta frames only, until the test ends.
    let publishing = {
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0..1500u32 {
                alice
                    .publish_video(&video_frame(0, i), i * 3000, i == 0)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bob subscribes mid-stream: the SFU needs a key frame to start his copy (SFU-KF-02), asks
    // alice, and the request reaches her application.
    let bob = Room::join(server.room(room, "bob")).await.unwrap();
    let layer = wait_for(&mut events, "a key-frame request", |e| match e {
        RoomEvent::KeyFrameRequested { layer } => Some(*layer),
        _ => None,
    })
    .await;
    assert_eq!(layer, 0);
    publishing.abort();
    bob.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_sfu_cannot_read_yet_makes_it_ask_for_a_key_frame() {
    let server = Server::start().await;
    let room = "no-key-frame";
    let alice = Room::join(server.room(room, "alice")).await.unwrap();
    let mut events = alice.events();
    let _bob = Room::join(server.room(room, "bob")).await.unwrap();
    // Alice's video starts with delta frames: their DD refers to a structure the SFU never saw
    // (SFU-KF-05), so it asks her for a key frame, and she hears it.
    let publish = async {
        for i in 0..250u32 {
            alice
                .publish_video(&video_frame(0, i), i * 3000, false)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let asked = wait_for(&mut events, "a key-frame request", |e| match e {
        RoomEvent::KeyFrameRequested { layer } => Some(*layer),
        _ => None,
    });
    tokio::select! {
        layer = asked => assert_eq!(layer, 0),
        () = publish => panic!("no key-frame request in 5 s of delta frames"),
    }
}
