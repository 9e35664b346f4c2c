//! The AV1 dependency descriptor (DD) RTP header extension: the "Dependency Descriptor RTP
//! Header Extension" appendix of the AV1 RTP specification.
//!
//! Chromium sends DD on every video packet once it is negotiated. Chromium has no RFC 9626 frame
//! marking, and a Chromium receiver misreads encrypted frames that arrive without DD. DD is
//! therefore Veil's one source of frame boundaries, key frames and layers. A blind SFU routes on
//! it. A Veil client writes it exactly as Chromium does.
//!
//! A descriptor refers to a **template structure**. The structure is sent on key frames, and every
//! later descriptor of the stream is read against it, so readers keep one [`DdLatch`] per stream
//! (per SSRC).
//!
//! ```
//! use veil_wire::dd::{DdLatch, DependencyDescriptor, Dti, FrameDependencies, Resolution,
//!     TemplateStructure, Dtis, Fdiffs, ChainDiffs};
//! use std::sync::Arc;
//!
//! // One spatial layer, two temporal layers, one decode target per temporal layer.
//! let t = |tid: u8, dtis: &[Dti], fdiffs: &[u16]| FrameDependencies {
//!     spatial_id: 0, temporal_id: tid, dtis: Dtis::from_slice(dtis).unwrap(),
//!     fdiffs: Fdiffs::from_slice(fdiffs).unwrap(), chain_diffs: ChainDiffs::default(),
//! };
//! let s = Arc::new(TemplateStructure {
//!     template_id_offset: 0, decode_target_count: 2, chain_count: 0,
//!     templates: vec![
//!         t(0, &[Dti::Switch, Dti::Switch], &[]),
//!         t(0, &[Dti::Switch, Dti::Switch], &[2]),
//!         t(1, &[Dti::NotPresent, Dti::Discardable], &[1]),
//!     ],
//!     decode_target_protected_by: vec![],
//!     resolutions: Some(vec![Resolution { width: 640, height: 360 }]),
//! });
//! let key = DependencyDescriptor::new(true, true, 0, 1000, &s).with_structure(s.clone());
//! let mut buf = [0u8; 64];
//! let n = key.write(&s, &mut buf)?;
//!
//! let mut latch = DdLatch::default();
//! let read = latch.parse(&buf[..n])?;
//! assert!(read.is_key_frame() && read.start_of_frame);
//! assert_eq!(read.resolution(), Some(Resolution { width: 640, height: 360 }));
//!
//! // A delta frame on temporal layer 1 is 3 bytes and needs the latched structure.
//! let delta = DependencyDescriptor::new(true, true, 2, 1001, &s);
//! let n = delta.write(&s, &mut buf)?;
//! assert_eq!(n, 3);
//! assert_eq!(latch.parse(&buf[..n])?.frame.temporal_id, 1);
//! # Ok::<(), veil_wire::WireError>(())
//! ```
//!
//! Checks (see `specs/rtp.md`):
//! - **RTP-DD-01** the mandatory fields (start and end of frame, template id, frame number) are
//!   read from the first 3 bytes. Extended fields are present only when the descriptor is longer
//!   than 3 bytes.
//! - **RTP-DD-02** the template structure is read completely: offset, decode targets, layers,
//!   DTIs, fdiffs, chains and resolutions. Every loop is bounded by the spec's limits.
//! - **RTP-DD-03** a descriptor without a structure is read against the stream's latched one.
//!   With none latched, the reader fails with [`WireError::MissingStructure`].
//! - **RTP-DD-04** a template id outside the structure's range is an error, never a guess.
//! - **RTP-DD-05** custom DTIs, fdiffs and chains override the template, and the active
//!   decode-targets bitmask is read with the structure's decode-target count.
//! - **RTP-DD-06** the writer's output reads back as the same descriptor. It writes custom fields
//!   only when the frame differs from its template, and the 3-byte form when nothing extended is
//!   needed.
//! - **RTP-DD-07** a key frame is a frame that carries the structure and references no frame
//!   (no fdiffs).

