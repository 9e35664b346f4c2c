//! What a [`Member`](crate::Member) exchanges with the key service, as plain data: the shell
//! turns [`Request`]s into RPCs and RPC results into [`Reply`]s, and feeds the room's event
//! stream in as [`ServiceEvent`]s (specs/member.md §2). The types mirror `veil.keys.v1`
//! without depending on a gRPC stack, so the core builds for a browser too.

/// Identifies one request of a member, so that its reply finds the step that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Identifies one command given to a member; its [`Event::Done`](crate::Event::Done) carries
/// the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

/// An RPC the member wants made (one per `veil.keys.v1` method it uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GetServiceInfo`: the service's external-sender key, to create a room.
    ServiceInfo,
    /// `CreateRoom` from the new group's epoch-0 GroupInfo.
    CreateRoom {
        /// The GroupInfo (TLS-serialised `MlsMessage`).
        group_info: Vec<u8>,
    },
    /// `GetGroupInfo`: the newest GroupInfo, to join by external commit.
    GroupInfo,
    /// `PublishKeyPackages`.
    PublishKeyPackages {
        /// KeyPackages (TLS-serialised `MlsMessage`s).
        key_packages: Vec<Vec<u8>>,
    },
    /// `ClaimKeyPackage` of an identity to add.
    ClaimKeyPackage {
        /// Whose.
        identity: String,
    },
    /// `SendCommit`. A retry after [`Failure::Unavailable`] sends the same bytes, so a commit
    /// accepted whose reply was lost comes back as accepted (KDS-ORD-03).
    SendCommit {
        /// The commit (a PublicMessage).
        commit: Vec<u8>,
        /// The Welcome for added members; empty if none.
        welcome: Vec<u8>,
        /// The new epoch's GroupInfo; empty if none.
        group_info: Vec<u8>,
    },
    /// `Leave`: the service proposes this member's removal.
    Leave,
    /// `Subscribe`: open the room's event stream, replacing any stream open before (the shell
    /// drops the old one first). Its events come in with this request's id.
    Subscribe {
        /// Resume after this epoch (a member replays what it missed, KDS-FAN-02); `None` for
        /// live events only (a member waiting for its Welcome).
        from_epoch: Option<u64>,
    },
}

impl From<veil_mls::CommitOut> for Request {
    /// `SendCommit` with a commit's messages (an absent Welcome or GroupInfo is empty).
    fn from(out: veil_mls::CommitOut) -> Self {
        Self::SendCommit {
            commit: out.commit,
            welcome: out.welcome.unwrap_or_default(),
            group_info: out.group_info.unwrap_or_default(),
        }
    }
}

/// The result of a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// [`Request::ServiceInfo`].
    ServiceInfo {
        /// The service's external-sender signature public key.
        external_sender_key: Vec<u8>,
        /// Its credential identity.
        external_sender_identity: Vec<u8>,
    },
    /// [`Request::GroupInfo`].
    GroupInfo {
        /// The GroupInfo's epoch.
        epoch: u64,
        /// The GroupInfo.
        group_info: Vec<u8>,
    },
    /// [`Request::ClaimKeyPackage`].
    KeyPackage(Vec<u8>),
    /// [`Request::SendCommit`] accepted; the room is now at `epoch`.
    CommitAccepted {
        /// The room's epoch after the commit.
        epoch: u64,
    },
    /// [`Request::Subscribe`]: the stream is open.
    Subscribed,
    /// Any other request succeeded (`CreateRoom`, `PublishKeyPackages`, `Leave`).
    Ok,
    /// The request failed.
    Failed(Failure),
}

/// Why a request failed, in the terms the member acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service could not be reached (or did not answer): retried until the command's
    /// deadline; for the event stream, forever.
    Unavailable(String),
    /// `ABORTED`: another commit won the epoch (rebase).
    Stale {
        /// The room's epoch, if the service said.
        room_epoch: Option<u64>,
        /// The service's message.
        message: String,
    },
    /// Any other refusal, with its gRPC status code.
    Refused {
        /// What the service said no to.
        code: Code,
        /// The service's message.
        message: String,
    },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unavailable(m) => write!(f, "key service unavailable: {m}"),
            Self::Stale { message, .. } => write!(f, "another commit won the epoch: {message}"),
            Self::Refused { code, message } => write!(f, "refused ({code:?}): {message}"),
        }
    }
}

/// The gRPC status codes a member tells apart; every other refusal is [`Code::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
    /// `NOT_FOUND`: e.g. no such room.
    NotFound,
    /// `ALREADY_EXISTS`: e.g. the room was created by someone else first.
    AlreadyExists,
    /// `PERMISSION_DENIED`: e.g. a replay asked by a non-member (KDS-FAN-04).
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// `FAILED_PRECONDITION`: e.g. the service insists on its pending proposals (rebase).
    FailedPrecondition,
    /// `UNAUTHENTICATED`.
    Unauthenticated,
    /// Any other code, by its number.
    Other(i32),
}

impl Code {
    /// The code of a gRPC status number.
    #[must_use]
    pub fn from_i32(code: i32) -> Self {
        match code {
            3 => Self::InvalidArgument,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            16 => Self::Unauthenticated,
            n => Self::Other(n),
        }
    }

    /// The gRPC status number.
    #[must_use]
    pub fn as_i32(self) -> i32 {
        match self {
            Self::InvalidArgument => 3,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Unauthenticated => 16,
            Self::Other(n) => n,
        }
    }
}

/// One event of the room's stream (`veil.keys.v1.RoomEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A commit the service accepted for `epoch` (the epoch it was made in).
    Commit {
        /// The epoch the commit was made in.
        epoch: u64,
        /// The commit (TLS-serialised `MlsMessage`).
        message: Vec<u8>,
    },
    /// A proposal of the service (the removal of a member who left).
    Proposal {
        /// The epoch it was made in.
        epoch: u64,
        /// The proposal.
        message: Vec<u8>,
        /// The identity it removes.
        removes: String,
    },
    /// A Welcome for this member.
    Welcome {
        /// The Welcome.
        message: Vec<u8>,
    },
    /// The replay is over; live events follow.
    Synced {
        /// The room's epoch.
        epoch: u64,
    },
}
