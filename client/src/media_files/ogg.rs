//! Ogg Opus (RFC 3533 pages, RFC 7845 mapping): the reader walks pages, checks their CRC,
//! joins lacing segments into packets (also across pages), skips `OpusHead`/`OpusTags` and
//! hands out audio packets; the writer puts one packet on each page with its granule position.
//!
//! The granule position of a page is the number of 48 kHz samples decoded by the end of the
//! last packet completed on it, counting the pre-skip.

use std::collections::VecDeque;
use std::io::{Read, Write};

use super::{MediaFileError, read_full};

const CAPTURE: &[u8; 4] = b"OggS";
const PAGE_HEADER_LEN: usize = 27;
const FLAG_CONTINUED: u8 = 0x01;
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;
/// Largest packet the reader joins from segments (Opus packets are below 8 KiB; this bounds
/// what a corrupt file can make the reader buffer).
pub const MAX_PACKET_LEN: usize = 1 << 20;
/// Largest packet that fits on one page (255 segments: 254 × 255 + 254 bytes).
pub const MAX_PAGE_PACKET_LEN: usize = 255 * 255 - 1;

/// The Ogg CRC-32: polynomial 0x04c11db7, initial value 0, no reflection, no final XOR.
#[must_use]
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut k = 0;
            while k < 8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
                k += 1;
            }
            t[i] = r;
            i += 1;
        }
        t
    };
    bytes.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize]
    })
}

/// The `OpusHead` fields a player needs (RFC 7845 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channels (1 or 2 for mapping family 0).
    pub channels: u8,
    /// Samples at 48 kHz to discard at the start of playback.
    pub pre_skip: u16,
    /// The input sample rate the encoder saw (informational; Opus decodes at 48 kHz).
    pub input_rate: u32,
}

impl OpusHead {
    fn parse(p: &[u8]) -> Result<Self, MediaFileError> {
        if p.len() < 19 || &p[0..8] != b"OpusHead" {
            return Err(MediaFileError::NotThisFormat {
                expected: "Ogg Opus",
            });
        }
        if p[8] >> 4 != 0 {
            return Err(MediaFileError::Unsupported(format!(
                "OpusHead version {}",
                p[8]
            )));
        }
        let head = Self {
            channels: p[9],
            pre_skip: u16::from_le_bytes([p[10], p[11]]),
            input_rate: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
        };
        if head.channels == 0 {
            return Err(MediaFileError::Malformed("OpusHead: 0 channels".into()));
        }
        Ok(head)
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(19);
        b.extend_from_slice(b"OpusHead");
        b.push(1);
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_rate.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // output gain
        b.push(0); // channel mapping family 0: mono or stereo
        b
    }
}

/// The duration of an Opus packet in 48 kHz samples, from its TOC byte and frame count
/// (RFC 6716 §3.1), or `None` for a packet that is not valid Opus (empty, a code-3 packet
/// without its count byte, zero frames, or more than 120 ms).
#[must_use]
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let per_frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = per_frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

/// One audio packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggPacket {
    /// The Opus packet.
    pub data: Vec<u8>,
    /// The page's granule position if this packet is the last one completed on its page.
    pub granule: Option<u64>,
}

/// Reads Opus packets from an Ogg Opus byte source. Pages of other logical streams in the same
/// file (e.g. a multiplexed video stream) are skipped.
#[derive(Debug)]
pub struct OggOpusReader<R> {
    inner: R,
    head: OpusHead,
    serial: u32,
    ready: VecDeque<OggPacket>,
    partial: Vec<u8>,
    ended: bool,
    header_packets: u8,
}

