//! Chromium 156's own simulcast traffic through the routing core (SFU-FWD-01..06, SFU-STR-01..03):
//! the RTP headers and extensions of `vectors/chromium156/` (stand-in payloads), replayed
//! while a subscriber asks for q, then f, then h.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use veil_sfu::routing::{Decision, ExtIds, LayerForwarder, PacketMeta, StreamRegistry};

const DD_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

fn ext_ids(v: &Value, with_dd: bool) -> ExtIds {
    let id = |uri: &str| veil_vectors::ext_id(v, uri);
    ExtIds {
        mid: id("urn:ietf:params:rtp-hdrext:sdes:mid"),
        rid: id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        rrid: id("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
        dd: if with_dd { id(DD_URI) } else { None },
        audio_level: id("urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    }
}

/// One forwarded packet, as the subscriber sees it.
#[derive(Debug)]
struct Out {
    layer: u8,
    seq: u16,
    ts: u32,
    frame_number: Option<u16>,
    start_of_frame: bool,
    switched: bool,
    key_frame_start: bool,
}

/// Replay the video packets of `file`; `plan` gives (fraction of the video packets, target layer).
fn replay(file: &str, with_dd: bool, plan: &[(f64, u8)]) -> (Vec<Out>, LayerForwarder, usize) {
    let v = veil_vectors::chromium(file);
    let mut reg = StreamRegistry::new(ext_ids(&v, with_dd));
    let mut fwd = LayerForwarder::new(0x5EED, 90_000);
    let video_pt: Vec<String> = v["rtpmap"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.as_str().unwrap().starts_with("VP8/"))
        .map(|(pt, _)| pt.clone())
        .collect();
    let packets: Vec<&Value> = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| video_pt.contains(&p["pt"].to_string()))
        .collect();
    let layer_of = |rid: Option<&[u8]>| match rid {
        Some(b"q") | None => 0u8,
        Some(b"h") => 1,
        Some(b"f") => 2,
        Some(other) => panic!("unexpected rid {other:?}"),
    };
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        for &(at, layer) in plan {
            if i == (at * packets.len() as f64) as usize {
                fwd.set_target(Some(layer));
            }
        }
        let profile = u16::from_str_radix(
            p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let meta = PacketMeta {
            ssrc: p["ssrc"].as_u64().unwrap() as u32,
            seq: p["seq"].as_u64().unwrap() as u16,
            timestamp: p["ts"].as_u64().unwrap() as u32,
            marker: p["marker"].as_u64() == Some(1),
            ext_profile: Some(profile),
            ext_body: &body,
            len: 0,
        };
        let ing = reg.ingest(&meta).unwrap();
        assert!(!ing.repair, "RTX has its own payload type");
        let layer = layer_of(ing.rid.as_deref());
        let now = Duration::from_millis(4 * i as u64);
        if let Decision::Forward {
            ssrc,
            seq,
            timestamp,
            switched,
        } = fwd.on_packet(layer, meta.seq, meta.timestamp, ing.dd.as_ref(), now)
        {
            assert_eq!(ssrc, 0x5EED);
            out.push(Out {
                layer,
                seq,
                ts: timestamp,
                frame_number: ing.dd.as_ref().map(|d| d.frame_number),
                start_of_frame: ing.dd.as_ref().is_some_and(|d| d.start_of_frame),
                switched,
                key_frame_start: ing.dd.as_ref().is_some_and(|d| d.is_key_frame_start()),
            });
        }
    }
    (out, fwd, packets.len())
}

/// Contiguous sequence numbers, non-decreasing timestamps (strictly increasing between frames).
fn assert_continuous(out: &[Out]) {
    for w in out.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence gap: {:?} → {:?}",
            w[0],
            w[1]
        );
        let d = w[1].ts.wrapping_sub(w[0].ts) as i32;
        assert!(d >= 0, "timestamp went back: {:?} → {:?}", w[0], w[1]);
    }
}

#[test]
fn simulcast_switches_land_on_key_frames_and_the_output_is_one_clean_stream() {
    let (out, fwd, n) = replay(
        "sim_vp8_l1t3_sframe_dd.json",
        true,
        &[(0.0, 0), (0.33, 2), (0.66, 1)],
    );
    // Layers in the output, in order: q, then f, then h, each once (no leak of a dropped layer).
    let mut runs: Vec<u8> = out.iter().map(|o| o.layer).collect();
    runs.dedup();
    assert_eq!(runs, vec![0, 2, 1]);
    // Every switch is a key frame's first packet.
    let switches: Vec<&Out> = out.iter().filter(|o| o.switched).collect();
    assert_eq!(switches.len(), 3);
    assert!(
        switches
            .iter()
            .all(|o| o.key_frame_start && o.start_of_frame)
    );
    assert_continuous(&out);
    // DD frame numbers strictly increase frame by frame across the whole output.
    let frames: Vec<u16> = out
        .iter()
        .filter(|o| o.start_of_frame)
        .map(|o| o.frame_number.unwrap())
        .collect();
    assert!(
        frames
            .windows(2)
            .all(|w| (w[1].wrapping_sub(w[0]) as i16) > 0),
        "{frames:?}"
    );
    let s = fwd.stats();
    assert_eq!(s.switches, 3);
    assert!(
        s.waiting_for_key_frame > 0,
        "switches had to wait for key frames"
    );
    assert!(s.dropped_not_selected > 0);
    assert_eq!(s.forwarded as usize, out.len());
    assert!(out.len() > n / 5, "{} of {n} packets forwarded", out.len());
}

