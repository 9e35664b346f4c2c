//! IVF, the container libvpx writes: a 32-byte file header (`DKIF`, version 0, header size,
//! codec FourCC, width, height, time base rate and scale, frame count), then per frame a 12-byte
//! header (little-endian payload length and 64-bit presentation timestamp) and the payload.
//!
//! Timestamps count time-base units: a frame's time in seconds is `pts * scale / rate`.
//! [`IvfWriter`] always writes a 1/90 000 time base, so RTP timestamps of a VP8 track can be
//! stored as they are.

use std::io::{Read, Write};

use super::{MediaFileError, read_full};

/// Size of the IVF file header.
pub const FILE_HEADER_LEN: usize = 32;
/// Size of each IVF frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest frame the reader accepts (a 4K VP8 key frame is well below this). A corrupt length
/// field is refused before anything is allocated for it.
pub const MAX_FRAME_LEN: usize = 16 << 20;
/// The FourCC of VP8.
pub const VP8: [u8; 4] = *b"VP80";

/// The IVF file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec FourCC (`VP80` for VP8).
    pub fourcc: [u8; 4],
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Time base denominator (units per second), e.g. 90 000 or 30.
    pub rate: u32,
    /// Time base numerator, usually 1.
    pub scale: u32,
    /// Frame count as the writer recorded it (0 when it did not know).
    pub frames: u32,
}

impl IvfHeader {
    /// A VP8 header with a 1/90 000 time base (the RTP video clock).
    #[must_use]
    pub fn vp8(width: u16, height: u16) -> Self {
        Self {
            fourcc: VP8,
            width,
            height,
            rate: 90_000,
            scale: 1,
            frames: 0,
        }
    }

    fn to_bytes(self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[0..4].copy_from_slice(b"DKIF");
        // version 0 at 4..6
        b[6..8].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.fourcc);
        b[12..14].copy_from_slice(&self.width.to_le_bytes());
        b[14..16].copy_from_slice(&self.height.to_le_bytes());
        b[16..20].copy_from_slice(&self.rate.to_le_bytes());
        b[20..24].copy_from_slice(&self.scale.to_le_bytes());
        b[24..28].copy_from_slice(&self.frames.to_le_bytes());
        b
    }

    /// Convert a timestamp in this file's time base to `clock` Hz, or `None` on overflow.
    #[must_use]
    pub fn to_clock(&self, pts: u64, clock: u32) -> Option<u64> {
        let t =
            u128::from(pts) * u128::from(clock) * u128::from(self.scale) / u128::from(self.rate);
        u64::try_from(t).ok()
    }
}

/// One IVF frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFrame {
    /// Presentation timestamp in the file's time base.
    pub pts: u64,
    /// The encoded frame.
    pub data: Vec<u8>,
}

/// Reads IVF frames from any byte source.
#[derive(Debug)]
pub struct IvfReader<R> {
    inner: R,
    header: IvfHeader,
}

