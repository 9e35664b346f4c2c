//! Keeps a simulcast publisher's layers bound across renegotiation (SFU-NEG-03).
//!
//! webrtc-rs `rtc` 0.21.1 learns a rid layer's SSRC from the `mid`/`rid` header extensions of
//! its first packets and records it in the receiver's track. Every remote description it is
//! handed afterwards rebuilds the receivers of the sections it describes
//! (`RTCPeerConnection::start_rtp`, `peer_connection/internal.rs`): a section with rids gets a
//! new track whose codings have `ssrc: None`, so the SSRCs learnt are forgotten. A webrtc-rs
//! sender puts mid/rid on every packet and is bound again by its next one; Chromium stops
//! sending them once a receiver report has acknowledged the SSRC, so after the first
//! renegotiation (every subscription is an SFU offer) nothing of its layers reaches the SFU.
//!
//! The lever is what rtc reads there: it builds a receiver's track for a section only when the
//! section names its track (`a=msid`, or `a=ssrc … msid:`); a section that names none is left
//! as it was. So a [`RidLatch`] remembers, per connection, each rid section of the remote
//! descriptions so far (mid, msid, rids), and in a later description takes the track-naming
//! lines out of a section that says the same again: rtc keeps that receiver, its track, its
//! bound SSRCs and its interceptor bindings. A section that changes (another track, other
//! rids, a new mid) goes through untouched, and rtc sets it up afresh as before.
//!
//! Only the copy handed to rtc changes: the SFU reads the participant's SDP as sent
//! ([`super::sdp::SdpInfo`]), and the participant never sees the difference.

use std::borrow::Cow;
use std::collections::HashMap;

/// What a rid section said: its track and its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RidSection {
    msid: String,
    rids: Vec<String>,
}

/// Per connection: the rid sections of the remote descriptions rtc has been handed.
#[derive(Debug, Default)]
pub(crate) struct RidLatch {
    by_mid: HashMap<String, RidSection>,
}

/// The lines of one `m=` section that name its track to rtc.
fn names_track(line: &str) -> bool {
    line.starts_with("a=msid:") || line.starts_with("a=ssrc:") || line.starts_with("a=ssrc-group:")
}

/// A remote description prepared by [`RidLatch::remote`]: what to hand rtc, and what to
/// remember once rtc took it ([`RidLatch::taken`]).
#[derive(Debug)]
pub(crate) struct Remote<'a> {
    /// The description for rtc.
    pub(crate) sdp: Cow<'a, str>,
    sections: Vec<(String, RidSection)>,
}

impl RidLatch {
    /// The remote description to hand rtc for `sdp`: `sdp` itself, or (for a section rtc has
    /// already set up with the same mid, track and rids) without that section's `a=msid`,
    /// `a=ssrc` and `a=ssrc-group` lines.
    pub(crate) fn remote<'a>(&self, sdp: &'a str) -> Remote<'a> {
        // Sections by line range: [start, end) of each `m=` section, the session part first.
        let lines: Vec<&str> = sdp.split_inclusive('\n').collect();
        let mut starts: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("m="))
            .map(|(i, _)| i)
            .collect();
        starts.push(lines.len());
        let mut keep = vec![true; lines.len()];
        let mut changed = false;
        let mut sections = Vec::new();
        for w in starts.windows(2) {
            let section = &lines[w[0]..w[1]];
            let Some((mid, said)) = read_section(section) else {
                continue;
            };
            if self.by_mid.get(&mid) == Some(&said) {
                for (i, l) in section.iter().enumerate() {
                    if names_track(l) {
                        keep[w[0] + i] = false;
                        changed = true;
                    }
                }
            }
            sections.push((mid, said));
        }
        let sdp = if changed {
            Cow::Owned(
                lines
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(l, _)| *l)
                    .collect(),
            )
        } else {
            Cow::Borrowed(sdp)
        };
        Remote { sdp, sections }
    }

    /// rtc took `remote`: its rid sections are what rtc's receivers now hold.
    pub(crate) fn taken(&mut self, remote: Remote<'_>) {
        self.by_mid.extend(remote.sections);
    }
}