#[test]
fn a_single_vp8_stream_with_dd_is_forwarded_whole() {
    let v = veil_vectors::chromium("vp8_sframe_dd.json");
    let video = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pt"] == 96)
        .count();
    let (out, fwd, n) = replay("vp8_sframe_dd.json", true, &[(0.0, 0)]);
    assert_eq!(n, video);
    // It starts at the first key frame (the capture begins with one) and forwards every packet.
    assert_eq!(out.len(), n);
    assert!(out[0].key_frame_start);
    assert_continuous(&out);
    assert_eq!(fwd.stats().switches, 1);
}

#[test]
fn without_dd_the_sfu_forwards_but_refuses_to_switch_and_counts_why() {
    // The no-DD capture: one stream, forwarded whole from its first packet.
    let (out, fwd, n) = replay("vp8_sframe.json", true, &[(0.0, 0)]);
    assert_eq!(out.len(), n);
    assert_continuous(&out);
    assert_eq!(fwd.stats().started_without_dd, 1);

    // Simulcast without DD negotiated (what Chromium does when DD is stopped): the subscriber
    // asks for f, but key frames cannot be recognised, so q keeps flowing and the counter says
    // why.
    let (out, fwd, _) = replay("sim_vp8_l1t3_sframe_dd.json", false, &[(0.0, 0), (0.5, 2)]);
    assert!(
        out.iter().all(|o| o.layer == 0),
        "no packet of another layer"
    );
    assert_continuous(&out);
    let s = fwd.stats();
    assert!(s.switch_refused_no_dd > 100, "{s:?}");
    assert_eq!(s.switches, 1);
}

#[test]
fn rid_is_latched_from_the_first_packets_only() {
    let v = veil_vectors::chromium("sim_vp8_l1t3_sframe_dd.json");
    let mut reg = StreamRegistry::new(ext_ids(&v, true));
    let rid_id = ext_ids(&v, true).rid.unwrap().to_string();
    let (mut with_rid, mut total, mut latched_only) = (0, 0, 0);
    let mut last_rid: HashMap<u32, Vec<u8>> = HashMap::new();
    for p in v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pt"] == 96)
    {
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let profile = u16::from_str_radix(
            p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let ssrc = p["ssrc"].as_u64().unwrap() as u32;
        let ing = reg
            .ingest(&PacketMeta {
                ssrc,
                seq: 0,
                timestamp: 0,
                marker: false,
                ext_profile: Some(profile),
                ext_body: &body,
                len: 0,
            })
            .unwrap();
        let carries_rid = p["ext"].get(&rid_id).is_some();
        with_rid += usize::from(carries_rid);
        latched_only += usize::from(!carries_rid);
        total += 1;
        let rid = ing
            .rid
            .expect("every media packet maps to a rid once latched");
        assert_eq!(*last_rid.entry(ssrc).or_insert_with(|| rid.clone()), rid);
    }
    // Chromium stops sending rid once the receiver acknowledges the SSRC (in this capture after
    // 529 of 1691 packets); every later packet is mapped by the latch alone.
    assert!(
        with_rid > 0 && latched_only > 0,
        "rid on {with_rid} of {total}"
    );
    assert_eq!(with_rid + latched_only, total);
    assert_eq!(last_rid.len(), 3);
}

/// SFU-EXT-01/02: every captured block, rewritten to a subscriber's different extmap, carries the
/// same data under the subscriber's ids; elements the subscriber did not negotiate are dropped.
#[test]
fn extension_ids_are_rewritten_per_subscriber_and_data_is_untouched() {
    use veil_sfu::routing::ExtMap;
    use veil_wire::ext::Extensions;
    let v = veil_vectors::chromium("sim_vp8_l1t3_sframe_dd.json");
    let ids = ext_ids(&v, true);
    let (dd, level, mid) = (ids.dd.unwrap(), ids.audio_level.unwrap(), ids.mid.unwrap());
    // The subscriber negotiated DD as 3, audio level as 1, mid as 200 (two-byte only); nothing else.
    let map = ExtMap::new(&[(dd, 3), (level, 1), (mid, 200)]);
    let mut checked = 0;
    for p in v["packets"].as_array().unwrap() {
        let profile = u16::from_str_radix(
            p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let mut out = [0u8; 512];
        let (new_profile, len) = map.rewrite(profile, &body, &mut out).unwrap();
        let got: HashMap<u8, Vec<u8>> = if len == 0 {
            HashMap::new()
        } else {
            Extensions::with_profile(new_profile, &out[..len])
                .unwrap()
                .map(|e| e.map(|e| (e.id, e.data.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let src = |id: u8| {
            p["ext"]
                .get(id.to_string())
                .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        };
        let mut want = HashMap::new();
        for (from, to) in [(dd, 3u8), (level, 1), (mid, 200)] {
            if let Some(d) = src(from) {
                want.insert(to, d);
            }
        }
        assert_eq!(got, want, "seq {}", p["seq"]);
        // mid needs id 200, which only the two-byte form can carry.
        if want.contains_key(&200) {
            assert_eq!(new_profile & 0xFFF0, 0x1000);
        }
        checked += 1;
    }
    assert_eq!(checked, 2354);
}
