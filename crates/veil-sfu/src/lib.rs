#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cascade;
pub mod connection;
pub mod edge;
pub mod error;
pub mod grpc;
pub mod routing;
pub mod session;

pub use edge::EdgeSfu;
pub use error::SfuError;
pub use session::{
    DropKind, IceCandidate, LeaveReason, MAX_QUEUE, Metrics, ParticipantEvent, Permissions,
    Session, SfuConfig, SignalEvent, Tap, TappedPacket, TrackInfo,
};