/// The mid of a section that sends rids, and what it says; None for any other section.
fn read_section(section: &[&str]) -> Option<(String, RidSection)> {
    let (mut mid, mut msid, mut rids) = (None, None, Vec::new());
    for l in section.iter().map(|l| l.trim_end()) {
        if let Some(v) = l.strip_prefix("a=mid:") {
            mid = Some(v.to_owned());
        } else if let Some(v) = l.strip_prefix("a=msid:") {
            msid = Some(v.to_owned());
        } else if let Some(v) = l.strip_prefix("a=rid:") {
            let mut it = v.split_whitespace();
            if let (Some(id), Some("send")) = (it.next(), it.next()) {
                rids.push(id.to_owned());
            }
        }
    }
    if rids.is_empty() {
        return None;
    }
    Some((
        mid?,
        RidSection {
            msid: msid.unwrap_or_default(),
            rids,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Chromium-like description: audio (one SSRC) and video with three rids.
    fn sdp(video_msid: &str, rids: &[&str], version: u32) -> String {
        let mut s = format!(
            "v=0\r\no=- 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s a\r\n\
             a=rtpmap:111 opus/48000/2\r\na=ssrc:11 cname:x\r\na=ssrc:11 msid:s a\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=msid:{video_msid}\r\n\
             a=rtpmap:96 VP8/90000\r\n"
        );
        for r in rids {
            s.push_str(&format!("a=rid:{r} send\r\n"));
        }
        s.push_str(&format!("a=simulcast:send {}\r\n", rids.join(";")));
        s
    }

    #[test]
    fn the_first_description_goes_through_whole() {
        let latch = RidLatch::default();
        let first = sdp("s v", &["q", "h", "f"], 1);
        assert!(matches!(latch.remote(&first).sdp, Cow::Borrowed(_)));
    }

    /// SFU-NEG-03: a later description that says the same of a rid section loses that
    /// section's track-naming lines, and only those; every other section is untouched.
    #[test]
    fn a_repeated_rid_section_stops_naming_its_track() {
        let mut latch = RidLatch::default();
        take(&mut latch, &sdp("s v", &["q", "h", "f"], 1));
        let again = sdp("s v", &["q", "h", "f"], 2);
        let out = latch.remote(&again).sdp;
        let video = out.split("m=video").nth(1).unwrap();
        assert!(!video.contains("a=msid:"), "{video}");
        assert!(video.contains("a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n"));
        assert!(video.contains("a=simulcast:send q;h;f\r\n"));
        // Audio (no rids) keeps its lines; nothing else moved.
        let audio = out.split("m=video").next().unwrap();
        assert!(audio.contains("a=msid:s a\r\n") && audio.contains("a=ssrc:11 msid:s a\r\n"));
        assert_eq!(out.len(), again.len() - "a=msid:s v\r\n".len());
    }

    /// A section that changes is set up afresh by rtc: another track, or other rids.
    #[test]
    fn a_changed_rid_section_goes_through() {
        let mut latch = RidLatch::default();
        take(&mut latch, &sdp("s v", &["q", "h", "f"], 1));
        let other_track = sdp("s w", &["q", "h", "f"], 2);
        assert_eq!(take(&mut latch, &other_track), other_track);
        let fewer = sdp("s w", &["q", "h"], 3);
        assert_eq!(take(&mut latch, &fewer), fewer);
        // And the new one is what counts from then on.
        let out = take(&mut latch, &sdp("s w", &["q", "h"], 4));
        assert!(!out.split("m=video").nth(1).unwrap().contains("a=msid:"));
    }

    /// A description rtc refused is not remembered: the next one that says the same is still
    /// set up afresh.
    #[test]
    fn a_refused_description_is_not_remembered() {
        let mut latch = RidLatch::default();
        take(&mut latch, &sdp("s v", &["q", "h", "f"], 1));
        let refused = sdp("s w", &["q", "h", "f"], 2);
        let _ = latch.remote(&refused);
        assert!(matches!(latch.remote(&refused).sdp, Cow::Borrowed(_)));
    }

    /// `sdp` handed to rtc, which took it.
    fn take(latch: &mut RidLatch, sdp: &str) -> String {
        let r = latch.remote(sdp);
        let out = r.sdp.clone().into_owned();
        latch.taken(r);
        out
    }
}
