//! Chromium 156's own retransmissions (`vectors/chromium156/sim_vp8_l1t3_sframe_dd.json`,
//! RTP headers and extensions as captured, stand-in payloads) through [`RtxDemux`] (SFU-RTX-02).
//!
//! Chromium simulcasts without declaring SSRCs, so its RTX packets name the layer they repair
//! with `repaired-rtp-stream-id` on their first packets only, and webrtc-rs 0.21.1 does not
//! resolve that. Every one of them must come out as a packet of the layer its `rrid` names.

use std::collections::HashMap;

use rtc::rtp;
use rtc::shared::marshal::{Marshal, Unmarshal};
use serde_json::Value;
use veil_rtc::rtx::{Demuxed, RtxDemux, StreamIdExtensions};
use veil_rtc::{DD_URI, MID_URI, RID_URI, RRID_URI};

fn rtx_pt(v: &Value) -> u8 {
    let (pt, _) = v["rtpmap"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| c.as_str().unwrap().starts_with("rtx/"))
        .unwrap();
    pt.parse().unwrap()
}

/// The captured header as it was on the wire, parsed by webrtc-rs, with a stand-in payload: an
/// OSN derived from the RTX sequence number.
fn packet(p: &Value) -> rtp::Packet {
    let n = |k: &str| p[k].as_u64().unwrap();
    let block = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
    let profile = p["ext_profile"].as_str().unwrap().trim_start_matches("0x");
    let seq = n("seq") as u16;
    let mut raw = vec![0x90, (n("marker") as u8) << 7 | n("pt") as u8];
    raw.extend_from_slice(&seq.to_be_bytes());
    raw.extend_from_slice(&(n("ts") as u32).to_be_bytes());
    raw.extend_from_slice(&(n("ssrc") as u32).to_be_bytes());
    raw.extend_from_slice(&u16::from_str_radix(profile, 16).unwrap().to_be_bytes());
    raw.extend_from_slice(&u16::try_from(block.len() / 4).unwrap().to_be_bytes());
    raw.extend_from_slice(&block);
    raw.extend_from_slice(&seq.wrapping_mul(7).to_be_bytes());
    raw.extend_from_slice(b"stand-in");
    rtp::Packet::unmarshal(&mut &raw[..]).unwrap()
}

#[test]
fn every_chromium_retransmission_resolves_to_the_layer_its_rrid_names() {
    let v = veil_vectors::chromium("sim_vp8_l1t3_sframe_dd.json");
    let (mid, rid, rrid, dd) = (
        veil_vectors::ext_id(&v, MID_URI),
        veil_vectors::ext_id(&v, RID_URI),
        veil_vectors::ext_id(&v, RRID_URI),
        veil_vectors::ext_id(&v, DD_URI).unwrap(),
    );
    let rtx = rtx_pt(&v);
    let mut demux = RtxDemux::new(StreamIdExtensions { mid, rid, rrid });

    // What the capture itself says: each layer's SSRC (from rid), each RTX SSRC's layer (rrid).
    let mut layer_of_ssrc: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut repairs: HashMap<u32, Vec<u8>> = HashMap::new();
    let (mut unwrapped, mut without_rrid, mut early) = (0, 0, 0);
    for p in v["packets"].as_array().unwrap() {
        let mut pkt = packet(p);
        let original = pkt.clone();
        let ext = |id: Option<u8>| id.and_then(|id| original.header.get_extension(id));
        if let Some(r) = ext(rid) {
            layer_of_ssrc.insert(original.header.ssrc, r.to_vec());
        }
        if let Some(r) = ext(rrid) {
            repairs.insert(original.header.ssrc, r.to_vec());
        }
        let got = demux.process(&mut pkt);
        if original.header.payload_type != rtx {
            assert_eq!(
                got,
                Demuxed::Media,
                "seq {}",
                original.header.sequence_number
            );
            assert_eq!(pkt, original);
            continue;
        }
        let named = &repairs[&original.header.ssrc];
        if got == Demuxed::Unresolved {
            // Chromium probes on a layer's RTX stream before the layer's first packet.
            assert!(
                !layer_of_ssrc.values().any(|l| l == named),
                "RTX packet {} of a known layer not resolved",
                original.header.sequence_number
            );
            assert_eq!(pkt, original, "left as it was");
            early += 1;
            continue;
        }
        let Demuxed::Unwrapped(primary) = got else {
            panic!("RTX packet {}: {got:?}", original.header.sequence_number);
        };
        unwrapped += 1;
        without_rrid += usize::from(ext(rrid).is_none());
        assert_eq!(
            &layer_of_ssrc[&primary.ssrc], named,
            "the layer its rrid names"
        );
        assert_eq!(pkt.header.ssrc, primary.ssrc);
        assert_eq!(pkt.header.payload_type, 96, "VP8, the rtx codec's apt");
        assert_eq!(
            pkt.header.sequence_number,
            original.header.sequence_number.wrapping_mul(7),
            "the OSN"
        );
        assert_eq!(&pkt.payload[..], b"stand-in");
        assert_eq!(pkt.header.get_extension(rrid.unwrap()), None);
        assert_eq!(
            pkt.header.get_extension(dd),
            original.header.get_extension(dd)
        );
        assert_eq!(pkt.header.timestamp, original.header.timestamp);
        // And it goes on the wire again as it is.
        let back = rtp::Packet::unmarshal(&mut &pkt.marshal().unwrap()[..]).unwrap();
        assert_eq!(
            (back.header.extensions, back.payload),
            (pkt.header.extensions.clone(), pkt.payload.clone())
        );
    }
    eprintln!(
        "{unwrapped} RTX packets unwrapped, {without_rrid} of them without rrid; \
         {early} before their layer's first packet"
    );
    // The capture has 167 RTX packets: 137 are unwrapped (83 of them sent after Chromium stopped
    // adding rrid), 30 are probes sent before their layer's first packet.
    let total = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pt"].as_u64() == Some(u64::from(rtx)))
        .count();
    assert_eq!(unwrapped + early, total);
    assert!(unwrapped > total / 2 && without_rrid > 0 && early < total / 4);
    assert_eq!(repairs.len(), 3, "one RTX stream per layer");
}
