//! What tests check of what arrived.

use bytes::Bytes;

use super::{Client, Got, Sent};

/// The packets `p` sent on `ssrc`.
pub fn sent_on(p: &Client, ssrc: u32) -> Vec<&Sent> {
    p.sent.iter().filter(|s| s.ssrc == ssrc).collect()
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

/// Where `got` has holes against `sent`: every packet of `got` was sent, in `sent`'s order,
/// and these ranges of `sent` (after `got`'s first) never arrived.
pub fn holes(what: &str, got: &[&Got], sent: &[&Sent]) -> Vec<std::ops::Range<usize>> {
    let mut at = Vec::with_capacity(got.len());
    for g in got {
        let i = sent
            .iter()
            .position(|s| s.payload == g.packet.payload)
            .unwrap_or_else(|| panic!("{what}: a payload that was never sent"));
        at.push(i);
    }
    let mut out = Vec::new();
    for w in at.windows(2) {
        assert!(w[1] > w[0], "{what}: out of order");
        if w[1] > w[0] + 1 {
            out.push(w[0] + 1..w[1]);
        }
    }
    out
}

/// The ICE ufrag an SDP names.
pub fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned()
}