impl<R: Read> IvfReader<R> {
    /// Parse the file header.
    ///
    /// # Errors
    /// [`MediaFileError::NotThisFormat`] without the `DKIF` signature;
    /// [`MediaFileError::Truncated`] if the header is cut short; [`MediaFileError::Unsupported`]
    /// for a version other than 0; [`MediaFileError::Malformed`] for a header shorter than
    /// 32 bytes or a zero time base; I/O errors.
    pub fn new(mut inner: R) -> Result<Self, MediaFileError> {
        let mut b = [0u8; FILE_HEADER_LEN];
        if !read_full(&mut inner, &mut b, "IVF file header")? {
            return Err(MediaFileError::Truncated {
                what: "IVF file header",
            });
        }
        if &b[0..4] != b"DKIF" {
            return Err(MediaFileError::NotThisFormat { expected: "IVF" });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let version = u16_at(4);
        if version != 0 {
            return Err(MediaFileError::Unsupported(format!(
                "IVF version {version}"
            )));
        }
        let header_len = usize::from(u16_at(6));
        if header_len < FILE_HEADER_LEN {
            return Err(MediaFileError::Malformed(format!(
                "IVF header length {header_len} (at least {FILE_HEADER_LEN})"
            )));
        }
        // A longer header (never seen in practice, but allowed by the length field): skip it.
        let extra = (header_len - FILE_HEADER_LEN) as u64;
        let skipped = std::io::copy(&mut (&mut inner).take(extra), &mut std::io::sink())?;
        if skipped != extra {
            return Err(MediaFileError::Truncated {
                what: "IVF file header",
            });
        }
        let header = IvfHeader {
            fourcc: [b[8], b[9], b[10], b[11]],
            width: u16_at(12),
            height: u16_at(14),
            rate: u32_at(16),
            scale: u32_at(20),
            frames: u32_at(24),
        };
        if header.rate == 0 || header.scale == 0 {
            return Err(MediaFileError::Malformed(format!(
                "IVF time base {}/{}",
                header.scale, header.rate
            )));
        }
        Ok(Self { inner, header })
    }

    /// The file header.
    #[must_use]
    pub fn header(&self) -> &IvfHeader {
        &self.header
    }

    /// The next frame, or `None` at the end of the file (exactly at a frame boundary).
    ///
    /// # Errors
    /// [`MediaFileError::Truncated`] if the file ends inside a frame;
    /// [`MediaFileError::TooLarge`] for a length above [`MAX_FRAME_LEN`]; I/O errors.
    pub fn next_frame(&mut self) -> Result<Option<IvfFrame>, MediaFileError> {
        let mut h = [0u8; FRAME_HEADER_LEN];
        if !read_full(&mut self.inner, &mut h, "IVF frame header")? {
            return Ok(None);
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let mut pts = [0u8; 8];
        pts.copy_from_slice(&h[4..12]);
        if len > MAX_FRAME_LEN {
            return Err(MediaFileError::TooLarge {
                what: "IVF frame",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let mut data = vec![0u8; len];
        if !read_full(&mut self.inner, &mut data, "IVF frame")? && len > 0 {
            return Err(MediaFileError::Truncated { what: "IVF frame" });
        }
        Ok(Some(IvfFrame {
            pts: u64::from_le_bytes(pts),
            data,
        }))
    }
}

/// Writes IVF frames to any byte sink.
#[derive(Debug)]
pub struct IvfWriter<W> {
    inner: W,
    frames: u32,
}

impl<W: Write> IvfWriter<W> {
    /// Write the file header.
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(mut inner: W, header: &IvfHeader) -> Result<Self, MediaFileError> {
        inner.write_all(&header.to_bytes())?;
        Ok(Self { inner, frames: 0 })
    }

    /// Append one frame.
    ///
    /// # Errors
    /// [`MediaFileError::TooLarge`] above [`MAX_FRAME_LEN`] (the reader would refuse it); I/O
    /// errors.
    pub fn write_frame(&mut self, pts: u64, data: &[u8]) -> Result<(), MediaFileError> {
        if data.len() > MAX_FRAME_LEN {
            return Err(MediaFileError::TooLarge {
                what: "IVF frame",
                len: data.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[4..12].copy_from_slice(&pts.to_le_bytes());
        self.inner.write_all(&h)?;
        self.inner.write_all(data)?;
        self.frames = self.frames.saturating_add(1);
        Ok(())
    }

    /// Frames written so far.
    #[must_use]
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Flush the sink.
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&mut self) -> Result<(), MediaFileError> {
        Ok(self.inner.flush()?)
    }

    /// The sink, as it is (for a sink that cannot seek, the header's frame count stays 0;
    /// readers do not rely on it).
    #[must_use]
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write + std::io::Seek> IvfWriter<W> {
    /// Record the frame count in the header (the sink must be seekable) and return the sink.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> Result<W, MediaFileError> {
        use std::io::SeekFrom;
        let end = self.inner.stream_position()?;
        self.inner.seek(SeekFrom::Start(24))?;
        self.inner.write_all(&self.frames.to_le_bytes())?;
        self.inner.seek(SeekFrom::Start(end))?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Whether a VP8 frame is a key frame (RFC 6386 §9.1: bit 0 of the frame tag is 0).
#[must_use]
pub fn vp8_is_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// The width and height in a VP8 key frame's header (RFC 6386 §9.1: the 3-byte frame tag, the
/// start code `9d 01 2a`, then 14-bit width and height), or `None` for anything else.
#[must_use]
pub fn vp8_key_frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    if !vp8_is_key_frame(frame) || frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn file(frames: &[(u64, &[u8])]) -> Vec<u8> {
        let mut w = IvfWriter::new(Cursor::new(Vec::new()), &IvfHeader::vp8(640, 360)).unwrap();
        for (pts, f) in frames {
            w.write_frame(*pts, f).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn writes_the_documented_layout() {
        let b = file(&[(3000, &[1, 2, 3])]);
        assert_eq!(b.len(), 32 + 12 + 3);
        assert_eq!(&b[0..4], b"DKIF");
        assert_eq!(&b[4..8], &[0, 0, 32, 0]);
        assert_eq!(&b[8..12], b"VP80");
        assert_eq!(&b[12..16], &[0x80, 0x02, 0x68, 0x01]); // 640, 360
        assert_eq!(&b[16..24], &[0x90, 0x5f, 0x01, 0x00, 1, 0, 0, 0]); // 90000, 1
        assert_eq!(&b[24..28], &[1, 0, 0, 0]); // frame count patched by finish
        assert_eq!(&b[32..44], &[3, 0, 0, 0, 0xb8, 0x0b, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[44..], &[1, 2, 3]);
    }

    #[test]
    fn round_trip() {
        let big = vec![7u8; 70_000];
        let frames: Vec<(u64, &[u8])> = vec![(0, &[0x10, 1]), (3000, &[]), (6000, &big)];
        let b = file(&frames);
        let mut r = IvfReader::new(Cursor::new(b)).unwrap();
        assert_eq!(r.header().frames, 3);
        assert_eq!((r.header().width, r.header().height), (640, 360));
        for (pts, data) in frames {
            let f = r.next_frame().unwrap().unwrap();
            assert_eq!((f.pts, f.data.as_slice()), (pts, data));
        }
        assert!(r.next_frame().unwrap().is_none());
        assert!(r.next_frame().unwrap().is_none());
    }

    /// webrtc-rs's IVF reader (an independent implementation) reads what we write.
    #[test]
    fn webrtc_rs_reads_our_files() {
        let b = file(&[(0, &[0x10, 0x02]), (3000, &[0x11; 500])]);
        let (mut r, h) = rtc::media::io::ivf_reader::IVFReader::new(Cursor::new(b)).unwrap();
        assert_eq!(&h.four_cc, b"VP80");
        assert_eq!(h.num_frames, 2);
        let (f, fh) = r.parse_next_frame().unwrap();
        assert_eq!((&f[..], fh.timestamp), (&[0x10, 0x02][..], 0));
        let (f, fh) = r.parse_next_frame().unwrap();
        assert_eq!((&f[..], fh.timestamp), (&[0x11; 500][..], 3000));
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let b = file(&[(0, &[1, 2, 3, 4]), (1, &[5, 6])]);
        for cut in 0..b.len() {
            let res = IvfReader::new(Cursor::new(&b[..cut])).and_then(|mut r| {
                while r.next_frame()?.is_some() {}
                Ok(())
            });
            // Cuts exactly at a frame boundary are a shorter, valid file.
            if cut == 32 || cut == 32 + 16 {
                assert!(res.is_ok(), "cut {cut}: {res:?}");
            } else {
                assert!(
                    matches!(res, Err(MediaFileError::Truncated { .. })),
                    "cut {cut}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_or_corrupt_headers_are_refused() {
        let good = file(&[(0, &[1])]);
        let with = |i: usize, v: &[u8]| {
            let mut b = good.clone();
            b[i..i + v.len()].copy_from_slice(v);
            IvfReader::new(Cursor::new(b)).map(|_| ())
        };
        assert!(matches!(
            with(0, b"OggS"),
            Err(MediaFileError::NotThisFormat { expected: "IVF" })
        ));
        assert!(matches!(
            with(4, &[1, 0]),
            Err(MediaFileError::Unsupported(_))
        ));
        assert!(matches!(
            with(6, &[16, 0]),
            Err(MediaFileError::Malformed(_))
        ));
        assert!(matches!(
            with(16, &[0, 0, 0, 0]),
            Err(MediaFileError::Malformed(_))
        ));
        // A frame length of 4 GiB is refused before allocating.
        let mut r = IvfReader::new(Cursor::new(
            [&good[..32], &[0xff, 0xff, 0xff, 0xff], &[0; 8]].concat(),
        ))
        .unwrap();
        assert!(matches!(
            r.next_frame(),
            Err(MediaFileError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn longer_header_is_skipped() {
        let mut b = file(&[(9, &[4, 5])]);
        b[6] = 36;
        b.splice(32..32, [0xaa; 4]);
        let mut r = IvfReader::new(Cursor::new(b)).unwrap();
        assert_eq!(r.next_frame().unwrap().unwrap().data, [4, 5]);
    }

    #[test]
    fn time_base_conversion() {
        let h = IvfHeader {
            rate: 30,
            scale: 1,
            ..IvfHeader::vp8(1, 1)
        };
        assert_eq!(h.to_clock(1, 90_000), Some(3000));
        assert_eq!(h.to_clock(30, 90_000), Some(90_000));
        let h = IvfHeader {
            rate: 1000,
            scale: 1,
            ..h
        };
        assert_eq!(h.to_clock(20, 48_000), Some(960));
        assert_eq!(
            IvfHeader::vp8(1, 1).to_clock(u64::MAX, 90_000),
            Some(u64::MAX)
        );
    }

    #[test]
    fn vp8_key_frames() {
        let key = [
            0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0,
        ];
        assert!(vp8_is_key_frame(&key));
        assert_eq!(vp8_key_frame_size(&key), Some((640, 360)));
        assert!(!vp8_is_key_frame(&[0x51]));
        assert!(!vp8_is_key_frame(&[]));
        assert_eq!(vp8_key_frame_size(&key[..9]), None);
        assert_eq!(
            vp8_key_frame_size(&[0x51, 0, 0, 0x9d, 1, 0x2a, 1, 0, 1, 0]),
            None
        );
    }
}
