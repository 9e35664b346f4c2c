//! Writing a descriptor (RTP-DD-06): the 3-byte form when the frame is its template, otherwise
//! the extended form with only the custom fields that differ.

use super::bits::BitWriter;
use super::types::TemplateStructure;
use super::{DependencyDescriptor, MAX_DD_LEN, WHAT, all_targets};
use crate::error::{Result, WireError};

impl DependencyDescriptor {
    /// Write this descriptor against `structure` into `out`; returns its length (RTP-DD-06).
    ///
    /// `structure` is the one the receiver will read against: the stream's latched structure,
    /// or the attached one when this packet carries a structure (they must then be equal).
    /// An active-targets mask equal to "all" is left out on a packet that carries the
    /// structure, since the structure implies it.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] if the frame does not fit the structure (unknown template,
    /// wrong layer, list lengths, fdiffs outside 1..=4096, mask bits beyond the decode targets),
    /// or the attached structure is invalid or differs from `structure`;
    /// [`WireError::BufferTooSmall`] if `out` cannot hold the descriptor.
    pub fn write(&self, structure: &TemplateStructure, out: &mut [u8]) -> Result<usize> {
        let bad = |reason| Err(WireError::InvalidArgument { what: WHAT, reason });
        if let Some(s) = &self.attached_structure {
            if **s != *structure {
                return bad("the attached structure differs from the structure to write against");
            }
            s.validate()?;
        }
        let Some(idx) = structure.template_index(self.template_id) else {
            return bad("template id is not in the structure");
        };
        let t = &structure.templates[idx];
        let f = &self.frame;
        if f.spatial_id != t.spatial_id || f.temporal_id != t.temporal_id {
            return bad("frame layer differs from its template's layer");
        }
        if f.dtis.len() != usize::from(structure.decode_target_count)
            || f.chain_diffs.len() != usize::from(structure.chain_count)
        {
            return bad("frame needs one DTI per decode target and one diff per chain");
        }
        if f.fdiffs.iter().any(|&d| !(1..=4096).contains(&d)) {
            return bad("frame diffs must be 1..=4096");
        }
        let dt = structure.decode_target_count;
        if self
            .active_decode_targets
            .is_some_and(|m| m & !all_targets(dt) != 0)
        {
            return bad("active decode-target mask has bits beyond the structure's decode targets");
        }
        let custom_dtis = f.dtis != t.dtis;
        let custom_fdiffs = f.fdiffs != t.fdiffs;
        let custom_chains = f.chain_diffs != t.chain_diffs;
        let active = match self.active_decode_targets {
            Some(mask) if self.attached_structure.is_some() && mask == all_targets(dt) => None,
            m => m,
        };
        let extended = self.attached_structure.is_some()
            || active.is_some()
            || custom_dtis
            || custom_fdiffs
            || custom_chains;
        let cap = out.len().min(MAX_DD_LEN);
        let mut w = BitWriter::new(&mut out[..cap]);
        w.flag(self.start_of_frame)?;
        w.flag(self.end_of_frame)?;
        w.f(6, u32::from(self.template_id))?;
        w.f(16, u32::from(self.frame_number))?;
        if !extended {
            return Ok(3);
        }
        w.flag(self.attached_structure.is_some())?;
        w.flag(active.is_some())?;
        w.flag(custom_dtis)?;
        w.flag(custom_fdiffs)?;
        w.flag(custom_chains)?;
        if let Some(s) = &self.attached_structure {
            write_structure(&mut w, s)?;
        }
        if let Some(mask) = active {
            w.f(u32::from(dt), mask)?;
        }
        if custom_dtis {
            for d in f.dtis.iter() {
                w.f(2, *d as u32)?;
            }
        }
        if custom_fdiffs {
            for &d in f.fdiffs.iter() {
                // The fewest nibbles that hold fdiff - 1 (Chromium does the same).
                let v = u32::from(d) - 1;
                let size = match v {
                    0..=0xF => 1,
                    0x10..=0xFF => 2,
                    _ => 3,
                };
                w.f(2, size)?;
                w.f(4 * size, v)?;
            }
            w.f(2, 0)?;
        }
        if custom_chains {
            for &c in f.chain_diffs.iter() {
                w.f(8, u32::from(c))?;
            }
        }
        Ok(w.bits_written().div_ceil(8))
    }
}

