use std::collections::HashMap;

use proptest::prelude::*;
use veil_wire::dd::{ChainDiffs, Dtis, Fdiffs, FrameDependencies};

use super::*;
use crate::routing::caller_input::any_duration;

fn structure(dts: u8, chains: u8) -> Arc<TemplateStructure> {
    let t = |s: u8, tid: u8| FrameDependencies {
        spatial_id: s,
        temporal_id: tid,
        dtis: Dtis::from_slice(&vec![Dti::Switch; usize::from(dts)]).unwrap(),
        fdiffs: Fdiffs::default(),
        chain_diffs: ChainDiffs::from_slice(&vec![0; usize::from(chains)]).unwrap(),
    };
    Arc::new(TemplateStructure {
        template_id_offset: 0,
        decode_target_count: dts,
        chain_count: chains,
        templates: vec![t(0, 0), t(0, 1), t(1, 0), t(1, 1)],
        decode_target_protected_by: if chains == 0 {
            Vec::new()
        } else {
            (0..dts).map(|d| d % chains).collect()
        },
        resolutions: None,
    })
}

fn dti(b: u8) -> Dti {
    [
        Dti::NotPresent,
        Dti::Discardable,
        Dti::Switch,
        Dti::Required,
    ][usize::from(b % 4)]
}

prop_compose! {
    /// One packet: a seq step back or forward (reordering, loss), frame number step, flags,
    /// custom DTIs, fdiffs and chain diffs, and now and then a structure or a mask.
    fn packet()(
        seq_step in -8i32..12,
        frame_step in -3i32..4,
        sof: bool, eof: bool, marker: bool,
        tid in 0u8..4,
        dtis in proptest::collection::vec(any::<u8>(), 0..6),
        fdiffs in proptest::collection::vec(1u16..40, 0..4),
        chains in proptest::collection::vec(any::<u8>(), 0..4),
        key in proptest::bool::weighted(0.05),
        mask in proptest::option::weighted(0.05, any::<u32>()),
    ) -> (i32, i32, bool, bool, bool, u8, Vec<u8>, Vec<u16>, Vec<u8>, bool, Option<u32>) {
        (seq_step, frame_step, sof, eof, marker, tid, dtis, fdiffs, chains, key, mask)
    }
}

proptest! {
    #[test]
    fn any_descriptors_never_reuse_a_number(
        dts in 1u8..5,
        chains in 0u8..3,
        start_seq: u16,
        start_frame: u16,
        cap in (any::<u8>(), any::<u8>()),
        packets in proptest::collection::vec(packet(), 1..200),
    ) {
        let s = structure(dts, chains.min(dts));
        let mut sel = SvcSelector::new(SvcLayer::new(cap.0 % 3, cap.1 % 3));
        let (mut seq, mut frame) = (start_seq, start_frame);
        let mut out: HashMap<u16, u16> = HashMap::new();
        for (i, p) in packets.into_iter().enumerate() {
            let (ss, fs, sof, eof, marker, tid, dtis, fdiffs, cd, key, mask) = p;
            seq = seq.wrapping_add(ss as u16);
            frame = frame.wrapping_add(fs as u16);
            let mut dd = DependencyDescriptor::new(sof, eof, tid, frame, &s).unwrap();
            if key || i == 0 {
                dd = dd.with_structure(s.clone());
            } else {
                dd.frame.fdiffs = Fdiffs::from_slice(&fdiffs).unwrap();
            }
            if !dtis.is_empty() {
                let d: Vec<Dti> = dtis.iter().map(|b| dti(*b)).collect();
                dd.frame.dtis = Dtis::from_slice(&d).unwrap();
            }
            if !cd.is_empty() {
                dd.frame.chain_diffs = ChainDiffs::from_slice(&cd).unwrap();
            }
            dd.active_decode_targets = mask;
            if i % 37 == 36 {
                sel.set_target(SvcLayer::new(cd.len() as u8, tid));
            }
            if let SvcDecision::Forward { seq: o, .. } = sel.on_packet(seq, marker, &dd)
                && let Some(prev) = out.insert(o, seq)
            {
                prop_assert_eq!(prev, seq, "input {} and {} both left as {}", prev, seq, o);
            }
            let _ = (sel.current(), sel.switch_pending(), sel.needs_key_frame());
        }
    }

    #[test]
    fn rates_and_choice_take_any_input(
        now in any_duration(),
        estimate: Option<u64>,
        rates in proptest::collection::vec((0u8..4, 0u8..3, 0u8..3, any::<u64>()), 0..12),
        cap in (any::<u8>(), any::<u8>(), any::<u8>()),
    ) {
        let rungs: Vec<Rung> = rates
            .iter()
            .map(|&(sim, s, t, bps)| Rung {
                simulcast: sim,
                layer: SvcLayer::new(s, t),
                bits_per_second: bps,
            })
            .collect();
        let mut c = ScalableChoice::new(LayerPolicy::default());
        let cap = (cap.0, SvcLayer::new(cap.1, cap.2));
        match c.update(now, estimate, &rungs, cap) {
            Some(i) => prop_assert!(i < rungs.len()),
            None => prop_assert!(rungs.is_empty()),
        }
        let mut r = SvcRates::default();
        let s = structure(3, 1);
        let dd = DependencyDescriptor::new(true, true, 0, 1, &s).unwrap().with_structure(s.clone());
        r.add(&dd, now, 1200);
        prop_assert!(r.rungs(0, now).len() <= 4);
    }
}
