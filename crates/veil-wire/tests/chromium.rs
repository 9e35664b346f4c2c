//! Conformance against Chromium 156's own RTP header extensions, captured on the wire
//! (`vectors/chromium156/*.json`; nobody on this project wrote these bytes).
//! Checks RTP-EXT-01..05, RTP-AL-01, RTP-DD-01..10 (see `specs/rtp.md`).
//!
//! The vectors are read at test time from the repository's `vectors/chromium156`
//! (`$VEIL_VECTORS_DIR` overrides the `vectors` directory). A missing directory or file fails
//! the test: the vectors are never regenerated.
//!
//! This binary installs a counting global allocator for RTP-DD-10, hence the one `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use veil_wire::WireError;
use veil_wire::audio_level::AudioLevel;
use veil_wire::dd::{DdLatch, DependencyDescriptor, TemplateStructure};
use veil_wire::ext::{Extension, ExtensionForm, Extensions, write_block};

const DD_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Every capture, with its packet count and how many of its packets use the two-byte form
/// (facts of the files, so a truncated or swapped file fails loudly).
const FILES: [(&str, usize, usize); 5] = [
    ("sim_vp8_l1t3_sframe_dd.json", 2354, 155),
    ("vp8_sframe_dd.json", 1114, 0),
    ("vp8_sframe.json", 1107, 0),
    ("h264_sframe_raw_dd.json", 993, 0),
    ("av1_l3t3key_sframe_raw_dd.json", 1975, 3),
];

/// The captures that negotiated DD.
const DD_FILES: [&str; 4] = [
    "sim_vp8_l1t3_sframe_dd.json",
    "vp8_sframe_dd.json",
    "h264_sframe_raw_dd.json",
    "av1_l3t3key_sframe_raw_dd.json",
];

// ---- counting allocator (RTP-DD-10) ----------------------------------------------------------

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count_alloc() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: forwards every call to `System` unchanged; only counts allocations made on a thread
// that switched counting on (thread-local, so tests running in parallel do not interfere).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCS.with(Cell::get))
}

// ---- loading -----------------------------------------------------------------------------

/// One packet of a capture, decoded.
struct Packet {
    ssrc: u64,
    seq: u64,
    ts: u64,
    pt: u64,
    form: ExtensionForm,
    /// The elements as veil-wire reads them, in block order.
    els: Vec<(u8, Vec<u8>)>,
    /// The capture's own decoding (`ext`: id → value).
    want: BTreeMap<u8, Vec<u8>>,
}

impl Packet {
    fn get(&self, id: Option<u8>) -> Option<&[u8]> {
        let id = id?;
        self.els
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, d)| d.as_slice())
    }
}

/// One capture, decoded by veil-wire's extension reader.
struct Capture {
    name: &'static str,
    v: Value,
    ids: HashMap<String, u8>,
    packets: Vec<Packet>,
}

impl Capture {
    fn new(name: &'static str) -> Self {
        let v = veil_vectors::chromium(name);
        let ids = v["extmap"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, uri)| (uri.as_str().unwrap().to_string(), id.parse().unwrap()))
            .collect();
        let packets = v["packets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Self::packet(name, p))
            .collect();
        Self {
            name,
            v,
            ids,
            packets,
        }
    }

