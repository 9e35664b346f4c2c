//! The SFrame header (RFC 9605 §4.3): key id (KID) and counter (CTR).
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+------------------------+------------------------+
//! |X|  K  |Y|  C  |   KID... (0 or K+1 B)   |   CTR... (0 or C+1 B)  |
//! +-+-+-+-+-+-+-+-+------------------------+------------------------+
//! ```
//!
//! `X = 0`: `K` is the KID itself (0..=7); `X = 1`: the KID follows in `K + 1` bytes, big-endian.
//! `Y`/`C` do the same for the counter. The header carries no secret, which is why it lives here
//! and not in `veil-sframe`: a blind SFU may read it (spec check SF-HDR-05).
//!
//! Spec checks implemented here (see `specs/sframe.md`):
//! - **SF-HDR-01** short form for values 0..=7, extended form with `len - 1` in the 3-bit field.
//! - **SF-HDR-02** writers always use the minimal encoding.
//! - **SF-HDR-03** parsers reject non-minimal encodings (extended form for a value < 8, or a
//!   leading zero byte), so every (KID, CTR) pair has exactly one encoding and AAD is canonical.
//! - **SF-HDR-04** parsers reject input shorter than the header announces.

use crate::error::{Result, WireError};

/// The largest encoded SFrame header: one config byte, 8 KID bytes, 8 CTR bytes.
pub const MAX_HEADER_LEN: usize = 17;

/// A decoded SFrame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SframeHeader {
    /// Key id: selects the sender key (RFC 9605 §4.3).
    pub kid: u64,
    /// Counter: the per-key frame counter that forms the nonce.
    pub ctr: u64,
}

/// Bytes needed to write `v` in the extended form (1..=8).
#[inline]
const fn value_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    if bits == 0 { 1 } else { bits.div_ceil(8) }
}

/// Length of one field's trailing bytes: 0 in the short form.
#[inline]
const fn field_len(v: u64) -> usize {
    if v < 8 { 0 } else { value_len(v) }
}

/// Read `len` big-endian bytes, enforcing minimality for the extended form (SF-HDR-03).
#[inline]
fn read_field(bytes: &[u8], field: &'static str) -> Result<u64> {
    let mut v = 0u64;
    for &b in bytes {
        v = (v << 8) | u64::from(b);
    }
    if v < 8 || bytes[0] == 0 {
        return Err(WireError::NonMinimal { field, value: v });
    }
    Ok(v)
}

impl SframeHeader {
    /// A header for `kid` and `ctr`.
    #[must_use]
    pub const fn new(kid: u64, ctr: u64) -> Self {
        Self { kid, ctr }
    }

    /// Number of bytes [`write`](Self::write) produces (1..=17).
    #[must_use]
    #[inline]
    pub const fn encoded_len(&self) -> usize {
        1 + field_len(self.kid) + field_len(self.ctr)
    }

    /// Write the minimal encoding (SF-HDR-02) to the front of `out` and return its length.
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`] if `out` is shorter than [`encoded_len`](Self::encoded_len).
    #[inline]
    pub fn write(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.encoded_len();
        if out.len() < len {
            return Err(WireError::BufferTooSmall {
                what: "SFrame header",
                needed: len,
                got: out.len(),
            });
        }
        let klen = field_len(self.kid);
        let clen = field_len(self.ctr);
        let k_bits = if klen == 0 {
            self.kid as u8
        } else {
            0x8 | (klen as u8 - 1)
        };
        let c_bits = if clen == 0 {
            self.ctr as u8
        } else {
            0x8 | (clen as u8 - 1)
        };
        out[0] = (k_bits << 4) | c_bits;
        out[1..1 + klen].copy_from_slice(&self.kid.to_be_bytes()[8 - klen..]);
        out[1 + klen..len].copy_from_slice(&self.ctr.to_be_bytes()[8 - clen..]);
        Ok(len)
    }

    /// Parse a header from the front of `input`; returns it and the number of bytes it used.
    ///
    /// # Errors
    /// [`WireError::Truncated`] (SF-HDR-04) or [`WireError::NonMinimal`] (SF-HDR-03).
    #[inline]
    pub fn parse(input: &[u8]) -> Result<(Self, usize)> {
        let Some(&config) = input.first() else {
            return Err(WireError::Truncated {
                what: "SFrame header",
                needed: 1,
                got: 0,
            });
        };
        let (kx, k) = (config & 0x80 != 0, u64::from((config >> 4) & 0x7));
        let (cy, c) = (config & 0x08 != 0, u64::from(config & 0x7));
        let klen = if kx { k as usize + 1 } else { 0 };
        let clen = if cy { c as usize + 1 } else { 0 };
        let len = 1 + klen + clen;
        if input.len() < len {
            return Err(WireError::Truncated {
                what: "SFrame header",
                needed: len,
                got: input.len(),
            });
        }
        let kid = if kx {
            read_field(&input[1..1 + klen], "SFrame KID")?
        } else {
            k
        };
        let ctr = if cy {
            read_field(&input[1 + klen..len], "SFrame CTR")?
        } else {
            c
        };
        Ok((Self { kid, ctr }, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_extended_forms() {
        let mut buf = [0u8; MAX_HEADER_LEN];
        for (kid, ctr, want) in [
            (0u64, 0u64, &[0x00][..]),
            (7, 7, &[0x77][..]),
            (8, 0, &[0x80, 0x08][..]),
            (0, 8, &[0x08, 0x08][..]),
            (0x0123, 0x4567, &[0x99, 0x01, 0x23, 0x45, 0x67][..]),
        ] {
            let h = SframeHeader::new(kid, ctr);
            let n = h.write(&mut buf).unwrap();
            assert_eq!(&buf[..n], want, "kid {kid} ctr {ctr}");
            assert_eq!(SframeHeader::parse(&buf[..n]).unwrap(), (h, n));
        }
    }

    #[test]
    fn maximal_header_is_17_bytes() {
        let h = SframeHeader::new(u64::MAX, u64::MAX);
        assert_eq!(h.encoded_len(), MAX_HEADER_LEN);
        let mut buf = [0u8; MAX_HEADER_LEN];
        assert_eq!(h.write(&mut buf).unwrap(), MAX_HEADER_LEN);
        assert_eq!(SframeHeader::parse(&buf).unwrap().0, h);
    }

    #[test]
    fn rejects_non_minimal() {
        // KID 5 in the extended form.
        assert!(matches!(
            SframeHeader::parse(&[0x80, 0x05]),
            Err(WireError::NonMinimal { value: 5, .. })
        ));
        // KID 0x0100 with a leading zero byte (3 bytes instead of 2).
        assert!(matches!(
            SframeHeader::parse(&[0xA0, 0x00, 0x01, 0x00]),
            Err(WireError::NonMinimal { .. })
        ));
        // CTR 0x20 in two bytes.
        assert!(matches!(
            SframeHeader::parse(&[0x09, 0x00, 0x20]),
            Err(WireError::NonMinimal { .. })
        ));
    }

    #[test]
    fn rejects_truncated_and_small_buffers() {
        assert!(matches!(
            SframeHeader::parse(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            SframeHeader::parse(&[0x99, 0x01, 0x23, 0x45]),
            Err(WireError::Truncated {
                needed: 5,
                got: 4,
                ..
            })
        ));
        let mut small = [0u8; 2];
        assert!(SframeHeader::new(300, 0).write(&mut small).is_err());
    }
}
