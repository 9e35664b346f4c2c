//! The two packetizations of an SFrame ciphertext (an opaque encrypted frame) into RTP payloads,
//! and a reassembler that rebuilds frames from packets arriving in any order.
//!
//! | format | payload | frame boundaries | who uses it |
//! |---|---|---|---|
//! | [`PacketFormat::Vp8`] (browser-compatible, default for video) | RFC 7741 descriptor + fragment | start: DD start-of-frame, else `S=1, PID=0`; end: DD end-of-frame, else the marker bit | what Chromium sends from an encoded transform |
//! | [`PacketFormat::Opus`] (browser-compatible, audio) | the whole encrypted frame | one packet per frame | what Chromium sends for Opus |
//! | [`PacketFormat::Sframe`] (IETF, per-frame) | `S E T` descriptor byte + fragment | the S and E bits | native-only rooms; H264/AV1 |
//!
//! The IETF format follows draft-ietf-avtcore-rtp-sframe (editor's copy, 2025): descriptor byte
//! `S` (0x80) on the first fragment, `E` (0x40) on the last, `T` (0x20) = 0 for per-frame
//! encryption, five reserved bits written as 0 and ignored on receipt. The marker bit equals `E`
//! when the frame's marker is set. Veil never uses the draft's per-SSRC key derivation, because
//! the SFU rewrites SSRCs.
//!
//! ```
//! use veil_wire::packetize::{PacketFormat, Packetizer, Reassembler, RtpIn, Output};
//!
//! let frame = vec![7u8; 3000]; // an SFrame ciphertext
//! let p = Packetizer::new(PacketFormat::Sframe, 1200)?;
//! let mut r = Reassembler::new(PacketFormat::Sframe);
//! let mut buf = [0u8; 1200];
//! for (i, frag) in p.packetize(&frame, None)?.enumerate() {
//!     let n = frag.write_to(&mut buf)?;
//!     r.push(RtpIn { seq: 100 + i as u16, timestamp: 9000, marker: frag.marker, payload: &buf[..n], start: None, end: None })?;
//! }
//! match r.poll().unwrap() {
//!     Output::Complete(f) => assert_eq!(f.data, frame),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), veil_wire::WireError>(())
//! ```

mod reassembler;
pub mod vp8;

pub use reassembler::{
    Frame, Incomplete, IncompleteReason, Output, Reassembler, ReassemblerConfig, ReassemblerStats,
    RtpIn,
};
pub use vp8::{MAX_VP8_DESCRIPTOR_LEN, Vp8Descriptor};

use crate::error::{Result, WireError};

/// Default cap on one frame's size (4 MiB): a key frame of 4K video fits easily.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// IETF SFrame payload descriptor bits.
pub(crate) const SFRAME_S: u8 = 0x80;
pub(crate) const SFRAME_E: u8 = 0x40;
pub(crate) const SFRAME_T: u8 = 0x20;

/// How encrypted frames travel in RTP payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketFormat {
    /// Browser-compatible VP8: RFC 7741 descriptor, then a fragment of the encrypted frame.
    Vp8,
    /// Browser-compatible Opus: the encrypted frame is the whole payload.
    Opus,
    /// IETF SFrame payload format, per-frame mode (`T = 0`).
    Sframe,
}

/// Splits encrypted frames into RTP payloads of at most `max_payload` bytes (RTP-PKT-01).
#[derive(Debug, Clone)]
pub struct Packetizer {
    format: PacketFormat,
    max_payload: usize,
    max_frame: usize,
}

