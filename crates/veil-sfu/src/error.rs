//! The one error type of `veil-sfu`.

use veil_wire::WireError;

/// What can go wrong while routing.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    /// A packet's header extensions or dependency descriptor could not be read (peer input:
    /// drop and count).
    #[error("unreadable packet metadata: {0}")]
    Metadata(#[from] WireError),
    /// A packet whose SSRC no publisher announced (peer input).
    #[error("unknown SSRC {0:#010x}")]
    UnknownSsrc(u32),
    /// A participant sent an SSRC that another participant owns (peer input: reject, count).
    #[error(
        "SSRC {ssrc:#010x} belongs to participant {owner}; participant {sender} may not send it"
    )]
    SpoofedSsrc {
        /// The SSRC.
        ssrc: u32,
        /// Its owner.
        owner: u64,
        /// Who sent it.
        sender: u64,
    },
}
