//! Conformance against Chromium 156's own RTP header extensions, captured on the wire
//! (`../shared/vectors/chromium156/*.json`; nobody on this project wrote these bytes).
//! Checks RTP-EXT-01..04, RTP-AL-01, RTP-DD-01..07.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use veil_wire::audio_level::AudioLevel;
use veil_wire::dd::{DdLatch, DependencyDescriptor, TemplateStructure};
use veil_wire::ext::{Extension, ExtensionForm, Extensions, write_block};

const DD_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
const FILES: [&str; 5] = [
    "sim_vp8_l1t3_sframe_dd.json",
    "vp8_sframe_dd.json",
    "vp8_sframe.json",
    "h264_sframe_raw_dd.json",
    "av1_l3t3key_sframe_raw_dd.json",
];

fn load(name: &str) -> Value {
    let dir = std::env::var_os("VEIL_VECTORS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
        PathBuf::from,
    );
    let path = dir.join("chromium156").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "Chromium capture missing at {}: {e} (check out ../shared or set VEIL_VECTORS_DIR)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// One capture, decoded.
struct Capture {
    name: &'static str,
    v: Value,
    ids: HashMap<String, u8>,
}

impl Capture {
    fn new(name: &'static str) -> Self {
        let v = load(name);
        let ids = v["extmap"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, uri)| (uri.as_str().unwrap().to_string(), id.parse().unwrap()))
            .collect();
        Self { name, v, ids }
    }

    fn id(&self, uri: &str) -> Option<u8> {
        self.ids.get(uri).copied()
    }

    fn packets(&self) -> &Vec<Value> {
        self.v["packets"].as_array().unwrap()
    }

    fn codec(&self, pt: u64) -> String {
        self.v["rtpmap"][pt.to_string()]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
    }

    fn is_video_media(&self, p: &Value) -> bool {
        let c = self.codec(p["pt"].as_u64().unwrap());
        ["vp8/", "vp9/", "h264/", "av1/"]
            .iter()
            .any(|k| c.starts_with(k))
    }

    fn is_rtx(&self, p: &Value) -> bool {
        self.codec(p["pt"].as_u64().unwrap()).starts_with("rtx/")
    }

    /// The packet's extension elements, parsed by veil-wire in the packet's own form.
    fn elements(&self, p: &Value) -> (ExtensionForm, Vec<(u8, Vec<u8>)>) {
        let profile = u16::from_str_radix(
            p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let it = Extensions::with_profile(profile, &body).unwrap();
        let form = it.form();
        let els = it
            .map(|e| e.map(|e| (e.id, e.data.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| {
                panic!("{}: packet seq {} does not parse: {e}", self.name, p["seq"])
            });
        (form, els)
    }
}

/// Every packet's block parses in its own form, equals the capture's decoded map, uses only
/// negotiated ids, and survives our writer (RTP-EXT-01..04).
#[test]
fn every_extension_block_parses_in_both_forms() {
    let mut per_form: HashMap<&str, usize> = HashMap::new();
    let mut total = 0;
    for name in FILES {
        let c = Capture::new(name);
        let extmap_ids: HashSet<u8> = c.ids.values().copied().collect();
        for p in c.packets() {
            let (form, els) = c.elements(p);
            *per_form
                .entry(if form == ExtensionForm::OneByte {
                    "one"
                } else {
                    "two"
                })
                .or_default() += 1;
            let want: BTreeMap<u8, Vec<u8>> = p["ext"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().unwrap(),
                        hex::decode(v.as_str().unwrap()).unwrap(),
                    )
                })
                .collect();
            let got: BTreeMap<u8, Vec<u8>> = els.iter().cloned().collect();
            assert_eq!(got, want, "{name} seq {}", p["seq"]);
            assert!(
                els.iter().all(|(id, _)| extmap_ids.contains(id)),
                "{name}: unnegotiated id"
            );
            // Our writer re-encodes the same elements, in a form that can carry them.
            let refs: Vec<Extension<'_>> = els
                .iter()
                .map(|(id, d)| Extension { id: *id, data: d })
                .collect();
            let mut buf = [0u8; 600];
            let (profile, len) = write_block(&refs, &mut buf).unwrap();
            let back: Vec<(u8, Vec<u8>)> = Extensions::with_profile(profile, &buf[..len])
                .unwrap()
                .map(|e| e.map(|e| (e.id, e.data.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(back, els);
            total += 1;
        }
    }
    assert_eq!(
        total,
        2354 + 1114 + 1107 + 993 + 1975,
        "every packet of the five captures"
    );
    assert!(
        per_form["one"] > 7000 && per_form["two"] > 0,
        "{per_form:?}"
    );
}

/// Audio level is on every Opus packet, in the clear, one byte (RTP-AL-01).
#[test]
fn audio_level_parses_on_every_opus_packet() {
    for name in FILES {
        let c = Capture::new(name);
        let id = c.id(AUDIO_LEVEL_URI).expect("audio level negotiated");
        let mut opus = 0;
        let mut voiced = 0;
        for p in c
            .packets()
            .iter()
            .filter(|p| c.codec(p["pt"].as_u64().unwrap()).starts_with("opus/"))
        {
            let (_, els) = c.elements(p);
            let data = els
                .iter()
                .find(|(i, _)| *i == id)
                .unwrap_or_else(|| panic!("{name}: opus packet without audio level"))
                .1
                .clone();
            let level = AudioLevel::parse(&data).unwrap();
            assert!(level.level <= 127);
            if !level.is_silent() {
                voiced += 1;
            }
            opus += 1;
        }
        assert!(opus > 400, "{name}: {opus} opus packets");
        assert!(
            voiced > 0,
            "{name}: the fake microphone beeps, so some packets carry sound"
        );
    }
}

/// DD of every video packet, read through per-SSRC latches; RTX packets are read against the
/// latch of the stream they repair (mapped through rid/rrid), without moving it.
struct DdRun {
    /// (ssrc, rtp timestamp) → descriptors of the media packets of that frame, in capture order.
    media: HashMap<(u64, u64), Vec<DependencyDescriptor>>,
    media_ssrcs: HashSet<u64>,
    rtx_parsed: usize,
    missing_structure_before_key: usize,
}

fn run_dd(c: &Capture) -> DdRun {
    let dd_id = c.id(DD_URI).expect("DD negotiated");
    let rid_id = c.id(RID_URI);
    let rrid_id = c.id(RRID_URI);
    let mut latches: HashMap<u64, DdLatch> = HashMap::new();
    let mut rid_to_media: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut rtx_to_media: HashMap<u64, u64> = HashMap::new();
    let mut run = DdRun {
        media: HashMap::new(),
        media_ssrcs: HashSet::new(),
        rtx_parsed: 0,
        missing_structure_before_key: 0,
    };
    for p in c.packets() {
        let ssrc = p["ssrc"].as_u64().unwrap();
        let (_, els) = c.elements(p);
        let get = |id: Option<u8>| {
            id.and_then(|id| els.iter().find(|(i, _)| *i == id).map(|(_, d)| d.clone()))
        };
        if c.is_video_media(p) {
            run.media_ssrcs.insert(ssrc);
            if let Some(rid) = get(rid_id) {
                rid_to_media.insert(rid, ssrc);
            }
            let dd = get(Some(dd_id))
                .unwrap_or_else(|| panic!("{}: video packet seq {} without DD", c.name, p["seq"]));
            let latch = latches.entry(ssrc).or_default();
            match latch.parse(&dd) {
                Ok(d) => run
                    .media
                    .entry((ssrc, p["ts"].as_u64().unwrap()))
                    .or_default()
                    .push(d),
                Err(veil_wire::WireError::MissingStructure { .. })
                    if latch.structure().is_none() =>
                {
                    run.missing_structure_before_key += 1;
                }
                Err(e) => panic!("{}: seq {}: {e}", c.name, p["seq"]),
            }
        } else if c.is_rtx(p) {
            if let Some(&m) = get(rrid_id).and_then(|rrid| rid_to_media.get(&rrid)) {
                rtx_to_media.insert(ssrc, m);
            }
            let media = rtx_to_media.get(&ssrc).copied().or_else(|| {
                // Without simulcast there is one video stream to repair.
                (run.media_ssrcs.len() == 1).then(|| *run.media_ssrcs.iter().next().unwrap())
            });
            let Some(dd) = get(Some(dd_id)) else { continue };
            let latched = media
                .and_then(|m| latches.get(&m))
                .and_then(|l| l.structure().cloned());
            // RTX padding probes may repeat a descriptor; either way it must parse.
            DependencyDescriptor::parse(&dd, latched.as_ref())
                .unwrap_or_else(|e| panic!("{}: RTX seq {}: {e}", c.name, p["seq"]));
            run.rtx_parsed += 1;
        }
    }
    run
}

const DD_FILES: [&str; 4] = [
    "sim_vp8_l1t3_sframe_dd.json",
    "vp8_sframe_dd.json",
    "h264_sframe_raw_dd.json",
    "av1_l3t3key_sframe_raw_dd.json",
];

#[test]
fn dd_parses_on_every_video_packet_with_a_latch_per_stream() {
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        let parsed: usize = run.media.values().map(Vec::len).sum();
        let video = c.packets().iter().filter(|p| c.is_video_media(p)).count();
        assert_eq!(
            run.missing_structure_before_key, 0,
            "{name}: the capture starts at a key frame"
        );
        assert_eq!(parsed, video, "{name}");
        assert!(run.rtx_parsed > 0, "{name}: RTX packets carry DD too");
    }
}

fn samples(c: &Capture) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    for (key, list) in c.v["transform_metadata"]["send-video"]["samples"]
        .as_object()
        .unwrap()
    {
        let ssrc: u64 = key.split(':').next().unwrap().parse().unwrap();
        for s in list.as_array().unwrap() {
            out.push((ssrc, s["metadata"].clone()));
        }
    }
    out
}

/// The DD frame number equals Chromium's `frameId mod 2^16` for every sampled frame; key frames
/// carry a structure whose resolution is the frame's size (RTP-DD-01, -07).
#[test]
fn dd_frame_numbers_and_key_frame_resolutions_match_chromium_metadata() {
    let mut checked = 0;
    let mut keys = 0;
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        for (ssrc, m) in samples(&c) {
            let ts = m["rtpTimestamp"].as_u64().unwrap();
            let spatial = m["spatialIndex"].as_u64().unwrap_or(0) as u8;
            let dds: Vec<&DependencyDescriptor> = run.media[&(ssrc, ts)]
                .iter()
                .filter(|d| d.frame.spatial_id == spatial)
                .collect();
            assert!(!dds.is_empty(), "{name}: no packet of sampled frame {m}");
            let want = (m["frameId"].as_u64().unwrap() % 65536) as u16;
            for d in &dds {
                assert_eq!(d.frame_number, want, "{name}: ssrc {ssrc} ts {ts}");
            }
            assert_eq!(
                dds.iter().filter(|d| d.start_of_frame).count(),
                1,
                "{name}: one start"
            );
            assert_eq!(
                dds.iter().filter(|d| d.end_of_frame).count(),
                1,
                "{name}: one end"
            );
            let is_key = m["dependencies"].as_array().unwrap().is_empty();
            let first = dds.iter().find(|d| d.start_of_frame).unwrap();
            if is_key {
                assert!(
                    first.is_key_frame_start(),
                    "{name}: key frame {want} starts without a structure"
                );
                let s = first.attached_structure.as_ref().unwrap();
                match s.resolution(spatial) {
                    Some(r) => {
                        assert_eq!(
                            (u64::from(r.width), u64::from(r.height)),
                            (m["width"].as_u64().unwrap(), m["height"].as_u64().unwrap()),
                            "{name}: key frame resolution"
                        );
                    }
                    None => assert!(
                        name.starts_with("h264"),
                        "{name}: only H264's structure lacks resolutions"
                    ),
                }
                keys += 1;
            } else {
                assert!(
                    !first.is_key_frame(),
                    "{name}: delta frame {want} read as key"
                );
                let deps: Vec<u64> = m["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect();
                let fid = m["frameId"].as_u64().unwrap();
                let mut from_dd: Vec<u64> = first
                    .frame
                    .fdiffs
                    .iter()
                    .map(|&d| fid - u64::from(d))
                    .collect();
                from_dd.sort_unstable();
                let mut deps_sorted = deps.clone();
                deps_sorted.sort_unstable();
                assert_eq!(from_dd, deps_sorted, "{name}: frame {fid} dependencies");
            }
            checked += 1;
        }
        // Every key frame in the stream (not only sampled ones) has a structure whose resolution
        // is one of the sizes Chromium reports for that stream.
        for ((ssrc, _), dds) in &run.media {
            for d in dds.iter().filter(|d| d.is_key_frame_start()) {
                if let Some(r) = d.resolution() {
                    let size = format!("{}x{}", r.width, r.height);
                    assert!(
                        c.v["transform_metadata"]["send-video"]["by_ssrc"][ssrc.to_string()]["sizes"]
                            .get(&size)
                            .is_some(),
                        "{name}: key frame of ssrc {ssrc} declares {size}"
                    );
                }
            }
        }
    }
    assert!(
        checked >= 30 && keys >= 6,
        "checked {checked} sampled frames, {keys} key frames"
    );
}

/// Counting frames per temporal id decoded from the templates reproduces Chromium's own
/// per-stream temporal-layer histogram.
///
/// The captures stop a moment before the call does. In every file, the encoder's last one to
/// three frames per stream (and spatial layer) reached the transform, and so Chromium's
/// histogram, but not the wire.
/// The test therefore asserts exactly what explains the difference:
/// - the wire starts at Chromium's first frame;
/// - only a tail after the last frame on the wire is missing, as many frames as Chromium counted
///   beyond the wire;
/// - the wire histogram plus the temporal ids that the stream's own periodic layer pattern
///   predicts for that tail equals Chromium's histogram exactly.
///
/// Where nothing is missing, that is plain equality.
#[test]
fn temporal_ids_from_templates_reproduce_chromium_histograms() {
    let mut exact = 0;
    let mut with_tail = 0;
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        for ssrc in &run.media_ssrcs {
            // (frame number, spatial id) → (temporal id, key frame), for the frames on the wire.
            let mut frames: BTreeMap<(u16, u8), (u8, bool)> = BTreeMap::new();
            for ((s, _), dds) in &run.media {
                if s == ssrc {
                    for d in dds.iter().filter(|d| d.start_of_frame) {
                        frames.insert(
                            (d.frame_number, d.frame.spatial_id),
                            (d.frame.temporal_id, d.is_key_frame()),
                        );
                    }
                }
            }
            let meta = &c.v["transform_metadata"]["send-video"]["by_ssrc"][ssrc.to_string()];
            let want: BTreeMap<u8, u64> = meta["temporal"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap()))
                .collect();
            let meta_frames = meta["frames"].as_u64().unwrap();
            let (first, last) = (
                meta["firstFrameId"].as_u64().unwrap(),
                meta["lastFrameId"].as_u64().unwrap(),
            );
            let ids: Vec<u64> = frames.keys().map(|(n, _)| u64::from(*n)).collect();
            let tids: Vec<u8> = frames.values().map(|(t, _)| *t).collect();
            assert_eq!(
                ids[0], first,
                "{name} ssrc {ssrc}: the wire starts at Chromium's first frame"
            );
            let mut hist: BTreeMap<u8, u64> = BTreeMap::new();
            for &t in &tids {
                *hist.entry(t).or_default() += 1;
            }
            let missing = meta_frames - tids.len() as u64;
            if missing == 0 {
                assert_eq!(*ids.last().unwrap(), last, "{name} ssrc {ssrc}");
                assert_eq!(hist, want, "{name} ssrc {ssrc}");
                exact += 1;
                continue;
            }
            let layers = frames
                .keys()
                .map(|(_, sid)| *sid)
                .collect::<HashSet<_>>()
                .len() as u64;
            assert!(
                missing <= 3 * layers,
                "{name} ssrc {ssrc}: {missing} frames missing is more than a tail"
            );
            // Frame-number spacing on this stream: the most common step (1, or 3 with three
            // simulcast layers sharing one counter; a layer's first step can differ).
            let mut steps: BTreeMap<u64, usize> = BTreeMap::new();
            for w in ids.windows(2) {
                *steps.entry(w[1] - w[0]).or_default() += 1;
            }
            let step = *steps.iter().max_by_key(|(_, n)| **n).unwrap().0;
            assert_eq!(
                (last - ids.last().unwrap()) / step,
                missing,
                "{name} ssrc {ssrc}: only a tail is missing"
            );
            // The smallest period of the temporal pattern since the last key frame (a key frame
            // restarts the cycle), confirmed by at least three repetitions of an element.
            let since_key = frames.values().rposition(|(_, key)| *key).unwrap();
            let recent = &tids[since_key..];
            let period = (1..=32)
                .find(|&p| recent.len() >= p + 3 && recent.windows(p + 1).all(|w| w[0] == w[p]))
                .unwrap_or_else(|| panic!("{name} ssrc {ssrc}: no period in {recent:?}"));
            for k in 0..missing as usize {
                let t = tids[tids.len() - period + k % period];
                *hist.entry(t).or_default() += 1;
            }
            assert_eq!(
                hist, want,
                "{name} ssrc {ssrc}: wire histogram plus the predicted tail"
            );
            with_tail += 1;
        }
    }
    // Every stream of the four DD captures (3 simulcast layers, VP8, H264, AV1 SVC) lost a
    // short tail to the end of the capture; none is missing anything else.
    assert_eq!((exact, with_tail), (0, 6));
}

