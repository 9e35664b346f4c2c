//! SFU-NEG-01: what the SFU negotiates with a browser. The offer is shaped like Chromium 156's
//! (its extension URIs and ids, codecs and simulcast lines as recorded in
//! `vectors/chromium156/sim_vp8_l1t3_sframe_dd.json`; the SDP text itself is written
//! here). The answer must accept DD, audio level, transport-cc, mid, rid and repaired rid under
//! the browser's ids, allow mixed one- and two-byte extensions, and receive the three layers.

use veil_sfu::connection::sdp::SdpInfo;
use veil_sfu::{EdgeSfu, Permissions, SfuConfig};
use webrtc::peer_connection::RTCSessionDescription;

use crate::common::*;

const FINGERPRINT: &str = "sha-256 \
    6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08";

fn chromium_offer() -> String {
    let common = |mid: &str| {
        format!(
            "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Hk3e\r\n\
             a=ice-pwd:7f2Qv9LxW0aB1cD2eF3gH4iJ\r\na=ice-options:trickle\r\n\
             a=fingerprint:{FINGERPRINT}\r\na=setup:actpass\r\na=mid:{mid}\r\n"
        )
    };
    let mut s = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS s\r\n",
    );
    s += "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n";
    s += &common("0");
    s += "a=extmap:12 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
          a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
          a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
          a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
          a=sendonly\r\na=msid:s mic\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
          a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
          a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
          a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
          a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\n\
          a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n\
          a=ssrc:1001 cname:c\r\na=ssrc:1001 msid:s mic\r\n";
    s += "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n";
    s += &common("1");
    s += "a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\r\n\
          a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
          a=extmap:3 urn:3gpp:video-orientation\r\n\
          a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
          a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n\
          a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
          a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
          a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
          a=extmap:13 https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension\r\n\
          a=extmap:14 http://www.webrtc.org/experiments/rtp-hdrext/video-layers-allocation00\r\n\
          a=sendonly\r\na=msid:s cam\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
          a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\n\
          a=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
          a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
          a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_a_chromium_offer_keeps_what_a_blind_sfu_needs() {
    init_tracing();
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let session = sfu
        .join_with("neg", "chrome", &chromium_offer(), Permissions::ALL)
        .await
        .unwrap();
    let answer = session.answer;
    let info = SdpInfo::parse(&RTCSessionDescription::answer(answer.clone()).unwrap()).unwrap();
    let ids = info.ext_ids();
    // The browser's ids, for every extension the SFU reads or terminates.
    assert_eq!(
        (ids.audio_level, ids.mid, ids.rid, ids.rrid, ids.dd),
        (Some(12), Some(9), Some(10), Some(11), Some(13)),
        "{answer}"
    );
    assert_eq!(
        info.extmap
            .get("http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
        Some(&4)
    );
    let audio = &answer[..answer.find("m=video").unwrap()];
    assert!(
        audio.contains("a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid")
            && audio.contains("a=extmap:12 urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        "{audio}"
    );
    // Nothing the SFU does not use.
    assert!(!answer.contains("toffset") && !answer.contains("video-layers-allocation"));
    assert!(answer.contains("a=extmap-allow-mixed"), "{answer}");
    assert!(answer.contains("a=simulcast:recv q;h;f"), "{answer}");
    assert!(
        answer.contains("a=rtpmap:96 VP8/90000") && answer.contains("a=rtpmap:111 opus/48000/2")
    );
    assert!(
        answer.contains("a=candidate:"),
        "the answer carries the SFU's candidates"
    );
    sfu.leave("neg", "chrome").await.unwrap();
}

/// SFU-NEG-02: the SFU offers after a subscribe and is the impolite peer: while its offer
/// waits, a participant's offer is refused; an answer with no offer waiting is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_renegotiates_as_the_impolite_peer() {
    use veil_sfu::routing::MediaKind;
    use veil_sfu::{SfuError, SignalEvent};
    init_tracing();
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let room = "glare";
    let mut alice = Peer::new(room, "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, 0xA1, "mic").await;
    alice.join(&sfu).await;
    for i in 0..1000u16 {
        if sfu.metrics().tracks.get() > 0 {
            break;
        }
        mic.send(i, 0, false, &[], payload(1, 50)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Bob's signalling by hand.
    let mut bob = Peer::new(room, "bob", false).await;
    let offer = bob.offer().await;
    let mut session = sfu
        .join_with(room, "bob", &offer, Permissions::ALL)
        .await
        .unwrap();
    let track = loop {
        match tokio::time::timeout(WAIT, session.events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            SignalEvent::TrackPublished(t) => break t.track,
            _ => continue,
        }
    };
    bob.pc
        .set_remote_description(RTCSessionDescription::answer(session.answer.clone()).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        sfu.answer(room, "bob", &offer).await,
        Err(SfuError::Negotiation(_))
    ));
    sfu.subscribe(room, "bob", &track).await.unwrap();
    let sfu_offer = loop {
        match tokio::time::timeout(WAIT, session.events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            SignalEvent::Offer { sdp } => break sdp,
            _ => continue,
        }
    };
    // Glare: bob offers too; the SFU keeps its own offer.
    let glare = bob.pc.create_offer(None).await.unwrap();
    assert!(matches!(
        sfu.offer(room, "bob", &glare.sdp).await,
        Err(SfuError::Negotiation(_))
    ));
    let sdp = answer_offer(&bob.pc, sfu_offer).await;
    sfu.answer(room, "bob", &sdp).await.unwrap();
    let ssrc = loop {
        match tokio::time::timeout(WAIT, session.events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            SignalEvent::Subscribed { ssrc, .. } => break ssrc,
            _ => continue,
        }
    };
    // Now stable: bob may offer (nothing new), and gets an answer.
    let again = bob.pc.create_offer(None).await.unwrap();
    bob.pc.set_local_description(again.clone()).await.unwrap();
    let answer = sfu.offer(room, "bob", &again.sdp).await.unwrap();
    bob.pc
        .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    assert_ne!(ssrc, 0);
}

/// Descriptions webrtc-rs refuses, or accepts but cannot answer, are the participant's fault:
/// `Sdp`, so `INVALID_ARGUMENT`, never `INTERNAL` (specs/sfu.md "Errors"). Each case is a
/// crash the fuzz targets `sfu_sdp` and `sfu_signal` found (fuzz/README.md), shrunk by hand.
#[test]
fn descriptions_webrtc_rs_cannot_use_are_invalid_argument() {
    use std::time::Instant;
    use veil_sfu::SfuError;
    use veil_sfu::edge::EdgeRooms;

    let now = Instant::now();
    let local = "127.0.0.1:9".parse().unwrap();
    let mut rooms = EdgeRooms::new(local, SfuConfig::default(), now, [1; 32]);
    let offer = chromium_offer();
    let invalid_argument = |e: SfuError| {
        assert!(matches!(e, SfuError::Sdp { .. }), "{e}");
        assert_eq!(
            veil_sfu::grpc::code(&e),
            tonic::Code::InvalidArgument,
            "{e}"
        );
    };
    // Two sections whose DTLS fingerprints disagree.
    let other = FINGERPRINT.replace("6B:8B", "00:00");
    let conflicting = offer.replacen(FINGERPRINT, &other, 1);
    invalid_argument(rooms.join(now, "neg", "a", &conflicting, true).unwrap_err());
    // The one section, cut off before its codecs: a payload type without a codec.
    let cut = offer
        .replace("BUNDLE 0 1", "BUNDLE 0")
        .split("a=rtpmap:111")
        .next()
        .unwrap()
        .to_owned();
    invalid_argument(rooms.join(now, "neg", "b", &cut, true).unwrap_err());
    // A renegotiation that drops the video section (JSEP never removes one) and the audio
    // SSRC: webrtc-rs takes the description, and then finds no stream for the audio sender.
    let (id, _) = rooms.join(now, "neg", "c", &offer, true).unwrap();
    let audio_only = offer
        .split("m=video")
        .next()
        .unwrap()
        .replace("BUNDLE 0 1", "BUNDLE 0")
        .replace("a=ssrc:1001 cname:c\r\na=ssrc:1001 msid:s mic\r\n", "");
    assert!(!audio_only.contains("a=ssrc"));
    invalid_argument(rooms.offer(now, id, &audio_only).unwrap_err());
}