impl Packetizer {
    /// A packetizer for `format` whose payloads fit `max_payload` bytes (the MTU budget left
    /// after IP/UDP/SRTP/RTP headers and extensions).
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] if `max_payload` cannot carry the longest descriptor plus
    /// one byte of frame.
    pub fn new(format: PacketFormat, max_payload: usize) -> Result<Self> {
        let min = match format {
            PacketFormat::Vp8 => MAX_VP8_DESCRIPTOR_LEN + 1,
            PacketFormat::Opus => 1,
            PacketFormat::Sframe => 2,
        };
        if max_payload < min {
            return Err(WireError::InvalidArgument {
                what: "packetizer",
                reason: "max payload cannot carry the payload descriptor and one byte of frame",
            });
        }
        Ok(Self {
            format,
            max_payload,
            max_frame: DEFAULT_MAX_FRAME,
        })
    }

    /// Refuse frames larger than `max_frame` bytes (default [`DEFAULT_MAX_FRAME`]).
    #[must_use]
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// The format.
    #[must_use]
    pub fn format(&self) -> PacketFormat {
        self.format
    }

    /// Fragments of `frame`, sized evenly (RTP-PKT-01). `vp8` supplies the descriptor fields of
    /// a VP8 frame (picture id, temporal layer...); S and PID are set per fragment.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] for a frame over the size cap, an Opus frame over one
    /// payload, or a missing/invalid VP8 descriptor.
    pub fn packetize<'a>(
        &self,
        frame: &'a [u8],
        vp8: Option<&Vp8Descriptor>,
    ) -> Result<Fragments<'a>> {
        if frame.len() > self.max_frame {
            return Err(WireError::InvalidArgument {
                what: "packetizer",
                reason: "frame exceeds the configured maximum frame size",
            });
        }
        let (desc_len, vp8) = match self.format {
            PacketFormat::Vp8 => {
                let mut d = *vp8.ok_or(WireError::InvalidArgument {
                    what: "packetizer",
                    reason: "VP8 frames need descriptor fields",
                })?;
                d.start_of_partition = true;
                d.partition_id = 0;
                let mut scratch = [0u8; MAX_VP8_DESCRIPTOR_LEN];
                (d.write(&mut scratch)?, Some(d))
            }
            PacketFormat::Opus => {
                if frame.len() > self.max_payload {
                    return Err(WireError::InvalidArgument {
                        what: "Opus packetizer",
                        reason: "an Opus frame must fit one RTP payload",
                    });
                }
                (0, None)
            }
            PacketFormat::Sframe => (1, None),
        };
        let cap = self.max_payload - desc_len;
        let count = frame.len().div_ceil(cap).max(1);
        Ok(Fragments {
            format: self.format,
            frame,
            vp8,
            count,
            index: 0,
            offset: 0,
        })
    }
}

/// The fragments of one frame, in order; allocation-free.
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    format: PacketFormat,
    frame: &'a [u8],
    vp8: Option<Vp8Descriptor>,
    count: usize,
    index: usize,
    offset: usize,
}

impl Fragments<'_> {
    /// Number of fragments (RTP packets) of the frame.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count
    }
}

/// One RTP payload of a frame.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    format: PacketFormat,
    vp8: Option<Vp8Descriptor>,
    body: &'a [u8],
    /// First fragment of the frame.
    pub first: bool,
    /// Last fragment of the frame: set the RTP marker bit on it.
    pub marker: bool,
}

