//! What tests check of what arrived.

use bytes::Bytes;
use veil_sfu::routing::{MediaKind, TrackId};

use super::{Client, Got, Net, Sent, audio_ssrc, video_ssrc};

/// The packets `p` sent on `ssrc`.
pub fn sent_on(p: &Client, ssrc: u32) -> Vec<&Sent> {
    p.sent.iter().filter(|s| s.ssrc == ssrc).collect()
}

/// One publisher's track as one subscriber received it ([`flow`]).
pub struct Flow<'a> {
    /// "sub ← publ Kind", for messages.
    pub what: String,
    /// The track.
    pub track: TrackId,
    /// The publisher's SSRC for it (video: layer 0).
    pub ssrc: u32,
    /// What the subscriber received on it.
    pub got: Vec<&'a Got>,
    /// What the publisher sent on `ssrc`.
    pub sent: Vec<&'a Sent>,
    /// Where in `sent` what arrived starts.
    pub k: usize,
}

/// `publ`'s `kind` track at `sub`, checked: `sub` is subscribed to it, and what arrived is a
/// continuous suffix of what `publ` sent ([`assert_continuous_suffix`]).
pub fn flow(net: &Net, sub: usize, publ: usize, kind: MediaKind) -> Flow<'_> {
    let ssrc = match kind {
        MediaKind::Audio => audio_ssrc(publ),
        MediaKind::Video => video_ssrc(publ, 0),
    };
    let track = net.track(publ, kind);
    assert!(net.subscribed(sub, track));
    let what = format!(
        "{} ← {} {kind:?}",
        net.peers[sub].name, net.peers[publ].name
    );
    let got = net.peers[sub].got_on(track);
    let sent = sent_on(&net.peers[publ], ssrc);
    let k = assert_continuous_suffix(&what, &got, &sent);
    Flow {
        what,
        track,
        ssrc,
        got,
        sent,
        k,
    }
}

/// `got` is what was `sent` from some packet on, every one after it, in order, byte for byte,
/// on one SSRC with sequence numbers +1 each: one continuous stream. Returns where in `sent` it
/// starts.
pub fn assert_continuous_suffix(what: &str, got: &[&Got], sent: &[&Sent]) -> usize {
    assert!(!got.is_empty(), "{what}: nothing arrived");
    let first = &got[0].packet.payload;
    let k = sent
        .iter()
        .position(|s| s.payload == *first)
        .unwrap_or_else(|| panic!("{what}: the first payload was never sent"));
    let want: Vec<&Bytes> = sent[k..].iter().map(|s| &s.payload).collect();
    let have: Vec<&Bytes> = got.iter().map(|g| &g.packet.payload).collect();
    assert_eq!(
        have.len(),
        want.len(),
        "{what}: {} of {} arrived",
        have.len(),
        want.len()
    );
    assert!(have == want, "{what}: payloads differ");
    assert_one_stream(what, got);
    k
}

/// One SSRC, sequence numbers +1 each, timestamps never back.
pub fn assert_one_stream(what: &str, got: &[&Got]) {
    for w in got.windows(2) {
        let (a, b) = (&w[0].packet.header, &w[1].packet.header);
        assert_eq!(a.ssrc, b.ssrc, "{what}: SSRC changed");
        assert_eq!(
            b.sequence_number,
            a.sequence_number.wrapping_add(1),
            "{what}: not contiguous"
        );
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) as i32 >= 0,
            "{what}: timestamp back"
        );
    }
}

/// The ICE ufrag an SDP names.
pub fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned()
}
