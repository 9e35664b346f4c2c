//! Veil's gRPC API, generated from the `.proto` files in the repository's `proto/` folder.
//!
//! - [`keys::v1`]: the key-distribution service (MLS Delivery and Authentication Service).
//! - [`sfu::v1`]: signalling with the blind SFU.
//!
//! The code is generated at build time by `protox` and `tonic-prost-build`; no system `protoc`
//! is needed. The servers decode requests with [`codec::ProstCodec`], so a request that does
//! not decode is `INVALID_ARGUMENT`, not `INTERNAL`. Messages are plain prost structs:
//!
//! ```
//! use veil_proto::keys::v1::{room_event, RoomEvent, Synced};
//!
//! let ev = RoomEvent { seq: 7, event: Some(room_event::Event::Synced(Synced { epoch: 3 })) };
//! assert!(matches!(ev.event, Some(room_event::Event::Synced(Synced { epoch: 3 }))));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod status;

/// Key distribution (`veil.keys.v1`).
pub mod keys {
    /// Version 1 of the key-distribution API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("veil.keys.v1");
        // The server, generated apart with `crate::codec::ProstCodec` (build.rs).
        include!(concat!(env!("OUT_DIR"), "/server/veil.keys.v1.rs"));
    }
}

/// Blind SFU signalling (`veil.sfu.v1`).
pub mod sfu {
    /// Version 1 of the SFU signalling API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("veil.sfu.v1");
        // The server, generated apart with `crate::codec::ProstCodec` (build.rs).
        include!(concat!(env!("OUT_DIR"), "/server/veil.sfu.v1.rs"));
    }
}
