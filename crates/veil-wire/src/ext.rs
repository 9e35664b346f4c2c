//! RTP header-extension blocks (RFC 8285): the one-byte form (profile `0xBEDE`) and the
//! two-byte form (profile `0x100X`, negotiated with `a=extmap-allow-mixed`).
//!
//! Chromium sends both forms on one stream: `0xBEDE` normally, `0x1000` on packets where an
//! element is longer than 16 bytes (a dependency-descriptor structure, a video-layers allocation).
//! A blind SFU reads every packet's block, so reading is zero-copy and never panics.
//!
//! ```
//! use veil_wire::ext::{Extension, Extensions, parse_section, write_section};
//!
//! let dd = [0x80, 0x00, 0x01, 0x80, 0x00, 0x3a, 0x40, 0x81, 0x3f, 0x80, 0xef, 0x80,
//!           0x00, 0x00, 0x00, 0x00, 0x00]; // 17 bytes: too long for the one-byte form
//! let els = [Extension { id: 1, data: &[0x7f] }, Extension { id: 13, data: &dd }];
//! let mut buf = [0u8; 64];
//! let n = write_section(&els, &mut buf)?;
//! assert_eq!(&buf[..4], &[0x10, 0x00, 0x00, 6]); // two-byte form, 6 words
//! let (it, used) = parse_section(&buf[..n])?;
//! assert_eq!(used, n);
//! assert_eq!(it.collect::<Result<Vec<_>, _>>()?, els);
//! # Ok::<(), veil_wire::WireError>(())
//! ```
//!
//! Checks (see `specs/rtp.md`):
//! - **RTP-EXT-01** one-byte elements: `ID (4) | L (4)`, `L + 1` data bytes, ID 1..=14. A zero
//!   byte is padding. ID 15 ends parsing of the block (RFC 8285 §4.2).
//! - **RTP-EXT-02** two-byte elements: `ID (8) | L (8)`, `L` data bytes (0..=255), ID 1..=255. A
//!   zero byte is padding: it supplies neither an ID nor a length (RFC 8285 §4.1.2), so an
//!   "ID 0 element" cannot occur in this form.
//! - **RTP-EXT-03** an element that runs past the block, or a one-byte element with ID 0 and
//!   non-zero length, is a typed error, and the iterator stops there.
//! - **RTP-EXT-04** writers pick the one-byte form when every element fits it, and otherwise the
//!   two-byte form. They pad the block with zeros to a 32-bit boundary.
//! - **RTP-EXT-05** a whole section is profile, length in 32-bit words, body; a section shorter
//!   than its length word says, or a profile of neither form, is an error; a writer never
//!   produces a body longer than the 16-bit word count can announce.

use crate::error::{Result, WireError};

/// Profile of the one-byte form.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Profile of the two-byte form with zero app bits (the low four bits are application bits).
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

/// Which element format a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// `0xBEDE`: 1-byte element headers, ids 1..=14, 1..=16 data bytes.
    OneByte,
    /// `0x100X`: 2-byte element headers, ids 1..=255, 0..=255 data bytes; `appbits` are the
    /// profile's low four bits.
    TwoByte {
        /// Application bits (low nibble of the profile).
        appbits: u8,
    },
}

impl ExtensionForm {
    /// The form a profile value announces.
    ///
    /// # Errors
    /// [`WireError::Malformed`] for a profile that is neither `0xBEDE` nor `0x100X`.
    pub fn from_profile(profile: u16) -> Result<Self> {
        match profile {
            ONE_BYTE_PROFILE => Ok(Self::OneByte),
            p if p & 0xFFF0 == TWO_BYTE_PROFILE => Ok(Self::TwoByte {
                appbits: (p & 0xF) as u8,
            }),
            _ => Err(WireError::Malformed {
                what: "RTP header extension",
                reason: "profile is neither 0xBEDE (one-byte) nor 0x100X (two-byte)",
            }),
        }
    }

