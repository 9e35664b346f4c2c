//! Veil's call core: one participant's membership of a call's MLS group, as a sans-I/O state
//! machine that native and browser clients share (specs/member.md).
//!
//! Modelled on quinn-proto and str0m: plain synchronous code with no tokio, no sockets, no
//! clock and no randomness of its own. A shell (the SDK's tokio task, or a browser page)
//! feeds a [`Member`] commands, the key service's replies and room events, and timeouts, each
//! with `now`; it sends the [`Request`]s the member polls out, and shows its [`Event`]s. Keys
//! reach the frame path through [`Member::frame_keys`], an epoch-keys handle the member swaps
//! atomically at each epoch, so encrypting or decrypting a frame never waits for MLS work.
//!
//! ```
//! use std::time::Duration;
//! use veil_call::{Command, Member, MemberConfig, Request};
//! use veil_mls::KeyConfig;
//!
//! let mut alice = Member::new(MemberConfig::new("alice", "standup"), KeyConfig::default(), 7)?;
//! alice.command(Command::Create, Duration::ZERO);
//! // The member asks for the service's external-sender key first; a shell sends the RPC and
//! // gives the reply back with `handle_reply`.
//! assert!(matches!(alice.poll_request(), Some((_, Request::ServiceInfo))));
//! # Ok::<(), veil_call::CallError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod io;
pub mod link;
pub mod member;
pub mod safety;

pub use error::CallError;
pub use io::{Code, CommandId, Failure, Reply, Request, RequestId, ServiceEvent};
pub use link::{Backoff, Link, LinkEvent, LinkStatus};
pub use member::{Command, Event, Member, MemberConfig, Status};
pub use safety::safety_code;
pub use veil_mls::{FrameDecryptor, FrameKeys, KeyConfig};
