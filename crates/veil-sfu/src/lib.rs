#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod edge;
pub mod error;
pub mod grpc;
pub mod routing;
pub mod shell;

pub use error::SfuError;
pub use shell::{
    IceCandidate, LeaveReason, MAX_QUEUE, ParticipantEvent, Permissions, Session, Sfu, SfuConfig,
    SignalEvent, Tap, TappedPacket, TrackInfo,
};
