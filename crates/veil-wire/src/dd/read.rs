//! Reading a descriptor (RTP-DD-01..05): mandatory fields, extended fields, the template
//! structure, and the frame's dependencies resolved against a structure.

use std::sync::Arc;

use super::bits::BitReader;
use super::types::{
    ChainDiffs, Dti, Dtis, Fdiffs, FrameDependencies, MAX_SPATIAL_LAYERS, MAX_TEMPLATES,
    MAX_TEMPORAL_LAYERS, Resolution, TemplateStructure,
};
use super::{DependencyDescriptor, MAX_DD_LEN, WHAT, all_targets};
use crate::error::{Result, WireError};

fn malformed(reason: &'static str) -> WireError {
    WireError::Malformed { what: WHAT, reason }
}

impl DependencyDescriptor {
    /// Parse `data` (the extension element's bytes) against `latched`, the stream's current
    /// structure. `latched` is ignored when the packet carries its own structure. Trailing
    /// padding bits are ignored. Nothing is allocated unless the packet carries a structure
    /// (RTP-DD-10).
    ///
    /// # Errors
    /// - [`WireError::Truncated`] if a field runs past the end;
    /// - [`WireError::Malformed`] for a template id outside the structure (RTP-DD-04), a structure
    ///   beyond the bounds of RTP-DD-02, more than 16 custom fdiffs, or more than 255 bytes;
    /// - [`WireError::MissingStructure`] (its `structure_id` is the packet's template id) if the
    ///   packet needs a structure and none is latched (RTP-DD-03).
    pub fn parse(data: &[u8], latched: Option<&Arc<TemplateStructure>>) -> Result<Self> {
        if data.len() < 3 {
            return Err(WireError::Truncated {
                what: WHAT,
                needed: 3,
                got: data.len(),
            });
        }
        if data.len() > MAX_DD_LEN {
            return Err(malformed("longer than 255 bytes"));
        }
        let mut r = BitReader::new(data);
        // RTP-DD-01: mandatory fields.
        let start_of_frame = r.flag()?;
        let end_of_frame = r.flag()?;
        let template_id = r.f(6)? as u8;
        let frame_number = r.f(16)? as u16;
        let missing = WireError::MissingStructure {
            structure_id: template_id,
        };
        let (mut custom_dtis, mut custom_fdiffs, mut custom_chains) = (false, false, false);
        let mut attached = None;
        let mut active = None;
        if data.len() > 3 {
            let structure_present = r.flag()?;
            let active_present = r.flag()?;
            custom_dtis = r.flag()?;
            custom_fdiffs = r.flag()?;
            custom_chains = r.flag()?;
            if structure_present {
                let s = read_structure(&mut r)?;
                active = Some(all_targets(s.decode_target_count));
                attached = Some(Arc::new(s));
            }
            if active_present {
                let dt = attached
                    .as_ref()
                    .or(latched)
                    .ok_or(missing.clone())?
                    .decode_target_count;
                active = Some(r.f(u32::from(dt))?);
            }
        }
        let structure = match (&attached, latched) {
            (Some(s), _) | (None, Some(s)) => s.clone(),
            (None, None) => return Err(missing),
        };
        let idx = structure.template_index(template_id).ok_or(malformed(
            "template id is outside the structure (RTP-DD-04)",
        ))?;
        // RTP-DD-05: custom values override the template.
        let mut frame = structure.templates[idx];
        if custom_dtis {
            let mut d = Dtis::default();
            for _ in 0..structure.decode_target_count {
                d.push(Dti::from_bits(r.f(2)?))?;
            }
            frame.dtis = d;
        }
        if custom_fdiffs {
            let mut f = Fdiffs::default();
            loop {
                // Bounded: `push` refuses the 17th fdiff, and every round reads 2 bits.
                let size = r.f(2)?;
                if size == 0 {
                    break;
                }
                f.push((r.f(4 * size)? + 1) as u16)?;
            }
            frame.fdiffs = f;
        }
        if custom_chains {
            let mut c = ChainDiffs::default();
            for _ in 0..structure.chain_count {
                c.push(r.f(8)? as u8)?;
            }
            frame.chain_diffs = c;
        }
        Ok(Self {
            start_of_frame,
            end_of_frame,
            template_id,
            frame_number,
            attached_structure: attached,
            active_decode_targets: active,
            frame,
            structure: Some(structure),
        })
    }
}

