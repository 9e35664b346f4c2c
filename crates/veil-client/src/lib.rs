//! Veil's client SDK: one [`room::Room`] per call. It joins the room's MLS group through the
//! key-distribution service, opens a WebRTC session with the blind SFU, encrypts every published
//! frame with SFrame before RTP packetization, and decrypts every frame it receives.
//!
//! - [`room::Room`]: join, `publish_audio`/`publish_video`, `next_frame`, stats, leave.
//! - [`group::Group`]: the tokio shell around the call core's sans-I/O member
//!   ([`veil_call::Member`]), which creates or joins the room (Welcome or external commit),
//!   processes commits and proposals in order, commits the service's Remove proposals, rebases
//!   lost commit races and resumes after reconnects. The shell makes the RPCs, feeds the event
//!   stream and runs the timers; MLS work never blocks an async worker.
//! - [`media`]: the frame path without I/O: SFrame-encrypt and packetize frames into RTP
//!   packets (with the dependency descriptor and audio level), reassemble and decrypt them.
//! - [`sfu`], [`transport`], [`keys`]: the SFU signalling client, the webrtc-rs edge, the
//!   key-service client.
//! - [`endpoint`]: the gRPC channels: TLS for `https://` (system roots or a private CA), and
//!   no access token in plaintext beyond loopback unless the caller opts out.
//! - [`link`]: the state of the two links to the server and the back-off that reconnects
//!   them after a loss (a server restart, a network change).
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), veil_client::ClientError> {
//! use veil_client::room::{Room, RoomConfig};
//!
//! let mut room = Room::join(RoomConfig::new("http://127.0.0.1:7443", token, "standup", "alice")).await?;
//! room.publish_audio(&[0xfc, 0x01, 0x02], 960, (true, 40)).await?;
//! if let Some(f) = room.next_frame().await {
//!     println!("{} sent {} bytes", f.participant, f.frame.len());
//! }
//! room.leave().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod endpoint;
pub mod error;
pub mod group;
pub mod keys;
pub mod link;
pub mod media;
pub mod room;
pub mod sfu;
pub mod transport;

pub use error::ClientError;
