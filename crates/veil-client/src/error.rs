//! The client's one error type.

use tonic::Code;
use veil_mls::MlsError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The service could not be reached (retry later).
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// Another commit won the epoch: process it and commit again.
    #[error("stale commit (room at epoch {room_epoch:?}): {message}")]
    Stale {
        /// The room's epoch, if the service said.
        room_epoch: Option<u64>,
        /// The service's explanation.
        message: String,
    },
    /// The service refused the request.
    #[error("key service refused ({code:?}): {message}")]
    Refused {
        /// The gRPC code (see specs/key-service.md §6).
        code: Code,
        /// The service's explanation.
        message: String,
    },
    /// The local MLS session failed.
    #[error(transparent)]
    Mls(#[from] MlsError),
    /// The WebRTC transport failed.
    #[error("WebRTC: {0}")]
    Transport(String),
    /// A bad URL or token.
    #[error("configuration: {0}")]
    Config(String),
    /// This member was removed from the group.
    #[error("removed from the group")]
    Removed,
    /// The member's task has stopped.
    #[error("the group member has stopped")]
    Stopped,
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A link to the server is lost and being reconnected in the background: try again once
    /// it is back (`RoomEvent::Reconnected`).
    #[error("reconnecting to the {0}")]
    Reconnecting(crate::link::Link),
}

impl ClientError {
    /// The gRPC code, for refusals.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            Self::Stale { .. } => Some(Code::Aborted),
            Self::Unavailable(_) => Some(Code::Unavailable),
            _ => None,
        }
    }
}
