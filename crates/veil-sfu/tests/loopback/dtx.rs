//! SFU-DTX-01..04 over real connections: a publisher talks, goes digitally silent, does DTX
//! itself for a while (one silent packet per 400 ms), talks again. The subscriber gets the talk,
//! the hangover and the sender's DTX packets, on contiguous sequence numbers, with the payload
//! bytes unchanged and the RTP time of what was dropped kept; the silence drops are counted.

use std::time::Duration;

use bytes::Bytes;
use veil_sfu::SfuConfig;
use veil_sfu::connection::sdp::AUDIO_LEVEL_URI;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;
use veil_sfu::session::DropKind;

use crate::common::*;

const SSRC: u32 = 0xD7C5_0001;
/// 20 talk, 50 silent packets of 20 ms (960 ticks at 48 kHz), then 4 silent packets of the
/// sender's own DTX (400 ms apart), then 20 talk packets.
const TALK: u16 = 20;
const SILENCE: u16 = 50;
const SENDER_DTX: u16 = 4;
/// The default hangover, 200 ms, in 20 ms packets.
const HANGOVER: u16 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_audio_is_not_forwarded_and_the_sequence_stays_contiguous() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "dtx";
    let mut alice = Peer::new(room, "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, SSRC, "mic").await;
    alice.join(&sfu).await;
    let al = mic.ext_id(AUDIO_LEVEL_URI).await.expect("audio level");
    let talk = Bytes::from_static(&[0x80 | 25]); // voice, -25 dBov
    let silence = Bytes::from_static(&[127]); // no voice, digital silence

    // Talk until the SFU has seen the track (the first packets may beat the SRTP context).
    let mut seq = 1000u16;
    for _ in 0..1000 {
        if sfu.metrics().tracks.get() > 0 {
            break;
        }
        mic.send(
            seq,
            960 * u32::from(seq),
            false,
            &[(al, talk.clone())],
            payload(0, 60),
        )
        .await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let a = bob.track_named("alice", "mic").await;
    bob.subscribe(&sfu, &a).await;

    // The test: packet i has seq `first + i`, its own payload, and timestamp `ts[i]`: 960 per
    // packet, 19,200 before each of the sender's DTX packets.
    let first = seq + 100;
    let total = 2 * TALK + SILENCE + SENDER_DTX;
    let dtx = TALK + SILENCE..TALK + SILENCE + SENDER_DTX;
    let ts: Vec<u32> = (0..total)
        .scan(960 * u32::from(first), |t, i| {
            *t += if dtx.contains(&i) { 19_200 } else { 960 };
            Some(*t)
        })
        .collect();
    for i in 0..total {
        let level = if (TALK..dtx.end).contains(&i) {
            silence.clone()
        } else {
            talk.clone()
        };
        mic.send(
            first.wrapping_add(i),
            ts[usize::from(i)],
            false,
            &[(al, level)],
            payload(u64::from(i) + 1, 60 + usize::from(i)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want: Vec<u16> = (0..TALK + HANGOVER).chain(dtx.start..total).collect();
    let dropped = u64::from(SILENCE - HANGOVER);
    eventually("the silence drops to be counted", || {
        sfu.metrics().drops(DropKind::Silence) >= dropped
    })
    .await;

    // Bob's packets, identified by payload (the SFU renumbers, so seq cannot tell them apart).
    let mut got: Vec<(u16, rtc::rtp::Packet)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < want.len() {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} packets", got.len(), want.len()))
            .unwrap();
        let i = (0..total)
            .find(|i| r.packet.payload == payload(u64::from(*i) + 1, 60 + usize::from(*i)))
            .expect("a payload alice sent, byte for byte");
        got.push((i, r.packet));
    }
    // Nothing else trickles in after the last talk packet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bob.received.try_recv().is_err(), "an extra packet arrived");

    let order: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(order, want, "talk and hangover only, in order");
    let seqs: Vec<u16> = got.iter().map(|g| g.1.header.sequence_number).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "contiguous: {seqs:?}"
    );
    // Timestamps move as alice's did, across the dropped silence by its length.
    for w in got.windows(2) {
        let ((i, a), (j, b)) = (&w[0], &w[1]);
        assert_eq!(
            b.header.timestamp.wrapping_sub(a.header.timestamp),
            ts[usize::from(*j)] - ts[usize::from(*i)],
            "RTP time from packet {i} to {j}"
        );
    }
    // The hangover and DTX packets carry their silent level to bob, the talk packets theirs.
    let bob_al = remote_ext_ids(&bob.pc)
        .await
        .audio_level
        .expect("audio level");
    for (i, p) in &got {
        let silent = (TALK..TALK + HANGOVER).contains(i) || dtx.contains(i);
        let want = if silent { &silence } else { &talk };
        assert_eq!(
            p.header.get_extension(bob_al).as_ref(),
            Some(want),
            "packet {i}"
        );
    }
    assert_eq!(sfu.metrics().drops(DropKind::Silence), dropped);
    eprintln!(
        "{} of {total} packets forwarded, {dropped} silent ones dropped; seq {}..={}",
        got.len(),
        seqs[0],
        seqs[seqs.len() - 1]
    );
}
