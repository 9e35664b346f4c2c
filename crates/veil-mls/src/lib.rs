#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
#[cfg(feature = "hazard-export-secrets")]
mod hazard;
pub mod keys;
pub mod ring;
pub mod session;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use error::MlsError;
pub use keys::{EpochKeys, KeyConfig, KeyStats, Received, Released};
pub use ring::{
    DecryptorStats, EpochExport, FrameDecryptor, FrameKeys, KeyRing, KeySet, RingStats,
};
pub use session::{
    CallSession, CommitOut, MLS_CIPHERSUITE, Processed, Provider, SFRAME_EXPORTER_LABEL,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteProvider;
