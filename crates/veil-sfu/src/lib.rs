#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod routing;
pub mod shell;

pub use error::SfuError;
pub use shell::{
    IceCandidate, LeaveReason, RoomEvent, Session, Sfu, SfuConfig, SignalEvent, TrackInfo,
};
