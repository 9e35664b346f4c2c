use std::collections::{BTreeMap, BTreeSet};

use veil_wire::dd::{ChainDiffs, Dtis, Fdiffs, FrameDependencies, Resolution};

use super::*;

/// DTIs written as libwebrtc writes them: `-` not present, `D`, `S`, `R`.
fn tpl(s: u8, t: u8, dtis: &str, fdiffs: &[u16], chains: &[u8]) -> FrameDependencies {
    let d: Vec<Dti> = dtis
        .chars()
        .map(|c| match c {
            '-' => Dti::NotPresent,
            'D' => Dti::Discardable,
            'S' => Dti::Switch,
            _ => Dti::Required,
        })
        .collect();
    FrameDependencies {
        spatial_id: s,
        temporal_id: t,
        dtis: Dtis::from_slice(&d).unwrap(),
        fdiffs: Fdiffs::from_slice(fdiffs).unwrap(),
        chain_diffs: ChainDiffs::from_slice(chains).unwrap(),
    }
}

/// VP8 L1T3 as Chromium describes it: decode targets T0, T0+T1, all; no chains.
fn l1t3() -> Arc<TemplateStructure> {
    let s = TemplateStructure {
        template_id_offset: 0,
        decode_target_count: 3,
        chain_count: 0,
        templates: vec![
            tpl(0, 0, "SSS", &[], &[]),
            tpl(0, 0, "SSS", &[4], &[]),
            tpl(0, 1, "-SS", &[2], &[]),
            tpl(0, 2, "--D", &[1], &[]),
        ],
        decode_target_protected_by: vec![],
        resolutions: Some(vec![Resolution {
            width: 640,
            height: 360,
        }]),
    };
    s.validate().unwrap();
    Arc::new(s)
}

/// L2T2_KEY: decode targets S0T0, S0T1, S1T0, S1T1; chain 0 protects S0, chain 1 S1; the
/// upper spatial layer depends on the lower one only at key frames.
fn l2t2_key() -> Arc<TemplateStructure> {
    let s = TemplateStructure {
        template_id_offset: 0,
        decode_target_count: 4,
        chain_count: 2,
        templates: vec![
            tpl(0, 0, "SSSS", &[], &[0, 0]),
            tpl(0, 0, "SS--", &[4], &[4, 3]),
            tpl(0, 1, "-D--", &[2], &[2, 1]),
            tpl(1, 0, "--SS", &[1], &[1, 1]),
            tpl(1, 0, "--SS", &[4], &[1, 4]),
            tpl(1, 1, "---D", &[2], &[3, 2]),
        ],
        decode_target_protected_by: vec![0, 0, 1, 1],
        resolutions: Some(vec![
            Resolution {
                width: 320,
                height: 180,
            },
            Resolution {
                width: 640,
                height: 360,
            },
        ]),
    };
    s.validate().unwrap();
    Arc::new(s)
}

/// One packet of a hand-built stream.
#[derive(Debug, Clone)]
struct Pkt {
    seq: u16,
    marker: bool,
    dd: DependencyDescriptor,
}

/// `packets` packets of frame `fnum` on template `tid`; the structure on the first packet if
/// `key`; the marker on the last packet if `marker`.
fn frame(
    s: &Arc<TemplateStructure>,
    seq: &mut u16,
    fnum: u16,
    tid: u8,
    packets: u16,
    key: bool,
    marker: bool,
) -> Vec<Pkt> {
    (0..packets)
        .map(|i| {
            let last = i + 1 == packets;
            let mut dd = DependencyDescriptor::new(i == 0, last, tid, fnum, s).unwrap();
            if key && i == 0 {
                dd = dd.with_structure(s.clone());
            }
            let p = Pkt {
                seq: *seq,
                marker: marker && last,
                dd,
            };
            *seq = seq.wrapping_add(1);
            p
        })
        .collect()
}

/// `frames` frames of L1T3 (T0 T2 T1 T2 …) from frame number `first`, key frame first,
/// 1 to 3 packets each.
fn l1t3_stream(first: u16, frames: u16, seq: &mut u16) -> Vec<Pkt> {
    let s = l1t3();
    (0..frames)
        .flat_map(|i| {
            let tid = match (i, i % 4) {
                (0, _) => 0,
                (_, 0) => 1,
                (_, 2) => 2,
                _ => 3,
            };
            frame(&s, seq, first.wrapping_add(i), tid, 1 + i % 3, i == 0, true)
        })
        .collect()
}

