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
//! let key = DependencyDescriptor::new(true, true, 0, 1000, &s)?.with_structure(s.clone());
//! let mut buf = [0u8; 64];
//! let n = key.write(&s, &mut buf)?;
//!
//! let mut latch = DdLatch::default();
//! let read = latch.parse(&buf[..n])?;
//! assert!(read.is_key_frame() && read.start_of_frame);
//! assert_eq!(read.resolution(), Some(Resolution { width: 640, height: 360 }));
//!
//! // A delta frame on temporal layer 1 is 3 bytes and needs the latched structure.
//! let delta = DependencyDescriptor::new(true, true, 2, 1001, &s)?;
//! let n = delta.write(&s, &mut buf)?;
//! assert_eq!(n, 3);
//! let read = latch.parse(&buf[..n])?;
//! assert_eq!((read.temporal_id(), read.dti(0)), (1, Some(Dti::NotPresent)));
//! assert_eq!(read.referenced_frames().collect::<Vec<_>>(), [1000]);
//! # Ok::<(), veil_wire::WireError>(())
//! ```
//!
//! Checks (see `specs/rtp.md`):
//! - **RTP-DD-01** the mandatory fields (start and end of frame, template id, frame number) are
//!   read from the first 3 bytes. Extended fields are present only when the descriptor is longer
//!   than 3 bytes.
//! - **RTP-DD-02** the template structure is read completely: offset, decode targets, layers,
//!   DTIs, fdiffs, chains and resolutions. Every loop is bounded: 64 templates, 32 decode targets
//!   and chains, 4 spatial and 8 temporal layers, 16 fdiffs per frame.
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
//! - **RTP-DD-09** the latch keeps the newest structure: one that arrives with an older frame
//!   number than the latched one (a reordered key-frame packet) does not replace it. It keeps the
//!   active decode targets until the next update.
//! - **RTP-DD-10** reading allocates nothing when the packet carries no structure.

mod bits;
mod latch;
mod read;
mod types;
mod write;

use std::sync::Arc;

pub use latch::DdLatch;
pub use types::{
    ChainDiffs, Dti, Dtis, Fdiffs, FrameDependencies, MAX_CHAINS, MAX_DECODE_TARGETS, MAX_FDIFFS,
    MAX_SPATIAL_LAYERS, MAX_TEMPLATES, MAX_TEMPORAL_LAYERS, Resolution, SmallList,
    TemplateStructure,
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
    /// The active decode targets, when this packet says (bit `i` = decode target `i`). A packet
    /// that carries a structure implies all of them unless it says otherwise.
    pub active_decode_targets: Option<u32>,
    /// The frame's layer and dependencies (template values, or custom values from the packet).
    pub frame: FrameDependencies,
    /// The structure the frame was read against (attached or latched). Not serialised.
    structure: Option<Arc<TemplateStructure>>,
}

impl DependencyDescriptor {
    /// A descriptor for a frame that uses template `template_id` of `structure` unchanged.
    /// Change [`frame`](Self::frame) afterwards to write custom DTIs, fdiffs or chains.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] if `structure` has no template with that id.
    pub fn new(
        start_of_frame: bool,
        end_of_frame: bool,
        template_id: u8,
        frame_number: u16,
        structure: &Arc<TemplateStructure>,
    ) -> Result<Self> {
        let idx = structure
            .template_index(template_id)
            .ok_or(WireError::InvalidArgument {
                what: WHAT,
                reason: "template id is not in the structure (offset..offset+count, mod 64)",
            })?;
        Ok(Self {
            start_of_frame,
            end_of_frame,
            template_id,
            frame_number,
            attached_structure: None,
            active_decode_targets: None,
            frame: structure.templates[idx],
            structure: Some(structure.clone()),
        })
    }

    /// Attach `structure` to this packet (key frames: the first packet, or all of them).
    #[must_use]
    pub fn with_structure(mut self, structure: Arc<TemplateStructure>) -> Self {
        self.attached_structure = Some(structure.clone());
        self.structure = Some(structure);
        self
    }

    /// Whether this packet belongs to a key frame: it carries the structure and the frame
    /// references no other frame (RTP-DD-07). The frame's own fdiffs count, custom ones included.
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

    /// The frame's spatial layer.
    #[must_use]
    pub fn spatial_id(&self) -> u8 {
        self.frame.spatial_id
    }

    /// The frame's temporal layer.
    #[must_use]
    pub fn temporal_id(&self) -> u8 {
        self.frame.temporal_id
    }

    /// The frame's indication for decode target `decode_target`, if the structure has it.
    #[must_use]
    pub fn dti(&self, decode_target: usize) -> Option<Dti> {
        self.frame.dtis.get(decode_target).copied()
    }

    /// Frame numbers of the frames this frame references (`frame_number - fdiff`, wrapping).
    pub fn referenced_frames(&self) -> impl Iterator<Item = u16> + '_ {
        self.frame
            .fdiffs
            .iter()
            .map(|&d| self.frame_number.wrapping_sub(d))
    }

    /// Frame number of the previous frame in chain `chain` (`frame_number` itself when the
    /// chain diff is 0: the chain starts here). `None` if the structure has no such chain.
    #[must_use]
    pub fn previous_in_chain(&self, chain: usize) -> Option<u16> {
        let d = *self.frame.chain_diffs.get(chain)?;
        Some(self.frame_number.wrapping_sub(u16::from(d)))
    }

    /// The render resolution of the frame's spatial layer, if the structure has resolutions.
    #[must_use]
    pub fn resolution(&self) -> Option<Resolution> {
        self.structure.as_ref()?.resolution(self.frame.spatial_id)
    }
}

/// The mask of all `dt` decode targets.
pub(crate) fn all_targets(dt: u8) -> u32 {
    if dt >= 32 { u32::MAX } else { (1u32 << dt) - 1 }
}
