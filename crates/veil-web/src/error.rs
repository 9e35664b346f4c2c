//! The crate's one error type.

use veil_mls::MlsError;

/// What went wrong in the browser client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// A key blob from the page did not parse (a page and worker of different versions?).
    #[error("key blob: {0}")]
    KeyBlob(String),
    /// A received frame did not decrypt; `reason` is its stats label.
    #[error("frame not decrypted ({reason}): {source}")]
    Frame {
        /// The label the stats count it under.
        reason: &'static str,
        /// What SFrame said.
        source: MlsError,
    },
    /// MLS or key configuration.
    #[error(transparent)]
    Mls(#[from] MlsError),
    /// The call core refused or failed a command.
    #[error(transparent)]
    Call(#[from] veil_call::CallError),
    /// The SFU refused a request or ended the session; the message says why.
    #[error("SFU: {0}")]
    Sfu(String),
    /// The call has ended (left, removed, or failed earlier).
    #[error("the call has ended")]
    Ended,
}