/// `tus` temporal units of L2T2_KEY from frame number `first` (S0 then S1 per unit), a key
/// unit first if `key` (else the units continue a T0 unit two frames back), the marker only
/// at the end of the unit (as VP9), 2 packets per S1 frame.
fn l2t2_stream(first: u16, tus: u16, seq: &mut u16, key: bool) -> Vec<Pkt> {
    let s = l2t2_key();
    (0..tus)
        .flat_map(|k| {
            let (t0, t1) = match (k == 0 && key, k % 2) {
                (true, _) => (0, 3),
                (_, 0) => (1, 4),
                _ => (2, 5),
            };
            let f = first.wrapping_add(2 * k);
            let mut v = frame(&s, seq, f, t0, 1, k == 0 && key, false);
            v.extend(frame(&s, seq, f.wrapping_add(1), t1, 2, false, true));
            v
        })
        .collect()
}

/// What a subscriber got: (input packet index, output seq, marker, switched).
fn run(sel: &mut SvcSelector, pkts: &[Pkt]) -> Vec<(usize, u16, bool, bool)> {
    pkts.iter()
        .enumerate()
        .filter_map(|(i, p)| match sel.on_packet(p.seq, p.marker, &p.dd) {
            SvcDecision::Forward {
                seq,
                marker,
                switched,
            } => Some((i, seq, marker, switched)),
            SvcDecision::Drop(_) => None,
        })
        .collect()
}

fn contiguous(out: &[(usize, u16, bool, bool)]) -> bool {
    out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1))
}

/// Frame numbers of the forwarded packets, with how many packets each.
fn frames_of(pkts: &[Pkt], out: &[(usize, u16, bool, bool)]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for o in out {
        *m.entry(pkts[o.0].dd.frame_number).or_default() += 1;
    }
    m
}

/// SFU-SVC-01, -02, -05: each decode target of L1T3 gets exactly its frames, every packet
/// of them, renumbered without gaps across the sequence-number wrap.
#[test]
fn each_temporal_target_gets_exactly_its_frames_whole_and_contiguous() {
    let mut seq = 65_500;
    let pkts = l1t3_stream(65_530, 40, &mut seq);
    for t in 0..3u8 {
        let mut sel = SvcSelector::new(SvcLayer::new(0, t));
        let out = run(&mut sel, &pkts);
        assert!(contiguous(&out), "T{t}: {out:?}");
        let got = frames_of(&pkts, &out);
        let mut want = BTreeMap::new();
        for p in &pkts {
            if p.dd.temporal_id() <= t {
                *want.entry(p.dd.frame_number).or_default() += 1;
            }
        }
        assert_eq!(got, want, "T{t}");
        assert_eq!(sel.current(), Some(SvcLayer::new(0, t)));
        assert_eq!(sel.stats().switches, 1);
        assert_eq!(sel.stats().packets_forwarded as usize, out.len());
        assert!(out.iter().all(|o| o.2 == pkts[o.0].dd.end_of_frame));
    }
}

/// SFU-SVC-03: going up waits for a frame whose DTI for the new target is Switch; going
/// down takes effect at the next frame.
#[test]
fn up_waits_for_a_switch_indication_and_down_is_immediate() {
    let mut seq = 0;
    let pkts = l1t3_stream(100, 24, &mut seq);
    let mut sel = SvcSelector::new(SvcLayer::new(0, 0));
    let mut got = Vec::new();
    for p in &pkts {
        let f = p.dd.frame_number - 100;
        // Ask for everything just before frame 5 (T2), and for T0 again before frame 17.
        if p.dd.start_of_frame && f == 5 {
            sel.set_target(SvcLayer::ALL);
        }
        if p.dd.start_of_frame && f == 17 {
            sel.set_target(SvcLayer::new(0, 0));
        }
        if let SvcDecision::Forward { switched, .. } = sel.on_packet(p.seq, p.marker, &p.dd)
            && p.dd.start_of_frame
        {
            got.push((f, p.dd.temporal_id(), switched));
        }
    }
    let frames: Vec<u16> = got.iter().map(|g| g.0).collect();
    // 5 (T2) is dropped: T2 has no switch point there; 6 (T1, DTI S for T2) switches.
    assert_eq!(frames, [0, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20]);
    let switches: Vec<u16> = got.iter().filter(|g| g.2).map(|g| g.0).collect();
    assert_eq!(switches, [0, 6]);
    // The step down happened at frame 17 (dropped, T2) without waiting for a switch point.
    assert_eq!(sel.current(), Some(SvcLayer::new(0, 0)));
    assert_eq!(sel.stats().switches, 3);
}

