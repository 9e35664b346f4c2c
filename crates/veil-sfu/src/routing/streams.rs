//! Learning a publisher's streams from their packets (SFU-STR-01..03).

use std::collections::HashMap;

use veil_wire::audio_level::AudioLevel;
use veil_wire::dd::{DdLatch, DependencyDescriptor};
use veil_wire::ext::Extensions;

use crate::error::SfuError;

/// Negotiated header-extension ids of one publisher's connection (from its SDP `a=extmap` lines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtIds {
    /// `urn:ietf:params:rtp-hdrext:sdes:mid`.
    pub mid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`.
    pub rid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id`.
    pub rrid: Option<u8>,
    /// The AV1 dependency descriptor.
    pub dd: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:ssrc-audio-level`.
    pub audio_level: Option<u8>,
}

/// What the SFU may read of one RTP packet: the header fields it routes on and the raw
/// header-extension block. There is deliberately no payload here.
#[derive(Debug, Clone, Copy)]
pub struct PacketMeta<'a> {
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Extension profile (`0xBEDE` or `0x100X`), if the packet has extensions.
    pub ext_profile: Option<u16>,
    /// Extension block body.
    pub ext_body: &'a [u8],
    /// The packet's length (header and payload), for measuring each layer's bitrate
    /// (SFU-BWE-02). Only the length: the payload's bytes are not here.
    pub len: usize,
}

/// What the registry learned from a packet.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The stream's rid (latched from its first packets), if it has one.
    pub rid: Option<Vec<u8>>,
    /// Whether this is an RTX stream (it carried `repaired-rtp-stream-id`).
    pub repair: bool,
    /// The packet's dependency descriptor, read against the stream's latched structure.
    pub dd: Option<DependencyDescriptor>,
    /// The packet's audio level.
    pub audio_level: Option<AudioLevel>,
}

#[derive(Debug, Default)]
struct Stream {
    rid: Option<Vec<u8>>,
    repair: bool,
    latch: DdLatch,
}

/// One publisher's streams, by SSRC.
#[derive(Debug, Default)]
pub struct StreamRegistry {
    ids: ExtIds,
    streams: HashMap<u32, Stream>,
}

impl StreamRegistry {
    /// A registry for a connection with these extension ids.
    #[must_use]
    pub fn new(ids: ExtIds) -> Self {
        Self {
            ids,
            streams: HashMap::new(),
        }
    }

    /// The rid latched for `ssrc`.
    #[must_use]
    pub fn rid(&self, ssrc: u32) -> Option<&[u8]> {
        self.streams.get(&ssrc)?.rid.as_deref()
    }

    /// Read a packet's metadata, latching rid (SFU-STR-01) and the DD structure (SFU-STR-02).
    /// RTX packets carry the DD of the packet they repair; they are read against the repaired
    /// stream's structure and never replace it (SFU-STR-03).
    ///
    /// # Errors
    /// [`SfuError::Metadata`] for an unreadable extension block or DD; the registry is
    /// unchanged then.
    pub fn ingest(&mut self, p: &PacketMeta<'_>) -> Result<Ingested, SfuError> {
        let (mut rid, mut rrid, mut dd_bytes, mut level) = (None, None, None, None);
        if let Some(profile) = p.ext_profile {
            for e in Extensions::with_profile(profile, p.ext_body)? {
                let e = e?;
                let is = |id: Option<u8>| id == Some(e.id);
                if is(self.ids.rid) {
                    rid = Some(e.data);
                } else if is(self.ids.rrid) {
                    rrid = Some(e.data);
                } else if is(self.ids.dd) {
                    dd_bytes = Some(e.data);
                } else if is(self.ids.audio_level) {
                    level = Some(AudioLevel::parse(e.data)?);
                }
            }
        }
        let stream = self.streams.entry(p.ssrc).or_default();
        if let Some(r) = rid {
            stream.rid = Some(r.to_vec());
        }
        if let Some(r) = rrid {
            stream.rid = Some(r.to_vec());
            stream.repair = true;
        }
        let repair = stream.repair;
        let rid = stream.rid.clone();
        let dd = match dd_bytes {
            None => None,
            Some(b) if repair => {
                let repaired = self
                    .streams
                    .values()
                    .find(|s| !s.repair && s.rid.is_some() && s.rid == rid)
                    .and_then(|s| s.latch.structure().cloned());
                Some(DependencyDescriptor::parse(b, repaired.as_ref())?)
            }
            Some(b) => Some(
                self.streams
                    .get_mut(&p.ssrc)
                    .expect("inserted above")
                    .latch
                    .parse(b)?,
            ),
        };
        Ok(Ingested {
            rid,
            repair,
            dd,
            audio_level: level,
        })
    }
}
