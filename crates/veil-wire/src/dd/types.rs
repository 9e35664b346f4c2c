//! Values of the dependency descriptor: the template structure and per-frame dependencies.

use crate::error::{Result, WireError};

/// Most templates a structure can hold (6-bit template ids).
pub const MAX_TEMPLATES: usize = 64;
/// Most decode targets (5-bit `dt_cnt_minus_one`).
pub const MAX_DECODE_TARGETS: usize = 32;
/// Most chains (`chain_cnt ≤ DtCnt`).
pub const MAX_CHAINS: usize = 32;
/// Most frame diffs Veil accepts per frame (the spec sets no bound; libwebrtc uses a handful).
pub const MAX_FDIFFS: usize = 16;
/// Most spatial layers a structure may describe (AV1's 2-bit `spatial_id`; libwebrtc's bound).
pub const MAX_SPATIAL_LAYERS: usize = 4;
/// Most temporal layers a structure may describe (AV1's 3-bit `temporal_id`; libwebrtc's bound).
pub const MAX_TEMPORAL_LAYERS: usize = 8;

/// Decode-target indication (AV1 RTP spec, table A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dti {
    /// The frame is not part of the decode target.
    #[default]
    NotPresent = 0,
    /// Part of it, but no later frame depends on it.
    Discardable = 1,
    /// A decoder may start (switch to) the decode target at this frame.
    Switch = 2,
    /// Part of it, and later frames depend on it.
    Required = 3,
}

impl Dti {
    pub(crate) fn from_bits(b: u32) -> Self {
        match b & 3 {
            0 => Self::NotPresent,
            1 => Self::Discardable,
            2 => Self::Switch,
            _ => Self::Required,
        }
    }
}

/// A fixed-capacity list, so parsing a descriptor against a latched structure never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmallList<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: u8,
}

impl<T: Copy + Default, const N: usize> Default for SmallList<T, N> {
    fn default() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> SmallList<T, N> {
    /// Most items a list can hold: `N`, but never more than 255 (the length is a `u8`).
    pub const CAPACITY: usize = if N < 255 { N } else { 255 };

    /// A list holding `items`.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] if more than [`CAPACITY`](Self::CAPACITY) items are given.
    pub fn from_slice(items: &[T]) -> Result<Self> {
        if items.len() > Self::CAPACITY {
            return Err(WireError::InvalidArgument {
                what: "dependency descriptor list",
                reason: "more items than the list holds (32 DTIs or chains, 16 fdiffs)",
            });
        }
        let mut l = Self::default();
        for &i in items {
            l.push(i)?;
        }
        Ok(l)
    }

    pub(crate) fn push(&mut self, v: T) -> Result<()> {
        if usize::from(self.len) >= Self::CAPACITY {
            return Err(WireError::Malformed {
                what: "dependency descriptor",
                reason: "more entries than Veil's bound for this list",
            });
        }
        self.items[usize::from(self.len)] = v;
        self.len += 1;
        Ok(())
    }

    /// The items.
    #[must_use]
    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }
}

impl<T: Copy + Default + core::fmt::Debug, const N: usize> core::fmt::Debug for SmallList<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: Copy + Default, const N: usize> core::ops::Deref for SmallList<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

/// Decode-target indications of one frame.
pub type Dtis = SmallList<Dti, MAX_DECODE_TARGETS>;
/// Frame diffs (frame-number distance to each referenced frame).
pub type Fdiffs = SmallList<u16, MAX_FDIFFS>;
/// Chain diffs (distance to the previous frame of each chain).
pub type ChainDiffs = SmallList<u8, MAX_CHAINS>;

/// What a frame is and what it depends on: from its template, or custom per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameDependencies {
    /// Spatial layer.
    pub spatial_id: u8,
    /// Temporal layer.
    pub temporal_id: u8,
    /// One indication per decode target.
    pub dtis: Dtis,
    /// Frame-number diffs of the referenced frames; empty for a key frame.
    pub fdiffs: Fdiffs,
    /// One diff per chain.
    pub chain_diffs: ChainDiffs,
}

/// A frame's render resolution (the structure stores `minus_one` values; these are actual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    /// Width in pixels (1..=65536).
    pub width: u32,
    /// Height in pixels (1..=65536).
    pub height: u32,
}

