//! The one error type of `veil-netem`.

/// What can go wrong in the relay (the model itself cannot fail).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// A socket could not be bound or set up (caller: choose another address).
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done, with the address.
        what: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The relay's configuration does not fit (caller misuse).
    #[error("relay configuration: {0}")]
    Config(String),
}
