//! The one error type of `veil-sfu`.
//!
//! Variants are grouped by who is at fault, and the gRPC service maps each group to one status
//! code (specs/sfu.md, "Errors"): peer input → `INVALID_ARGUMENT`, authentication →
//! `UNAUTHENTICATED`/`PERMISSION_DENIED`, caller misuse and state → `FAILED_PRECONDITION` /
//! `NOT_FOUND` / `ALREADY_EXISTS`, transport and internal → `UNAVAILABLE`/`INTERNAL`.

use veil_wire::WireError;

/// What can go wrong in the SFU.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    // --- peer input: drop and count, or refuse the request ---
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
    /// A participant sent packets faster than its limit (peer input: drop and count,
    /// SFU-LIVE-04).
    #[error("participant {0} is over its packet-rate limit")]
    RateLimited(u64),
    /// A track has more simulcast layers than the SFU forwards (peer input).
    #[error("SSRC {0:#010x} would be a simulcast layer beyond the limit")]
    TooManyLayers(u32),
    /// A packet of a simulcast track whose stream never showed its rid (peer input).
    #[error("SSRC {0:#010x} of a simulcast track has no rid latched")]
    UnknownLayer(u32),
    /// An offer, answer or candidate webrtc-rs refused (peer input).
    #[error("bad session description or candidate: {0}")]
    Sdp(String),

    // --- authentication and authorisation ---
    /// No valid access token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token does not allow this room or action.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    // --- caller misuse and state ---
    /// No such participant in the routing core.
    #[error("unknown participant {0}")]
    UnknownParticipant(u64),
    /// No such track.
    #[error("unknown track {0}")]
    UnknownTrack(u64),
    /// No such track, by name.
    #[error("no track {0:?} in this room")]
    NoSuchTrack(String),
    /// The participant does not subscribe to this track.
    #[error("not subscribed to track {0}")]
    NotSubscribed(u64),
    /// The identity is already in the room.
    #[error("{identity:?} is already in room {room:?}")]
    AlreadyJoined {
        /// Room.
        room: String,
        /// Identity.
        identity: String,
    },
    /// The identity is not in the room.
    #[error("{identity:?} is not in room {room:?}")]
    NotJoined {
        /// Room.
        room: String,
        /// Identity.
        identity: String,
    },
    /// An offer or answer at the wrong moment (e.g. an offer while the SFU's own offer waits for
    /// its answer: answer that first).
    #[error("negotiation: {0}")]
    Negotiation(String),
    /// A request the signalling protocol does not allow at this point.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The SFU is at a configured limit (rooms, participants, tracks).
    #[error("limit reached: {0}")]
    Limit(&'static str),

    // --- transport and internal ---
    /// The SFU cannot start with its configuration (e.g. its UDP address cannot be bound).
    #[error("SFU configuration: {0}")]
    Config(String),
    /// webrtc-rs failed.
    #[error("WebRTC: {0}")]
    WebRtc(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The participant's connection is closed.
    #[error("connection closed")]
    Closed,
}

impl SfuError {
    /// Wrap a webrtc-rs error with what was being done.
    pub(crate) fn webrtc(what: &str) -> impl FnOnce(webrtc::error::Error) -> SfuError + '_ {
        move |e| SfuError::WebRtc(format!("{what}: {e}"))
    }
}
