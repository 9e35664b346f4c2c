//! Dev-only helpers shared by Veil's integration tests and benches; never a normal dependency
//! of a shipped crate (`publish = false`).
//!
//! - [`token`]: access tokens minted now, with every grant or chosen ones.
//! - `server` (feature `server`): `veil-server` in this process on loopback, or as a child
//!   process given its binary (`env!("CARGO_BIN_EXE_veil-server")` exists only in the server's
//!   own tests and benches, so callers pass the path); a test CA and server certificate for
//!   TLS (`TestPki`).
//! - `webrtc` (feature `webrtc`): the webrtc-rs test peer's event handler and loopback
//!   helpers.
//! - `policy` (feature `policy`): the one table of crates each server-side crate must not
//!   link (SFU-BLIND-01..02, KDS-SEC-01, AUTH-DEP-01) and the `cargo tree -e normal` walk that
//!   checks it.
//! - `postgres` (feature `postgres`): a real PostgreSQL server in a temporary directory, one per
//!   test binary, with a fresh database per test.
//! - `browser` (feature `browser`): headless Chromium driven over the DevTools protocol, to
//!   open Veil's web page in a real browser, read values from it and take screenshots.
//!
//! A crate's integration tests and benches may use this kit even though it depends on that
//! crate (they link the same library); its unit tests must not, or two copies of its types
//! would meet.
#![forbid(unsafe_code)]

#[cfg(feature = "browser")]
pub mod browser;
#[cfg(feature = "client")]
pub mod peer;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "policy")]
pub mod policy;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "server")]
pub mod server;
pub mod token;
#[cfg(feature = "webrtc")]
pub mod webrtc;
