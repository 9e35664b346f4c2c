//! The one error type of `veil-call`.

use veil_mls::MlsError;

use crate::io::Failure;

/// Why a command failed, or the member stopped.
///
/// Grouped by who is at fault: the **service** (refused, unreachable for longer than the
/// command's deadline), the **group** (this member was removed; an MLS message it cannot use),
/// and the **caller** (a command after the member stopped).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    // ---- the service -------------------------------------------------------------------------
    /// The service refused the request, or could not be reached before the deadline.
    #[error("{0}")]
    Service(Failure),
    /// The command did not end within its deadline (e.g. its commit lost many races, or the
    /// room's commits did not arrive).
    #[error("timed out: {0}")]
    Timeout(String),

    // ---- the group ---------------------------------------------------------------------------
    /// This member was removed from the group; it stops.
    #[error("this member was removed from the room")]
    Removed,
    /// MLS refused an operation or a message.
    #[error(transparent)]
    Mls(#[from] MlsError),

    // ---- the caller --------------------------------------------------------------------------
    /// The member has stopped (left, removed, or failed): it takes no more commands.
    #[error("the member has stopped")]
    Stopped,
}