/// SFU-SVC-03, -04: in an L2T2_KEY stream the upper spatial layer cannot be joined at a
/// delta frame, even one marked Switch, because its chain was not forwarded; only the
/// next key frame lets it up. A step down to S0 needs a key frame too, and until then the
/// selector keeps S1 rather than send S0 frames the subscriber could not decode.
#[test]
fn spatial_switches_in_a_key_structure_need_the_chain() {
    let mut seq = 1000;
    let mut pkts = l2t2_stream(0, 10, &mut seq, true);
    pkts.extend(l2t2_stream(20, 6, &mut seq, true));
    let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
    let mut first_s1 = None;
    let mut out = Vec::new();
    for (i, p) in pkts.iter().enumerate() {
        if p.dd.frame_number == 4 && p.dd.start_of_frame {
            sel.set_target(SvcLayer::ALL);
        }
        if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
            out.push((i, seq, false, false));
            if p.dd.spatial_id() == 1 && first_s1.is_none() {
                first_s1 = Some(p.dd.frame_number);
            }
        }
    }
    // S1T0 deltas (frames 5, 9, …) say Switch, but chain 1 runs through S1 frames that
    // were never sent: the first S1 frame forwarded is the second key unit's (21).
    assert_eq!(first_s1, Some(21));
    assert!(contiguous(&out));
    assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
    // Every forwarded frame's references were forwarded (decodable).
    let sent: BTreeSet<u16> = out.iter().map(|o| pkts[o.0].dd.frame_number).collect();
    for f in &sent {
        let p = pkts.iter().find(|p| p.dd.frame_number == *f).unwrap();
        assert!(p.dd.referenced_frames().all(|r| sent.contains(&r)), "{f}");
    }

    // Down to S0 from S1: S0's chain was not forwarded, so the selector keeps S1 until a
    // key frame, and then moves.
    sel.set_target(SvcLayer::new(0, 1));
    let more = l2t2_stream(32, 4, &mut seq, false);
    let out = run(&mut sel, &more);
    assert!(
        out.iter().all(|o| more[o.0].dd.spatial_id() == 1),
        "{out:?}"
    );
    assert_eq!(out.len(), 8);
    assert!(!sel.needs_key_frame(), "S1 is still usable");
    assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
    let key = l2t2_stream(40, 3, &mut seq, true);
    let out = run(&mut sel, &key);
    assert_eq!(sel.current(), Some(SvcLayer::new(0, 1)));
    let sent: Vec<u16> = out.iter().map(|o| key[o.0].dd.frame_number).collect();
    assert_eq!(sent, [40, 42, 44]);
    assert!(out[0].3, "switched at the key frame");
}

/// L2T1 full SVC: decode targets S0 and S0+S1; S1 references S0 in every unit, and S0
/// frames are part of both chains.
fn l2t1_full() -> Arc<TemplateStructure> {
    let s = TemplateStructure {
        template_id_offset: 0,
        decode_target_count: 2,
        chain_count: 2,
        templates: vec![
            tpl(0, 0, "SS", &[], &[0, 0]),
            tpl(0, 0, "SR", &[2], &[2, 1]),
            tpl(1, 0, "-S", &[1], &[1, 1]),
            tpl(1, 0, "-R", &[1, 2], &[1, 1]),
        ],
        decode_target_protected_by: vec![0, 1],
        resolutions: None,
    };
    s.validate().unwrap();
    Arc::new(s)
}

/// SFU-SVC-03, -04 in a full-SVC structure: S0's frames are all part of S1's target, so a
/// step down needs no switch point, whether asked for or forced by a broken S1 chain (the
/// selector then falls back to S0 instead of waiting, and a key frame brings S1 back).
#[test]
fn full_svc_steps_down_at_once_and_falls_back_on_a_broken_chain() {
    let s = l2t1_full();
    let mut seq = 0;
    let mut pkts = Vec::new();
    for k in 0..12u16 {
        let key = k == 0 || k == 9;
        pkts.extend(frame(&s, &mut seq, 2 * k, u8::from(!key), 1, key, false));
        pkts.extend(frame(
            &s,
            &mut seq,
            2 * k + 1,
            if key { 2 } else { 3 },
            2,
            false,
            true,
        ));
    }
    // Asked down at frame 6: S0 from frame 6 on, S1's frame 7 already dropped.
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    let mut sent = Vec::new();
    for p in &pkts {
        if p.dd.frame_number == 6 && p.dd.start_of_frame {
            sel.set_target(SvcLayer::new(0, 0));
        }
        if let SvcDecision::Forward { .. } = sel.on_packet(p.seq, p.marker, &p.dd)
            && p.dd.start_of_frame
        {
            sent.push(p.dd.frame_number);
        }
    }
    assert_eq!(sent, [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20, 22]);

    // S1's frame 9 lost: frame 10's chain 1 shows it; S0 goes on, S1 waits for the key
    // unit at 18, and the selector says a switch (a key frame) is pending meanwhile.
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    let mut sent = Vec::new();
    let mut pending_at_12 = None;
    for p in pkts.iter().filter(|p| p.dd.frame_number != 9) {
        if let SvcDecision::Forward { .. } = sel.on_packet(p.seq, p.marker, &p.dd)
            && p.dd.start_of_frame
        {
            sent.push(p.dd.frame_number);
        }
        if p.dd.frame_number == 12 {
            pending_at_12 = Some((sel.switch_pending(), sel.needs_key_frame()));
        }
    }
    assert_eq!(
        sent,
        [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 19, 20, 21, 22, 23
        ]
    );
    assert_eq!(pending_at_12, Some((Some(SvcLayer::new(1, 0)), false)));
    assert_eq!(sel.current(), Some(SvcLayer::new(1, 0)));
    assert_eq!(sel.stats().chain_breaks, 1);
}

