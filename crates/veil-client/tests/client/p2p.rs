//! The client's frame path over real WebRTC (webrtc-rs, DTLS-SRTP on loopback, no SFU): frames
//! SFrame-encrypted by one member arrive byte-identical after decryption at another, in both
//! packetizations, and every video packet carries the dependency descriptor through the
//! negotiated extension id (the two-byte form included, for key frames with the structure).

use std::time::Duration;

use tokio::sync::mpsc;
use veil_client::media::{
    FrameCounter, MediaKind, Packetization, ReceivedFrame, TrackReceiver, TrackSender,
};
use veil_client::transport::{LocalTrack, negotiated_ext_ids};
use veil_wire::dd::DdLatch;

use crate::common::{T0, connect, group, peer};

type Frames = Vec<(u32, Vec<u8>)>;

async fn call(packetization: Packetization) {
    let (alice, bob) = group();
    let (alice, mut bob) = (alice.frame_keys(), bob.frame_keys().decryptor());
    let (rx_tx, mut incoming) = mpsc::channel(4096);
    let mut a = peer(None).await;
    let mut b = peer(Some(rx_tx)).await;
    let audio = LocalTrack::new(MediaKind::Audio, "alice", "mic", 0x1111);
    let video = LocalTrack::new(MediaKind::Video, "alice", "cam", 0x2222);
    let audio_sender = a.pc.add_track(audio.track()).await.unwrap();
    let video_sender = a.pc.add_track(video.track()).await.unwrap();

    let sdp = connect(&mut a, &mut b).await;
    // What a blind SFU and Chromium need offered (Chromium sends DD only if offered).
    for want in [
        "dependency-descriptor",
        "ssrc-audio-level",
        "extmap-allow-mixed",
    ] {
        assert!(sdp.contains(want), "{want} missing from the offer:\n{sdp}");
    }

    let audio_ext = negotiated_ext_ids(&audio_sender).await.unwrap();
    let video_ext = negotiated_ext_ids(&video_sender).await.unwrap();
    let dd_id = video_ext.dependency_descriptor.expect("DD negotiated");
    assert!(audio_ext.audio_level.is_some(), "audio level negotiated");
    let counter = FrameCounter::default();
    let mut atx = TrackSender::new(
        MediaKind::Audio,
        packetization,
        audio_ext,
        100,
        counter.clone(),
    )
    .unwrap();
    let mut vtx =
        TrackSender::new(MediaKind::Video, packetization, video_ext, 200, counter).unwrap();

    let mut sent_audio: Frames = Vec::new();
    let mut sent_video: Frames = Vec::new();
    for i in 0..40u32 {
        let f: Vec<u8> = (0..120 + i).map(|j| (i * 7 + j) as u8).collect();
        let pkts = atx
            .send(&alice, &f, i * 960, false, Some((true, 40)))
            .unwrap();
        audio.send(&pkts).await.unwrap();
        sent_audio.push((i * 960, f));
        if i % 2 == 0 {
            let len = 400 + (i as usize * 997) % 6000;
            let f: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            let key = i % 20 == 0;
            let pkts = vtx.send(&alice, &f, i * 1500, key, None).unwrap();
            video.send(&pkts).await.unwrap();
            sent_video.push((i * 1500, f));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut rx_audio = TrackReceiver::new(MediaKind::Audio, packetization);
    let mut rx_video = TrackReceiver::new(MediaKind::Video, packetization);
    let mut got_audio: Frames = Vec::new();
    let mut got_video: Frames = Vec::new();
    let mut latch = DdLatch::default();
    let mut dd_packets = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got_audio.len() < sent_audio.len() || got_video.len() < sent_video.len() {
        let (kind, p) = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out with {}/{} audio, {}/{} video frames",
                    got_audio.len(),
                    sent_audio.len(),
                    got_video.len(),
                    sent_video.len()
                )
            })
            .unwrap();
        let (rx, got) = match kind {
            MediaKind::Audio => (&mut rx_audio, &mut got_audio),
            MediaKind::Video => {
                let (_, dd) = p
                    .extensions
                    .iter()
                    .find(|(id, _)| *id == dd_id)
                    .expect("every video packet carries DD");
                latch.parse(dd).unwrap();
                dd_packets += 1;
                (&mut rx_video, &mut got_video)
            }
        };
        rx.push(p.seq, p.timestamp, p.marker, &p.payload);
        for f in rx.drain(&mut bob, T0) {
            match f {
                ReceivedFrame::Frame {
                    sender,
                    timestamp,
                    data,
                } => {
                    assert_eq!(sender, 0, "alice is leaf 0");
                    got.push((timestamp, data));
                }
                other => panic!("{packetization:?} {kind:?}: {other:?}"),
            }
        }
    }
    assert_eq!(got_audio, sent_audio, "{packetization:?} audio");
    assert_eq!(got_video, sent_video, "{packetization:?} video");
    assert!(
        dd_packets > sent_video.len(),
        "video frames span several packets"
    );
    a.pc.close().await.ok();
    b.pc.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_frames_cross_real_webrtc_browser_packetization() {
    call(Packetization::Browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_frames_cross_real_webrtc_ietf_packetization() {
    call(Packetization::Ietf).await;
}