/// Every descriptor of the captures survives parse → write → parse unchanged, and every
/// structure Chromium sent is rewritten byte for byte (RTP-DD-06).
#[test]
fn chromium_descriptors_round_trip_through_our_writer() {
    let mut n = 0;
    let mut identical = 0;
    for name in DD_FILES {
        let c = Capture::new(name);
        let dd_id = c.id(DD_URI).unwrap();
        let mut latches: HashMap<u64, DdLatch> = HashMap::new();
        for p in c.packets().iter().filter(|p| c.is_video_media(p)) {
            let (_, els) = c.elements(p);
            let raw = &els.iter().find(|(i, _)| *i == dd_id).unwrap().1;
            let latch = latches.entry(p["ssrc"].as_u64().unwrap()).or_default();
            let d = latch.parse(raw).unwrap();
            let s: Arc<TemplateStructure> = d.structure().unwrap().clone();
            let mut buf = [0u8; 255];
            let len = d.write(&s, &mut buf).unwrap();
            let back = DependencyDescriptor::parse(&buf[..len], Some(&s)).unwrap();
            assert_eq!(back, d, "{name} seq {}", p["seq"]);
            if &buf[..len] == raw.as_slice() {
                identical += 1;
            }
            n += 1;
        }
    }
    assert!(n > 3000, "{n}");
    // Chromium writes the same minimal encoding we do.
    assert_eq!(
        identical, n,
        "{identical} of {n} descriptors re-encoded byte for byte"
    );
}