mod bits;
mod types;

use std::sync::Arc;

use bits::{BitReader, BitWriter};
pub use types::{
    ChainDiffs, Dti, Dtis, Fdiffs, FrameDependencies, MAX_CHAINS, MAX_DECODE_TARGETS, MAX_FDIFFS,
    MAX_SPATIAL_LAYERS, MAX_TEMPLATES, Resolution, SmallList, TemplateStructure,
};

use crate::error::{Result, WireError};

/// The longest descriptor Veil writes or reads (the two-byte extension form's limit).
pub const MAX_DD_LEN: usize = 255;

const WHAT: &str = "dependency descriptor";

/// One packet's dependency descriptor, resolved against its template structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyDescriptor {
    /// First packet of a frame.
    pub start_of_frame: bool,
    /// Last packet of a frame.
    pub end_of_frame: bool,
    /// `frame_dependency_template_id` (6 bits).
    pub template_id: u8,
    /// Frame number, 16 bits, wrapping. Chromium uses one counter across simulcast layers.
    pub frame_number: u16,
    /// The structure, when this packet carries it.
    pub attached_structure: Option<Arc<TemplateStructure>>,
    /// The active decode targets, when this packet says (bit `i` = decode target `i`).
    pub active_decode_targets: Option<u32>,
    /// The frame's layer and dependencies (template values, or custom values from the packet).
    pub frame: FrameDependencies,
    /// The structure the frame was read against (attached or latched). Not serialised.
    structure: Option<Arc<TemplateStructure>>,
}

impl DependencyDescriptor {
    /// A descriptor for a frame that uses template `template_id` of `structure` unchanged.
    ///
    /// # Panics
    /// If `structure` has no template with that id.
    #[must_use]
    pub fn new(
        start_of_frame: bool,
        end_of_frame: bool,
        template_id: u8,
        frame_number: u16,
        structure: &Arc<TemplateStructure>,
    ) -> Self {
        let idx = structure
            .template_index(template_id)
            .expect("template id must be in the structure");
        Self {
            start_of_frame,
            end_of_frame,
            template_id,
            frame_number,
            attached_structure: None,
            active_decode_targets: None,
            frame: structure.templates[idx],
            structure: Some(structure.clone()),
        }
    }

    /// Attach `structure` to this packet (key frames: the first packet, or all of them).
    #[must_use]
    pub fn with_structure(mut self, structure: Arc<TemplateStructure>) -> Self {
        self.attached_structure = Some(structure.clone());
        self.structure = Some(structure);
        self
    }

