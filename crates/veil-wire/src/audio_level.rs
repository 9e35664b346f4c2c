//! RFC 6464 client-to-mixer audio level: one byte, `V` (voice activity) and the level in −dBov.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+
//! |V|    level    |
//! +-+-+-+-+-+-+-+-+
//! ```
//!
//! A level of 0 is the loudest (0 dBov), 127 is silence (−127 dBov or less). Chromium sends it on
//! every Opus packet, in the clear even under end-to-end encryption, which is what lets a blind
//! SFU pick active speakers.
//!
//! Checks (see `specs/rtp.md`):
//! - **RTP-AL-01** the element data is exactly one byte, in either extension form (Chromium
//!   sends it as a one-byte element of length 1; in the two-byte form it is also 1 byte).
//!   Any other length is refused. Every byte value round-trips.

use crate::error::{Result, WireError};

/// A decoded audio level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioLevel {
    /// The sender's voice-activity flag.
    pub voice: bool,
    /// Level in −dBov, 0 (loudest) to 127 (silence).
    pub level: u8,
}

impl AudioLevel {
    /// The level of silence.
    pub const SILENCE: u8 = 127;

    /// Parse the extension element's data (RTP-AL-01: exactly one byte).
    ///
    /// # Errors
    /// [`WireError::Malformed`] if the data is not exactly one byte.
    pub fn parse(data: &[u8]) -> Result<Self> {
        match data {
            [b] => Ok(Self {
                voice: b & 0x80 != 0,
                level: b & 0x7F,
            }),
            _ => Err(WireError::Malformed {
                what: "audio level extension",
                reason: "data must be exactly one byte (RFC 6464)",
            }),
        }
    }

    /// The element data byte.
    ///
    /// # Errors
    /// [`WireError::InvalidArgument`] for a level above 127.
    pub fn to_byte(self) -> Result<u8> {
        if self.level > 127 {
            return Err(WireError::InvalidArgument {
                what: "audio level",
                reason: "level must be 0..=127 (-dBov)",
            });
        }
        Ok(u8::from(self.voice) << 7 | self.level)
    }

    /// Whether the packet is silence: no voice activity and the level at or below −127 dBov.
    #[must_use]
    pub fn is_silent(self) -> bool {
        !self.voice && self.level >= Self::SILENCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_value() {
        for b in 0..=255u8 {
            let a = AudioLevel::parse(&[b]).unwrap();
            assert_eq!(a.to_byte().unwrap(), b);
        }
        assert_eq!(
            AudioLevel::parse(&[0xFF]).unwrap(),
            AudioLevel {
                voice: true,
                level: 127
            }
        );
        assert!(AudioLevel::parse(&[0x7F]).unwrap().is_silent());
        assert!(!AudioLevel::parse(&[0x08]).unwrap().is_silent());
    }

    /// RTP-AL-01 in both extension forms: 1 byte is read, 0 or 2 bytes are refused.
    #[test]
    fn one_byte_in_either_extension_form() {
        use crate::ext::{ExtensionForm, Extensions};
        let level = |form, body: &[u8]| {
            let data = Extensions::new(form, body).find(1).unwrap().unwrap();
            AudioLevel::parse(data)
        };
        let want = AudioLevel {
            voice: true,
            level: 30,
        };
        let two = ExtensionForm::TwoByte { appbits: 0 };
        assert_eq!(level(ExtensionForm::OneByte, &[0x10, 0x9E, 0, 0]), Ok(want));
        assert_eq!(level(two, &[1, 1, 0x9E, 0]), Ok(want));
        assert!(level(two, &[1, 0, 0, 0]).is_err());
        assert!(level(two, &[1, 2, 0x9E, 0]).is_err());
        assert!(level(ExtensionForm::OneByte, &[0x11, 0x9E, 0]).is_err());
    }

    #[test]
    fn wrong_lengths_and_levels_are_refused() {
        assert!(AudioLevel::parse(&[]).is_err());
        assert!(AudioLevel::parse(&[1, 2]).is_err());
        assert!(
            AudioLevel {
                voice: false,
                level: 128
            }
            .to_byte()
            .is_err()
        );
    }
}
