#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod sframe_header;

pub use error::{Result, WireError};
pub use sframe_header::{MAX_HEADER_LEN, SframeHeader};