/// `template_dependency_structure()` (RTP-DD-02).
fn read_structure(r: &mut BitReader<'_>) -> Result<TemplateStructure> {
    let template_id_offset = r.f(6)? as u8;
    let dt = r.f(5)? as u8 + 1;
    let templates = read_template_layers(r)?;
    let mut s = TemplateStructure {
        template_id_offset,
        decode_target_count: dt,
        templates,
        chain_count: 0,
        decode_target_protected_by: Vec::new(),
        resolutions: None,
    };
    for t in &mut s.templates {
        for _ in 0..dt {
            t.dtis.push(Dti::from_bits(r.f(2)?))?;
        }
    }
    for t in &mut s.templates {
        // Bounded by the 16-entry list and by the input.
        while r.flag()? {
            t.fdiffs.push(r.f(4)? as u16 + 1)?;
        }
    }
    s.chain_count = r.ns(u32::from(dt) + 1)? as u8;
    if s.chain_count > 0 {
        for _ in 0..dt {
            let c = r.ns(u32::from(s.chain_count))? as u8;
            s.decode_target_protected_by.push(c);
        }
        for t in &mut s.templates {
            for _ in 0..s.chain_count {
                t.chain_diffs.push(r.f(4)? as u8)?;
            }
        }
    }
    if r.flag()? {
        // At most MAX_SPATIAL_LAYERS, enforced by `read_template_layers`.
        let layers = usize::from(s.max_spatial_id()) + 1;
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            let width = r.f(16)? + 1;
            let height = r.f(16)? + 1;
            v.push(Resolution { width, height });
        }
        s.resolutions = Some(v);
    }
    Ok(s)
}

