//! The RFC 7741 VP8 payload descriptor, as Chromium writes it in front of each fragment of an
//! encrypted frame (the VP8 payload header itself is inside the ciphertext).
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID |  required
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   |  if X
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   |  if I (M = 1: 15-bit picture id, two bytes)
//!      |   PictureID   |
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   |  if L
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  |  if T or K
//!      +-+-+-+-+-+-+-+-+
//! ```

use crate::error::{Result, WireError};

/// Longest descriptor: required byte, X byte, 2-byte picture id, TL0PICIDX, T/K byte.
pub const MAX_VP8_DESCRIPTOR_LEN: usize = 6;

/// Fields of an RFC 7741 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// N: the frame is not used as a reference.
    pub non_reference: bool,
    /// S: first packet of a partition.
    pub start_of_partition: bool,
    /// PID: partition index (0..=7).
    pub partition_id: u8,
    /// I: picture id (7 or 15 bits; Veil writes 15).
    pub picture_id: Option<u16>,
    /// L: temporal-layer-0 picture index.
    pub tl0_pic_idx: Option<u8>,
    /// T: temporal layer id (0..=3).
    pub tid: Option<u8>,
    /// Y: layer sync (meaningful with `tid`).
    pub layer_sync: bool,
    /// K: key index (0..=31).
    pub key_idx: Option<u8>,
}

impl Vp8Descriptor {
    /// Whether this packet starts a frame: S = 1 and PID = 0 (RTP-PKT-02).
    #[must_use]
    pub fn starts_frame(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }

    /// Encoded length.
    #[must_use]
    pub fn len(&self) -> usize {
        let x = self.picture_id.is_some()
            || self.tl0_pic_idx.is_some()
            || self.tid.is_some()
            || self.key_idx.is_some();
        if !x {
            return 1;
        }
        2 + if self.picture_id.is_some() { 2 } else { 0 }
            + usize::from(self.tl0_pic_idx.is_some())
            + usize::from(self.tid.is_some() || self.key_idx.is_some())
    }

    /// Never empty: at least the required byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the descriptor; returns its length.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] for out-of-range fields, [`WireError::BufferTooSmall`].
    pub fn write(&self, out: &mut [u8]) -> Result<usize> {
        let bad = |reason| {
            Err(WireError::InvalidArgument {
                what: "VP8 payload descriptor",
                reason,
            })
        };
        if self.partition_id > 7 {
            return bad("partition id must be 0..=7");
        }
        if self.picture_id.is_some_and(|p| p > 0x7FFF) {
            return bad("picture id must fit in 15 bits");
        }
        if self.tid.is_some_and(|t| t > 3) || self.key_idx.is_some_and(|k| k > 31) {
            return bad("TID must be 0..=3 and KEYIDX 0..=31");
        }
        let len = self.len();
        if out.len() < len {
            return Err(WireError::BufferTooSmall {
                what: "VP8 payload descriptor",
                needed: len,
                got: out.len(),
            });
        }
        out[0] = (u8::from(len > 1) << 7)
            | (u8::from(self.non_reference) << 5)
            | (u8::from(self.start_of_partition) << 4)
            | self.partition_id;
        if len == 1 {
            return Ok(1);
        }
        out[1] = (u8::from(self.picture_id.is_some()) << 7)
            | (u8::from(self.tl0_pic_idx.is_some()) << 6)
            | (u8::from(self.tid.is_some()) << 5)
            | (u8::from(self.key_idx.is_some()) << 4);
        let mut at = 2;
        if let Some(p) = self.picture_id {
            out[at] = 0x80 | (p >> 8) as u8;
            out[at + 1] = p as u8;
            at += 2;
        }
        if let Some(t) = self.tl0_pic_idx {
            out[at] = t;
            at += 1;
        }
        if self.tid.is_some() || self.key_idx.is_some() {
            out[at] = (self.tid.unwrap_or(0) << 6)
                | (u8::from(self.layer_sync) << 5)
                | self.key_idx.unwrap_or(0);
            at += 1;
        }
        Ok(at)
    }

    /// Parse a descriptor from the front of a payload; returns it and its length (RTP-PKT-03).
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the payload ends inside the descriptor.
    pub fn parse(p: &[u8]) -> Result<(Self, usize)> {
        let trunc = |needed| WireError::Truncated {
            what: "VP8 payload descriptor",
            needed,
            got: p.len(),
        };
        let &b0 = p.first().ok_or(trunc(1))?;
        let mut d = Self {
            non_reference: b0 & 0x20 != 0,
            start_of_partition: b0 & 0x10 != 0,
            partition_id: b0 & 0x07,
            ..Self::default()
        };
        if b0 & 0x80 == 0 {
            return Ok((d, 1));
        }
        let &x = p.get(1).ok_or(trunc(2))?;
        let mut at = 2;
        if x & 0x80 != 0 {
            let &b = p.get(at).ok_or(trunc(at + 1))?;
            if b & 0x80 != 0 {
                let &lo = p.get(at + 1).ok_or(trunc(at + 2))?;
                d.picture_id = Some(u16::from(b & 0x7F) << 8 | u16::from(lo));
                at += 2;
            } else {
                d.picture_id = Some(u16::from(b));
                at += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some(*p.get(at).ok_or(trunc(at + 1))?);
            at += 1;
        }
        if x & 0x30 != 0 {
            let &b = p.get(at).ok_or(trunc(at + 1))?;
            if x & 0x20 != 0 {
                d.tid = Some(b >> 6);
                d.layer_sync = b & 0x20 != 0;
            }
            if x & 0x10 != 0 {
                d.key_idx = Some(b & 0x1F);
            }
            at += 1;
        }
        Ok((d, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_shape() {
        let shapes = [
            Vp8Descriptor {
                start_of_partition: true,
                ..Default::default()
            },
            Vp8Descriptor {
                picture_id: Some(0x1234),
                start_of_partition: true,
                ..Default::default()
            },
            Vp8Descriptor {
                picture_id: Some(0x7FFF),
                tl0_pic_idx: Some(9),
                tid: Some(2),
                layer_sync: true,
                non_reference: true,
                ..Default::default()
            },
            Vp8Descriptor {
                key_idx: Some(31),
                partition_id: 3,
                ..Default::default()
            },
        ];
        for d in shapes {
            let mut buf = [0u8; MAX_VP8_DESCRIPTOR_LEN];
            let n = d.write(&mut buf).unwrap();
            assert_eq!(n, d.len());
            assert_eq!(Vp8Descriptor::parse(&buf[..n]).unwrap(), (d, n));
            for cut in 0..n {
                assert!(Vp8Descriptor::parse(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn seven_bit_picture_ids_parse() {
        let (d, n) = Vp8Descriptor::parse(&[0x90, 0x80, 0x2A]).unwrap();
        assert_eq!((d.picture_id, n, d.starts_frame()), (Some(42), 3, true));
    }
}