/// SFU-SVC-04: a frame of the decode target's chain lost upstream breaks the target: later
/// frames are dropped (not sent undecodable) and a key frame is asked for; the next key
/// frame repairs it.
#[test]
fn a_broken_chain_stops_the_target_until_a_key_frame() {
    let mut seq = 0;
    let mut pkts = l2t2_stream(0, 8, &mut seq, true);
    pkts.extend(l2t2_stream(16, 4, &mut seq, true));
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    // Frame 9 (S1T0 of unit 4) never arrives.
    let lost: Vec<Pkt> = pkts
        .iter()
        .filter(|p| p.dd.frame_number != 9)
        .cloned()
        .collect();
    let mut broke_at = None;
    let mut out = Vec::new();
    for (i, p) in lost.iter().enumerate() {
        if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
            out.push((i, seq, false, false));
        }
        if sel.needs_key_frame() && broke_at.is_none() {
            broke_at = Some(p.dd.frame_number);
        }
    }
    // Frame 10 (S0T1) already shows chain 1 running through 9: the target is broken
    // there. Nothing of S1 goes out until the key unit at 16.
    assert_eq!(broke_at, Some(10));
    let sent: Vec<u16> = out
        .iter()
        .map(|o| lost[o.0].dd.frame_number)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        sent,
        [0, 1, 3, 5, 7, 16, 17, 19, 21, 23],
        "S1T1 includes S1 frames and the key frame only"
    );
    assert!(!sel.needs_key_frame());
    assert_eq!(sel.stats().chain_breaks, 1);
    // The gap of the lost frame's 2 packets shows as a gap (a real loss); dropped frames
    // leave none.
    let gaps: Vec<u16> = out
        .windows(2)
        .map(|w| w[1].1.wrapping_sub(w[0].1))
        .filter(|d| *d != 1)
        .collect();
    assert_eq!(gaps, [3], "one gap, of the two lost packets");
}

/// SFU-SVC-07: decode targets the publisher marks inactive are not chosen; when they come
/// back, the selector goes up at the next switch point.
#[test]
fn inactive_decode_targets_are_not_chosen() {
    let mut seq = 0;
    let mut pkts = l2t2_stream(0, 6, &mut seq, true);
    // Only S0 active on the key frame (as Chromium's first key frame: mask 63 of 511).
    pkts[0].dd.active_decode_targets = Some(0b0011);
    pkts.extend(l2t2_stream(12, 4, &mut seq, true));
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    let out = run(&mut sel, &pkts[..9]);
    assert!(out.iter().all(|o| pkts[o.0].dd.spatial_id() == 0));
    assert_eq!(sel.current(), Some(SvcLayer::new(0, 1)));
    assert_eq!(sel.active_decode_targets(), 0b0011);
    run(&mut sel, &pkts[9..]);
    assert_eq!(sel.active_decode_targets(), 0b1111);
    assert_eq!(sel.current(), Some(SvcLayer::new(1, 1)));
}

/// SFU-SVC-06: with the marker only at the end of the temporal unit (the S1 frame), a
/// subscriber at S0 gets it on its S0 frames' last packets.
#[test]
fn the_marker_ends_the_subscribers_temporal_unit() {
    let mut seq = 0;
    let pkts = l2t2_stream(0, 6, &mut seq, true);
    let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
    let out = run(&mut sel, &pkts);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|o| o.2), "every S0 frame ends a unit here");
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    let out = run(&mut sel, &pkts);
    // At S1 the unit ends with the S1 frame: the S0 key frame forwarded gets no marker.
    assert!(out.iter().all(|o| o.2 == pkts[o.0].marker));
    assert!(out.iter().any(|o| !o.2) && out.iter().any(|o| o.2));
}