/// `template_dependency_structure()`; `s` has passed [`TemplateStructure::validate`].
fn write_structure(w: &mut BitWriter<'_>, s: &TemplateStructure) -> Result<()> {
    w.f(6, u32::from(s.template_id_offset))?;
    w.f(5, u32::from(s.decode_target_count) - 1)?;
    for (i, t) in s.templates.iter().enumerate() {
        let idc = match s.templates.get(i + 1) {
            None => 3,
            Some(n) if n.spatial_id == t.spatial_id && n.temporal_id == t.temporal_id => 0,
            Some(n) if n.spatial_id == t.spatial_id => 1,
            Some(_) => 2,
        };
        w.f(2, idc)?;
    }
    for t in &s.templates {
        for d in t.dtis.iter() {
            w.f(2, *d as u32)?;
        }
    }
    for t in &s.templates {
        for &d in t.fdiffs.iter() {
            w.flag(true)?;
            w.f(4, u32::from(d) - 1)?;
        }
        w.flag(false)?;
    }
    w.ns(
        u32::from(s.decode_target_count) + 1,
        u32::from(s.chain_count),
    )?;
    if s.chain_count > 0 {
        for &c in &s.decode_target_protected_by {
            w.ns(u32::from(s.chain_count), u32::from(c))?;
        }
        for t in &s.templates {
            for &c in t.chain_diffs.iter() {
                w.f(4, u32::from(c))?;
            }
        }
    }
    w.flag(s.resolutions.is_some())?;
    if let Some(res) = &s.resolutions {
        for r in res {
            w.f(16, r.width - 1)?;
            w.f(16, r.height - 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::types::{ChainDiffs, Dti, Dtis, Fdiffs, FrameDependencies, Resolution};
    use super::super::{DdLatch, MAX_DD_LEN};
    use super::*;

    /// A random structure that passes `validate`: 1..=8 decode targets, up to as many chains,
    /// 1..=3 spatial and 1..=3 temporal layers, 1..=2 templates per layer.
    pub(crate) fn random_structure(rng: &mut StdRng) -> TemplateStructure {
        let dt = rng.random_range(1..=8u8);
        let chains = rng.random_range(0..=dt);
        let spatial = rng.random_range(1..=3u8);
        let mut templates = Vec::new();
        for sid in 0..spatial {
            for tid in 0..rng.random_range(1..=3u8) {
                for _ in 0..rng.random_range(1..=2) {
                    let dtis: Vec<Dti> = (0..dt)
                        .map(|_| Dti::from_bits(rng.random_range(0..4)))
                        .collect();
                    let fd: Vec<u16> = (0..rng.random_range(0..=3))
                        .map(|_| rng.random_range(1..=16))
                        .collect();
                    let cd: Vec<u8> = (0..chains).map(|_| rng.random_range(0..=15)).collect();
                    templates.push(FrameDependencies {
                        spatial_id: sid,
                        temporal_id: tid,
                        dtis: Dtis::from_slice(&dtis).unwrap(),
                        fdiffs: Fdiffs::from_slice(&fd).unwrap(),
                        chain_diffs: ChainDiffs::from_slice(&cd).unwrap(),
                    });
                }
            }
        }
        TemplateStructure {
            template_id_offset: rng.random_range(0..64),
            decode_target_count: dt,
            templates,
            chain_count: chains,
            decode_target_protected_by: if chains == 0 {
                vec![]
            } else {
                (0..dt).map(|_| rng.random_range(0..chains)).collect()
            },
            resolutions: rng.random_bool(0.5).then(|| {
                (0..spatial)
                    .map(|_| Resolution {
                        width: rng.random_range(1..=65536),
                        height: rng.random_range(1..=65536),
                    })
                    .collect()
            }),
        }
    }

    /// RTP-DD-06, property style: random structures and frames (custom DTIs, fdiffs, chains and
    /// masks included) written by us read back equal through a latch; frames that are their
    /// template take exactly 3 bytes.
    #[test]
    fn random_descriptors_round_trip_through_writer_and_latch() {
        let mut rng = StdRng::seed_from_u64(0xDD);
        let (mut three_byte, mut custom) = (0, 0);
        for _ in 0..500 {
            let s = Arc::new(random_structure(&mut rng));
            s.validate().unwrap();
            let mut latch = DdLatch::default();
            for i in 0..20u16 {
                let idx = rng.random_range(0..s.templates.len());
                let mut d = DependencyDescriptor::new(
                    rng.random_bool(0.5),
                    rng.random_bool(0.5),
                    s.template_id(idx),
                    i,
                    &s,
                )
                .unwrap();
                if i == 0 {
                    d = d.with_structure(s.clone());
                    d.active_decode_targets = Some(all_targets(s.decode_target_count));
                }
                let plain = i > 0 && rng.random_bool(0.4);
                if !plain {
                    if rng.random_bool(0.3) {
                        let dtis: Vec<Dti> = (0..s.decode_target_count)
                            .map(|_| Dti::from_bits(rng.random_range(0..4)))
                            .collect();
                        d.frame.dtis = Dtis::from_slice(&dtis).unwrap();
                    }
                    if rng.random_bool(0.3) {
                        let fd: Vec<u16> = (0..rng.random_range(0..=4))
                            .map(|_| rng.random_range(1..=4096))
                            .collect();
                        d.frame.fdiffs = Fdiffs::from_slice(&fd).unwrap();
                    }
                    if rng.random_bool(0.3) {
                        let cd: Vec<u8> = (0..s.chain_count).map(|_| rng.random()).collect();
                        d.frame.chain_diffs = ChainDiffs::from_slice(&cd).unwrap();
                    }
                    if rng.random_bool(0.3) {
                        let all = all_targets(s.decode_target_count);
                        d.active_decode_targets = Some(rng.random::<u32>() & all);
                    }
                }
                let mut buf = [0u8; MAX_DD_LEN];
                let n = d.write(&s, &mut buf).unwrap();
                if plain {
                    assert_eq!(n, 3, "a frame equal to its template is 3 bytes");
                    three_byte += 1;
                } else if d.frame != s.templates[idx] {
                    custom += 1;
                }
                assert_eq!(latch.parse(&buf[..n]).unwrap(), d);
            }
        }
        assert!(three_byte > 1000 && custom > 1000, "{three_byte} {custom}");
    }

    #[test]
    fn a_single_layer_structure_round_trips_and_its_deltas_reference_delta_fdiff_back() {
        let s = Arc::new(TemplateStructure::single_layer(640, 360, 3));
        s.validate().unwrap();
        let mut buf = [0u8; MAX_DD_LEN];
        let key = DependencyDescriptor::new(true, true, 0, 7, &s)
            .unwrap()
            .with_structure(s.clone());
        let n = key.write(&s, &mut buf).unwrap();
        let mut latch = DdLatch::default();
        let k = latch.parse(&buf[..n]).unwrap();
        assert!(k.is_key_frame_start());
        assert_eq!(latch.structure().map(|l| **l == *s), Some(true));
        let delta = DependencyDescriptor::new(true, true, 1, 10, &s).unwrap();
        let n = delta.write(&s, &mut buf).unwrap();
        let d = latch.parse(&buf[..n]).unwrap();
        assert_eq!(d.referenced_frames().collect::<Vec<_>>(), [7]);
        // A template fdiff takes four bits: 17 cannot be written.
        let wide = Arc::new(TemplateStructure::single_layer(640, 360, 17));
        let k = DependencyDescriptor::new(true, true, 0, 1, &wide).unwrap();
        assert!(
            k.with_structure(wide.clone())
                .write(&wide, &mut buf)
                .is_err()
        );
    }

    #[test]
    fn misuse_is_refused_not_written() {
        let mut rng = StdRng::seed_from_u64(7);
        let s = Arc::new(random_structure(&mut rng));
        let other = Arc::new(TemplateStructure {
            template_id_offset: (s.template_id_offset + 1) % 64,
            ..(*s).clone()
        });
        let d = DependencyDescriptor::new(true, true, s.template_id(0), 1, &s).unwrap();
        let mut buf = [0u8; MAX_DD_LEN];
        let refused = |d: &DependencyDescriptor, s: &TemplateStructure, buf: &mut [u8]| {
            matches!(d.write(s, buf), Err(WireError::InvalidArgument { .. }))
        };
        assert!(refused(&d.clone().with_structure(other), &s, &mut buf));
        let mut wide = d.clone();
        wide.active_decode_targets = Some(1 << s.decode_target_count);
        assert!(s.decode_target_count == 32 || refused(&wide, &s, &mut buf));
        let mut layer = d.clone();
        layer.frame.temporal_id += 1;
        assert!(refused(&layer, &s, &mut buf));
        let mut far = d.clone();
        far.frame.fdiffs = Fdiffs::from_slice(&[4097]).unwrap();
        assert!(refused(&far, &s, &mut buf));
        assert!(matches!(
            DependencyDescriptor::new(true, true, s.template_id(s.templates.len()), 1, &s),
            Err(WireError::InvalidArgument { .. })
        ));
        let key = d.with_structure(s.clone());
        assert!(matches!(
            key.write(&s, &mut buf[..4]),
            Err(WireError::BufferTooSmall { .. })
        ));
    }
}
