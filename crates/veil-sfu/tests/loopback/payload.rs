//! SFU-BLIND-03, SFU-FWD-03, SFU-EXT-01..03, SFU-NEG-01: payload bytes and forwarded extension
//! data reach every subscriber exactly as the publisher sent them, under each subscriber's own
//! SSRC, payload type and extension ids.

use std::collections::HashMap;

use bytes::Bytes;
use veil_sfu::connection::sdp::{AUDIO_LEVEL_URI, DD_URI};
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::{SfuConfig, SignalEvent};
use veil_wire::audio_level::AudioLevel;

use crate::common::*;

const AUDIO_SSRC: u32 = 0xA0D1_0001;
const VIDEO_SSRC: u32 = 0x71DE_0001;
const PACKETS: u16 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_extensions_reach_every_subscriber_unchanged() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "payload";
    let mut alice = Peer::new(room, "alice", true).await;
    let audio = alice.add_track(MediaKind::Audio, AUDIO_SSRC, "mic").await;
    let video = alice.add_track(MediaKind::Video, VIDEO_SSRC, "cam").await;
    alice.join(&sfu).await;
    let (al_id, dd_id) = (
        audio
            .ext_id(AUDIO_LEVEL_URI)
            .await
            .expect("audio level negotiated"),
        video.ext_id(DD_URI).await.expect("DD negotiated"),
    );

    // The SFU learns of a track from its first packet.
    let level = |l: u8| {
        Bytes::from(vec![
            AudioLevel {
                voice: true,
                level: l,
            }
            .to_byte()
            .unwrap(),
        ])
    };
    // The very first packets may arrive before the SFU's SRTP context is ready: keep sending
    // until it has seen both tracks.
    for i in 0..1000u16 {
        if sfu.metrics().tracks.get() == 2 {
            break;
        }
        audio
            .send(500 + i, 0, true, &[(al_id, level(40))], payload(1, 80))
            .await;
        video
            .send(4000 + i, 0, true, &[(dd_id, dd(99, true))], payload(2, 500))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sfu.metrics().tracks.get(), 2, "the SFU saw both tracks");

    let mut subs = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let mut p = Peer::new(room, name, false).await;
        p.join(&sfu).await;
        let a = p.track_named("alice", "mic").await;
        let v = p.track_named("alice", "cam").await;
        // Alice's audio levels made her the active speaker; a joiner hears it (SFU-SPK-03).
        p.next_event("ActiveSpeaker", |e| {
            matches!(e, SignalEvent::ActiveSpeaker { identity } if identity == "alice")
                .then_some(())
        })
        .await;
        let a_ssrc = p.subscribe(&sfu, &a).await;
        let v_ssrc = p.subscribe(&sfu, &v).await;
        subs.push((p, a, v, a_ssrc, v_ssrc));
    }

    // What alice sends: (track, seq) → (timestamp, payload, extension data).
    let mut sent: HashMap<(bool, u16), (u32, Bytes, Bytes)> = HashMap::new();
    for i in 0..PACKETS {
        let (seq, ts) = (1000 + i, 960 * u32::from(i));
        let (al, pa) = (
            level((i % 100) as u8),
            payload(1000 + u64::from(i), 60 + usize::from(i) * 2),
        );
        audio
            .send(seq, ts, i == 0, &[(al_id, al.clone())], pa.clone())
            .await;
        sent.insert((true, seq), (ts, pa, al));
        // Video: one packet per frame, a key frame every 20 frames, starting with one.
        let (seq, ts) = (5000 + i, 3000 * u32::from(i));
        let d = dd(100 + i, i % 20 == 0);
        let pv = payload(5000 + u64::from(i), 200 + usize::from(i) * 13);
        video
            .send(seq, ts, true, &[(dd_id, d.clone())], pv.clone())
            .await;
        sent.insert((false, seq), (ts, pv, d));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    for (p, a, v, a_ssrc, v_ssrc) in &mut subs {
        let ids = remote_ext_ids(&p.pc).await;
        let (sub_al, sub_dd) = (ids.audio_level.unwrap(), ids.dd.unwrap());
        let mut got: HashMap<(bool, u16), ()> = HashMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < sent.len() {
            let r = tokio::time::timeout_at(deadline, p.received.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: {} of {} packets", p.identity, got.len(), sent.len())
                })
                .unwrap();
            let audio = r.track == *a;
            assert!(audio || r.track == *v, "unexpected track {}", r.track);
            let h = &r.packet.header;
            let (ts, body, ext) = sent
                .get(&(audio, h.sequence_number))
                .unwrap_or_else(|| panic!("{}: unexpected seq {}", p.identity, h.sequence_number));
            // The payload is the publisher's, byte for byte (SFU-BLIND-03).
            assert_eq!(&r.packet.payload, body, "{} payload", p.identity);
            // Its own SSRC and payload type (SFU-ROOM-02); seq and ts continue unchanged since
            // the stream started at this packet's layer (SFU-FWD-03).
            assert_eq!(h.ssrc, if audio { *a_ssrc } else { *v_ssrc });
            assert_eq!(h.payload_type, if audio { 111 } else { 96 });
            assert_eq!(h.timestamp, *ts);
            // The forwarded extension, same data under this leg's id; nothing else
            // (transport-cc and mid/rid are per hop) (SFU-EXT-01..03).
            let id = if audio { sub_al } else { sub_dd };
            assert_eq!(
                h.get_extension(id).as_ref(),
                Some(ext),
                "{} extension",
                p.identity
            );
            got.insert((audio, h.sequence_number), ());
        }
        eprintln!(
            "{}: publisher ids al={al_id} dd={dd_id}, subscriber al={sub_al} dd={sub_dd}, {} packets",
            p.identity,
            got.len()
        );
        // The publisher's and the subscriber's ids differ, so rewriting was needed.
        assert_ne!(
            (al_id, dd_id),
            (sub_al, sub_dd),
            "ids happened to match: rewriting untested"
        );
    }
    let m = sfu.metrics();
    assert!(m.forwarded("audio") >= 3 * u64::from(PACKETS));
    assert!(m.forwarded("video") >= 3 * u64::from(PACKETS));
    assert!(m.encode().contains("veil_sfu_forwarded_bytes_total"));
}
