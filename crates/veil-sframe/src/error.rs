//! The one error type of `veil-sframe`.

use veil_wire::WireError;

/// Everything that can go wrong while protecting or unprotecting a frame.
///
/// Grouped by who is at fault (STYLE.md §5): **peer input** (a frame that must be dropped),
/// **caller misuse** (an argument no correct program passes, or a key that must be replaced),
/// and **internal** failures of a crypto backend. None of the messages contains key material.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SframeError {
    // ---- peer input: drop the frame -------------------------------------------------------
    /// The SFrame header could not be parsed (SF-HDR-03/04).
    #[error("malformed SFrame header: {0}")]
    MalformedHeader(#[from] WireError),
    /// The frame is shorter than its header plus the suite's authentication tag.
    #[error("SFrame frame too short: {len} bytes cannot hold a header and a {tag_len}-byte tag")]
    FrameTooShort {
        /// Bytes in the frame.
        len: usize,
        /// Tag length of the key's cipher suite.
        tag_len: usize,
    },
    /// No key is installed for the frame's KID (unknown sender, or an epoch not yet known).
    #[error("no key installed for KID {kid:#x}; the sender's epoch may not be known yet")]
    UnknownKid {
        /// The KID from the header.
        kid: u64,
    },
    /// The key for this KID was retired or has expired (SF-KEY-03).
    #[error("the key for KID {kid:#x} was retired or has expired")]
    KeyRetired {
        /// The KID from the header.
        kid: u64,
    },
    /// The authentication tag did not verify: the frame was forged, corrupted, or encrypted
    /// under a different key (SF-AEAD-04).
    #[error("SFrame authentication failed for KID {kid:#x}")]
    AuthenticationFailed {
        /// The KID from the header.
        kid: u64,
    },
    /// The counter was already accepted for this KID (SF-RPL-01).
    #[error("replayed SFrame counter {ctr} for KID {kid:#x}")]
    Replayed {
        /// The KID.
        kid: u64,
        /// The repeated counter.
        ctr: u64,
    },
    /// The counter is older than the replay window can remember (SF-RPL-02).
    #[error(
        "SFrame counter {ctr} for KID {kid:#x} is older than the replay window (oldest {oldest})"
    )]
    TooOld {
        /// The KID.
        kid: u64,
        /// The counter that arrived.
        ctr: u64,
        /// The oldest counter the window still tracks.
        oldest: u64,
    },

    // ---- caller misuse -------------------------------------------------------------------
    /// The sender used every counter value its key allows; install a new key (new epoch).
    #[error(
        "counter space of KID {kid:#x} is exhausted; rekey (advance the MLS epoch) before sending"
    )]
    CounterExhausted {
        /// The sender's KID.
        kid: u64,
    },
    /// A value does not fit in the bits the MLS KID layout gives it (RFC 9605 §5.2).
    #[error("{field} {value} does not fit in the {bits} bits the KID layout reserves for it")]
    KidOverflow {
        /// `"sender index"` or `"context"`.
        field: &'static str,
        /// The value that did not fit.
        value: u64,
        /// Bits available.
        bits: u32,
    },
    /// An MLS KID layout that leaves no context bit or no epoch bit (RFC 9605 §5.2,
    /// `specs/sframe.md` §4).
    #[error(
        "KID layout E = {epoch_bits}, S = {index_bits} is invalid: E must be at least 1 and \
         E + S at most 63, so one context bit remains"
    )]
    InvalidKidLayout {
        /// `E`, as passed.
        epoch_bits: u32,
        /// `S`, as passed.
        index_bits: u32,
    },
    /// Key bytes longer than any cipher suite's key.
    #[error(
        "key material of {len} bytes is longer than any SFrame suite's key ({max} bytes); pass \
         the suite's Nk bytes"
    )]
    KeyTooLong {
        /// Supplied length.
        len: usize,
        /// The longest `AEAD.Nk` of any suite.
        max: usize,
    },
    /// A payload range whose start lies after its end.
    #[error("payload range {start}..{end} is reversed; pass start <= end")]
    InvalidPayloadRange {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
    },
    /// The caller's output buffer is too small.
    #[error("buffer too small for the SFrame {what}: need {needed} bytes, have {got}")]
    BufferTooSmall {
        /// What was being written.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Key material of the wrong length was supplied.
    #[error("{what} must be {expected} bytes for this cipher suite, got {got}")]
    InvalidKeyLength {
        /// Which key.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Supplied length.
        got: usize,
    },
    /// A cipher-suite id that RFC 9605 §8.1 does not define.
    #[error("unknown SFrame cipher suite {0:#06x} (RFC 9605 defines 0x0001..=0x0005)")]
    UnknownCipherSuite(u16),
    /// Metadata longer than [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN).
    #[error("SFrame metadata of {len} bytes exceeds the {max}-byte limit")]
    MetadataTooLarge {
        /// Supplied length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The backend does not implement the suite (e.g. `ring` has no AES-CTR).
    #[error("the {backend} backend does not implement cipher suite {suite}")]
    UnsupportedSuite {
        /// Backend name.
        backend: &'static str,
        /// Suite name.
        suite: &'static str,
    },

    // ---- internal ------------------------------------------------------------------------
    /// A crypto backend failed in a way that correct inputs cannot cause.
    #[error("crypto backend failure: {0}")]
    Backend(&'static str),
}

impl SframeError {
    /// A short, stable label for why a received frame did not decrypt, for counters and
    /// statistics (`unknown_key`, `retired_key`, `auth_failed`, `replay`, `too_old`,
    /// `malformed`; `other` for what a receiver never meets).
    ///
    /// `replay` and `too_old` are told apart on purpose: the first is a counter seen twice
    /// (SF-RPL-01), the second one older than the replay window (SF-RPL-02), which a frame
    /// repaired late by retransmission can be without anyone replaying it.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKid { .. } => "unknown_key",
            Self::KeyRetired { .. } => "retired_key",
            Self::AuthenticationFailed { .. } => "auth_failed",
            Self::Replayed { .. } => "replay",
            Self::TooOld { .. } => "too_old",
            Self::MalformedHeader(_) | Self::FrameTooShort { .. } => "malformed",
            _ => "other",
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = SframeError> = core::result::Result<T, E>;
