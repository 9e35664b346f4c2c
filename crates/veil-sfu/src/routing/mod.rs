//! The sans-I/O routing core: which packet goes to which subscriber, rewritten how.
//!
//! - [`StreamRegistry`] learns a publisher's streams from the packets themselves: mid/rid appear
//!   only on a stream's first packets, so the SSRC → rid mapping is latched then. Each stream's
//!   dependency-descriptor structure is latched too (SFU-STR-01..03).
//! - [`LayerForwarder`] decides, per subscriber and track, which simulcast layer is forwarded.
//!   It switches only at the first packet of a key frame whose DD frame number continues the
//!   output, and it rewrites SSRC, sequence numbers and timestamps into one continuous
//!   stream (SFU-FWD-01..06).
//!
//! - [`LayerChoice`] picks that layer from the subscriber's request and its share of its
//!   connection's bandwidth estimate; [`RateMeter`] measures each layer's bitrate (SFU-BWE-02..04).
//!   [`ProbeController`] decides when to probe a connection whose estimate is below what its
//!   requested layers need ([`Room::need`]), and how hard (SFU-BWE-06, SFU-BWE-08).
//!
//! - [`SvcSelector`] thins a scalable stream (AV1/VP9 SVC, VP8 temporal layers) per subscriber
//!   to one dependency-descriptor decode target, switching only where the descriptor allows and
//!   renumbering across the dropped frames; [`SvcRates`] and [`ScalableChoice`] pick the decode
//!   target from the bandwidth estimate, temporal layers first (SFU-SVC-01..08).
//!
//! - [`KeyFrameRequests`] throttles the SFU's own key-frame requests per publisher stream
//!   (SFU-KF-01..02).
//!
//! - [`SilenceGate`] drops silent audio after a hangover, from the same audio level
//!   (SFU-DTX-01..03); the forwarder renumbers across the dropped packets.
//!
//! - [`ActiveSpeaker`] picks the active speaker from audio levels (SFU-SPK-01..02), and
//!   [`SsrcOwners`] rejects SSRCs spoofed from another participant (SFU-SEC-01).
//!
//! - [`ExtMap`] rewrites header-extension ids from the publisher's connection to each subscriber's
//!   (SFU-EXT-01..02).
//!
//! - [`TokenBucket`] cuts a flooding publisher to its [`RateLimit`] at the door, before any
//!   routing (SFU-LIVE-04).
//!
//! - [`Room`] ties them together for one room: participants, published tracks, subscriptions,
//!   and the verdict on every packet (SFU-ROOM-01..02).
//!
//! Nothing here reads a payload byte: packets are described by [`PacketMeta`].

/// Strategies shared by the routing core's "caller input never panics" property tests.
#[cfg(test)]
mod caller_input {
    use std::time::Duration;

    use proptest::prelude::*;

    /// Zero, the largest duration, and ordinary ones up to 10 s.
    pub(crate) fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..10_000).prop_map(Duration::from_millis)
        ]
    }
}
mod dtx;
mod extmap;
mod forwarder;
mod keyframes;
mod layers;
mod probe;
mod ratelimit;
mod room;
mod speaker;
mod ssrc;
mod streams;
mod svc;

pub use dtx::{Dtx, MAX_PACKET_DURATION, SilenceGate};
pub use extmap::ExtMap;
pub use forwarder::{Continuation, Decision, DropReason, ForwarderStats, LayerForwarder};
pub use keyframes::{KeyFrameRequests, KeyFrameStats};
pub use layers::{LayerChoice, LayerPolicy, RATE_BUCKET, RateMeter};
pub use probe::{ProbeController, ProbeInput, ProbePolicy, ProbeStats, Pulse};
pub use ratelimit::{RateLimit, TokenBucket};
pub use room::{
    Forward, MAX_LAYERS, MediaKind, ParticipantId, Publish, Room, Routed, Subscribe, TrackId,
};
pub use speaker::ActiveSpeaker;
pub use ssrc::SsrcOwners;
pub use streams::{ExtIds, Ingested, PacketMeta, StreamRegistry};
pub use svc::{
    Rung, ScalableChoice, SvcDecision, SvcDrop, SvcLayer, SvcRates, SvcSelector, SvcStats,
};
