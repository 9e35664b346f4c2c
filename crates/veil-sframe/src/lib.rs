#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod error;
#[cfg(feature = "hazard-export-secrets")]
pub mod hazard;
pub mod kdf;
pub mod nonce;
pub mod replay;
pub mod secret;
pub mod sender;
pub mod store;
pub mod suite;

#[cfg(feature = "ring")]
pub use backend::Ring;
pub use backend::{AeadBackend, AeadKey, MAX_METADATA_LEN, RustCrypto, default_backend};
pub use error::{Result, SframeError};
pub use kdf::{EpochKdf, MLS_EXPORTER_LABEL, MlsKidLayout, derive_key_material, mls_sender_key};
pub use replay::{DEFAULT_REPLAY_WINDOW, ReplayToken, ReplayWindow};
pub use secret::{KeyMaterial, Secret};
pub use sender::SenderKey;
pub use store::{Decrypted, KeyStore};
pub use suite::CipherSuite;
pub use veil_wire::{MAX_HEADER_LEN, SframeHeader};