/// `template_layers()`: one template per `next_layer_idc`, until 3.
fn read_template_layers(r: &mut BitReader<'_>) -> Result<Vec<FrameDependencies>> {
    let mut templates = Vec::new();
    let (mut sid, mut tid) = (0u8, 0u8);
    loop {
        if templates.len() == MAX_TEMPLATES {
            return Err(malformed("more than 64 templates"));
        }
        templates.push(FrameDependencies {
            spatial_id: sid,
            temporal_id: tid,
            ..FrameDependencies::default()
        });
        match r.f(2)? {
            0 => {}
            1 => {
                tid += 1;
                if usize::from(tid) >= MAX_TEMPORAL_LAYERS {
                    return Err(malformed("more than 8 temporal layers"));
                }
            }
            2 => {
                tid = 0;
                sid += 1;
                if usize::from(sid) >= MAX_SPATIAL_LAYERS {
                    return Err(malformed("more than 4 spatial layers"));
                }
            }
            _ => return Ok(templates),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The first packet of Chromium 156's first VP8 L1T1 key frame (`vp8_sframe_dd.json`, seq
    /// 16572): two templates, one decode target, no chains, 640x480. Decoded by hand:
    /// `next_layer_idc` 0 then 3, DTIs `S S`, fdiffs `[]` and `[1]`, `ns(2)` = 0 chains in one
    /// bit, then the resolution 639+1 x 479+1.
    const CHROMIUM_L1T1_KEY: [u8; 12] = [
        0x80, 0x00, 0x01, 0x80, 0x00, 0x3a, 0x40, 0x81, 0x3f, 0x80, 0xef, 0x80,
    ];

    fn key_structure() -> Arc<TemplateStructure> {
        DependencyDescriptor::parse(&CHROMIUM_L1T1_KEY, None)
            .unwrap()
            .attached_structure
            .unwrap()
    }

    #[test]
    fn chromium_l1t1_key_frame_reads_field_by_field() {
        let d = DependencyDescriptor::parse(&CHROMIUM_L1T1_KEY, None).unwrap();
        assert!(d.start_of_frame && !d.end_of_frame && d.is_key_frame_start());
        assert_eq!((d.template_id, d.frame_number), (0, 1));
        let s = d.attached_structure.as_ref().unwrap();
        assert_eq!((s.template_id_offset, s.decode_target_count), (0, 1));
        assert_eq!((s.chain_count, s.decode_target_protected_by.len()), (0, 0));
        let t = |fdiffs: &[u16]| FrameDependencies {
            spatial_id: 0,
            temporal_id: 0,
            dtis: Dtis::from_slice(&[Dti::Switch]).unwrap(),
            fdiffs: Fdiffs::from_slice(fdiffs).unwrap(),
            chain_diffs: ChainDiffs::default(),
        };
        assert_eq!(s.templates, vec![t(&[]), t(&[1])]);
        assert_eq!(
            s.resolution(0),
            Some(Resolution {
                width: 640,
                height: 480
            })
        );
        assert_eq!(d.active_decode_targets, Some(1));
        assert_eq!(s.decode_target_layer(0), Some((0, 0)));
        assert_eq!(s.decode_target_layer(1), None);
        s.validate().unwrap();
    }

    /// RTP-DD-03: a 3-byte descriptor needs a structure, and so does an active-targets mask.
    #[test]
    fn missing_structure_is_a_typed_error() {
        for bytes in [&[0xC5, 0x00, 0x07][..], &[0x85, 0x00, 0x07, 0x40, 0x80]] {
            assert_eq!(
                DependencyDescriptor::parse(bytes, None),
                Err(WireError::MissingStructure { structure_id: 5 })
            );
        }
    }

    /// RTP-DD-04: ids resolve modulo 64 relative to the offset; others are refused.
    #[test]
    fn template_ids_resolve_relative_to_the_offset() {
        let mut s = (*key_structure()).clone();
        s.template_id_offset = 63; // templates 63 and 0 (wrapping)
        let s = Arc::new(s);
        for (id, want) in [(63u8, Some(0usize)), (0, Some(1)), (1, None), (62, None)] {
            let got = DependencyDescriptor::parse(&[0x80 | id, 0, 9], Some(&s));
            match want {
                Some(idx) => assert_eq!(got.unwrap().frame, s.templates[idx]),
                None => assert_eq!(
                    got,
                    Err(malformed(
                        "template id is outside the structure (RTP-DD-04)"
                    ))
                ),
            }
        }
    }

    #[test]
    fn layer_and_list_bounds_are_enforced() {
        // Structure header with offset 0, DtCnt 1, then next_layer_idc values.
        let structure_with = |idcs: &[u32]| {
            let mut buf = [0u8; 40];
            let mut w = super::super::bits::BitWriter::new(&mut buf);
            w.f(24, 0x800001).unwrap(); // start, template 0, frame 1
            w.f(5, 0b10000).unwrap(); // structure present
            w.f(6, 0).unwrap();
            w.f(5, 0).unwrap();
            for &i in idcs {
                w.f(2, i).unwrap();
            }
            buf
        };
        let five_spatial = structure_with(&[2, 2, 2, 2, 3]);
        assert_eq!(
            DependencyDescriptor::parse(&five_spatial, None),
            Err(malformed("more than 4 spatial layers"))
        );
        let nine_temporal = structure_with(&[1, 1, 1, 1, 1, 1, 1, 1, 3]);
        assert_eq!(
            DependencyDescriptor::parse(&nine_temporal, None),
            Err(malformed("more than 8 temporal layers"))
        );
        // 64 x "same layer" and never a 3: the 65th template is refused.
        let sixty_five = structure_with(&[0; 64]);
        assert_eq!(
            DependencyDescriptor::parse(&sixty_five, None),
            Err(malformed("more than 64 templates"))
        );
        // 17 custom fdiffs against a latched structure.
        let s = key_structure();
        let mut buf = [0u8; 40];
        let mut w = super::super::bits::BitWriter::new(&mut buf);
        w.f(24, 0x800001).unwrap();
        w.f(5, 0b00010).unwrap(); // custom fdiffs
        for _ in 0..17 {
            w.f(6, 0b01_0000).unwrap();
        }
        assert!(matches!(
            DependencyDescriptor::parse(&buf, Some(&s)),
            Err(WireError::Malformed { .. })
        ));
        assert_eq!(
            DependencyDescriptor::parse(&[0; 256], Some(&s)),
            Err(malformed("longer than 255 bytes"))
        );
    }

    /// Every prefix of a valid structure-carrying descriptor is refused, never read as
    /// something else: the 3-byte prefix is a mandatory-only descriptor that needs a latched
    /// structure, every other prefix is truncated.
    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..CHROMIUM_L1T1_KEY.len() {
            let got = DependencyDescriptor::parse(&CHROMIUM_L1T1_KEY[..len], None);
            let ok = match len {
                3 => got == Err(WireError::MissingStructure { structure_id: 0 }),
                _ => matches!(got, Err(WireError::Truncated { .. })),
            };
            assert!(ok, "prefix of {len} bytes: {got:?}");
        }
    }

    /// Random input never panics; anything that parses was read against a structure, and every
    /// structure it reads passes `validate`.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5EED);
        let s = key_structure();
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if len > 0 && rng.random_bool(0.5) {
                data[0] &= 0xC1; // template id 0 or 1: in the latched structure's range
            }
            if len > 3 && rng.random_bool(0.3) {
                data[3] |= 0x80; // structure present
            }
            for latched in [None, Some(&s)] {
                if let Ok(d) = DependencyDescriptor::parse(&data, latched) {
                    assert!(d.structure().is_some());
                    // What the reader accepts, the writer accepts back.
                    if let Some(s) = &d.attached_structure {
                        s.validate().unwrap();
                    }
                    parsed += 1;
                }
            }
        }
        assert!(parsed > 3000, "only {parsed} random inputs parsed");
    }
}
