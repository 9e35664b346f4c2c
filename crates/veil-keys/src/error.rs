//! The key service's one error type, grouped by who is at fault, and its gRPC status mapping
//! (specs/key-service.md §6: every code and what the client should do).
//!
//! An error caused by another keeps it as its [`source`](std::error::Error::source) (openmls,
//! tls_codec, rusqlite, serde_json, tokio): `Malformed`, `Invalid`, `Storage` and `Internal` carry
//! a `why` of their own and, when there is one, the cause. The message names both, because a
//! status carries only the message to the client.

use tonic::{Code, Status};

/// The error that caused a [`KdsError`], boxed so that openmls's and rusqlite's versions stay
/// out of this crate's API: downcast it (e.g. to `openmls::prelude::ProcessMessageError` or
/// `rusqlite::Error`) to read it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `": {cause}"`, or nothing: how a message names its cause.
fn cause(source: &Option<Cause>) -> String {
    // The whole chain: a driver's "error performing TLS handshake" says what to fix only with
    // its cause ("invalid peer certificate: UnknownIssuer").
    let mut out = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = source
        .as_deref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Why a key-service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KdsError {
    // --- the caller's credentials -----------------------------------------------------------
    /// No usable access token: none, or not a `Bearer` header.
    #[error("{0}")]
    Unauthenticated(String),
    /// The access token does not verify (expired, bad signature, …); the source is
    /// `veil-auth`'s reason.
    #[error("{0}")]
    Token(#[source] veil_auth::AuthError),
    /// A valid token that does not allow this call.
    #[error("{0}")]
    PermissionDenied(String),

    // --- the caller's input -----------------------------------------------------------------
    /// Bytes that are not the expected MLS message.
    #[error("malformed {what}: {why}{}", cause(.source))]
    Malformed {
        /// Which field.
        what: &'static str,
        /// What is wrong.
        why: String,
        /// The decoder's error, if a decoder refused the bytes.
        #[source]
        source: Option<Cause>,
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
    /// The message fails MLS validation against the room's public group state: openmls refused
    /// it (the openmls error is the source), or one of the service's own checks did (no source).
    #[error("rejected by MLS validation: {why}{}", cause(.source))]
    Invalid {
        /// What is wrong.
        why: String,
        /// openmls's error, if openmls refused it.
        #[source]
        source: Option<Cause>,
    },

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
    /// Too many requests from one token holder (LIM-RATE-01): slow down.
    #[error("{0}")]
    RateLimited(veil_auth::SlowDown),
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
    /// No SFU node can take the room: none is live, or this key service runs without an SFU
    /// (KDS-PLACE-02). The message says which.
    #[error("{0}")]
    NoSfuNode(String),

    // --- ours -------------------------------------------------------------------------------
    /// The database failed, or holds what does not parse; nothing was changed.
    #[error("storage error (nothing was changed): {why}{}", cause(.source))]
    Storage {
        /// What was being done or read.
        why: String,
        /// The cause (e.g. a `rusqlite::Error`), if there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A bug.
    #[error("internal error: {why}{}", cause(.source))]
    Internal {
        /// What failed.
        why: String,
        /// The cause, if there is one.
        #[source]
        source: Option<Cause>,
    },
}

impl KdsError {
    /// The gRPC code this error maps to (specs/key-service.md §6).
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) | Self::Token(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::WrongGroup { .. }
            | Self::Invalid { .. }
            | Self::BadName { .. } => Code::InvalidArgument,
            Self::StaleEpoch { .. } | Self::EpochTaken { .. } => Code::Aborted,
            Self::RemovalsPending(_) | Self::StillMember(_) | Self::ExternalSenderMissing(_) => {
                Code::FailedPrecondition
            }
            Self::NotMember { .. } => Code::PermissionDenied,
            Self::NoSuchRoom(_) | Self::NoKeyPackage(_) | Self::RoomDeleted(_) => Code::NotFound,
            Self::RoomExists(_) => Code::AlreadyExists,
            Self::TooManyKeyPackages { .. }
            | Self::TooManyStreams { .. }
            | Self::RateLimited(_) => Code::ResourceExhausted,
            Self::Lagged | Self::NoSfuNode(_) => Code::Unavailable,
            Self::Storage { .. } | Self::Internal { .. } => Code::Internal,
        }
    }

    /// A short label for the `reason` of rejection metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) | Self::Token(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Malformed { .. } => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::WrongGroup { .. } => "wrong_group",
            Self::Invalid { .. } => "invalid",
            Self::BadName { .. } => "bad_name",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::RateLimited(_) => "rate_limited",
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
            Self::NoSfuNode(_) => "no_sfu_node",
            Self::Storage { .. } => "storage",
            Self::Internal { .. } => "internal",
        }
    }
}

/// Constructors: `why` alone for a fault the service finds itself, `why` and the cause for one
/// another library reports.
impl KdsError {
    pub(crate) fn malformed_by(
        what: &'static str,
        why: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Malformed {
            what,
            why: why.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid {
            why: why.into(),
            source: None,
        }
    }

    pub(crate) fn invalid_by(
        why: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Invalid {
            why: why.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn storage(why: impl Into<String>) -> Self {
        Self::Storage {
            why: why.into(),
            source: None,
        }
    }

    pub(crate) fn storage_by(
        why: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage {
            why: why.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn internal(why: impl Into<String>) -> Self {
        Self::Internal {
            why: why.into(),
            source: None,
        }
    }

    pub(crate) fn internal_by(
        why: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            why: why.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Metadata key carrying the room's epoch on ABORTED replies, so a client knows where to resume.
pub const EPOCH_METADATA: &str = "veil-room-epoch";

/// Longest status message the service sends, in bytes (KDS-LIM-03): a client with default gRPC
/// limits must always be able to read why it was refused. The SFU's limit is the same one.
pub use veil_proto::status::MAX_MESSAGE_BYTES as MAX_STATUS_MESSAGE_BYTES;

impl KdsError {
    /// The message as sent and logged: at most [`MAX_STATUS_MESSAGE_BYTES`], clipped on a
    /// character boundary, so no client-chosen string is ever echoed whole (KDS-LIM-03).
    #[must_use]
    pub fn clipped(&self) -> String {
        veil_proto::status::clip(&self.to_string())
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use tonic::Code;

    use super::KdsError;

    #[test]
    fn a_database_that_cannot_open_keeps_the_rusqlite_error() {
        let e = crate::store::SqliteStore::open("/nonexistent/veil/keys.db").unwrap_err();
        assert!(matches!(e, KdsError::Storage { .. }), "{e}");
        let source = e.source().expect("the rusqlite error is kept");
        assert!(source.is::<rusqlite::Error>(), "{source:?}");
        assert!(e.to_string().contains(&source.to_string()), "{e}");
        assert_eq!((e.code(), e.reason()), (Code::Internal, "storage"));
    }

    #[test]
    fn undecodable_bytes_keep_the_decoder_error() {
        let e = crate::room::check_key_package(b"\x00\x01garbage", "alice").unwrap_err();
        assert!(
            matches!(
                e,
                KdsError::Malformed {
                    what: "key_package",
                    ..
                }
            ),
            "{e}"
        );
        let source = e.source().expect("the tls_codec error is kept");
        assert!(
            source.is::<openmls::prelude::tls_codec::Error>(),
            "{source:?}"
        );
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn a_check_of_the_service_itself_has_no_source() {
        let e = KdsError::invalid("the commit claims epoch 3, but the room is only at epoch 1");
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            "rejected by MLS validation: the commit claims epoch 3, but the room is only at epoch 1"
        );
    }
}
