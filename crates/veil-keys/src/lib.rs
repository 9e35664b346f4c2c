#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod metrics;
pub mod names;
pub mod room;
pub mod service;
pub mod store;

pub use error::KdsError;
pub use metrics::Metrics;
pub use service::{Config, KeyService};
