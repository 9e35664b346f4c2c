//! The webrtc-rs glue the edge's connections share with Veil's peers: how a connection is built
//! ([`peer`]: codecs, header extensions, interceptors, GCC, ICE timers; [`estimator`]: GCC
//! assembled from its parts, moved up by probe results), what the SFU reads from
//! a participant's SDP ([`sdp`]), and how a packet crosses between webrtc-rs and the routing
//! core (`packet`: the core's view of a received packet, and each subscriber's rewritten copy).
//!
//! Nothing here decides ([`crate::routing`] does) or does I/O ([`crate::edge`] does).

pub mod estimator;
pub(crate) mod packet;
pub mod peer;
pub(crate) mod rid_latch;
pub mod sdp;
