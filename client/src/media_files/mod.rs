//! Media for `veil join`, without sockets or clocks: IVF (VP8) and Ogg Opus readers and writers
//! over `impl Read` / `impl Write`, frame sources that loop files with continuing timestamps,
//! a synthetic source that needs no files, and a [`Schedule`] that says when each frame is due.
//! The caller owns time: it sleeps until [`Schedule::due`] and then publishes.
//!
//! webrtc-rs (`rtc-media` 0.21.1) ships IVF and Ogg readers and writers, but they do not fit
//! here, so these are our own. Its writers take RTP packets and depacketize them, while a
//! Veil participant gets whole decrypted frames. Its Ogg writer's `close` also writes the last
//! packet a second time, on a page with a repeated sequence number. Its Ogg reader returns page
//! payloads and does not split them into packets. Its IVF reader allocates whatever length a
//! frame header claims, and reports a clean end of file and a truncated frame as the same I/O
//! error. The unit tests use its readers as an independent check of the files written here.

pub mod ivf;
pub mod ogg;
mod source;
mod synthetic;

pub use source::{FrameSource, IvfSource, OggOpusSource, Schedule, SourceError};
pub use synthetic::{SYNTHETIC_SIZE, SyntheticAudio, SyntheticVideo};

use std::io::Read;

/// Why a media file could not be read or written. Input problems name the part of the file
/// that is wrong; none of them panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaFileError {
    /// The file is not of the expected format at all (wrong signature).
    #[error("not an {expected} file")]
    NotThisFormat {
        /// The format that was expected.
        expected: &'static str,
    },
    /// The file ends in the middle of something.
    #[error("the file is truncated: it ends inside the {what}")]
    Truncated {
        /// What was cut short.
        what: &'static str,
    },
    /// A field holds an impossible value.
    #[error("malformed file: {0}")]
    Malformed(String),
    /// A valid file of a kind this program does not handle (e.g. VP9 in IVF).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A length beyond what this program accepts.
    #[error("{what} of {len} bytes (at most {max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The file holds no frames (it cannot be looped).
    #[error("the file has no {what}")]
    Empty {
        /// What is missing.
        what: &'static str,
    },
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Fill `buf`: `Ok(true)` when filled, `Ok(false)` at end of input before the first byte (an
/// empty `buf` counts as filled), [`MediaFileError::Truncated`] when input ends part-way.
pub(crate) fn read_full(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<bool, MediaFileError> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) if at == 0 => return Ok(false),
            Ok(0) => return Err(MediaFileError::Truncated { what }),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    /// Opus, 48 kHz RTP clock.
    Audio,
    /// VP8, 90 kHz RTP clock.
    Video,
}

impl Track {
    /// The RTP clock rate.
    #[must_use]
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Audio => 48_000,
            Self::Video => 90_000,
        }
    }
}

/// One encoded frame to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// Audio or video.
    pub track: Track,
    /// Media time in the track's clock rate, from 0, never decreasing; the RTP timestamp is
    /// this modulo 2³².
    pub timestamp: u64,
    /// The encoded frame.
    pub data: Vec<u8>,
    /// A VP8 key frame (always false for audio).
    pub key_frame: bool,
}
