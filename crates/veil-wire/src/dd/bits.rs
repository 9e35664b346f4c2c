//! Bit-level reader and writer with the AV1 RTP spec's `f(n)` and `ns(n)` codings.

use crate::error::{Result, WireError};

pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize, // in bits
}

const TRUNCATED: &str = "dependency descriptor";

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// `f(n)`: `n` bits, most significant first (n ≤ 32).
    pub(crate) fn f(&mut self, n: u32) -> Result<u32> {
        let n = n as usize;
        if self.pos + n > self.data.len() * 8 {
            return Err(WireError::Truncated {
                what: TRUNCATED,
                needed: (self.pos + n).div_ceil(8),
                got: self.data.len(),
            });
        }
        let mut v = 0u32;
        for _ in 0..n {
            let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    pub(crate) fn flag(&mut self) -> Result<bool> {
        Ok(self.f(1)? == 1)
    }

    /// `ns(n)`: a non-symmetric unsigned value in `0..n`.
    pub(crate) fn ns(&mut self, n: u32) -> Result<u32> {
        if n <= 1 {
            return Ok(0);
        }
        let w = 32 - n.leading_zeros(); // bits to write n
        let m = (1u32 << w) - n;
        let v = self.f(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = self.f(1)?;
        Ok((v << 1) - m + extra)
    }
}

pub(crate) struct BitWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        out.fill(0);
        Self { out, pos: 0 }
    }

    pub(crate) fn bits_written(&self) -> usize {
        self.pos
    }

    pub(crate) fn f(&mut self, n: u32, v: u32) -> Result<()> {
        let n = n as usize;
        if self.pos + n > self.out.len() * 8 {
            return Err(WireError::BufferTooSmall {
                what: "dependency descriptor",
                needed: (self.pos + n).div_ceil(8),
                got: self.out.len(),
            });
        }
        for i in (0..n).rev() {
            if (v >> i) & 1 == 1 {
                self.out[self.pos / 8] |= 1 << (7 - self.pos % 8);
            }
            self.pos += 1;
        }
        Ok(())
    }

    pub(crate) fn flag(&mut self, b: bool) -> Result<()> {
        self.f(1, u32::from(b))
    }

    /// Inverse of [`BitReader::ns`]; `v < n`.
    pub(crate) fn ns(&mut self, n: u32, v: u32) -> Result<()> {
        if n <= 1 {
            return Ok(());
        }
        let w = 32 - n.leading_zeros();
        let m = (1u32 << w) - n;
        if v < m {
            self.f(w - 1, v)
        } else {
            let x = v + m;
            self.f(w - 1, x >> 1)?;
            self.f(1, x & 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_round_trips_for_every_range() {
        for n in 1..=40u32 {
            for v in 0..n {
                let mut buf = [0u8; 8];
                let mut w = BitWriter::new(&mut buf);
                w.f(3, 5).unwrap();
                w.ns(n, v).unwrap();
                w.f(2, 2).unwrap();
                let mut r = BitReader::new(&buf);
                assert_eq!(r.f(3).unwrap(), 5);
                assert_eq!(r.ns(n).unwrap(), v, "ns({n}) of {v}");
                assert_eq!(r.f(2).unwrap(), 2);
            }
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0xFF]);
        assert_eq!(r.f(8).unwrap(), 0xFF);
        assert!(r.f(1).is_err());
    }
}