    /// The profile value of this form.
    #[must_use]
    pub fn profile(self) -> u16 {
        match self {
            Self::OneByte => ONE_BYTE_PROFILE,
            Self::TwoByte { appbits } => TWO_BYTE_PROFILE | u16::from(appbits & 0xF),
        }
    }
}

/// One extension element: its negotiated id and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// Local identifier (from `a=extmap`).
    pub id: u8,
    /// Element data.
    pub data: &'a [u8],
}

/// Iterator over the elements of one block body (the bytes after the profile/length word).
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    form: ExtensionForm,
    body: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Extensions<'a> {
    /// Iterate over `body` in `form`.
    #[must_use]
    pub fn new(form: ExtensionForm, body: &'a [u8]) -> Self {
        Self {
            form,
            body,
            pos: 0,
            done: false,
        }
    }

    /// Iterate over a block body announced with `profile`.
    ///
    /// # Errors
    /// As [`ExtensionForm::from_profile`].
    pub fn with_profile(profile: u16, body: &'a [u8]) -> Result<Self> {
        Ok(Self::new(ExtensionForm::from_profile(profile)?, body))
    }

    /// The block's form.
    #[must_use]
    pub fn form(&self) -> ExtensionForm {
        self.form
    }

    /// The data of the first element with `id`, checking the whole block for errors.
    ///
    /// # Errors
    /// The first malformed element's error.
    pub fn find(self, id: u8) -> Result<Option<&'a [u8]>> {
        let mut found = None;
        for e in self {
            let e = e?;
            if e.id == id && found.is_none() {
                found = Some(e.data);
            }
        }
        Ok(found)
    }

    fn overrun(&mut self, needed: usize) -> Option<Result<Extension<'a>>> {
        self.done = true;
        Some(Err(WireError::Truncated {
            what: "RTP header-extension element",
            needed,
            got: self.body.len() - self.pos,
        }))
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.pos < self.body.len() {
            let b = self.body[self.pos];
            if b == 0 {
                self.pos += 1; // padding (RTP-EXT-01/02)
                continue;
            }
            match self.form {
                ExtensionForm::OneByte => {
                    let (id, len) = (b >> 4, usize::from(b & 0xF) + 1);
                    if id == 15 {
                        // RFC 8285 §4.2: stop processing the block.
                        self.done = true;
                        return None;
                    }
                    if id == 0 {
                        self.done = true;
                        return Some(Err(WireError::Malformed {
                            what: "one-byte RTP header extension",
                            reason: "element with id 0 and non-zero length",
                        }));
                    }
                    let start = self.pos + 1;
                    if start + len > self.body.len() {
                        return self.overrun(1 + len);
                    }
                    self.pos = start + len;
                    return Some(Ok(Extension {
                        id,
                        data: &self.body[start..start + len],
                    }));
                }
                ExtensionForm::TwoByte { .. } => {
                    if self.pos + 2 > self.body.len() {
                        return self.overrun(2);
                    }
                    let len = usize::from(self.body[self.pos + 1]);
                    let start = self.pos + 2;
                    if start + len > self.body.len() {
                        return self.overrun(2 + len);
                    }
                    self.pos = start + len;
                    return Some(Ok(Extension {
                        id: b,
                        data: &self.body[start..start + len],
                    }));
                }
            }
        }
        None
    }
}

/// Split an RTP extension section (profile, length in 32-bit words, body) off the front of
/// `section`; returns the element iterator and the bytes consumed.
///
/// # Errors
/// [`WireError::Truncated`] if the section is shorter than it announces; profile errors.
pub fn parse_section(section: &[u8]) -> Result<(Extensions<'_>, usize)> {
    if section.len() < 4 {
        return Err(WireError::Truncated {
            what: "RTP header-extension section",
            needed: 4,
            got: section.len(),
        });
    }
    let profile = u16::from_be_bytes([section[0], section[1]]);
    let len = 4 + 4 * usize::from(u16::from_be_bytes([section[2], section[3]]));
    if section.len() < len {
        return Err(WireError::Truncated {
            what: "RTP header-extension section",
            needed: len,
            got: section.len(),
        });
    }
    Ok((Extensions::with_profile(profile, &section[4..len])?, len))
}

