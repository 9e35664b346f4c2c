//! Veil in the browser: the page `veil-server` serves runs this crate compiled to
//! `wasm32-unknown-unknown` (specs/browser.md). It is the same call core ([`veil_call`]), MLS
//! ([`veil_mls`]) and SFrame ([`veil_sframe`]) a native participant runs; there is no second
//! implementation in JavaScript.
//!
//! - On the page (wasm only): `Call`, the member's shell over gRPC-Web (the key service, and
//!   the SFU's signalling through its `Open`/`Send` calls), which hands every epoch to the
//!   transform worker as a key blob.
//! - In the `RTCRtpScriptTransform` worker (wasm only): `FrameWorker`, a thin binding of
//!   [`frames::FrameCrypto`], which encrypts whole encoded frames before the browser
//!   packetizes them and decrypts what arrives.
//!
//! The frame path is plain Rust and runs on the host too:
//!
//! ```
//! use std::time::Duration;
//! use veil_mls::{EpochExport, KeyConfig};
//! use veil_web::frames::{encode_epoch, FrameCrypto, Opened};
//!
//! let blob = |own| encode_epoch(&EpochExport {
//!     epoch: 1, secret: vec![7; 16].into(), members: vec![0, 1], own: Some(own),
//! });
//! let (mut alice, mut bob) = (FrameCrypto::new(KeyConfig::default())?, FrameCrypto::new(KeyConfig::default())?);
//! alice.install(&blob(0), Duration::ZERO)?;
//! bob.install(&blob(1), Duration::ZERO)?;
//! let sealed = alice.encrypt(b"an encoded frame").expect("alice sends");
//! assert_eq!(bob.decrypt(&sealed, 0, Duration::ZERO)?, Opened::Plaintext(b"an encoded frame".to_vec(), 0));
//! # Ok::<(), veil_web::WebError>(())
//! ```
#![deny(missing_docs)]

pub mod error;
pub mod frames;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use error::WebError;