impl<R: Read> OggOpusReader<R> {
    /// Read up to the first audio packet: the `OpusHead` and `OpusTags` headers.
    ///
    /// # Errors
    /// [`MediaFileError::NotThisFormat`] if this is not Ogg or the first stream is not Opus;
    /// [`MediaFileError::Truncated`], [`MediaFileError::Malformed`] (bad CRC, version, lacing);
    /// I/O errors.
    pub fn new(inner: R) -> Result<Self, MediaFileError> {
        let mut r = Self {
            inner,
            head: OpusHead {
                channels: 1,
                pre_skip: 0,
                input_rate: 0,
            },
            serial: 0,
            ready: VecDeque::new(),
            partial: Vec::new(),
            ended: false,
            header_packets: 0,
        };
        let Some((flags, serial, _)) = r.read_page(true)? else {
            return Err(MediaFileError::Truncated {
                what: "Ogg first page",
            });
        };
        if flags & FLAG_BOS == 0 {
            return Err(MediaFileError::Malformed(
                "the first Ogg page does not begin a stream".into(),
            ));
        }
        r.serial = serial;
        let head = r.ready.pop_front().ok_or(MediaFileError::NotThisFormat {
            expected: "Ogg Opus",
        })?;
        r.head = OpusHead::parse(&head.data)?;
        let tags = r.next_packet_raw()?.ok_or(MediaFileError::Truncated {
            what: "OpusTags header",
        })?;
        if !tags.data.starts_with(b"OpusTags") {
            return Err(MediaFileError::Malformed(
                "the second Opus packet is not OpusTags".into(),
            ));
        }
        r.header_packets = 2;
        Ok(r)
    }

    /// The stream's `OpusHead`.
    #[must_use]
    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    /// The next audio packet, or `None` at the end of the stream.
    ///
    /// # Errors
    /// [`MediaFileError::Truncated`] if the file ends inside a page or a packet;
    /// [`MediaFileError::Malformed`]; [`MediaFileError::TooLarge`]; I/O errors.
    pub fn next_packet(&mut self) -> Result<Option<OggPacket>, MediaFileError> {
        self.next_packet_raw()
    }

    fn next_packet_raw(&mut self) -> Result<Option<OggPacket>, MediaFileError> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Ok(Some(p));
            }
            if self.ended {
                return Ok(None);
            }
            if self.read_page(false)?.is_none() {
                if !self.partial.is_empty() {
                    return Err(MediaFileError::Truncated {
                        what: "Ogg packet (continued on a page that is missing)",
                    });
                }
                return Ok(None);
            }
        }
    }

    /// Read one page of our stream into `ready`; `None` at a clean end of file.
    fn read_page(&mut self, first: bool) -> Result<Option<(u8, u32, u64)>, MediaFileError> {
        loop {
            let mut h = [0u8; PAGE_HEADER_LEN];
            if !read_full(&mut self.inner, &mut h, "Ogg page header")? {
                return Ok(None);
            }
            if &h[0..4] != CAPTURE {
                return Err(if first {
                    MediaFileError::NotThisFormat { expected: "Ogg" }
                } else {
                    MediaFileError::Malformed("Ogg page without its OggS capture pattern".into())
                });
            }
            if h[4] != 0 {
                return Err(MediaFileError::Unsupported(format!(
                    "Ogg stream structure version {}",
                    h[4]
                )));
            }
            let flags = h[5];
            let granule = u64::from_le_bytes(h[6..14].try_into().unwrap_or_default());
            let serial = u32::from_le_bytes([h[14], h[15], h[16], h[17]]);
            let crc = u32::from_le_bytes([h[22], h[23], h[24], h[25]]);
            let mut lacing = vec![0u8; usize::from(h[26])];
            if !read_full(&mut self.inner, &mut lacing, "Ogg segment table")? && !lacing.is_empty()
            {
                return Err(MediaFileError::Truncated {
                    what: "Ogg segment table",
                });
            }
            let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let mut body = vec![0u8; body_len];
            if !read_full(&mut self.inner, &mut body, "Ogg page body")? && body_len > 0 {
                return Err(MediaFileError::Truncated {
                    what: "Ogg page body",
                });
            }
            h[22..26].fill(0);
            let mut all = Vec::with_capacity(h.len() + lacing.len() + body.len());
            all.extend_from_slice(&h);
            all.extend_from_slice(&lacing);
            all.extend_from_slice(&body);
            let computed = crc32(&all);
            if computed != crc {
                return Err(MediaFileError::Malformed(format!(
                    "Ogg page CRC {crc:08x}, computed {computed:08x}"
                )));
            }
            if !first && serial != self.serial {
                continue; // another logical stream
            }
            if flags & FLAG_EOS != 0 {
                self.ended = true;
            }
            self.split(flags, granule, &lacing, &body)?;
            return Ok(Some((flags, serial, granule)));
        }
    }

    fn split(
        &mut self,
        flags: u8,
        granule: u64,
        lacing: &[u8],
        body: &[u8],
    ) -> Result<(), MediaFileError> {
        if flags & FLAG_CONTINUED == 0 && !self.partial.is_empty() {
            return Err(MediaFileError::Malformed(
                "an Ogg packet is cut off by a page that does not continue it".into(),
            ));
        }
        let completed_before = self.ready.len();
        let mut at = 0;
        // A continued page whose predecessor we never saw (a file that starts mid-stream):
        // its leading segments belong to a packet we cannot complete, skip them.
        let mut skipping = flags & FLAG_CONTINUED != 0 && self.partial.is_empty();
        for &l in lacing {
            let seg = &body[at..at + usize::from(l)];
            at += usize::from(l);
            if !skipping {
                if self.partial.len() + seg.len() > MAX_PACKET_LEN {
                    return Err(MediaFileError::TooLarge {
                        what: "Ogg packet",
                        len: self.partial.len() + seg.len(),
                        max: MAX_PACKET_LEN,
                    });
                }
                self.partial.extend_from_slice(seg);
            }
            if l < 255 {
                if !skipping {
                    self.ready.push_back(OggPacket {
                        data: std::mem::take(&mut self.partial),
                        granule: None,
                    });
                }
                skipping = false;
            }
        }
        if self.ready.len() > completed_before
            && let Some(last) = self.ready.back_mut()
        {
            last.granule = Some(granule);
        }
        Ok(())
    }
}