    /// Parse `data` against `latched` (ignored when the packet carries its own structure).
    ///
    /// # Errors
    /// [`WireError::Truncated`], [`WireError::Malformed`], or [`WireError::MissingStructure`]
    /// (RTP-DD-03).
    pub fn parse(data: &[u8], latched: Option<&Arc<TemplateStructure>>) -> Result<Self> {
        if data.len() < 3 {
            return Err(WireError::Truncated {
                what: WHAT,
                needed: 3,
                got: data.len(),
            });
        }
        if data.len() > MAX_DD_LEN {
            return Err(WireError::Malformed {
                what: WHAT,
                reason: "longer than 255 bytes",
            });
        }
        let mut r = BitReader::new(data);
        let start_of_frame = r.flag()?;
        let end_of_frame = r.flag()?;
        let template_id = r.f(6)? as u8;
        let frame_number = r.f(16)? as u16;
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
                    .ok_or(WireError::MissingStructure {
                        structure_id: template_id,
                    })?
                    .decode_target_count;
                active = Some(r.f(u32::from(dt))?);
            }
        }
        let structure =
            attached
                .clone()
                .or_else(|| latched.cloned())
                .ok_or(WireError::MissingStructure {
                    structure_id: template_id,
                })?;
        let idx = structure
            .template_index(template_id)
            .ok_or(WireError::Malformed {
                what: WHAT,
                reason: "template id is outside the latched structure (RTP-DD-04)",
            })?;
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

    /// Whether this packet belongs to a key frame (RTP-DD-07).
    #[must_use]
    pub fn is_key_frame(&self) -> bool {
        self.attached_structure.is_some() && self.frame.fdiffs.is_empty()
    }

    /// Whether this is the first packet of a key frame: where a receiver or an SFU may switch
    /// to this stream.
    #[must_use]
    pub fn is_key_frame_start(&self) -> bool {
        self.start_of_frame && self.is_key_frame()
    }

    /// The structure this descriptor was read against or built from.
    #[must_use]
    pub fn structure(&self) -> Option<&Arc<TemplateStructure>> {
        self.structure.as_ref()
    }

    /// The render resolution of the frame's spatial layer, if the structure has resolutions.
    #[must_use]
    pub fn resolution(&self) -> Option<Resolution> {
        self.structure.as_ref()?.resolution(self.frame.spatial_id)
    }

    /// Write this descriptor against `structure` into `out`; returns its length (RTP-DD-06).
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] if the frame does not fit the structure (unknown template,
    /// wrong layer, list lengths); [`WireError::BufferTooSmall`].
    pub fn write(&self, structure: &TemplateStructure, out: &mut [u8]) -> Result<usize> {
        let bad = |reason| Err(WireError::InvalidArgument { what: WHAT, reason });
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
        if let Some(s) = &self.attached_structure {
            s.validate()?;
        }
        let custom_dtis = f.dtis != t.dtis;
        let custom_fdiffs = f.fdiffs != t.fdiffs;
        let custom_chains = f.chain_diffs != t.chain_diffs;
        let dt = structure.decode_target_count;
        let active = match (self.active_decode_targets, &self.attached_structure) {
            (Some(mask), Some(s)) if mask == all_targets(s.decode_target_count) => None,
            (m, _) => m,
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
        if extended {
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
                    let v = u32::from(d) - 1;
                    let size = if v < 16 {
                        1
                    } else if v < 256 {
                        2
                    } else {
                        3
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
        }
        Ok(w.bits_written().div_ceil(8))
    }
}

fn all_targets(dt: u8) -> u32 {
    if dt >= 32 { u32::MAX } else { (1u32 << dt) - 1 }
}

fn read_structure(r: &mut BitReader<'_>) -> Result<TemplateStructure> {
    let malformed = |reason| WireError::Malformed { what: WHAT, reason };
    let template_id_offset = r.f(6)? as u8;
    let dt = r.f(5)? as u8 + 1;
    // template_layers(): layer of each template, in order.
    let mut templates: Vec<FrameDependencies> = Vec::new();
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
            1 => tid += 1,
            2 => {
                tid = 0;
                sid += 1;
            }
            _ => break,
        }
    }
    for t in &mut templates {
        for _ in 0..dt {
            t.dtis.push(Dti::from_bits(r.f(2)?))?;
        }
    }
    for t in &mut templates {
        while r.flag()? {
            t.fdiffs.push(r.f(4)? as u16 + 1)?;
        }
    }
    let chain_count = r.ns(u32::from(dt) + 1)? as u8;
    let mut decode_target_protected_by = Vec::new();
    if chain_count > 0 {
        for _ in 0..dt {
            decode_target_protected_by.push(r.ns(u32::from(chain_count))? as u8);
        }
        for t in &mut templates {
            for _ in 0..chain_count {
                t.chain_diffs.push(r.f(4)? as u8)?;
            }
        }
    }
    let resolutions = if r.flag()? {
        let layers = usize::from(templates.last().map_or(0, |t| t.spatial_id)) + 1;
        if layers > MAX_SPATIAL_LAYERS {
            return Err(malformed("more spatial layers than AV1 allows (4)"));
        }
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            let width = r.f(16)? + 1;
            let height = r.f(16)? + 1;
            v.push(Resolution { width, height });
        }
        Some(v)
    } else {
        None
    };
    Ok(TemplateStructure {
        template_id_offset,
        decode_target_count: dt,
        templates,
        chain_count,
        decode_target_protected_by,
        resolutions,
    })
}

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

