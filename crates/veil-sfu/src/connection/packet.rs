//! How packets cross between webrtc-rs and the routing core: what the core reads of a received
//! packet ([`packet_meta`]) and the copy a subscriber gets ([`rewrite`]). Neither reads a payload
//! byte (SFU-BLIND-03): the payload's `Bytes` are handed through, shared, not copied.

use rtc::rtp;
use veil_wire::ext::{Extension, ExtensionForm, form_for, write_block};

use crate::routing::{Forward, PacketMeta};

/// Most extension elements the SFU reads or forwards per packet.
const MAX_ELEMENTS: usize = 32;

/// What the routing core reads of `p`, its extension block written into `block`; None if the
/// elements do not make a block.
pub(crate) fn packet_meta<'a>(
    p: &rtp::Packet,
    block: &'a mut [u8; 1500],
) -> Option<PacketMeta<'a>> {
    // The core reads the extension block as the wire carries it; rebuild it from the elements
    // webrtc-rs parsed (same elements, smallest form).
    let mut els = [Extension { id: 0, data: &[] }; MAX_ELEMENTS];
    let n = p.header.extensions.len().min(MAX_ELEMENTS);
    for (slot, e) in els.iter_mut().zip(&p.header.extensions) {
        *slot = Extension {
            id: e.id,
            data: &e.payload,
        };
    }
    let (ext_profile, len) = if n == 0 {
        (None, 0)
    } else {
        let (profile, len) = write_block(&els[..n], block).ok()?;
        (Some(profile), len)
    };
    Some(PacketMeta {
        ssrc: p.header.ssrc,
        seq: p.header.sequence_number,
        timestamp: p.header.timestamp,
        marker: p.header.marker,
        ext_profile,
        ext_body: &block[..len],
        // The header as received (fixed part, CSRCs, extension block) and the payload's length.
        len: p.payload.len() + 12 + 4 * p.header.csrc.len() + if n == 0 { 0 } else { 4 + len },
    })
}

/// The copy of `p` for one subscriber: SSRC, payload type, sequence number, timestamp and
/// extension ids rewritten (SFU-FWD-03, SFU-EXT-01..03); the payload is the same bytes, shared,
/// not copied (SFU-BLIND-03). CSRCs and padding are per hop and not forwarded.
pub(crate) fn rewrite(p: &rtp::Packet, f: &Forward) -> rtp::Packet {
    let mut extensions = Vec::with_capacity(p.header.extensions.len());
    for e in &p.header.extensions {
        if let Some(id) = f.ext.map_id(e.id)
            && extensions.len() < MAX_ELEMENTS
        {
            extensions.push(rtp::header::Extension {
                id,
                payload: e.payload.clone(),
            });
        }
    }
    let mut views = [Extension { id: 0, data: &[] }; MAX_ELEMENTS];
    for (v, e) in views.iter_mut().zip(&extensions) {
        *v = Extension {
            id: e.id,
            data: &e.payload,
        };
    }
    let extension_profile = match form_for(&views[..extensions.len()]) {
        ExtensionForm::OneByte => rtp::header::EXTENSION_PROFILE_ONE_BYTE,
        ExtensionForm::TwoByte { .. } => rtp::header::EXTENSION_PROFILE_TWO_BYTE,
    };
    // webrtc-rs keeps the block's padding in this field and updates it as elements are added
    // (the TWCC sender adds transport-cc on the way out, SFU-BWE-01); it must start right, or
    // the packet's size and its marshalled bytes disagree and SRTP refuses it.
    let element_header = match extension_profile {
        rtp::header::EXTENSION_PROFILE_ONE_BYTE => 1,
        _ => 2,
    };
    let block_len: usize = extensions
        .iter()
        .map(|e| element_header + e.payload.len())
        .sum();
    let extensions_padding = (4 - block_len % 4) % 4;
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            padding: false,
            extension: !extensions.is_empty(),
            // The packet's own, or the end of a thinned temporal unit (SFU-SVC-06).
            marker: f.marker,
            payload_type: f.payload_type,
            sequence_number: f.seq,
            timestamp: f.timestamp,
            ssrc: f.ssrc,
            csrc: Vec::new(),
            extension_profile,
            extensions,
            extensions_padding,
        },
        payload: p.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::routing::ExtMap;

    #[test]
    fn the_subscribers_copy_carries_the_cores_marker() {
        // SFU-SVC-06: a thinned scalable stream ends the subscriber's temporal unit where the
        // publisher's packet had no marker, and a packet that did is no longer the unit's end.
        let mut p = rtp::Packet::default();
        p.header.sequence_number = 7;
        p.payload = vec![1, 2, 3].into();
        for (publisher, core) in [(false, true), (true, false), (true, true)] {
            p.header.marker = publisher;
            let f = Forward {
                subscriber: 1,
                ssrc: 42,
                seq: 100,
                timestamp: 9000,
                payload_type: 96,
                ext: Arc::new(ExtMap::new(&[])),
                switched: false,
                marker: core,
                decode_target: None,
            };
            let out = rewrite(&p, &f);
            assert_eq!(out.header.marker, core);
            assert_eq!(
                (
                    out.header.ssrc,
                    out.header.sequence_number,
                    &out.payload[..]
                ),
                (42, 100, &[1u8, 2, 3][..])
            );
        }
    }
}
