//! SFU-KF-01, SFU-KF-03, SFU-EDGE-07 in memory: a subscriber's PLIs end at the SFU, which asks
//! the publisher itself, on the layer the subscriber gets, at most once per `key_frame_interval`
//! (300 ms) however many ask; the publisher's key frame reaches the subscriber.

use std::time::Duration;

use crate::common::*;

#[test]
fn a_burst_of_plis_reaches_the_publisher_as_one_pli_from_the_sfu() {
    let (mut net, alice, bob, cam) = camera_and_viewer();
    net.run_for(Duration::from_secs(1));
    // A slow encoder: it hears requests but makes no key frame (a key frame would reset the
    // throttle, SFU-KF-02).
    net.peers[alice].answer_plis = false;
    let c0 = net.take_counters();
    assert_eq!(c0.subscriber_key_frame_requests, 0);

    // Ten PLIs from bob within 100 ms, then ten more 400 ms later.
    let plis_before = net.peers[alice].plis.len();
    let start = net.elapsed();
    for round in 0..2 {
        for _ in 0..10 {
            let now = net.now();
            net.peers[bob].send_pli(now, cam);
            net.run_for(Duration::from_millis(10));
        }
        if round == 0 {
            net.run_for(Duration::from_millis(300));
        }
    }
    net.run_for(Duration::from_millis(500));
    let c = net.take_counters();
    let at_alice: Vec<&Pli> = net.peers[alice].plis[plis_before..].iter().collect();
    eprintln!(
        "memory/pli: bob sent 20; the SFU heard {}, sent {}; alice got {:?}",
        c.subscriber_key_frame_requests,
        c.publisher_key_frame_requests,
        at_alice.iter().map(|p| p.at - start).collect::<Vec<_>>()
    );
    assert_eq!(c.subscriber_key_frame_requests, 20);
    // One per burst: the first of each; the second burst is 400 ms after the first.
    assert_eq!(c.publisher_key_frame_requests, 2);
    assert_eq!(at_alice.len(), 2);
    for p in &at_alice {
        // A PLI from the SFU about the layer bob gets, q: not bob's SSRC, not another layer.
        assert_eq!(
            (p.track.as_str(), p.media_ssrc),
            ("cam", video_ssrc(alice, 0))
        );
    }
    assert!(at_alice[1].at - at_alice[0].at >= Duration::from_millis(300));

    // With a quick encoder the key frame follows, and reaches bob.
    net.peers[alice].answer_plis = true;
    let before = net.peers[bob].got.len();
    let now = net.now();
    net.peers[bob].send_pli(now, cam);
    net.run_for(Duration::from_millis(100));
    let keys: Vec<&Got> = net.peers[bob].got[before..]
        .iter()
        .filter(|g| {
            net.peers[alice]
                .sent
                .iter()
                .any(|s| s.key && s.payload == g.packet.payload)
        })
        .collect();
    assert_eq!(keys.len(), 1, "one key frame reached bob");
}
