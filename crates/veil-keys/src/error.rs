//! The key service's one error type, grouped by who is at fault, and its gRPC status mapping
//! (specs/key-service.md §6: every code and what the client should do).

use tonic::{Code, Status};

/// Why a key-service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KdsError {
    // --- the caller's credentials -----------------------------------------------------------
    /// No usable access token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that does not allow this call.
    #[error("{0}")]
    PermissionDenied(String),

    // --- the caller's input -----------------------------------------------------------------
    /// Bytes that are not the expected MLS message.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which field.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A field over its size cap.
    #[error("{what} is {len} bytes; the limit is {cap} bytes")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// An MLS message for another group than the request's room.
    #[error("the message is for group {group:?}, not room {room:?}")]
    WrongGroup {
        /// The request's room.
        room: String,
        /// The message's group id (lossy UTF-8).
        group: String,
    },
    /// A room name or identity outside the allowed length or characters (KDS-LIM-03).
    #[error("{what} {why}")]
    BadName {
        /// `room` or `identity`, and where it came from.
        what: &'static str,
        /// What is wrong, without echoing the value.
        why: &'static str,
    },
    /// openmls refused the message against the room's public group state.
    #[error("rejected by MLS validation: {0}")]
    Invalid(String),

    // --- state the caller must catch up with --------------------------------------------------
    /// The commit is for an epoch that already has a commit (KDS-ORD-01): rebase.
    #[error(
        "stale commit: it was made in epoch {message_epoch} but the room is in epoch {room_epoch}; process the room's commits from epoch {message_epoch} on and commit again"
    )]
    StaleEpoch {
        /// The commit's epoch.
        message_epoch: u64,
        /// The room's epoch.
        room_epoch: u64,
    },
    /// The database already holds a commit for this epoch (KDS-ORD-02).
    #[error("another commit won epoch {epoch}; process it and commit again")]
    EpochTaken {
        /// The epoch.
        epoch: u64,
    },
    /// The commit does not carry the service's pending Remove proposals (KDS-REM-03).
    #[error(
        "the room has pending removals of {0:?} (departed participants): commit the pending proposals first"
    )]
    RemovalsPending(Vec<String>),
    /// The commit would give an identity a second leaf: it is still a member (KDS-VAL-05).
    #[error(
        "{0:?} is still a member of the group (its removal may be pending): rejoin after the Remove commit, or rejoin with the same signature key to replace the old leaf"
    )]
    StillMember(String),
    /// The room does not list the service as external sender, or a commit drops it (KDS-ROOM-02).
    #[error("{0}")]
    ExternalSenderMissing(String),

    // --- lookups ----------------------------------------------------------------------------
    /// No such room.
    #[error("room {0:?} does not exist: create it first (CreateRoom)")]
    NoSuchRoom(String),
    /// The room exists.
    #[error("room {0:?} already exists: join it (GetGroupInfo + external commit)")]
    RoomExists(String),
    /// No KeyPackage of this identity is available.
    #[error("{0:?} has no KeyPackage available in this room: it must publish KeyPackages first")]
    NoKeyPackage(String),
    /// Too many stored KeyPackages for one identity.
    #[error("at most {cap} KeyPackages per identity and room are kept: claim some first")]
    TooManyKeyPackages {
        /// The cap.
        cap: u32,
    },
    /// Too many open Subscribe streams (KDS-LIM-05).
    #[error(
        "{scope} already holds {cap} open Subscribe streams, the limit: close one before opening another"
    )]
    TooManyStreams {
        /// `this identity in this room`, or `this room`.
        scope: &'static str,
        /// The cap.
        cap: u32,
    },
    /// Only a member of the room may replay its log (KDS-FAN-04).
    #[error(
        "only members of the room may replay its log (from_epoch): {identity:?} is not a member; subscribe without from_epoch to wait for a Welcome, or join by external commit"
    )]
    NotMember {
        /// The caller.
        identity: String,
    },
    /// The room was deleted while a stream was open (KDS-GC-03).
    #[error("room {0:?} was deleted")]
    RoomDeleted(String),
    /// A subscriber fell behind the room's live stream.
    #[error("the stream fell behind the room's log: subscribe again with from_epoch")]
    Lagged,

    // --- ours -------------------------------------------------------------------------------
    /// The database failed; nothing was changed.
    #[error("storage error (nothing was changed): {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl KdsError {
    /// The gRPC code this error maps to (specs/key-service.md §6).
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::WrongGroup { .. }
            | Self::Invalid(_)
            | Self::BadName { .. } => Code::InvalidArgument,
            Self::StaleEpoch { .. } | Self::EpochTaken { .. } => Code::Aborted,
            Self::RemovalsPending(_) | Self::StillMember(_) | Self::ExternalSenderMissing(_) => {
                Code::FailedPrecondition
            }
            Self::NotMember { .. } => Code::PermissionDenied,
            Self::NoSuchRoom(_) | Self::NoKeyPackage(_) | Self::RoomDeleted(_) => Code::NotFound,
            Self::RoomExists(_) => Code::AlreadyExists,
            Self::TooManyKeyPackages { .. } | Self::TooManyStreams { .. } => {
                Code::ResourceExhausted
            }
            Self::Lagged => Code::Unavailable,
            Self::Storage(_) | Self::Internal(_) => Code::Internal,
        }
    }

    /// A short label for the `reason` of rejection metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Malformed { .. } => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::WrongGroup { .. } => "wrong_group",
            Self::Invalid(_) => "invalid",
            Self::BadName { .. } => "bad_name",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::NotMember { .. } => "not_member",
            Self::RoomDeleted(_) => "room_deleted",
            Self::StaleEpoch { .. } | Self::EpochTaken { .. } => "stale_epoch",
            Self::RemovalsPending(_) => "removals_pending",
            Self::StillMember(_) => "still_member",
            Self::ExternalSenderMissing(_) => "external_sender_missing",
            Self::NoSuchRoom(_) => "no_such_room",
            Self::RoomExists(_) => "room_exists",
            Self::NoKeyPackage(_) => "no_key_package",
            Self::TooManyKeyPackages { .. } => "too_many_key_packages",
            Self::Lagged => "lagged",
            Self::Storage(_) => "storage",
            Self::Internal(_) => "internal",
        }
    }
}

/// Metadata key carrying the room's epoch on ABORTED replies, so a client knows where to resume.
pub const EPOCH_METADATA: &str = "veil-room-epoch";

/// Longest status message the service sends, in bytes (KDS-LIM-03): a client with default gRPC
/// limits must always be able to read why it was refused.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 512;

impl KdsError {
    /// The message as sent and logged: at most [`MAX_STATUS_MESSAGE_BYTES`], clipped on a
    /// character boundary, so no client-chosen string is ever echoed whole (KDS-LIM-03).
    #[must_use]
    pub fn clipped(&self) -> String {
        crate::names::clip(&self.to_string(), MAX_STATUS_MESSAGE_BYTES)
    }
}

impl From<KdsError> for Status {
    fn from(e: KdsError) -> Self {
        let mut s = Status::new(e.code(), e.clipped());
        let epoch = match &e {
            KdsError::StaleEpoch { room_epoch, .. } => Some(*room_epoch),
            _ => None,
        };
        if let Some(epoch) = epoch
            && let Ok(v) = epoch.to_string().parse()
        {
            s.metadata_mut().insert(EPOCH_METADATA, v);
        }
        s
    }
}
