#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod keys;
pub mod session;

pub use error::MlsError;
pub use keys::{EpochKeys, KeyConfig, KeyStats, Received, Released};
pub use session::{CallSession, CommitOut, MLS_CIPHERSUITE, Processed, SFRAME_EXPORTER_LABEL};