/// The template dependency structure, sent on key frames and latched per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateStructure {
    /// `template_id_offset`: the template id of `templates[0]`.
    pub template_id_offset: u8,
    /// `DtCnt`, 1..=32.
    pub decode_target_count: u8,
    /// The templates, in template order (layer order: spatial, then temporal, ascending).
    pub templates: Vec<FrameDependencies>,
    /// `chain_cnt`, 0..=DtCnt.
    pub chain_count: u8,
    /// For each decode target, the chain that protects it (empty if no chains).
    pub decode_target_protected_by: Vec<u8>,
    /// One render resolution per spatial layer, if present.
    pub resolutions: Option<Vec<Resolution>>,
}

impl TemplateStructure {
    /// One spatial and one temporal layer at `width`×`height`: a key template that references
    /// nothing and a delta template that references the frame `delta_fdiff` frame numbers back
    /// (1 for a stream with frame numbers of its own; the layer count for simulcast layers that
    /// share one counter and send in turn). One decode target, no chains. `delta_fdiff` must
    /// be 1..=16: a template's fdiffs take four bits, and writing the structure refuses others.
    #[must_use]
    pub fn single_layer(width: u32, height: u32, delta_fdiff: u16) -> Self {
        let t = |fdiffs: &[u16]| FrameDependencies {
            spatial_id: 0,
            temporal_id: 0,
            dtis: Dtis::from_slice(&[Dti::Switch]).unwrap_or_default(),
            fdiffs: Fdiffs::from_slice(fdiffs).unwrap_or_default(),
            chain_diffs: ChainDiffs::default(),
        };
        Self {
            template_id_offset: 0,
            decode_target_count: 1,
            chain_count: 0,
            templates: vec![t(&[]), t(&[delta_fdiff])],
            decode_target_protected_by: vec![],
            resolutions: Some(vec![Resolution { width, height }]),
        }
    }

    /// The template id of template index `i` (ids are 6 bits and wrap; the offset is taken
    /// mod 64 too, as the wire carries only its low 6 bits).
    #[must_use]
    pub fn template_id(&self, index: usize) -> u8 {
        let offset = usize::from(self.template_id_offset) % MAX_TEMPLATES;
        ((offset + index % MAX_TEMPLATES) % MAX_TEMPLATES) as u8
    }

    /// The template index of template id `id`, if the structure has it. Ids of 64 and above
    /// are never valid (6-bit ids, RTP-DD-04).
    #[must_use]
    pub fn template_index(&self, id: u8) -> Option<usize> {
        if usize::from(id) >= MAX_TEMPLATES {
            return None;
        }
        let offset = usize::from(self.template_id_offset) % MAX_TEMPLATES;
        let idx = (usize::from(id) + MAX_TEMPLATES - offset) % MAX_TEMPLATES;
        (idx < self.templates.len()).then_some(idx)
    }

    /// The highest spatial id of the templates.
    #[must_use]
    pub fn max_spatial_id(&self) -> u8 {
        self.templates
            .iter()
            .map(|t| t.spatial_id)
            .max()
            .unwrap_or(0)
    }

    /// The spatial and temporal layer of decode target `dt`: the highest spatial and temporal
    /// id among the templates that are part of it (DTI not `NotPresent`). This is the spec's
    /// `decode_target_layers()`; an SFU picks the decode target to forward by it.
    /// `None` if `dt` is not a decode target of this structure.
    #[must_use]
    pub fn decode_target_layer(&self, dt: usize) -> Option<(u8, u8)> {
        if dt >= usize::from(self.decode_target_count) {
            return None;
        }
        let mut layer = (0, 0);
        for t in &self.templates {
            if t.dtis.get(dt).is_some_and(|d| *d != Dti::NotPresent) {
                layer.0 = layer.0.max(t.spatial_id);
                layer.1 = layer.1.max(t.temporal_id);
            }
        }
        Some(layer)
    }

    /// Render resolution of `spatial_id`, if resolutions are present.
    #[must_use]
    pub fn resolution(&self, spatial_id: u8) -> Option<Resolution> {
        self.resolutions
            .as_ref()
            .and_then(|r| r.get(usize::from(spatial_id)).copied())
    }