/// SFU-SVC-02, -05: reordered packets: a late packet of a forwarded frame gets its own
/// slot; one of a dropped frame changes nothing; a packet lost inside a dropped frame
/// leaves no gap; no number is used twice.
#[test]
fn reordering_and_loss_never_reuse_a_number() {
    let s = l1t3();
    let mut seq = 10;
    let mut pkts = frame(&s, &mut seq, 0, 0, 2, true, true); // 10 11
    pkts.extend(frame(&s, &mut seq, 1, 3, 3, false, true)); // 12 13 14 (T2)
    pkts.extend(frame(&s, &mut seq, 2, 2, 2, false, true)); // 15 16 (T1)
    pkts.extend(frame(&s, &mut seq, 3, 3, 2, false, true)); // 17 18 (T2)
    pkts.extend(frame(&s, &mut seq, 4, 1, 2, false, true)); // 19 20
    let by_seq = |n: u16| pkts.iter().find(|p| p.seq == n).unwrap().clone();
    // Arrival: 13 lost (inside a dropped T2 frame), 16 overtaken by 17, 18 late after 19.
    let order = [10, 11, 12, 14, 15, 17, 16, 19, 18, 20];
    let mut sel = SvcSelector::new(SvcLayer::new(0, 1));
    let mut out = BTreeMap::new();
    for n in order {
        let p = by_seq(n);
        if let SvcDecision::Forward { seq, .. } = sel.on_packet(p.seq, p.marker, &p.dd) {
            assert!(out.insert(seq, n).is_none(), "{seq} used twice");
        }
    }
    // 10 11 | 15 16 | 19 20 → 10 11 12 13 14 15, 16 in its own slot although late.
    assert_eq!(
        out.into_iter().collect::<Vec<_>>(),
        [(10, 10), (11, 11), (12, 15), (13, 16), (14, 19), (15, 20)]
    );
}

/// SFU-SVC-08: the ladder drops temporal layers before spatial ones, and both before a
/// simulcast layer; the choice has `LayerChoice`'s hysteresis.
#[test]
fn congestion_drops_temporal_layers_first() {
    const K: u64 = 1000;
    // L3T3: per spatial layer, T0 = half, T1 = three quarters of the layer's rate.
    let mut rungs = Vec::new();
    for (sim, base) in [(0u8, 600 * K), (1, 2400 * K)] {
        for (s, full) in [(0u8, base / 6), (1, base / 3), (2, base)] {
            for (t, share) in [(0u8, 2u64), (1, 3), (2, 4)] {
                rungs.push(Rung {
                    simulcast: sim,
                    layer: SvcLayer::new(s, t),
                    bits_per_second: full * share / 4,
                });
            }
        }
    }
    let mut c = ScalableChoice::new(LayerPolicy::default());
    let cap = (1, SvcLayer::ALL);
    let at = |ms: u64| Duration::from_millis(ms);
    assert_eq!(c.update(at(0), None, &rungs, cap), Some(17));
    // 1.5 Mbit/s: simulcast layer 1's S2T2 (2.4M) and S2T1 (1.8M) do not fit, S2T0 (1.2M)
    // does: the temporal layers go, the resolution stays.
    let mut last = 17;
    for ms in (0..2000).step_by(100) {
        last = c.update(at(ms), Some(1500 * K), &rungs, cap).unwrap();
    }
    assert_eq!(
        (rungs[last].simulcast, rungs[last].layer),
        (1, SvcLayer::new(2, 0))
    );
    // 700 kbit/s: no S2 fits; S1T2 (800k) does not either, S1T1 (600k) does.
    for ms in (2000..4000).step_by(100) {
        last = c.update(at(ms), Some(700 * K), &rungs, cap).unwrap();
    }
    assert_eq!(
        (rungs[last].simulcast, rungs[last].layer),
        (1, SvcLayer::new(1, 1))
    );
    // A cap at simulcast layer 0's S1T0 is followed at once.
    let i = c
        .update(at(4000), Some(700 * K), &rungs, (0, SvcLayer::new(1, 0)))
        .unwrap();
    assert_eq!(
        (rungs[i].simulcast, rungs[i].layer),
        (0, SvcLayer::new(1, 0))
    );
    assert_eq!(c.update(at(4000), None, &[], cap), None);
}

/// SFU-SVC-08: each decode target's rate counts the frames that are part of it.
#[test]
fn decode_target_rates_count_their_frames() {
    let mut seq = 0;
    let pkts = l1t3_stream(0, 400, &mut seq);
    let mut r = SvcRates::default();
    let mut now = Duration::ZERO;
    for p in &pkts {
        if p.dd.start_of_frame {
            now += Duration::from_millis(10);
        }
        r.add(&p.dd, now, 100);
    }
    let rates: Vec<u64> = (0..3).map(|d| r.bits_per_second(d, now)).collect();
    assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
    let rungs = r.rungs(2, now);
    assert_eq!(rungs.len(), 3);
    assert!(rungs.iter().all(|g| g.simulcast == 2));
    assert_eq!(rungs[2].bits_per_second, rates[2]);
}