/// Per-stream reader state: the latest template structure (RTP-DD-03).
#[derive(Debug, Clone, Default)]
pub struct DdLatch {
    structure: Option<Arc<TemplateStructure>>,
    structures_seen: u64,
}

impl DdLatch {
    /// Parse one packet's descriptor; a structure it carries replaces the latched one.
    ///
    /// # Errors
    /// As [`DependencyDescriptor::parse`]; the latch is unchanged on error.
    pub fn parse(&mut self, data: &[u8]) -> Result<DependencyDescriptor> {
        let dd = DependencyDescriptor::parse(data, self.structure.as_ref())?;
        if let Some(s) = &dd.attached_structure {
            if self.structure.as_deref() != Some(s) {
                self.structures_seen += 1;
            }
            self.structure = Some(s.clone());
        }
        Ok(dd)
    }

    /// The latched structure.
    #[must_use]
    pub fn structure(&self) -> Option<&Arc<TemplateStructure>> {
        self.structure.as_ref()
    }

    /// How many distinct structures this stream has latched.
    #[must_use]
    pub fn structures_seen(&self) -> u64 {
        self.structures_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_structure(rng: &mut StdRng) -> TemplateStructure {
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

    #[test]
    fn random_descriptors_round_trip_through_writer_and_latch() {
        let mut rng = StdRng::seed_from_u64(0xDD);
        for _ in 0..500 {
            let s = Arc::new(random_structure(&mut rng));
            s.validate().unwrap();
            let mut latch = DdLatch::default();
            for i in 0..20 {
                let idx = rng.random_range(0..s.templates.len());
                let mut d = DependencyDescriptor::new(
                    rng.random_bool(0.5),
                    rng.random_bool(0.5),
                    s.template_id(idx),
                    rng.random(),
                    &s,
                );
                if i == 0 {
                    d = d.with_structure(s.clone());
                }
                if rng.random_bool(0.2) {
                    let dtis: Vec<Dti> = (0..s.decode_target_count)
                        .map(|_| Dti::from_bits(rng.random_range(0..4)))
                        .collect();
                    d.frame.dtis = Dtis::from_slice(&dtis).unwrap();
                }
                if rng.random_bool(0.2) {
                    let fd: Vec<u16> = (0..rng.random_range(0..=4))
                        .map(|_| rng.random_range(1..=4096))
                        .collect();
                    d.frame.fdiffs = Fdiffs::from_slice(&fd).unwrap();
                }
                if rng.random_bool(0.2) {
                    let cd: Vec<u8> = (0..s.chain_count).map(|_| rng.random()).collect();
                    d.frame.chain_diffs = ChainDiffs::from_slice(&cd).unwrap();
                }
                if rng.random_bool(0.2) {
                    let all = all_targets(s.decode_target_count);
                    d.active_decode_targets = Some(rng.random::<u32>() & all);
                } else if i == 0 {
                    d.active_decode_targets = Some(all_targets(s.decode_target_count));
                }
                let mut buf = [0u8; MAX_DD_LEN];
                let n = d.write(&s, &mut buf).unwrap();
                let back = latch.parse(&buf[..n]).unwrap();
                assert_eq!(back, d);
            }
        }
    }

    #[test]
    fn missing_structure_and_bad_template_ids_are_errors() {
        // Mandatory fields only, no structure latched (RTP-DD-03).
        assert!(matches!(
            DdLatch::default().parse(&[0xC0, 0x00, 0x01]),
            Err(WireError::MissingStructure { .. })
        ));
        let mut rng = StdRng::seed_from_u64(1);
        let s = Arc::new(random_structure(&mut rng));
        let outside = s.template_id(s.templates.len());
        if s.templates.len() < MAX_TEMPLATES {
            let bytes = [0x80 | outside, 0, 1];
            assert!(matches!(
                DependencyDescriptor::parse(&bytes, Some(&s)),
                Err(WireError::Malformed { .. })
            ));
        }
        assert!(DependencyDescriptor::parse(&[0x80, 0], Some(&s)).is_err());
    }
}
