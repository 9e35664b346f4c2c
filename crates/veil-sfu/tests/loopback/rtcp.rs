//! SFU-RTCP-01..03: RTCP reports are per hop. The publisher hears receiver reports from the SFU
//! about its own SSRC; the subscriber hears sender reports from the SFU about the SSRC of its
//! subscription, describing what the SFU sent on that leg; the subscriber's receiver reports end
//! at the SFU. Both test peers log SR/RR where they cross the wire (`RtcpLog`).

use std::time::Duration;

use bytes::Bytes;
use veil_sfu::SfuConfig;
use veil_sfu::connection::sdp::AUDIO_LEVEL_URI;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::routing::MediaKind;

use crate::common::*;

const SSRC: u32 = 0x5EC0_0001;
const LEN: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_per_hop_and_never_cross_the_sfu() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let room = "rtcp";
    let (mut alice, alice_log) = Peer::with_rtcp_log(room, "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, SSRC, "mic").await;
    alice.join(&sfu).await;
    let al = mic.ext_id(AUDIO_LEVEL_URI).await.expect("audio level");
    let talk = Bytes::from_static(&[0x80 | 30]);
    let mut seq = 0u16;
    let send = async |seq: &mut u16| {
        mic.send(
            *seq,
            960 * u32::from(*seq),
            false,
            &[(al, talk.clone())],
            payload(u64::from(*seq), LEN),
        )
        .await;
        *seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while sfu.metrics().tracks.get() == 0 {
        assert!(seq < 1000, "the SFU never saw the track");
        send(&mut seq).await;
    }
    let (mut bob, bob_log) = Peer::with_rtcp_log(room, "bob", false).await;
    bob.join(&sfu).await;
    let a = bob.track_named("alice", "mic").await;
    let sub_ssrc = bob.subscribe(&sfu, &a).await;
    assert_ne!(sub_ssrc, SSRC);

    // 3.5 s of audio: reports go out once a second on every leg.
    let mut received = Vec::new();
    for _ in 0..175 {
        send(&mut seq).await;
        while let Ok(r) = bob.received.try_recv() {
            received.push(r.packet);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(r) = bob.received.try_recv() {
        received.push(r.packet);
    }
    assert!(received.len() > 150, "bob got {} packets", received.len());

    // What each peer sent: alice sends SRs for her SSRC; bob sends RRs about his subscription.
    let alice_out = alice_log.reports(false);
    let bob_out = bob_log.reports(false);
    assert!(
        alice_out
            .iter()
            .any(|r| matches!(r, Report::Sr { ssrc, .. } if *ssrc == SSRC)),
        "alice sends SRs: {alice_out:?}"
    );
    let bob_rr_senders: Vec<u32> = bob_out
        .iter()
        .filter_map(|r| match r {
            Report::Rr { sender, about } if about.contains(&sub_ssrc) => Some(*sender),
            _ => None,
        })
        .collect();
    assert!(!bob_rr_senders.is_empty(), "bob sends RRs: {bob_out:?}");

    // SFU-RTCP-01: alice hears RRs from the SFU about her SSRC.
    let alice_in = alice_log.reports(true);
    let sfu_rrs: Vec<&Report> = alice_in
        .iter()
        .filter(|r| matches!(r, Report::Rr { about, .. } if about.contains(&SSRC)))
        .collect();
    assert!(sfu_rrs.len() >= 2, "RRs at alice: {alice_in:?}");

    // SFU-RTCP-03: nothing of bob's reaches alice: no report about bob's SSRC, none from his
    // reporting SSRC.
    for r in &alice_in {
        match r {
            Report::Rr { sender, about } => {
                assert!(!bob_rr_senders.contains(sender), "bob's RR reached alice");
                assert!(
                    !about.contains(&sub_ssrc),
                    "a report about bob's leg: {r:?}"
                );
            }
            Report::Sr { ssrc, .. } => panic!("alice got an SR for {ssrc:#x}"),
        }
    }

    // SFU-RTCP-02: bob hears SRs for his subscription's SSRC only, never alice's SR.
    let bob_in = bob_log.reports(true);
    let srs: Vec<(u32, u32, u32)> = bob_in
        .iter()
        .filter_map(|r| match r {
            Report::Sr {
                ssrc,
                rtp_time,
                packet_count,
                octet_count,
            } => {
                assert_eq!(*ssrc, sub_ssrc, "an SR not about bob's leg: {r:?}");
                Some((*rtp_time, *packet_count, *octet_count))
            }
            Report::Rr { .. } => None,
        })
        .collect();
    assert!(srs.len() >= 2, "SRs at bob: {bob_in:?}");
    // They describe what the SFU sent on bob's leg: its packets (all of LEN payload bytes, so
    // octets = LEN × packets), and an RTP time within the timestamps bob received.
    let (first_ts, last_ts) = (
        received[0].header.timestamp,
        received[received.len() - 1].header.timestamp,
    );
    for &(rtp_time, packets, octets) in &srs {
        assert!(
            packets > 0 && packets as usize <= received.len(),
            "{packets}"
        );
        assert_eq!(octets as usize, LEN * packets as usize);
        let since_first = rtp_time.wrapping_sub(first_ts);
        assert!(
            since_first <= last_ts.wrapping_sub(first_ts) + 48_000,
            "SR rtp time {rtp_time} outside bob's stream {first_ts}..{last_ts}"
        );
    }
    let counts: Vec<u32> = srs.iter().map(|s| s.1).collect();
    assert!(counts.windows(2).all(|w| w[1] >= w[0]), "{counts:?}");
    eprintln!(
        "alice: {} RRs from the SFU about {SSRC:#x}; bob: {} SRs for {sub_ssrc:#x} \
         (packet counts {counts:?} of {} received); bob's {} RRs stayed at the SFU",
        sfu_rrs.len(),
        srs.len(),
        received.len(),
        bob_rr_senders.len()
    );
}