impl Fragment<'_> {
    /// Payload length: descriptor plus body.
    #[must_use]
    pub fn len(&self) -> usize {
        self.body.len()
            + match self.format {
                PacketFormat::Vp8 => self.vp8.map_or(0, |d| d.len()),
                PacketFormat::Opus => 0,
                PacketFormat::Sframe => 1,
            }
    }

    /// Whether the payload is empty (only an empty Opus frame).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame bytes this fragment carries.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        self.body
    }

    /// Write the RTP payload (descriptor + body) into `out`; returns its length.
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`].
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.len();
        if out.len() < len {
            return Err(WireError::BufferTooSmall {
                what: "RTP payload",
                needed: len,
                got: out.len(),
            });
        }
        let d = match self.format {
            PacketFormat::Vp8 => self
                .vp8
                .expect("VP8 fragments carry a descriptor")
                .write(out)?,
            PacketFormat::Opus => 0,
            PacketFormat::Sframe => {
                out[0] =
                    if self.first { SFRAME_S } else { 0 } | if self.marker { SFRAME_E } else { 0 };
                1
            }
        };
        out[d..d + self.body.len()].copy_from_slice(self.body);
        Ok(len)
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Fragment<'a>;

    fn next(&mut self) -> Option<Fragment<'a>> {
        if self.index == self.count {
            return None;
        }
        // Even split: the first `len % count` fragments carry one byte more.
        let (base, extra) = (self.frame.len() / self.count, self.frame.len() % self.count);
        let size = base + usize::from(self.index < extra);
        let body = &self.frame[self.offset..self.offset + size];
        let first = self.index == 0;
        let vp8 = self.vp8.map(|mut d| {
            d.start_of_partition = first;
            d
        });
        self.index += 1;
        self.offset += size;
        Some(Fragment {
            format: self.format,
            vp8,
            body,
            first,
            marker: self.index == self.count,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.count - self.index;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Fragments<'_> {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn format() -> impl Strategy<Value = PacketFormat> {
        prop_oneof![
            Just(PacketFormat::Vp8),
            Just(PacketFormat::Opus),
            Just(PacketFormat::Sframe)
        ]
    }

    fn push_all(r: &mut Reassembler, p: &Packetizer, frame: &[u8], ts: u32) -> Result<usize> {
        let vp8 = Vp8Descriptor::default();
        let mut buf = vec![0u8; 4096];
        let frags = p.packetize(frame, Some(&vp8))?;
        let n = frags.len();
        for (i, f) in frags.enumerate() {
            let len = f.write_to(&mut buf)?;
            let _ = r.push(RtpIn {
                seq: ts as u16 * 64 + i as u16,
                timestamp: ts,
                marker: f.marker,
                payload: &buf[..len],
                start: None,
                end: None,
            });
        }
        Ok(n)
    }

    // Caller input never panics (issue 19): any payload budget is accepted or refused with
    // `InvalidArgument` (RTP-PKT-01, specs/rtp.md), any frame cap is honoured, and what a valid
    // packetizer splits comes back whole.
    proptest! {
        #[test]
        fn any_payload_budget_and_frame_cap(
            fmt in format(),
            max_payload in prop_oneof![0usize..64, 64usize..1500, Just(usize::MAX)],
            max_frame in prop_oneof![0usize..4096, Just(usize::MAX)],
            len in 0usize..3000,
        ) {
            let min = match fmt {
                PacketFormat::Vp8 => MAX_VP8_DESCRIPTOR_LEN + 1,
                PacketFormat::Opus => 1,
                PacketFormat::Sframe => 2,
            };
            let p = match Packetizer::new(fmt, max_payload) {
                Ok(p) => p.with_max_frame(max_frame),
                Err(e) => {
                    prop_assert!(max_payload < min);
                    prop_assert!(matches!(e, WireError::InvalidArgument { .. }), "{e:?}");
                    return Ok(());
                }
            };
            let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut r = Reassembler::new(fmt);
            match push_all(&mut r, &p, &frame, 1) {
                Ok(_) => match r.poll() {
                    Some(Output::Complete(f)) => prop_assert_eq!(f.data, frame),
                    other => prop_assert!(false, "{other:?}"),
                },
                Err(e) => {
                    prop_assert!(matches!(e, WireError::InvalidArgument { .. }), "{e:?}");
                    prop_assert!(
                        len > max_frame || (fmt == PacketFormat::Opus && len > max_payload)
                    );
                }
            }
        }

        // Any bounds (zero, huge) are safe; generous bounds still deliver every frame.
        #[test]
        fn any_reassembler_bounds(
            max_pending_frames in prop_oneof![0usize..4, Just(usize::MAX)],
            max_frame_bytes in prop_oneof![0usize..2000, Just(usize::MAX)],
            max_packets_per_frame in prop_oneof![0usize..4, Just(usize::MAX)],
            reorder_window in prop_oneof![0u64..4, Just(u64::MAX)],
            lens in proptest::collection::vec(0usize..2500, 1..6),
        ) {
            let cfg = ReassemblerConfig {
                max_pending_frames,
                max_frame_bytes,
                max_packets_per_frame,
                reorder_window,
            };
            let p = Packetizer::new(PacketFormat::Sframe, 1000).unwrap();
            let mut r = Reassembler::with_config(PacketFormat::Sframe, cfg);
            let generous = max_frame_bytes == usize::MAX
                && max_packets_per_frame == usize::MAX
                && max_pending_frames > 0;
            for (i, len) in lens.iter().enumerate() {
                push_all(&mut r, &p, &vec![9u8; *len], i as u32).unwrap();
                match r.poll() {
                    Some(Output::Complete(f)) => prop_assert_eq!(f.data.len(), *len),
                    other => prop_assert!(!generous, "{other:?}"),
                }
                while r.poll().is_some() {}
            }
            r.flush();
        }
    }
}
