//! SFU-EDGE-16, SFU-FWD-07 in memory: a participant who stays while others come and go. Each
//! newcomer's tracks reach it on the transceivers the previous one's tracks used, so its
//! session does not grow: the same m-sections, the same SSRCs, and sequence numbers that go
//! on from where the previous track stopped, so that its jitter buffer sees one stream.

use std::time::Duration;

use veil_sfu::edge::EdgeRoomEvent;
use veil_sfu::routing::MediaKind;

use crate::common::*;

/// The m-sections of the SFU's last offer to connection `to`.
fn sections_offered(net: &Net, to: usize) -> usize {
    let conn = net.peers[to].conn.unwrap();
    net.events
        .iter()
        .rev()
        .find_map(|(_, e)| match e {
            EdgeRoomEvent::Offer { to, sdp } if *to == conn => Some(sdp.matches("\nm=").count()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_stayers_session_reuses_the_m_sections_of_those_who_left() {
    let mut net = Net::new(config());
    let alice = net.add_peer("alice", Publish::AUDIO);
    net.join(alice, "room");
    net.connect(&[alice]);
    // Per kind, per round: the SSRC alice heard it on, its first and last sequence numbers.
    let mut heard: Vec<[(u32, u16, u16); 2]> = Vec::new();
    let mut sections = Vec::new();
    for round in 0..6 {
        let c = net.add_peer(&format!("guest{round}"), Publish::BOTH);
        net.join(c, "room");
        net.connect(&[c]);
        net.start_media(c);
        assert!(net.run_until(Duration::from_secs(1), |n| n.tracks_of(c).len() == 2));
        let tracks = [MediaKind::Audio, MediaKind::Video].map(|k| net.track(c, k));
        for t in tracks {
            net.subscribe(alice, t);
        }
        net.run_for(Duration::from_millis(600));
        heard.push(tracks.map(|t| {
            let got = net.peers[alice].got_on(t);
            assert!(
                got.len() > 10,
                "round {round}: {} packets of {t:?}",
                got.len()
            );
            let ssrc = got[0].packet.header.ssrc;
            assert!(got.iter().all(|g| g.packet.header.ssrc == ssrc));
            for w in got.windows(2) {
                let (a, b) = (
                    w[0].packet.header.sequence_number,
                    w[1].packet.header.sequence_number,
                );
                assert_eq!(
                    b,
                    a.wrapping_add(1),
                    "round {round}: contiguous within {t:?}"
                );
            }
            let seq = |g: &Got| g.packet.header.sequence_number;
            (ssrc, seq(got[0]), seq(got[got.len() - 1]))
        }));
        sections.push(sections_offered(&net, alice));
        // The guest leaves; alice is offered a session without its tracks.
        let now = net.now();
        net.sfu.remove(now, net.peers[c].conn.unwrap());
        net.vanish(c);
        net.run_for(Duration::from_millis(200));
        assert_eq!(net.sfu.subscriptions(), 0, "round {round}");
    }
    // One m-section of her own and one per kind she receives, whoever sends.
    assert!(sections.iter().all(|&n| n == 3), "{sections:?}");
    for (round, pair) in heard.windows(2).enumerate() {
        for (k, (&(ssrc, _, last), &(next_ssrc, first, _))) in
            pair[0].iter().zip(&pair[1]).enumerate()
        {
            assert_eq!(next_ssrc, ssrc, "round {}: kind {k} moved SSRC", round + 1);
            assert_eq!(
                first,
                last.wrapping_add(1),
                "round {}: kind {k} starts where the last guest's track stopped",
                round + 1
            );
        }
    }
}
