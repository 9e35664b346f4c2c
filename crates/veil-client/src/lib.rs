//! Veil's client SDK. This slice joins a call's MLS group through the key-distribution service
//! and keeps it in step; media (SFrame over WebRTC) follows.
//!
//! - [`keys::KeyClient`]: one method per key-service RPC, with the access token attached.
//! - [`group::Group`]: a member running in the background: creates or joins the room (Welcome
//!   or external commit), processes commits and proposals in order, commits the service's
//!   Remove proposals, rebases lost commit races, resumes after reconnects.
//! - [`media`]: the frame path without I/O: SFrame-encrypt and packetize frames into RTP
//!   packets (with the dependency descriptor and audio level), reassemble and decrypt them.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), veil_client::ClientError> {
//! use veil_client::group::{Group, GroupConfig};
//!
//! let alice = Group::create(GroupConfig::new("http://127.0.0.1:7443", token, "standup", "alice")).await?;
//! let status = alice.status();
//! println!("epoch {:?}, members {:?}", status.epoch, status.members);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod group;
pub mod keys;
pub mod media;
pub mod room;
pub mod sfu;
pub mod transport;

pub use error::ClientError;