    /// Check the invariants the wire format imposes, so a structure a caller built can be
    /// written and read back unchanged (RTP-DD-06).
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] naming the first broken rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason| {
            Err(WireError::InvalidArgument {
                what: "DD template structure",
                reason,
            })
        };
        let dt = usize::from(self.decode_target_count);
        if !(1..=MAX_DECODE_TARGETS).contains(&dt) {
            return bad("decode_target_count must be 1..=32");
        }
        if self.templates.is_empty() || self.templates.len() > MAX_TEMPLATES {
            return bad("a structure holds 1..=64 templates");
        }
        if self.template_id_offset >= 64 {
            return bad("template_id_offset must be below 64");
        }
        if usize::from(self.chain_count) > dt {
            return bad("chain_count must not exceed decode_target_count");
        }
        if usize::from(self.max_spatial_id()) >= MAX_SPATIAL_LAYERS
            || self
                .templates
                .iter()
                .any(|t| usize::from(t.temporal_id) >= MAX_TEMPORAL_LAYERS)
        {
            return bad("at most 4 spatial and 8 temporal layers (RTP-DD-02)");
        }
        let first = &self.templates[0];
        if first.spatial_id != 0 || first.temporal_id != 0 {
            return bad("the first template must be spatial 0, temporal 0");
        }
        for w in self.templates.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let same = a.spatial_id == b.spatial_id && a.temporal_id == b.temporal_id;
            let next_t = a.spatial_id == b.spatial_id && b.temporal_id == a.temporal_id + 1;
            let next_s = b.spatial_id == a.spatial_id + 1 && b.temporal_id == 0;
            if !(same || next_t || next_s) {
                return bad("templates must be in layer order (same, next temporal, next spatial)");
            }
        }
        for t in &self.templates {
            if t.dtis.len() != dt {
                return bad("every template needs one DTI per decode target");
            }
            if t.chain_diffs.len() != usize::from(self.chain_count) {
                return bad("every template needs one chain diff per chain");
            }
            if t.fdiffs.iter().any(|&d| !(1..=16).contains(&d)) {
                return bad("template frame diffs must be 1..=16");
            }
            if t.chain_diffs.iter().any(|&d| d > 15) {
                return bad("template chain diffs must be 0..=15");
            }
        }
        let protected = if self.chain_count == 0 { 0 } else { dt };
        if self.decode_target_protected_by.len() != protected
            || self
                .decode_target_protected_by
                .iter()
                .any(|&c| c >= self.chain_count)
        {
            return bad("decode_target_protected_by needs one valid chain per decode target");
        }
        if let Some(r) = &self.resolutions {
            if r.len() != usize::from(self.max_spatial_id()) + 1 {
                return bad("one resolution per spatial layer");
            }
            if r.iter()
                .any(|r| !(1..=65536).contains(&r.width) || !(1..=65536).contains(&r.height))
            {
                return bad("resolutions must be 1..=65536");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::dd::DependencyDescriptor;

    // Caller input never panics (issue 19): lists refuse more items than they hold with
    // `InvalidArgument`; any template id or offset (a caller-built structure may carry one
    // above 63) maps to a template or to `None`, and ids round-trip for valid structures.
    proptest! {
        #[test]
        fn lists_of_any_length(n in 0usize..300) {
            let items = vec![7u16; n];
            match Fdiffs::from_slice(&items) {
                Ok(l) => prop_assert_eq!(l.as_slice(), &items[..]),
                Err(e) => {
                    prop_assert!(n > MAX_FDIFFS);
                    prop_assert!(matches!(e, WireError::InvalidArgument { .. }), "{e:?}");
                }
            }
            let big = vec![1u8; n];
            match SmallList::<u8, 300>::from_slice(&big) {
                Ok(l) => prop_assert_eq!(l.len(), n),
                Err(_) => prop_assert!(n > 255),
            }
        }

        #[test]
        fn any_template_id_and_offset(
            offset: u8,
            count in 1usize..=MAX_TEMPLATES,
            id: u8,
            index: usize,
        ) {
            let mut s = TemplateStructure::single_layer(64, 64, 1);
            s.templates = vec![s.templates[0]; count];
            s.template_id_offset = offset;
            let _ = s.template_id(index);
            if let Some(i) = s.template_index(id) {
                prop_assert!(id < 64 && i < count);
                prop_assert_eq!(s.template_id(i), id);
            }
            let s = Arc::new(s);
            let d = DependencyDescriptor::new(true, true, id, 1, &s);
            prop_assert_eq!(d.is_ok(), s.template_index(id).is_some());
            if offset < 64 {
                for i in 0..count {
                    prop_assert_eq!(s.template_index(s.template_id(i)), Some(i));
                }
            }
        }
    }
}
