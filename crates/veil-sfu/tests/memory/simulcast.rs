//! SFU-FWD-01..03, SFU-KF-03, SFU-EDGE-09 in memory: a subscriber asks for another simulcast
//! layer; the SFU asks the publisher for a key frame of that layer (a PLI naming its SSRC), and
//! switches only at that key frame, as one stream (one SSRC, sequence numbers +1 each). The
//! publisher makes key frames only when asked, so every switch proves the SFU asked.

use std::time::Duration;

use veil_sfu::edge::Observation;

use crate::common::*;

#[test]
fn a_layer_switch_waits_for_the_key_frame_the_sfu_asks_for() {
    let (mut net, alice, bob, cam) = camera_and_viewer();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sfu.layer(net.peers[bob].conn.unwrap(), cam), Some(0));

    // (rid, layer): up to f, then down to h.
    let mut switches = Vec::new();
    for (rid, layer) in [("f", 2usize), ("h", 1)] {
        let before = net.peers[bob].got.len();
        let plis_before = net.peers[alice].plis.len();
        let now = net.now();
        let asked_at = net.elapsed();
        net.sfu
            .set_layer(now, net.peers[bob].conn.unwrap(), cam, Some(rid))
            .unwrap();
        // A step up waits until the layer has fit the estimate for a second (SFU-BWE-04).
        let tag = rid.as_bytes()[0];
        assert!(net.run_until(Duration::from_secs(3), |n| {
            n.peers[bob].got[before..]
                .iter()
                .any(|g| g.packet.payload[0] == tag)
        }));
        net.run_for(Duration::from_millis(500));
        // The SFU asked alice for a key frame of that layer, once.
        let asked: Vec<&Pli> = net.peers[alice].plis[plis_before..]
            .iter()
            .filter(|p| p.media_ssrc == video_ssrc(alice, layer))
            .collect();
        assert_eq!(asked.len(), 1, "PLIs for {rid}: {asked:?}");
        assert_eq!(asked[0].track, "cam");
        // bob's packets since: the old layer up to the switch, then the new one from a key frame.
        let got = &net.peers[bob].got[before..];
        let at = got
            .iter()
            .position(|g| g.packet.payload[0] == tag)
            .unwrap_or_else(|| panic!("never switched to {rid}"));
        assert!(
            got[at].at >= asked[0].at,
            "switched before the key frame was asked"
        );
        let first = net.peers[alice]
            .sent
            .iter()
            .find(|s| s.payload == got[at].packet.payload)
            .unwrap();
        assert!(first.key, "the switch to {rid} is not at a key frame");
        // Alice made exactly one key frame on that layer since the request: the one switched at.
        let keys = net.peers[alice]
            .sent
            .iter()
            .filter(|s| s.ssrc == video_ssrc(alice, layer) && s.key && s.at >= asked_at)
            .count();
        assert_eq!(keys, 1);
        assert!(
            got[at..].iter().all(|g| g.packet.payload[0] == tag),
            "{rid} leaked back"
        );
        switches.push((rid, first.at - asked_at, at));
    }
    assert_eq!(net.sfu.layer(net.peers[bob].conn.unwrap(), cam), Some(1));

    // One stream from the first packet on, through both switches; only q, f, h in that order.
    let all: Vec<&Got> = net.peers[bob].got_on(cam);
    assert_one_stream("bob ← alice video", &all);
    let mut runs: Vec<u8> = all.iter().map(|g| g.packet.payload[0]).collect();
    runs.dedup();
    assert_eq!(runs, b"qfh");
    // And the core reported each switch (SFU-OBS-01).
    let layers: Vec<u8> = net
        .observations
        .iter()
        .filter_map(|o| match o {
            Observation::Layer { layer: Some(l), .. } => Some(*l),
            _ => None,
        })
        .collect();
    assert_eq!(layers, [0, 2, 1]);
    eprintln!(
        "memory/simulcast: {} packets; switches (rid, key frame after the ask, packet) {switches:?}; {:?}",
        all.len(),
        net.counters
    );
}