/// The form [`write_block`] will use for `elements`.
#[must_use]
pub fn form_for(elements: &[Extension<'_>]) -> ExtensionForm {
    if elements
        .iter()
        .all(|e| (1..=14).contains(&e.id) && (1..=16).contains(&e.data.len()))
    {
        ExtensionForm::OneByte
    } else {
        ExtensionForm::TwoByte { appbits: 0 }
    }
}

/// Write `elements` as a block body, padded to 32 bits, in the smallest form that can carry
/// them (RTP-EXT-04). Returns the profile and the body length (a multiple of 4).
///
/// # Errors
/// [`WireError::InvalidArgument`] for id 0, data over 255 bytes, or a body over 65535 words;
/// [`WireError::BufferTooSmall`].
pub fn write_block(elements: &[Extension<'_>], out: &mut [u8]) -> Result<(u16, usize)> {
    let form = form_for(elements);
    let hdr = if form == ExtensionForm::OneByte { 1 } else { 2 };
    let mut need = 0;
    for e in elements {
        if e.id == 0 {
            return Err(WireError::InvalidArgument {
                what: "RTP header extension",
                reason: "id 0 is reserved for padding",
            });
        }
        if e.data.len() > 255 {
            return Err(WireError::InvalidArgument {
                what: "RTP header extension",
                reason: "element data longer than 255 bytes",
            });
        }
        need += hdr + e.data.len();
    }
    let padded = need.div_ceil(4) * 4;
    if padded / 4 > usize::from(u16::MAX) {
        return Err(WireError::InvalidArgument {
            what: "RTP header extension",
            reason: "block longer than 65535 32-bit words",
        });
    }
    if out.len() < padded {
        return Err(WireError::BufferTooSmall {
            what: "RTP header-extension block",
            needed: padded,
            got: out.len(),
        });
    }
    let mut pos = 0;
    for e in elements {
        if form == ExtensionForm::OneByte {
            out[pos] = (e.id << 4) | (e.data.len() as u8 - 1);
        } else {
            out[pos] = e.id;
            out[pos + 1] = e.data.len() as u8;
        }
        pos += hdr;
        out[pos..pos + e.data.len()].copy_from_slice(e.data);
        pos += e.data.len();
    }
    out[pos..padded].fill(0);
    Ok((form.profile(), padded))
}

/// Write a whole extension section (RTP-EXT-05): profile, length in 32-bit words, then the
/// body of [`write_block`]. Returns the bytes written (4 + body).
///
/// # Errors
/// As [`write_block`].
pub fn write_section(elements: &[Extension<'_>], out: &mut [u8]) -> Result<usize> {
    if out.len() < 4 {
        return Err(WireError::BufferTooSmall {
            what: "RTP header-extension section",
            needed: 4,
            got: out.len(),
        });
    }
    let (head, body) = out.split_at_mut(4);
    let (profile, len) = write_block(elements, body)?;
    head[..2].copy_from_slice(&profile.to_be_bytes());
    // write_block bounds the body to u16::MAX words.
    head[2..].copy_from_slice(&((len / 4) as u16).to_be_bytes());
    Ok(4 + len)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const TWO: ExtensionForm = ExtensionForm::TwoByte { appbits: 0 };

    fn collect(form: ExtensionForm, body: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        Extensions::new(form, body)
            .map(|e| e.map(|e| (e.id, e.data.to_vec())))
            .collect()
    }

    fn truncated(needed: usize, got: usize) -> WireError {
        WireError::Truncated {
            what: "RTP header-extension element",
            needed,
            got,
        }
    }

    /// RTP-EXT-01.
    #[test]
    fn one_byte_elements_with_padding() {
        // padding, id 2 len 3, padding, id 4 len 2, id 9 len 1, padding
        let body = [0, 0x22, 1, 2, 3, 0, 0x41, 9, 8, 0x90, 7, 0, 0];
        assert_eq!(
            collect(ExtensionForm::OneByte, &body).unwrap(),
            vec![(2, vec![1, 2, 3]), (4, vec![9, 8]), (9, vec![7])]
        );
        // 16 data bytes is the one-byte maximum; padding alone is an empty block.
        let mut long = vec![0xEF];
        long.extend(1..=16u8);
        assert_eq!(
            collect(ExtensionForm::OneByte, &long).unwrap(),
            vec![(14, (1..=16).collect())]
        );
        assert_eq!(collect(ExtensionForm::OneByte, &[0; 8]).unwrap(), vec![]);
    }

    /// RTP-EXT-01: id 15 stops the block, whatever follows (even bytes that would not parse).
    #[test]
    fn one_byte_id_15_stops_parsing() {
        let body = [0x10, 1, 0xF3, 0xFF, 0x2F];
        assert_eq!(
            collect(ExtensionForm::OneByte, &body).unwrap(),
            vec![(1, vec![1])]
        );
        assert_eq!(
            collect(ExtensionForm::OneByte, &[0xF0, 0x10]).unwrap(),
            vec![]
        );
    }

    /// RTP-EXT-02: ids up to 255, zero-length data, padding anywhere.
    #[test]
    fn two_byte_elements_including_empty_ones() {
        let body = [0, 0x11, 0, 0x40, 3, 7, 8, 9, 0, 0xFF, 1, 5, 0x0F, 0, 0];
        assert_eq!(
            collect(TWO, &body).unwrap(),
            vec![
                (0x11, vec![]),
                (0x40, vec![7, 8, 9]),
                (0xFF, vec![5]),
                (15, vec![])
            ]
        );
        // A zero byte is padding, so "00 05 .." is padding then an element with id 5.
        assert_eq!(collect(TWO, &[0, 5, 1, 9]).unwrap(), vec![(5, vec![9])]);
    }

    /// RTP-EXT-03: each overrun and the one-byte id-0 element is its own typed error, and the
    /// iterator yields nothing after an error.
    #[test]
    fn overruns_are_typed_errors_and_end_iteration() {
        assert_eq!(
            collect(ExtensionForm::OneByte, &[0x10, 7, 0x23, 1, 2]),
            Err(truncated(5, 3))
        );
        let id0 = WireError::Malformed {
            what: "one-byte RTP header extension",
            reason: "element with id 0 and non-zero length",
        };
        assert_eq!(collect(ExtensionForm::OneByte, &[0x05, 1, 2]), Err(id0));
        assert_eq!(collect(TWO, &[0x11]), Err(truncated(2, 1)));
        assert_eq!(collect(TWO, &[0x11, 4, 1]), Err(truncated(6, 3)));
        let mut it = Extensions::new(ExtensionForm::OneByte, &[0x23, 1, 0x10, 5]);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none(), "nothing after an error");
        assert_eq!(
            Extensions::new(ExtensionForm::OneByte, &[0x10, 5, 0x30]).find(1),
            Err(truncated(2, 1)),
            "find checks the whole block"
        );
    }

    /// RTP-EXT-05.
    #[test]
    fn sections_and_profiles() {
        assert!(matches!(
            ExtensionForm::from_profile(0x1234),
            Err(WireError::Malformed { .. })
        ));
        for appbits in 0..16 {
            let form = ExtensionForm::from_profile(0x1000 | u16::from(appbits)).unwrap();
            assert_eq!(form, ExtensionForm::TwoByte { appbits });
            assert_eq!(form.profile(), 0x1000 | u16::from(appbits));
        }
        // One word announced, two present: the rest of the packet is not the section's.
        let section = [0xBE, 0xDE, 0, 1, 0x10, 1, 0, 0, 0xAA, 0xBB];
        let (it, used) = parse_section(&section).unwrap();
        assert_eq!(used, 8);
        assert_eq!(it.find(1).unwrap(), Some(&[1u8][..]));
        assert_eq!(
            parse_section(&[0xBE, 0xDE, 0, 2, 0x10, 1, 0, 0]).err(),
            Some(WireError::Truncated {
                what: "RTP header-extension section",
                needed: 12,
                got: 8,
            })
        );
        assert!(parse_section(&[0xBE, 0xDE]).is_err());
        assert!(matches!(
            parse_section(&[0x12, 0x34, 0, 0]),
            Err(WireError::Malformed { .. })
        ));
    }

    /// RTP-EXT-04.
    #[test]
    fn writer_picks_the_form_and_round_trips() {
        let ext = |id, data| Extension { id, data };
        let small = [ext(3, &[1, 2][..]), ext(14, &[9; 16])];
        let big = [ext(3, &[1, 2][..]), ext(13, &[9; 17])];
        let high_id = [ext(20, &[1][..])];
        let empty = [ext(2, &[][..])];
        for (els, form, len) in [
            (&small[..], ExtensionForm::OneByte, 20),
            (&big[..], TWO, 24),
            (&high_id[..], TWO, 4),
            (&empty[..], TWO, 4),
            (&[][..], ExtensionForm::OneByte, 0),
        ] {
            let mut buf = [0xAAu8; 64];
            let (profile, n) = write_block(els, &mut buf).unwrap();
            assert_eq!(
                (ExtensionForm::from_profile(profile).unwrap(), n),
                (form, len)
            );
            assert!(buf[..n].iter().rev().take_while(|&&b| b == 0).count() < 4);
            let back: Vec<_> = Extensions::with_profile(profile, &buf[..n])
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(back, els.to_vec());
            let mut sec = [0u8; 68];
            assert_eq!(write_section(els, &mut sec).unwrap(), 4 + n);
            assert_eq!(&sec[4..4 + n], &buf[..n]);
            let (it, used) = parse_section(&sec).unwrap();
            assert_eq!((it.form(), used), (form, 4 + n));
        }
        assert!(matches!(
            write_block(&[ext(0, &[1][..])], &mut [0; 8]),
            Err(WireError::InvalidArgument { .. })
        ));
        assert!(matches!(
            write_block(&[ext(1, &[0; 256][..])], &mut [0; 300]),
            Err(WireError::InvalidArgument { .. })
        ));
        assert_eq!(
            write_block(&small, &mut [0; 19]),
            Err(WireError::BufferTooSmall {
                what: "RTP header-extension block",
                needed: 20,
                got: 19,
            })
        );
        // 1100 elements of 255 bytes need more than 65535 words (262,140 bytes).
        let huge = vec![ext(1, &[7; 255][..]); 1100];
        assert!(matches!(
            write_block(&huge, &mut []),
            Err(WireError::InvalidArgument { .. })
        ));
    }

    /// RTP-EXT-03: random bodies in both forms never panic; whatever parses is re-written and
    /// reads back equal (a seeded miniature of the `ext_block` fuzz target).
    #[test]
    fn random_bodies_never_panic_and_round_trip() {
        let mut rng = StdRng::seed_from_u64(0xE7);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        0
                    } else {
                        rng.random_range(0..=255)
                    }
                })
                .collect();
            for form in [ExtensionForm::OneByte, TWO] {
                let Ok(els) = Extensions::new(form, &body).collect::<Result<Vec<_>>>() else {
                    continue;
                };
                let mut out = [0u8; 200];
                let (profile, n) = write_block(&els, &mut out).unwrap();
                let back: Vec<_> = Extensions::with_profile(profile, &out[..n])
                    .unwrap()
                    .collect::<Result<_>>()
                    .unwrap();
                assert_eq!(back, els);
                parsed += 1;
            }
        }
        assert!(parsed > 5000, "only {parsed} random bodies parsed");
    }
}