/// Writes an Ogg Opus stream, one packet per page. The last packet is held back until the next
/// one (or [`finish`](Self::finish)) so that its page can carry the end-of-stream flag.
#[derive(Debug)]
pub struct OggOpusWriter<W> {
    inner: W,
    serial: u32,
    seq: u32,
    held: Option<(Vec<u8>, u64)>,
    packets: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Write the `OpusHead` and `OpusTags` pages for stream `serial`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(inner: W, serial: u32, head: &OpusHead) -> Result<Self, MediaFileError> {
        let mut w = Self {
            inner,
            serial,
            seq: 0,
            held: None,
            packets: 0,
        };
        w.page(FLAG_BOS, 0, &head.to_bytes())?;
        let vendor = b"veil";
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        w.page(0, 0, &tags)?;
        Ok(w)
    }

    /// Append one packet whose decoding ends at `granule` (48 kHz samples, pre-skip included).
    ///
    /// # Errors
    /// [`MediaFileError::TooLarge`] above [`MAX_PAGE_PACKET_LEN`]; I/O errors.
    pub fn write_packet(&mut self, packet: &[u8], granule: u64) -> Result<(), MediaFileError> {
        if packet.len() > MAX_PAGE_PACKET_LEN {
            return Err(MediaFileError::TooLarge {
                what: "Opus packet",
                len: packet.len(),
                max: MAX_PAGE_PACKET_LEN,
            });
        }
        if let Some((p, g)) = self.held.replace((packet.to_vec(), granule)) {
            self.page(0, g, &p)?;
        }
        self.packets += 1;
        Ok(())
    }

