//! The `sfu_sdp` target: session descriptions from a participant, as the SFU's sans-I/O edge
//! reads them ([`EdgeRooms`]): the join offer (SDP parsing by webrtc-rs, then
//! [`SdpInfo::parse`] and the answer), a renegotiation offer, and an answer to the SFU's own
//! offer (SFU-NEG-*). Input: up to three SDP texts separated by NUL bytes.
//!
//! Asserts, besides "no panic": a refusal is never `INTERNAL` (bad input is the caller's
//! fault: `SfuError::Sdp`, `Negotiation`, …, specs/sfu.md "Errors"), and every answer the SFU
//! writes parses again.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use tonic::Code;
use veil_sfu::SfuConfig;
use veil_sfu::connection::sdp::SdpInfo;
use veil_sfu::edge::EdgeRooms;
use veil_sfu::grpc::code;
use webrtc::peer_connection::RTCSessionDescription;

/// A Chromium-shaped offer (audio, and VP8 simulcast with three rids): a seed, and what
/// `sfu_signal` joins with.
pub const OFFER: &str = include_str!("../fixtures/offer.sdp");

fn refused(what: &str, e: &veil_sfu::SfuError) {
    assert_ne!(code(e), Code::Internal, "{what} refused with INTERNAL: {e}");
}

/// The target.
pub fn sfu_sdp(data: &[u8]) {
    static T0: OnceLock<Instant> = OnceLock::new();
    let now = *T0.get_or_init(Instant::now);
    let mut parts = data.splitn(3, |b| *b == 0).map(String::from_utf8_lossy);
    let Some(offer) = parts.next() else { return };
    let local: SocketAddr = "127.0.0.1:9".parse().expect("an address");
    let mut rooms = EdgeRooms::new(local, SfuConfig::default(), now, [7; 32]);
    let (id, answer) = match rooms.join(now, "fuzz", "p", &offer, true) {
        Ok(j) => j,
        Err(e) => return refused("join", &e),
    };
    let ours = RTCSessionDescription::answer(answer).expect("our answer is an answer");
    SdpInfo::parse(&ours).expect("the SFU's answer parses");
    if let Some(again) = parts.next() {
        match rooms.offer(now, id, &again) {
            Ok(answer) => {
                let ours = RTCSessionDescription::answer(answer).expect("an answer");
                SdpInfo::parse(&ours).expect("the SFU's answer parses");
            }
            Err(e) => refused("renegotiation offer", &e),
        }
    }
    if let Some(answer) = parts.next()
        && let Err(e) = rooms.answer(now, id, &answer)
    {
        refused("answer", &e);
    }
    rooms.remove(now, id);
}
