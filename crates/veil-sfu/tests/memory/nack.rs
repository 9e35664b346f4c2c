//! SFU-NACK-01, SFU-RTX-01, -03, SFU-BWE-05 in memory: the link from the SFU to a subscriber
//! loses every 7th VP8 packet; the subscriber's NACKs are answered with RTX from the SFU's
//! history, and it ends up with every packet, byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

use veil_rtc::RTX_PT;
use veil_sfu::connection::peer::VP8_PT;

use crate::common::*;

#[test]
fn losses_towards_a_subscriber_are_repaired_from_the_sfus_history() {
    repaired("every 7th", Loss::EveryNth { pt: VP8_PT, n: 7 });
}

#[test]
fn random_losses_towards_a_subscriber_are_repaired_too() {
    let rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(24);
    repaired(
        "5 % at random",
        Loss::Random {
            pt: VP8_PT,
            percent: 5,
            rng: Box::new(rng),
        },
    );
}

/// bob subscribes to alice's video, then his link loses VP8 packets by `loss`.
fn repaired(name: &str, loss: Loss) {
    let (mut net, alice, bob, cam) = camera_and_viewer();
    assert!(net.run_until(Duration::from_secs(1), |n| {
        !n.peers[bob].got_on(cam).is_empty()
    }));
    net.peers[bob].down.loss = loss;
    net.run_for(Duration::from_secs(4));
    // Stop sending and give the last losses time to be asked for and repaired.
    net.peers[alice].sending = false;
    net.run_for(Duration::from_secs(1));

    let down = &net.peers[bob].down;
    let lost = down.lost.len();
    let rtx = down.passed(RTX_PT).len();
    // Every loss is repaired as RTX, once; nothing is repaired by resending on the media SSRC.
    let media = down.passed(VP8_PT);
    let mut unique = media.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), media.len(), "a media packet arrived twice");
    assert!(lost >= 5, "{lost} lost");
    assert_eq!(rtx, lost, "one retransmission per loss");
    let c = &net.counters;
    assert_eq!(c.rtx[3] as usize, rtx, "RTX the SFU counted as resent");
    assert_eq!((c.rtx[4], c.rtx[5]), (0, 0), "none missing or limited");

    // bob's application has every packet from the first on, byte for byte, once.
    let got = net.peers[bob].got_on(cam);
    let by_seq: BTreeMap<u16, &Got> = got
        .iter()
        .map(|g| (g.packet.header.sequence_number, *g))
        .collect();
    assert_eq!(by_seq.len(), got.len(), "a packet was delivered twice");
    let first = *by_seq.keys().next().unwrap();
    let last = *by_seq.keys().last().unwrap();
    assert_eq!(usize::from(last - first) + 1, by_seq.len(), "a gap is left");
    let mut in_order: Vec<&Got> = by_seq.values().copied().collect();
    in_order.sort_by_key(|g| g.packet.header.sequence_number);
    let sent = sent_on(&net.peers[alice], video_ssrc(alice, 0));
    assert_continuous_suffix("bob ← alice, repaired", &in_order, &sent);
    // A repaired packet arrives after a later one did.
    let mut newest = 0u16;
    let mut late = 0;
    for g in &got {
        let seq = g.packet.header.sequence_number.wrapping_sub(first);
        if seq < newest {
            late += 1;
        }
        newest = newest.max(seq);
    }
    eprintln!(
        "memory/nack ({name}): {} packets; {lost} lost on the link, {rtx} RTX passed, {late} arrived late; rtx counters {:?}",
        got.len(),
        c.rtx
    );
    assert_eq!(
        late, lost,
        "each repaired packet arrived after its successor"
    );
}
