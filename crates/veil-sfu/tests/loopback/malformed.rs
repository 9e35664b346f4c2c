//! Bad peers: a publisher whose header extensions cannot be read (a truncated dependency
//! descriptor, a two-byte audio level).
//! Those packets are dropped and counted (`metadata`); the good packets around them flow on.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use veil_sfu::SfuConfig;
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI};
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::session::DropKind;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_metadata_is_dropped_and_counted_and_the_stream_goes_on() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "malformed";
    let mut alice = Peer::new(room, "alice", true).await;
    let audio = alice.add_track(MediaKind::Audio, 0xA1, "mic").await;
    let video = alice.add_track(MediaKind::Video, 0xB1, "cam").await;
    alice.join(&sfu).await;
    let (al, dd_id) = (
        audio.ext_id(AUDIO_LEVEL_URI).await.unwrap(),
        video.ext_id(DD_URI).await.unwrap(),
    );
    // Until the SFU sees both tracks: good packets only.
    let good_level = Bytes::from_static(&[0x80 | 30]);
    for i in 0..1000u16 {
        if sfu.metrics().tracks.get() == 2 {
            break;
        }
        audio
            .send(i, 0, false, &[(al, good_level.clone())], payload(1, 60))
            .await;
        video
            .send(i, 0, true, &[(dd_id, dd(i, true))], payload(2, 300))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let (a, v) = (
        bob.track_named("alice", "mic").await,
        bob.track_named("alice", "cam").await,
    );
    bob.subscribe(&sfu, &a).await;
    bob.subscribe(&sfu, &v).await;

    // Even packets are good, odd ones carry unreadable metadata.
    let bad_level = Bytes::from_static(&[30, 30]);
    let truncated_dd = Bytes::from_static(&[0xC0, 0x01]);
    let (mut good_audio, mut good_video, mut bad) = (BTreeSet::new(), BTreeSet::new(), 0u64);
    for i in 0..60u16 {
        let (seq, good) = (2000 + i, i % 2 == 0);
        let level = if good {
            good_level.clone()
        } else {
            bad_level.clone()
        };
        audio
            .send(
                seq,
                960 * u32::from(i),
                false,
                &[(al, level)],
                payload(3, 60),
            )
            .await;
        let d = if good {
            dd(3000 + i, i % 10 == 0)
        } else {
            truncated_dd.clone()
        };
        video
            .send(
                seq,
                3000 * u32::from(i),
                true,
                &[(dd_id, d)],
                payload(4, 300),
            )
            .await;
        if good {
            good_audio.insert(seq);
            good_video.insert(seq);
        } else {
            bad += 2;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the bad packets to be counted", || {
        sfu.metrics().drops(DropKind::Metadata) >= bad
    })
    .await;

    // Bob gets exactly the good packets (from the first key frame on, for video).
    let (mut got_audio, mut got_video) = (BTreeSet::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while got_audio.len() < good_audio.len() || got_video.len() < good_video.len() {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .expect("the good packets")
            .unwrap();
        let seq = r.packet.header.sequence_number;
        if r.track == a {
            assert!(
                good_audio.contains(&seq),
                "audio {seq} should have been dropped"
            );
            got_audio.insert(seq);
        } else {
            assert!(
                good_video.contains(&seq),
                "video {seq} should have been dropped"
            );
            got_video.insert(seq);
        }
    }
    // The publisher is still in the room and still routed.
    assert_eq!(sfu.participants(room).await, ["alice", "bob"]);
    eprintln!(
        "{bad} unreadable packets dropped; {} good ones forwarded",
        got_audio.len() + got_video.len()
    );
}