// --- Chromium 156's own SVC and temporal-layer streams ---

const DD_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// The packets of the capture's `codec` streams, each with its SSRC and rid, in capture
/// order, their descriptors read as the SFU reads them.
fn capture(file: &str, codec: &str) -> Vec<(u32, Option<Vec<u8>>, Pkt)> {
    use crate::routing::{ExtIds, PacketMeta, StreamRegistry};
    let v = veil_vectors::json(file);
    let id = |uri: &str| veil_vectors::ext_id(&v, uri);
    let mut reg = StreamRegistry::new(ExtIds {
        mid: id("urn:ietf:params:rtp-hdrext:sdes:mid"),
        rid: id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        rrid: id("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
        dd: id(DD_URI),
        audio_level: None,
    });
    let pts: Vec<u64> = v["rtpmap"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.as_str().unwrap().starts_with(codec))
        .map(|(pt, _)| pt.parse().unwrap())
        .collect();
    let mut out = Vec::new();
    for p in v["packets"].as_array().unwrap() {
        if !pts.contains(&p["pt"].as_u64().unwrap()) {
            continue;
        }
        let profile = u16::from_str_radix(
            p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let ssrc = p["ssrc"].as_u64().unwrap() as u32;
        let seq = p["seq"].as_u64().unwrap() as u16;
        let marker = p["marker"].as_u64() == Some(1);
        let ing = reg
            .ingest(&PacketMeta {
                ssrc,
                seq,
                timestamp: p["ts"].as_u64().unwrap() as u32,
                marker,
                ext_profile: Some(profile),
                ext_body: &body,
                len: 1200,
            })
            .unwrap();
        let dd = ing.dd.expect("Chromium puts DD on every video packet");
        out.push((ssrc, ing.rid, Pkt { seq, marker, dd }));
    }
    assert!(!out.is_empty(), "{file} has {codec} packets");
    out
}

/// Run `pkts` (one stream) through a selector capped at `want`, and check what a subscriber
/// at that decode target must get: from the frame where the selector reached it on, exactly
/// the frames whose DTI for it is present, every packet of them; before, nothing above the
/// cap; every forwarded frame's references forwarded; contiguous numbers; the target's
/// spatial layer and frame rate. Returns the forwarded frames' (spatial, temporal) counts.
fn check_target(pkts: &[Pkt], d: usize, what: &str) -> BTreeMap<(u8, u8), usize> {
    let s = pkts[0].dd.structure().unwrap().clone();
    let (sp, tp) = s.decode_target_layer(d).unwrap();
    let want = SvcLayer::new(sp, tp);
    let mut sel = SvcSelector::new(want);
    let mut reached: Option<u16> = None;
    let mut out = Vec::new();
    let mut sent = BTreeSet::new();
    for (i, p) in pkts.iter().enumerate() {
        let verdict = sel.on_packet(p.seq, p.marker, &p.dd);
        if reached.is_none() && sel.decode_target() == Some(d) {
            reached = Some(p.dd.frame_number);
        }
        let present = p.dd.dti(d).is_some_and(|x| x != Dti::NotPresent);
        match verdict {
            SvcDecision::Forward {
                seq,
                marker,
                switched,
            } => {
                out.push((i, seq, marker, switched));
                sent.insert(p.dd.frame_number);
                let layer = SvcLayer::new(p.dd.spatial_id(), p.dd.temporal_id());
                assert!(layer.within(want), "{what}: {layer:?} above the cap");
                if reached.is_some() {
                    assert!(present, "{what}: frame {} not in DT {d}", p.dd.frame_number);
                }
            }
            SvcDecision::Drop(r) => {
                assert!(
                    reached.is_none() || !present,
                    "{what}: frame {} of DT {d} dropped ({r:?})",
                    p.dd.frame_number
                );
            }
        }
    }
    let reached = reached.unwrap_or_else(|| panic!("{what}: DT {d} never reached"));
    assert!(contiguous(&out), "{what}: numbers not contiguous");
    assert_eq!(sel.current(), Some(want), "{what}");
    assert!(sel.switch_pending().is_none() && !sel.needs_key_frame());
    for p in pkts.iter().filter(|p| sent.contains(&p.dd.frame_number)) {
        assert!(
            p.dd.referenced_frames().all(|r| sent.contains(&r)),
            "{what}: frame {} sent without its references",
            p.dd.frame_number
        );
        if p.dd.spatial_id() == sp && p.dd.start_of_frame {
            assert_eq!(p.dd.resolution(), s.resolution(sp), "{what}");
        }
    }
    let mut layers = BTreeMap::new();
    let (mut top_all, mut top_upto) = (0usize, 0usize);
    for p in pkts.iter().filter(|p| p.dd.start_of_frame) {
        let f = p.dd.frame_number;
        if is_newer(reached, f) {
            continue;
        }
        if p.dd.spatial_id() == sp {
            top_all += 1;
            if p.dd.temporal_id() <= tp {
                top_upto += 1;
            }
        }
        if sent.contains(&f) {
            *layers
                .entry((p.dd.spatial_id(), p.dd.temporal_id()))
                .or_default() += 1;
        }
    }
    // Frame rate: every frame of the target's spatial layer up to its temporal layer.
    let top_sent: usize = layers
        .iter()
        .filter(|((s, _), _)| *s == sp)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(top_sent, top_upto, "{what}: of {top_all} frames of S{sp}");
    assert_eq!(layers.keys().map(|k| k.0).max(), Some(sp), "{what}");
    assert_eq!(layers.keys().map(|k| k.1).max(), Some(tp), "{what}");
    layers
}

/// Chromium 156's AV1 L3T3_KEY (`vectors/chromium156`).
const AV1_L3T3_KEY: &str = "chromium156/av1_l3t3key_sframe_raw_dd.json";
/// Chromium 148's VP9 L3T3_KEY, recorded here (`vectors/chromium148/record`).
const VP9_L3T3_KEY: &str = "chromium148/vp9_l3t3key_dd.json";

/// Each of the 9 decode targets of an L3T3_KEY capture gets exactly its frames, decodable, at
/// its resolution and frame rate, renumbered without a gap; lower spatial layers only through
/// the key frames.
fn each_l3t3_key_target(file: &str, codec: &str) -> Vec<Pkt> {
    let pkts: Vec<Pkt> = capture(file, codec)
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    let s = pkts[0].dd.structure().unwrap().clone();
    assert_eq!((s.decode_target_count, s.chain_count), (9, 3), "{file}");
    for d in 0..9 {
        let layers = check_target(&pkts, d, &format!("{codec} DT {d}"));
        let (sp, _) = s.decode_target_layer(d).unwrap();
        // KEY structure: lower spatial layers only through the key frames.
        if sp > 0 {
            let lower: usize = layers
                .iter()
                .filter(|((s, _), _)| *s < sp)
                .map(|(_, n)| n)
                .sum();
            assert!(lower <= 2, "DT {d}: {layers:?}");
        }
    }
    pkts
}

/// SFU-SVC-01..05, -07 on Chromium's AV1 L3T3_KEY: each of the 9 decode targets gets
/// exactly its frames; the S2 targets only once the second key frame made them active.
#[test]
fn chromium_av1_l3t3_key_each_decode_target_gets_exactly_its_frames() {
    let pkts = each_l3t3_key_target(AV1_L3T3_KEY, "AV1/");
    assert_eq!(pkts[0].dd.active_decode_targets, Some(0b111111));
}

/// SFU-SVC-01..05 on Chromium's VP9 L3T3_KEY (Chromium 148, recorded with
/// `vectors/chromium148/record/record.sh`): the same rules hold for a second codec's
/// structure, as the DD alone decides.
#[test]
fn chromium_vp9_l3t3_key_each_decode_target_gets_exactly_its_frames() {
    let pkts = each_l3t3_key_target(VP9_L3T3_KEY, "VP9/");
    let s = pkts[0].dd.structure().unwrap();
    // Three spatial layers, each twice the last, as the page asked for 1280x720.
    let sizes: Vec<(u32, u32)> = (0..3)
        .filter_map(|l| s.resolution(l))
        .map(|r| (r.width, r.height))
        .collect();
    assert_eq!(sizes, [(320, 180), (640, 360), (1280, 720)]);
}

/// SFU-SVC-03..05 on Chromium's AV1 L3T3_KEY, switching: S2T2, then S2T0 (at the next
/// frame), S2T2 again (at the next switch indication), then S1T2, which needs a key frame
/// the capture does not have: the selector keeps S2T2, says the switch is pending, and
/// never sends an S1 delta frame. Numbers stay contiguous throughout.
fn l3t3_key_switches(file: &str, codec: &str) -> Vec<SvcLayer> {
    let pkts: Vec<Pkt> = capture(file, codec)
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    let n = pkts.len();
    let plan = [
        (n * 3 / 10, SvcLayer::new(2, 0)),
        (n * 6 / 10, SvcLayer::new(2, 2)),
        (n * 8 / 10, SvcLayer::new(1, 2)),
    ];
    let mut sel = SvcSelector::new(SvcLayer::ALL);
    let mut out = Vec::new();
    let mut layer_at = Vec::new();
    for (i, p) in pkts.iter().enumerate() {
        if let Some((_, l)) = plan.iter().find(|(at, _)| *at == i) {
            sel.set_target(*l);
        }
        let before = sel.decode_target();
        if let SvcDecision::Forward {
            seq,
            marker,
            switched,
        } = sel.on_packet(p.seq, p.marker, &p.dd)
        {
            out.push((i, seq, marker, switched));
        }
        let after = sel.decode_target();
        if before != after
            && let (Some(b), Some(a)) = (before, after)
        {
            let l = sel.decode_target_layers().to_vec();
            // Up (anything not carried by the old target) only at a switch indication.
            if !l[a].within(l[b]) {
                assert_eq!(
                    p.dd.dti(a),
                    Some(Dti::Switch),
                    "up at frame {}",
                    p.dd.frame_number
                );
            }
            layer_at.push((i, l[a]));
        }
    }
    assert!(contiguous(&out));
    let layers: Vec<SvcLayer> = layer_at.iter().map(|x| x.1).collect();
    let n = layer_at.len();
    assert!(n >= 2, "{layers:?}");
    // Down at once: the first frame after the request.
    assert!(layer_at[n - 2].0 - plan[0].0 <= 3, "{layer_at:?}");
    // S1T2 is pending: it needs a key frame.
    assert_eq!(sel.switch_pending(), Some(SvcLayer::new(1, 2)));
    assert_eq!(sel.current(), Some(SvcLayer::new(2, 2)));
    let s1_deltas = out
        .iter()
        .filter(|o| pkts[o.0].dd.spatial_id() == 1 && !pkts[o.0].dd.frame.fdiffs.is_empty())
        .filter(|o| pkts[o.0].dd.frame.fdiffs.iter().all(|f| *f != 1))
        .count();
    assert_eq!(s1_deltas, 0);
    // While at S2T0 only T0 frames went out.
    for o in out
        .iter()
        .filter(|o| o.0 > layer_at[n - 2].0 && o.0 < layer_at[n - 1].0)
    {
        assert_eq!(pkts[o.0].dd.temporal_id(), 0);
    }
    layers
}

/// SFU-SVC-03..05 on Chromium's AV1 L3T3_KEY, switching ([`l3t3_key_switches`]).
#[test]
fn chromium_av1_l3t3_key_switches_only_where_the_descriptor_allows() {
    // S1T2 while Chromium's first key frame has only S0 and S1 active, S2T2 from its
    // second, then as asked.
    assert_eq!(
        l3t3_key_switches(AV1_L3T3_KEY, "AV1/"),
        [
            SvcLayer::new(2, 2),
            SvcLayer::new(2, 0),
            SvcLayer::new(2, 2)
        ]
    );
}

/// SFU-SVC-03..05 on Chromium's VP9 L3T3_KEY, switching ([`l3t3_key_switches`]).
#[test]
fn chromium_vp9_l3t3_key_switches_only_where_the_descriptor_allows() {
    // Every target active from the first key frame: S2T2, down to S2T0, back up.
    assert_eq!(
        l3t3_key_switches(VP9_L3T3_KEY, "VP9/"),
        [
            SvcLayer::new(2, 2),
            SvcLayer::new(2, 0),
            SvcLayer::new(2, 2)
        ]
    );
}

/// SFU-SVC-01, -02, -05 on Chromium's VP8 simulcast L1T3: on each simulcast stream, each
/// temporal decode target gets exactly its frames, whole, contiguous, at its frame rate.
#[test]
fn chromium_vp8_l1t3_each_stream_and_temporal_target() {
    let all = capture("chromium156/sim_vp8_l1t3_sframe_dd.json", "VP8/");
    let ssrcs: BTreeSet<u32> = all.iter().map(|x| x.0).collect();
    assert_eq!(ssrcs.len(), 3);
    for ssrc in ssrcs {
        let pkts: Vec<Pkt> = all
            .iter()
            .filter(|x| x.0 == ssrc)
            .map(|x| x.2.clone())
            .collect();
        let s = pkts[0].dd.structure().unwrap().clone();
        assert_eq!(s.decode_target_count, 3);
        let mut counts = Vec::new();
        for d in 0..3 {
            let layers = check_target(&pkts, d, &format!("VP8 {ssrc} T{d}"));
            counts.push(layers.values().sum::<usize>());
        }
        assert!(counts[0] < counts[1] && counts[1] < counts[2], "{counts:?}");
    }
}