    /// Packets accepted so far.
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Flush the pages written so far (the last packet stays held).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&mut self) -> Result<(), MediaFileError> {
        Ok(self.inner.flush()?)
    }

    /// Write the last packet on an end-of-stream page and return the sink.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> Result<W, MediaFileError> {
        if let Some((p, g)) = self.held.take() {
            self.page(FLAG_EOS, g, &p)?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn page(&mut self, flags: u8, granule: u64, packet: &[u8]) -> Result<(), MediaFileError> {
        let segments = packet.len() / 255 + 1;
        let mut page = Vec::with_capacity(PAGE_HEADER_LEN + segments + packet.len());
        page.extend_from_slice(CAPTURE);
        page.push(0);
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.seq.to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        page.push(segments as u8);
        page.extend(std::iter::repeat_n(255u8, segments - 1));
        page.push((packet.len() % 255) as u8);
        page.extend_from_slice(packet);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.inner.write_all(&page)?;
        self.seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const HEAD: OpusHead = OpusHead {
        channels: 2,
        pre_skip: 312,
        input_rate: 48_000,
    };

    fn stream(packets: &[&[u8]]) -> Vec<u8> {
        let mut w = OggOpusWriter::new(Vec::new(), 0x5ea1, &HEAD).unwrap();
        let mut g = u64::from(HEAD.pre_skip);
        for p in packets {
            g += 960;
            w.write_packet(p, g).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(b: &[u8]) -> Result<Vec<OggPacket>, MediaFileError> {
        let mut r = OggOpusReader::new(Cursor::new(b))?;
        let mut out = Vec::new();
        while let Some(p) = r.next_packet()? {
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn crc_known_answer() {
        // The catalogued CRC-32/POSIX (same polynomial, initial value 0) checks "123456789" as
        // 0x765e7680 after its final inversion; Ogg's CRC has no inversion.
        assert_eq!(crc32(b"123456789"), 0x765e_7680 ^ 0xffff_ffff);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_with_granules() {
        let long = vec![0x78u8; 600]; // three segments: 255, 255, 90
        let exact = vec![0x78u8; 510]; // 255, 255, 0
        let packets: Vec<&[u8]> = vec![&[0x78, 1], &long, &exact, &[0x78]];
        let b = stream(&packets);
        let mut r = OggOpusReader::new(Cursor::new(&b[..])).unwrap();
        assert_eq!(r.head(), &HEAD);
        for (i, p) in packets.iter().enumerate() {
            let got = r.next_packet().unwrap().unwrap();
            assert_eq!(got.data, *p);
            assert_eq!(got.granule, Some(312 + 960 * (i as u64 + 1)));
        }
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn pages_and_flags_as_rfc_7845_lays_them_out() {
        let b = stream(&[&[0x78, 1]]);
        // Page 0: BOS, granule 0, one 19-byte OpusHead segment.
        assert_eq!(&b[0..6], b"OggS\x00\x02");
        assert_eq!(&b[6..14], &[0; 8]);
        assert_eq!(&b[18..22], &[0; 4]);
        assert_eq!((b[26], b[27]), (1, 19));
        assert_eq!(&b[28..36], b"OpusHead");
        // The audio page is the last and carries EOS.
        let last = b.len() - (27 + 1 + 2);
        assert_eq!(&b[last..last + 6], b"OggS\x00\x04");
        assert_eq!(&b[last + 18..last + 22], &[2, 0, 0, 0]);
    }

    /// webrtc-rs's Ogg reader (an independent implementation, CRC checked) reads what we write.
    #[test]
    fn webrtc_rs_reads_our_files() {
        let b = stream(&[&[0x78, 1, 2], &[0x78; 300]]);
        let (mut r, h) = rtc::media::io::ogg_reader::OggReader::new(Cursor::new(b), true).unwrap();
        assert_eq!((h.channels, h.pre_skip, h.sample_rate), (2, 312, 48_000));
        let (tags, _) = r.parse_next_page().unwrap();
        assert!(tags.starts_with(b"OpusTags"));
        let (p, ph) = r.parse_next_page().unwrap();
        assert_eq!(
            (&p[..], ph.granule_position),
            (&[0x78, 1, 2][..], 312 + 960)
        );
        let (p, ph) = r.parse_next_page().unwrap();
        assert_eq!(
            (&p[..], ph.granule_position),
            (&[0x78; 300][..], 312 + 1920)
        );
        assert!(ph.is_end_of_stream());
    }

    /// Pages with several packets, and a packet continued across pages, as opusenc and
    /// libogg write them.
    #[test]
    fn packets_across_and_within_pages() {
        let mut b = Vec::new();
        let mut seq = 0;
        let mut page = |flags: u8, granule: u64, lacing: &[u8], body: &[u8]| {
            let mut p = Vec::new();
            p.extend_from_slice(b"OggS\x00");
            p.push(flags);
            p.extend_from_slice(&granule.to_le_bytes());
            p.extend_from_slice(&7u32.to_le_bytes());
            p.extend_from_slice(
                &{
                    seq += 1;
                    seq - 1u32
                }
                .to_le_bytes(),
            );
            p.extend_from_slice(&[0; 4]);
            p.push(lacing.len() as u8);
            p.extend_from_slice(lacing);
            p.extend_from_slice(body);
            let crc = crc32(&p);
            p[22..26].copy_from_slice(&crc.to_le_bytes());
            b.extend_from_slice(&p);
        };
        page(FLAG_BOS, 0, &[19], &HEAD.to_bytes());
        let tags = [b"OpusTags".as_slice(), &[0; 8]].concat();
        page(0, 0, &[16], &tags);
        // Two packets (3 and 2 bytes) and the first 255 bytes of a third.
        let mut body = vec![0x78, 1, 2, 0x78, 3];
        body.extend(std::iter::repeat_n(9u8, 255));
        page(0, 1920, &[3, 2, 255], &body);
        // The third packet's last 5 bytes, then a fourth packet.
        page(
            FLAG_CONTINUED | FLAG_EOS,
            3840,
            &[5, 1],
            &[9, 9, 9, 9, 9, 0x78],
        );
        let got = read_all(&b).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            OggPacket {
                data: vec![0x78, 1, 2],
                granule: None
            }
        );
        assert_eq!(
            got[1],
            OggPacket {
                data: vec![0x78, 3],
                granule: Some(1920)
            }
        );
        assert_eq!(got[2].data, vec![9u8; 260]);
        assert_eq!(got[2].granule, None);
        assert_eq!(
            got[3],
            OggPacket {
                data: vec![0x78],
                granule: Some(3840)
            }
        );
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let b = stream(&[&[0x78, 1, 2, 3], &[0x78; 20]]);
        let boundaries = page_ends(&b);
        for cut in 0..b.len() {
            let res = read_all(&b[..cut]);
            if boundaries.contains(&cut) && cut >= boundaries[1] {
                assert!(res.is_ok(), "cut {cut}: {res:?}");
            } else {
                assert!(
                    matches!(res, Err(MediaFileError::Truncated { .. })),
                    "cut {cut}: {res:?}"
                );
            }
        }
    }

    fn page_ends(b: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut ends = Vec::new();
        while at < b.len() {
            let n = usize::from(b[at + 26]);
            let body: usize = b[at + 27..at + 27 + n]
                .iter()
                .map(|&l| usize::from(l))
                .sum();
            at += 27 + n + body;
            ends.push(at);
        }
        ends
    }

    #[test]
    fn corrupt_or_foreign_input_is_refused() {
        let good = stream(&[&[0x78, 1]]);
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert!(
            matches!(read_all(&flipped), Err(MediaFileError::Malformed(m)) if m.contains("CRC"))
        );
        assert!(matches!(
            read_all(b"DKIF\0\0 \0VP80 and then some more bytes"),
            Err(MediaFileError::NotThisFormat { expected: "Ogg" })
        ));
        // Ogg, but Vorbis rather than Opus.
        let mut w = OggOpusWriter::new(Vec::new(), 1, &HEAD).unwrap();
        w.write_packet(&[0x78], 960).unwrap();
        let mut vorbis = w.finish().unwrap();
        vorbis[28..36].copy_from_slice(b"\x01vorbis\0");
        let crc_at = 22;
        vorbis[crc_at..crc_at + 4].fill(0);
        let crc = crc32(&vorbis[..27 + 1 + 19]);
        vorbis[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            read_all(&vorbis),
            Err(MediaFileError::NotThisFormat {
                expected: "Ogg Opus"
            })
        ));
        assert!(matches!(
            read_all(&[]),
            Err(MediaFileError::Truncated { .. })
        ));
    }

    #[test]
    fn opus_durations_from_the_toc() {
        assert_eq!(opus_packet_samples(&[0x78]), Some(960)); // hybrid FB 20 ms
        assert_eq!(opus_packet_samples(&[0xf8]), Some(960)); // CELT FB 20 ms
        assert_eq!(opus_packet_samples(&[0x08]), Some(960)); // SILK NB 20 ms
        assert_eq!(opus_packet_samples(&[0x18]), Some(2880)); // SILK NB 60 ms
        assert_eq!(opus_packet_samples(&[0xe0]), Some(120)); // CELT FB 2.5 ms
        assert_eq!(opus_packet_samples(&[0x79]), Some(1920)); // two 20 ms frames
        assert_eq!(opus_packet_samples(&[0x7b, 3]), Some(2880)); // code 3, three frames
        assert_eq!(opus_packet_samples(&[0x1b, 3]), None); // 3 × 60 ms > 120 ms
        assert_eq!(opus_packet_samples(&[0x7b]), None); // code 3 without its count
        assert_eq!(opus_packet_samples(&[0x7b, 0]), None);
        assert_eq!(opus_packet_samples(&[]), None);
    }
}
