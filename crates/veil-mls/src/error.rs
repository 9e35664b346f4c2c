//! The one error type of `veil-mls`.

use veil_sframe::SframeError;

/// What can go wrong in a call member's MLS session.
///
/// Grouped by who is at fault: **peer or service input** (a message to drop or a commit that lost
/// the race), **caller misuse**, and **internal** failures of openmls or storage. Messages carry
/// no secret.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    // ---- peer / service input ---------------------------------------------------------------
    /// A commit or proposal for an epoch other than the group's (MLS-SES-04). If it is older,
    /// another commit won that epoch: fetch the winning commit from the service, process it, and
    /// re-propose on top of it.
    #[error(
        "message is for epoch {message_epoch} but the group is at epoch {group_epoch}; \
         fetch the winning commit, process it, then retry"
    )]
    WrongEpoch {
        /// The epoch the message was made for.
        message_epoch: u64,
        /// The group's epoch.
        group_epoch: u64,
    },
    /// Bytes that are not a valid MLS message of the expected kind.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// openmls refused the message (bad signature, invalid commit, unknown sender...).
    #[error("MLS message rejected: {0}")]
    Rejected(String),
    /// An SFrame frame could not be decrypted (or encrypted).
    #[error(transparent)]
    Sframe(#[from] SframeError),

    // ---- caller misuse -----------------------------------------------------------------------
    /// The session is not in a group yet (create or join first), or was removed from it.
    #[error("not a member of the group: create or join a group first")]
    NotInGroup,
    /// This member has no sender key yet (no epoch with its own leaf was installed).
    #[error("no sender key: the member has not joined an epoch yet")]
    NotSending,
    /// A commit of this member is still pending: confirm or discard it first.
    #[error("a commit of this member is pending; confirm it (it won) or discard it (it lost)")]
    CommitPending,
    /// No member with that identity or index.
    #[error("no member {0} in the group")]
    NoSuchMember(String),
    /// An impossible configuration.
    #[error("invalid configuration: {0}")]
    Config(String),

    // ---- internal ----------------------------------------------------------------------------
    /// openmls or its storage failed in a way correct inputs do not cause.
    #[error("MLS internal error: {0}")]
    Internal(String),
}

impl MlsError {
    /// Why a received frame did not decrypt, as a short label for statistics: the SFrame
    /// error's [`SframeError::reason`], `other` for anything else.
    #[must_use]
    pub fn frame_failure_reason(&self) -> &'static str {
        match self {
            Self::Sframe(e) => e.reason(),
            _ => "other",
        }
    }
}
