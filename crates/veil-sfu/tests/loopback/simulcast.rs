//! SFU-FWD-01..03, SFU-STR-01, SFU-STR-04, SFU-KF-03 over real connections: a webrtc-rs
//! publisher sends three simulcast layers (rid q/h/f, DD on every packet, mid/rid only on the
//! first packets, as Chromium does); a subscriber gets q, then f, then h, each switch at a key
//! frame, as one continuous stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use veil_sfu::routing::MediaKind;
use veil_sfu::shell::peer::{self, VP8_PT};
use veil_sfu::shell::sdp::{DD_URI, MID_URI, RID_URI};
use veil_sfu::{Sfu, SfuConfig};
use veil_wire::dd::DdLatch;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

use crate::common::*;

const RIDS: [&str; 3] = ["q", "h", "f"];
const SSRCS: [u32; 3] = [0x51_0001, 0x51_0002, 0x51_0003];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_switches_layers_at_key_frames_as_one_stream() {
    init_tracing();
    let sfu = Sfu::new(SfuConfig {
        key_frame_interval: Duration::from_millis(100),
        ..SfuConfig::default()
    });
    let room = "simulcast";
    let mut alice = Peer::new(room, "alice", true).await;
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "alice-stream".to_owned(),
        "cam".to_owned(),
        "cam".to_owned(),
        RtpCodecKind::Video,
        RIDS.iter()
            .zip(SSRCS)
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: (*rid).to_owned(),
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: peer::codec(MediaKind::Video),
                ..Default::default()
            })
            .collect(),
    )));
    let transceiver = alice
        .pc
        .add_transceiver_from_track(
            track.clone(),
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    alice.join(&sfu).await;
    let params = transceiver
        .sender()
        .await
        .unwrap()
        .unwrap()
        .get_parameters()
        .await
        .unwrap()
        .rtp_parameters;
    let id = |uri: &str| {
        params
            .header_extensions
            .iter()
            .find(|h| h.uri == uri)
            .map(|h| h.id as u8)
            .unwrap_or_else(|| panic!("{uri} not negotiated"))
    };
    let (mid_id, rid_id, dd_id) = (id(MID_URI), id(RID_URI), id(DD_URI));
    let mid = transceiver.mid().await.unwrap().unwrap();

    // Alice: a frame every 20 ms on each layer, one DD frame counter across layers, a key frame
    // on every layer every 10 frames; mid/rid while `announce` holds.
    let (stop, announce) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let sender = {
        let (stop, announce) = (stop.clone(), announce.clone());
        tokio::spawn(async move {
            let mut n: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                for (l, (rid, ssrc)) in RIDS.iter().zip(SSRCS).enumerate() {
                    let mut header = rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: VP8_PT,
                        sequence_number: n.wrapping_add(1000 * l as u16),
                        timestamp: 3000 * u32::from(n),
                        ssrc,
                        ..Default::default()
                    };
                    let frame = n.wrapping_mul(3).wrapping_add(l as u16);
                    header
                        .set_extension(dd_id, dd(frame, n.is_multiple_of(10)))
                        .unwrap();
                    if announce.load(Ordering::Relaxed) {
                        header
                            .set_extension(mid_id, Bytes::from(mid.clone()))
                            .unwrap();
                        header
                            .set_extension(rid_id, Bytes::from(rid.to_string()))
                            .unwrap();
                    }
                    let mut body = payload(u64::from(n), 300 + 100 * l).to_vec();
                    body[0] = rid.as_bytes()[0];
                    track
                        .write_rtp(rtp::Packet {
                            header,
                            payload: body.into(),
                        })
                        .await
                        .unwrap();
                }
                n = n.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually("the SFU to see the track", || sfu.tracks(room).len() == 1).await;
    assert_eq!(sfu.tracks(room)[0].rids, RIDS);

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let t = bob.track_named("alice", "cam").await;
    bob.subscribe(&sfu, &t).await;
    // From now on packets carry no mid/rid: the SFU maps them through what it latched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce.store(false, Ordering::Relaxed);

    // Receive: q for a while, then ask for f, then for h.
    let mut got: Vec<(u8, rtp::Packet)> = Vec::new();
    let mut latch = DdLatch::default();
    let dd_sub = remote_ext_ids(&bob.pc).await.dd.unwrap();
    let plan = [(b'q', None), (b'f', Some("f")), (b'h', Some("h"))];
    for (want, rid) in plan {
        if let Some(rid) = rid {
            sfu.set_layer_preference(room, "bob", &t, Some(rid))
                .await
                .unwrap();
        }
        let mut on_layer = 0;
        while on_layer < 20 {
            let r = tokio::time::timeout(WAIT, bob.received.recv())
                .await
                .unwrap_or_else(|_| panic!("waiting for layer {}", want as char))
                .unwrap();
            let tag = r.packet.payload[0];
            let d = latch
                .parse(&r.packet.header.get_extension(dd_sub).expect("DD forwarded"))
                .unwrap();
            if let Some((prev, _)) = got.last()
                && *prev != tag
            {
                assert_eq!(tag, want, "switched to the wrong layer");
                assert!(
                    d.is_key_frame_start(),
                    "switch to {} not at a key frame",
                    tag as char
                );
            }
            on_layer += usize::from(tag == want);
            got.push((tag, r.packet));
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();

    // One continuous stream: one SSRC, sequence numbers +1 each, timestamps never back.
    let layers: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    let mut runs = layers.clone();
    runs.dedup();
    assert_eq!(runs, b"qfh", "layer runs");
    for w in got.windows(2) {
        let (a, b) = (&w[0].1.header, &w[1].1.header);
        assert_eq!(a.ssrc, b.ssrc);
        assert_eq!(
            b.sequence_number,
            a.sequence_number.wrapping_add(1),
            "a gap in {layers:?}"
        );
        assert!(b.timestamp.wrapping_sub(a.timestamp) as i32 > 0);
    }
    assert_eq!(sfu.layer(room, "bob", &t), Some(1));
    assert!(
        sfu.metrics()
            .encode()
            .contains("veil_sfu_subscriber_layer{room=\"simulcast\",subscriber=\"bob\"")
    );
}