    /// RTP-EXT-01/02/05: the block body, read in the form its profile announces.
    fn packet(name: &str, p: &Value) -> Packet {
        let profile = p["ext_profile"].as_str().unwrap();
        let profile = u16::from_str_radix(profile.trim_start_matches("0x"), 16).unwrap();
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let it = Extensions::with_profile(profile, &body).unwrap();
        let form = it.form();
        let els = it
            .map(|e| e.map(|e| (e.id, e.data.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{name}: packet seq {} does not parse: {e}", p["seq"]));
        let want = p["ext"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = hex::decode(v.as_str().unwrap()).unwrap();
                (k.parse().unwrap(), v)
            })
            .collect();
        let n = |k: &str| p[k].as_u64().unwrap();
        Packet {
            ssrc: n("ssrc"),
            seq: n("seq"),
            ts: n("ts"),
            pt: n("pt"),
            form,
            els,
            want,
        }
    }

    fn id(&self, uri: &str) -> Option<u8> {
        self.ids.get(uri).copied()
    }

    fn codec(&self, p: &Packet) -> String {
        self.v["rtpmap"][p.pt.to_string()]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
    }

    fn is_video_media(&self, p: &Packet) -> bool {
        let c = self.codec(p);
        ["vp8/", "vp9/", "h264/", "av1/"]
            .iter()
            .any(|k| c.starts_with(k))
    }

    fn is_rtx(&self, p: &Packet) -> bool {
        self.codec(p).starts_with("rtx/")
    }

    fn send_meta(&self, ssrc: u64) -> &Value {
        &self.v["transform_metadata"]["send-video"]["by_ssrc"][ssrc.to_string()]
    }
}

// ---- RTP-EXT -----------------------------------------------------------------------------

/// RTP-EXT-01..05: every packet's block parses in its own form, equals the capture's decoded
/// map, uses only negotiated ids, and survives our writer.
#[test]
fn rtp_ext_every_block_parses_in_its_form_and_round_trips() {
    let mut total = 0;
    for (name, packets, two_byte) in FILES {
        let c = Capture::new(name);
        let extmap_ids: HashSet<u8> = c.ids.values().copied().collect();
        let mut checked = 0;
        let mut per_form = [0usize; 2];
        for p in &c.packets {
            per_form[usize::from(p.form != ExtensionForm::OneByte)] += 1;
            let got: BTreeMap<u8, Vec<u8>> = p.els.iter().cloned().collect();
            assert_eq!(got.len(), p.els.len(), "{name} seq {}: repeated id", p.seq);
            assert_eq!(got, p.want, "{name} seq {}", p.seq);
            for (id, _) in &p.els {
                assert!(extmap_ids.contains(id), "{name}: id {id} not in extmap");
            }
            // RTP-EXT-04: our writer re-encodes the same elements, in a form that carries them.
            let refs: Vec<Extension<'_>> = p
                .els
                .iter()
                .map(|(id, d)| Extension { id: *id, data: d })
                .collect();
            let mut buf = [0u8; 600];
            let (profile, len) = write_block(&refs, &mut buf).unwrap();
            let back: Vec<Extension<'_>> = Extensions::with_profile(profile, &buf[..len])
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(back, refs, "{name} seq {}", p.seq);
            // Chromium switches to the two-byte form exactly when it must; so do we.
            assert_eq!(
                ExtensionForm::from_profile(profile).unwrap(),
                p.form,
                "{name} seq {}",
                p.seq
            );
            checked += 1;
        }
        assert_eq!(checked, packets, "{name}: every packet of the file");
        assert_eq!(per_form[1], two_byte, "{name}: two-byte blocks");
        assert!(per_form[0] > 0, "{name}: one-byte blocks");
        total += checked;
    }
    assert_eq!(total, 7543);
}

// ---- RTP-AL ------------------------------------------------------------------------------

/// RTP-AL-01: audio level parses on every packet that carries it, and every Opus packet does,
/// in the clear, with real levels.
#[test]
fn rtp_al_audio_level_parses_on_every_packet_that_has_it() {
    for (name, ..) in FILES {
        let c = Capture::new(name);
        let id = c.id(AUDIO_LEVEL_URI).expect("audio level negotiated");
        let (mut with_level, mut opus, mut voiced) = (0, 0, 0);
        for p in &c.packets {
            let is_opus = c.codec(p).starts_with("opus/");
            opus += usize::from(is_opus);
            let Some(data) = p.get(Some(id)) else {
                assert!(!is_opus, "{name}: opus packet seq {} without level", p.seq);
                continue;
            };
            assert!(is_opus, "{name}: level on a non-Opus packet seq {}", p.seq);
            let level = AudioLevel::parse(data).unwrap();
            assert_eq!(level.to_byte().unwrap(), data[0]);
            voiced += usize::from(!level.is_silent());
            with_level += 1;
        }
        assert_eq!(with_level, opus, "{name}");
        assert!(opus > 400, "{name}: {opus} opus packets");
        assert!(
            voiced > 0,
            "{name}: the fake microphone beeps, so some packets carry sound"
        );
    }
}

// ---- RTP-DD: one pass over a capture ---------------------------------------------------------

/// What one pass of per-SSRC latches over a capture found.
struct DdRun {
    /// (ssrc, rtp timestamp) → descriptors of the media packets with that timestamp, in
    /// capture order (several frames with SVC).
    media: HashMap<(u64, u64), Vec<DependencyDescriptor>>,
    media_ssrcs: BTreeSet<u64>,
    /// Media sequence numbers per SSRC, in capture order.
    seqs: BTreeMap<u64, Vec<u64>>,
    latches: HashMap<u64, DdLatch>,
    rtx_with_dd: usize,
    rtx_structures: usize,
    rtx_padding: usize,
}

/// RTP-DD-03: every video packet's DD through a latch per media SSRC. RTX packets carry the DD
/// of the packet they repair: they are read against the repaired stream's latch (found through
/// rrid = rid, or the only video stream) without moving it, and must name a frame that stream
/// sent at the same timestamp.
fn run_dd(c: &Capture) -> DdRun {
    let dd_id = c.id(DD_URI).expect("DD negotiated");
    let (rid_id, rrid_id) = (c.id(RID_URI), c.id(RRID_URI));
    let padding_ids: HashSet<Option<u8>> = [ABS_SEND_TIME_URI, TWCC_URI, MID_URI, RRID_URI]
        .iter()
        .map(|u| c.id(u))
        .collect();
    let mut rid_to_media: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut rtx_to_media: HashMap<u64, u64> = HashMap::new();
    let mut run = DdRun {
        media: HashMap::new(),
        media_ssrcs: BTreeSet::new(),
        seqs: BTreeMap::new(),
        latches: HashMap::new(),
        rtx_with_dd: 0,
        rtx_structures: 0,
        rtx_padding: 0,
    };
    let name = c.name;
    for p in &c.packets {
        if c.is_video_media(p) {
            run.media_ssrcs.insert(p.ssrc);
            run.seqs.entry(p.ssrc).or_default().push(p.seq);
            if let Some(rid) = p.get(rid_id) {
                rid_to_media.insert(rid.to_vec(), p.ssrc);
            }
            let dd = p
                .get(Some(dd_id))
                .unwrap_or_else(|| panic!("{name}: video packet seq {} without DD", p.seq));
            let d = run
                .latches
                .entry(p.ssrc)
                .or_default()
                .parse(dd)
                .unwrap_or_else(|e| panic!("{name}: seq {}: {e}", p.seq));
            run.media.entry((p.ssrc, p.ts)).or_default().push(d);
        } else if c.is_rtx(p) {
            if let Some(&m) = p.get(rrid_id).and_then(|r| rid_to_media.get(r)) {
                rtx_to_media.insert(p.ssrc, m);
            }
            let Some(dd) = p.get(Some(dd_id)) else {
                // Bandwidth-probe padding: no media, so no DD; only transport extensions.
                assert!(
                    p.els.iter().all(|(id, _)| padding_ids.contains(&Some(*id))),
                    "{name}: RTX seq {} has neither DD nor the shape of padding",
                    p.seq
                );
                run.rtx_padding += 1;
                continue;
            };
            let media = rtx_to_media.get(&p.ssrc).copied().or_else(|| {
                // Without simulcast there is one video stream to repair.
                (run.media_ssrcs.len() == 1).then(|| *run.media_ssrcs.first().unwrap())
            });
            let media = media.unwrap_or_else(|| panic!("{name}: RTX seq {}: no stream", p.seq));
            let latched = run.latches.get(&media).and_then(|l| l.structure().cloned());
            let d = DependencyDescriptor::parse(dd, latched.as_ref())
                .unwrap_or_else(|e| panic!("{name}: RTX seq {}: {e}", p.seq));
            let repaired = run.media.get(&(media, p.ts)).map_or(&[][..], Vec::as_slice);
            assert!(
                repaired.iter().any(|m| m.frame_number == d.frame_number),
                "{name}: RTX seq {} repairs frame {} that stream {media} did not send at ts {}",
                p.seq,
                d.frame_number,
                p.ts
            );
            run.rtx_structures += usize::from(d.attached_structure.is_some());
            run.rtx_with_dd += 1;
        }
    }
    run
}

/// RTP-DD-01/03: DD parses on every video packet, media and RTX, through per-SSRC latches;
/// the captures start at a key frame, so no packet lacks a structure.
#[test]
fn rtp_dd_03_parses_on_every_video_packet_with_a_latch_per_stream() {
    // (file, media streams, RTX with DD, of which carry a structure, RTX padding probes)
    let want = [
        ("sim_vp8_l1t3_sframe_dd.json", 3, 130, 68, 37),
        ("vp8_sframe_dd.json", 1, 10, 0, 10),
        ("h264_sframe_raw_dd.json", 1, 13, 0, 7),
        ("av1_l3t3key_sframe_raw_dd.json", 1, 22, 0, 10),
    ];
    for (name, streams, rtx, rtx_structures, padding) in want {
        let c = Capture::new(name);
        let run = run_dd(&c);
        let parsed: usize = run.media.values().map(Vec::len).sum();
        let video = c.packets.iter().filter(|p| c.is_video_media(p)).count();
        let all_rtx = c.packets.iter().filter(|p| c.is_rtx(p)).count();
        assert!(video > 400, "{name}: {video} video packets");
        assert_eq!(parsed, video, "{name}: every media packet");
        assert_eq!(run.media_ssrcs.len(), streams, "{name}");
        assert_eq!(
            (run.rtx_with_dd, run.rtx_structures, run.rtx_padding),
            (rtx, rtx_structures, padding),
            "{name}: RTX"
        );
        assert_eq!(
            run.rtx_with_dd + run.rtx_padding,
            all_rtx,
            "{name}: every RTX packet"
        );
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

/// RTP-DD-01/05/07: for every sampled frame, the DD frame number equals Chromium's
/// `frameId mod 2^16` (SVC layers share a timestamp, so matched by spatial id too), the frame has
/// one start and one end packet, its fdiffs name Chromium's `dependencies`, and the resolution of
/// its layer (from the latched or attached structure) is the frame's size. Sampled key frames
/// (empty `dependencies`) start with a structure.
#[test]
fn rtp_dd_01_frame_numbers_dependencies_and_sizes_match_chromium_metadata() {
    let (mut checked, mut keys, mut sized) = (0, 0, 0);
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        for (ssrc, m) in samples(&c) {
            let n = |k: &str| m[k].as_u64().unwrap();
            let (ts, spatial, fid) = (n("rtpTimestamp"), n("spatialIndex") as u8, n("frameId"));
            let dds: Vec<&DependencyDescriptor> = run.media[&(ssrc, ts)]
                .iter()
                .filter(|d| d.spatial_id() == spatial)
                .collect();
            assert!(!dds.is_empty(), "{name}: no packet of sampled frame {m}");
            let want = (fid % 65536) as u16;
            assert!(dds.iter().all(|d| d.frame_number == want), "{name}: {fid}");
            assert_eq!(dds.iter().filter(|d| d.start_of_frame).count(), 1, "{name}");
            assert_eq!(dds.iter().filter(|d| d.end_of_frame).count(), 1, "{name}");
            let first = dds.iter().find(|d| d.start_of_frame).unwrap();
            assert_eq!(u64::from(first.temporal_id()), n("temporalIndex"), "{name}");
            let deps: BTreeSet<u64> = m["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let from_dd: BTreeSet<u64> = first.referenced_frames().map(u64::from).collect();
            assert_eq!(from_dd, deps, "{name}: frame {fid} dependencies");
            assert_eq!(
                first.is_key_frame_start(),
                deps.is_empty(),
                "{name}: frame {fid}"
            );
            keys += usize::from(deps.is_empty());
            match first.resolution() {
                Some(r) => {
                    assert_eq!(
                        (u64::from(r.width), u64::from(r.height)),
                        (n("width"), n("height"))
                    );
                    sized += 1;
                }
                None => assert!(name.starts_with("h264"), "{name}: only H264 lacks sizes"),
            }
            checked += 1;
        }
    }
    assert_eq!((checked, keys, sized), (30, 6, 25));
}

/// RTP-DD-07: per stream, the key frames on the wire (first packet carries the structure, no
/// fdiffs) are exactly Chromium's key-frame count, and the resolutions the structures declare
/// are exactly the sizes Chromium reports for the stream (H264's structure declares none).
#[test]
fn rtp_dd_07_key_frames_and_structure_resolutions_match_chromium_counts() {
    let mut streams = 0;
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        for &ssrc in &run.media_ssrcs {
            let meta = c.send_meta(ssrc);
            let (mut keys, mut declared) = (0u64, BTreeSet::new());
            for (_, dds) in run.media.iter().filter(|((s, _), _)| *s == ssrc) {
                for d in dds {
                    if d.attached_structure.is_some() {
                        assert!(d.start_of_frame, "{name}: structure mid-frame");
                    }
                    keys += u64::from(d.is_key_frame_start());
                    for r in d
                        .attached_structure
                        .iter()
                        .flat_map(|s| s.resolutions.iter().flatten())
                    {
                        declared.insert(format!("{}x{}", r.width, r.height));
                    }
                }
            }
            assert_eq!(
                keys,
                meta["types"]["key"].as_u64().unwrap(),
                "{name} {ssrc}"
            );
            let sizes: BTreeSet<String> =
                meta["sizes"].as_object().unwrap().keys().cloned().collect();
            if name.starts_with("h264") {
                assert!(declared.is_empty(), "{name}: H264 structure with sizes");
            } else {
                assert_eq!(declared, sizes, "{name} ssrc {ssrc}");
            }
            streams += 1;
        }
    }
    assert_eq!(streams, 6);
}

/// RTP-DD-08: distinct frames per temporal id (from the templates) reproduce Chromium's
/// per-stream temporal-layer histogram.
///
/// Exact equality is impossible: in every stream, Chromium's histogram counts 2 to 6 frames more
/// than the capture holds. The data says why:
/// - the capture has every media packet in between (sequence numbers without a gap), and it
///   starts at Chromium's first frame;
/// - the missing frames are exactly those after the last frame on the wire, up to Chromium's
///   `lastFrameId`: a tail;
/// - the receiver got frames past the wire's last one (`recv-video` `lastFrameId` is larger), so
///   the sender did send them: tcpdump stopped a moment before the call did.
///
/// So the test asserts all of that, plus: the wire histogram is at most Chromium's in every
/// layer, and the wire histogram plus the temporal ids the stream's own periodic layer pattern
/// predicts for the tail equals Chromium's histogram exactly.
#[test]
fn rtp_dd_08_temporal_ids_from_templates_reproduce_chromium_histograms() {
    let mut tails = BTreeMap::new();
    for name in DD_FILES {
        let c = Capture::new(name);
        let run = run_dd(&c);
        let mut past_wire = 0;
        for (&ssrc, seqs) in &run.seqs {
            assert!(
                seqs.windows(2).all(|w| w[1] == (w[0] + 1) % 65536),
                "{name} ssrc {ssrc}: the capture lost a media packet"
            );
            // (frame number, spatial id) → (temporal id, key frame), for the frames on the wire.
            let mut frames: BTreeMap<(u16, u8), (u8, bool)> = BTreeMap::new();
            for (_, dds) in run.media.iter().filter(|((s, _), _)| *s == ssrc) {
                for d in dds.iter().filter(|d| d.start_of_frame) {
                    frames.insert(
                        (d.frame_number, d.spatial_id()),
                        (d.temporal_id(), d.is_key_frame()),
                    );
                }
            }
            let meta = c.send_meta(ssrc);
            let want: BTreeMap<u8, u64> = meta["temporal"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap()))
                .collect();
            let n = |k: &str| meta[k].as_u64().unwrap();
            let ids: Vec<u64> = frames.keys().map(|(n, _)| u64::from(*n)).collect();
            let tids: Vec<u8> = frames.values().map(|(t, _)| *t).collect();
            let wire_last = *ids.last().unwrap();
            assert_eq!(
                ids[0],
                n("firstFrameId"),
                "{name} ssrc {ssrc}: the wire starts at Chromium's first frame"
            );
            let mut hist: BTreeMap<u8, u64> = BTreeMap::new();
            for &t in &tids {
                *hist.entry(t).or_default() += 1;
            }
            for (t, &count) in &hist {
                assert!(
                    count <= want[t],
                    "{name} ssrc {ssrc}: T{t} {count} > {}",
                    want[t]
                );
            }
            let missing = n("frames") - tids.len() as u64;
            // Frame-number stride: 1, or 3 with three simulcast layers on one counter.
            let mut steps: BTreeMap<u64, usize> = BTreeMap::new();
            for w in ids.windows(2) {
                *steps.entry(w[1] - w[0]).or_default() += 1;
            }
            let step = *steps.iter().max_by_key(|(_, n)| **n).unwrap().0;
            assert_eq!(
                n("lastFrameId") - wire_last,
                missing * step,
                "{name} ssrc {ssrc}: exactly the frames after the wire's last are missing"
            );
            let recv_last =
                c.v["transform_metadata"]["recv-video"]["by_ssrc"][ssrc.to_string()]["lastFrameId"]
                    .as_u64()
                    .unwrap_or(0);
            past_wire += usize::from(recv_last > wire_last);
            // The temporal pattern: a key frame restarts it, so split the stream at key frames
            // and find the smallest period that holds within every piece, seen at least three
            // times over in all. The tail continues the last piece.
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for (i, (_, key)) in frames.values().enumerate().skip(1) {
                if *key {
                    pieces.push(&tids[start..i]);
                    start = i;
                }
            }
            pieces.push(&tids[start..]);
            let period = (1..=32)
                .find(|&p| {
                    let checked: usize = pieces.iter().map(|x| x.len().saturating_sub(p)).sum();
                    checked >= 3 * p
                        && pieces
                            .iter()
                            .all(|x| x.windows(p + 1).all(|w| w[0] == w[p]))
                })
                .unwrap_or_else(|| panic!("{name} ssrc {ssrc}: no temporal period"));
            let cycle = &pieces.iter().max_by_key(|x| x.len()).unwrap()[..period];
            let phase = pieces.last().unwrap().len();
            for k in 0..missing as usize {
                *hist.entry(cycle[(phase + k) % period]).or_default() += 1;
            }
            assert_eq!(
                hist, want,
                "{name} ssrc {ssrc}: wire plus the predicted tail"
            );
            tails.insert((name, ssrc), missing);
        }
        assert!(
            past_wire > 0,
            "{name}: no stream shows frames received after the capture"
        );
    }
    let tails: Vec<u64> = tails.into_values().collect();
    // By file name, then SSRC: AV1 SVC (two temporal units of three layers), H264, the three
    // simulcast layers (f, q, h), VP8.
    assert_eq!(tails, [6, 2, 2, 2, 2, 3]);
}

/// RTP-DD-06: every descriptor of the captures survives parse → write → parse unchanged, and is
/// rewritten byte for byte (custom fdiffs and chains of the simulcast layers included).
#[test]
fn rtp_dd_06_chromium_descriptors_round_trip_through_our_writer() {
    let (mut n, mut identical, mut extended) = (0, 0, 0);
    for name in DD_FILES {
        let c = Capture::new(name);
        let dd_id = c.id(DD_URI);
        let mut latches: HashMap<u64, DdLatch> = HashMap::new();
        for p in c.packets.iter().filter(|p| c.is_video_media(p)) {
            let raw = p.get(dd_id).unwrap();
            let d = latches.entry(p.ssrc).or_default().parse(raw).unwrap();
            let s: Arc<TemplateStructure> = d.structure().unwrap().clone();
            let mut buf = [0u8; 255];
            let len = d.write(&s, &mut buf).unwrap();
            let back = DependencyDescriptor::parse(&buf[..len], Some(&s)).unwrap();
            assert_eq!(back, d, "{name} seq {}", p.seq);
            identical += usize::from(&buf[..len] == raw);
            extended += usize::from(raw.len() > 3);
            n += 1;
        }
    }
    assert_eq!(n, 4216, "every media packet of the four DD captures");
    assert!(extended > 1500, "{extended} extended descriptors");
    assert_eq!(identical, n, "{identical} of {n} re-encoded byte for byte");
}

/// RTP-DD-09: the latches agree with what the streams did. Loopback does not reorder, so no
/// structure is stale, and each stream latches at most as many structures as it has key frames.
/// The one explicit active-decode-targets mask in the captures (the AV1 L3T3_KEY stream's first
/// key frame, sent before the encoder enabled its top layer) leaves out exactly the decode
/// targets of spatial layer 2; while it is latched no spatial-layer-2 frame arrives, and the
/// next key frame's structure makes all nine active again.
#[test]
fn rtp_dd_09_latches_track_structures_and_active_targets() {
    let (mut masks, mut frames_under_mask) = (Vec::new(), 0);
    for name in DD_FILES {
        let c = Capture::new(name);
        let dd_id = c.id(DD_URI);
        let mut latches: HashMap<u64, DdLatch> = HashMap::new();
        for p in c.packets.iter().filter(|p| c.is_video_media(p)) {
            let raw = p.get(dd_id).unwrap();
            let latch = latches.entry(p.ssrc).or_default();
            let d = latch.parse(raw).unwrap();
            let s = latch.structure().unwrap();
            let all = u32::MAX >> (32 - u32::from(s.decode_target_count));
            let active = latch.active_decode_targets().unwrap();
            if raw.len() > 3 && raw[3] & 0x40 != 0 {
                masks.push((name, d.frame_number, active, all));
                let inactive_layers: BTreeSet<(u8, u8)> = (0..usize::from(s.decode_target_count))
                    .filter(|dt| active & (1 << dt) == 0)
                    .map(|dt| s.decode_target_layer(dt).unwrap())
                    .collect();
                assert_eq!(
                    inactive_layers,
                    (0..3).map(|t| (2, t)).collect(),
                    "{name}: the inactive decode targets are spatial layer 2's"
                );
            }
            if active != all {
                assert!(d.spatial_id() < 2, "{name}: S2 frame while S2 is inactive");
                frames_under_mask += 1;
            }
        }
        for (&ssrc, latch) in &latches {
            let keys = c.send_meta(ssrc)["types"]["key"].as_u64().unwrap();
            assert!(
                (1..=keys).contains(&latch.structures_seen()),
                "{name} {ssrc}"
            );
            assert_eq!(
                latch.stale_structures(),
                0,
                "{name}: loopback does not reorder"
            );
            let s = latch.structure().unwrap();
            let all = u32::MAX >> (32 - u32::from(s.decode_target_count));
            assert_eq!(
                latch.active_decode_targets(),
                Some(all),
                "{name}: all active at the end"
            );
        }
    }
    assert_eq!(
        masks,
        [(
            "av1_l3t3key_sframe_raw_dd.json",
            1,
            0b111_111,
            0b111_111_111
        )]
    );
    assert!(
        frames_under_mask > 0,
        "the mask was latched for the packets that followed it"
    );
}

/// RTP-DD-10: reading a descriptor that carries no structure allocates nothing; the counter
/// does see the allocations of structure-carrying ones.
#[test]
fn rtp_dd_10_parsing_against_a_latched_structure_does_not_allocate() {
    let (mut plain, mut with_structure) = (0, 0);
    for name in DD_FILES {
        let c = Capture::new(name);
        let dd_id = c.id(DD_URI);
        let packets: Vec<(u64, Vec<u8>)> = c
            .packets
            .iter()
            .filter(|p| c.is_video_media(p))
            .map(|p| (p.ssrc, p.get(dd_id).unwrap().to_vec()))
            .collect();
        let mut latches: HashMap<u64, DdLatch> = packets
            .iter()
            .map(|(s, _)| (*s, DdLatch::default()))
            .collect();
        for (ssrc, raw) in &packets {
            let latch = latches.get_mut(ssrc).unwrap();
            let (d, n) = allocations(|| latch.parse(raw).map(|d| d.attached_structure.is_some()));
            if d.unwrap() {
                assert!(
                    n > 0,
                    "{name}: the counter missed a structure's allocations"
                );
                with_structure += 1;
            } else {
                assert_eq!(n, 0, "{name}: {n} allocations for a {}-byte DD", raw.len());
                plain += 1;
            }
        }
        // A failure allocates nothing either.
        let (e, n) = allocations(|| DdLatch::default().parse(&[0x80, 0, 1]).err());
        assert_eq!(
            (
                e.map(|e| matches!(e, WireError::MissingStructure { .. })),
                n
            ),
            (Some(true), 0)
        );
    }
    assert_eq!((plain, with_structure), (4151, 65));
}
