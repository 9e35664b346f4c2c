#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audio_level;
pub mod dd;
pub mod error;
pub mod ext;
pub mod packetize;
pub mod sframe_header;

pub use error::{Result, WireError};
pub use sframe_header::{MAX_HEADER_LEN, SframeHeader};
