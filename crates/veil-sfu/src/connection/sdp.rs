//! What the SFU reads from a participant's SDP: per media section its kind, mid, track id and
//! simulcast rids, and the negotiated header-extension ids.

use std::collections::HashMap;

use webrtc::peer_connection::RTCSessionDescription;

use crate::error::SfuError;
use crate::routing::ExtIds;

pub use veil_rtc::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI, RRID_URI, TRANSPORT_CC_URI};

/// The extensions whose data the SFU forwards end to end (SFU-EXT-03). Everything else is per
/// hop (transport-cc, abs-send-time), per connection (mid, rid, repaired rid) or unknown, and is
/// not forwarded.
pub const FORWARDED_URIS: [&str; 2] = [DD_URI, AUDIO_LEVEL_URI];

/// One `m=` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video` or `application`.
    pub kind: String,
    /// `a=mid`.
    pub mid: Option<String>,
    /// The track id of `a=msid:<stream> <track>`.
    pub track_id: Option<String>,
    /// `a=rid:<id> send`, in order.
    pub send_rids: Vec<String>,
}

/// The parts of one SDP the SFU uses.
#[derive(Debug, Clone, Default)]
pub struct SdpInfo {
    /// Media sections in order.
    pub sections: Vec<MediaSection>,
    /// `a=extmap` URI → id (one id per URI under BUNDLE, RFC 8843 §9.1.2.2).
    pub extmap: HashMap<String, u8>,
}

impl SdpInfo {
    /// Parse `desc`.
    ///
    /// # Errors
    /// [`SfuError::Sdp`] if webrtc-rs cannot parse it.
    pub fn parse(desc: &RTCSessionDescription) -> Result<Self, SfuError> {
        let parsed = desc
            .unmarshal()
            .map_err(SfuError::sdp("session description"))?;
        let mut info = SdpInfo::default();
        for m in &parsed.media_descriptions {
            let mut s = MediaSection {
                kind: m.media_name.media.clone(),
                ..MediaSection::default()
            };
            for a in &m.attributes {
                let v = a.value.as_deref().unwrap_or("");
                match a.key.as_str() {
                    "mid" => s.mid = Some(v.to_owned()),
                    "msid" => s.track_id = v.split_whitespace().nth(1).map(str::to_owned),
                    "rid" => {
                        let mut it = v.split_whitespace();
                        if let (Some(id), Some("send")) = (it.next(), it.next()) {
                            s.send_rids.push(id.to_owned());
                        }
                    }
                    "extmap" => {
                        let mut it = v.split_whitespace();
                        let id = it.next().and_then(|i| i.split('/').next()?.parse().ok());
                        if let (Some(id), Some(uri)) = (id, it.next()) {
                            info.extmap.entry(uri.to_owned()).or_insert(id);
                        }
                    }
                    _ => {}
                }
            }
            info.sections.push(s);
        }
        Ok(info)
    }

    /// The ids the routing core reads.
    #[must_use]
    pub fn ext_ids(&self) -> ExtIds {
        let id = |uri: &str| self.extmap.get(uri).copied();
        ExtIds {
            mid: id(MID_URI),
            rid: id(RID_URI),
            rrid: id(RRID_URI),
            dd: id(DD_URI),
            audio_level: id(AUDIO_LEVEL_URI),
        }
    }

    /// The section that carries `track_id`.
    #[must_use]
    pub fn section_of_track(&self, track_id: &str) -> Option<&MediaSection> {
        self.sections
            .iter()
            .find(|s| s.track_id.as_deref() == Some(track_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_rids_and_extmap_are_read() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=msid:s a\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
            a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
            a=extmap:12/sendonly https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension\r\n\
            a=msid:s v\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
            a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n";
        let info = SdpInfo::parse(&RTCSessionDescription::offer(sdp.to_owned()).unwrap()).unwrap();
        assert_eq!(info.sections.len(), 2);
        let v = info.section_of_track("v").unwrap();
        assert_eq!((v.kind.as_str(), v.mid.as_deref()), ("video", Some("1")));
        assert_eq!(v.send_rids, ["q", "h", "f"]);
        let ids = info.ext_ids();
        assert_eq!(
            (ids.audio_level, ids.mid, ids.dd, ids.rid),
            (Some(1), Some(4), Some(12), None)
        );
    }
}
