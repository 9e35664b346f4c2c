//! Prometheus metrics of the SFU (prefix `veil_sfu`). The server binary serves
//! [`Metrics::encode`]; tests read the same counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use veil_rtc::rtx::{Demuxed, RtxObserver, Sent};

use crate::routing::MediaKind;

/// Why a packet was dropped (SFU-SEC-*, SFU-FWD-*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropKind {
    /// An SSRC another participant owns (SFU-SEC-01).
    SpoofedSsrc,
    /// Unreadable header extensions or DD.
    Metadata,
    /// A packet on a track the sender does not publish.
    UnknownTrack,
    /// A simulcast layer beyond the limit, or without a rid.
    Layer,
    /// An RTX packet left wrapped (retransmission is per hop).
    Repair,
    /// No payload (padding only): per hop, not forwarded.
    Padding,
    /// Not the layer the subscriber gets.
    NotSelected,
    /// Waiting for a key frame to start or switch.
    WaitingForKeyFrame,
    /// A switch refused because the stream has no DD.
    NoDependencyDescriptor,
    /// webrtc-rs refused to send it.
    WriteFailed,
    /// Its sender may not publish (no `publish` grant).
    NotPermitted,
    /// Silent audio after the hangover (DTX at the SFU, SFU-DTX-01), one per subscriber copy.
    Silence,
    /// Arrived after a later packet was dropped as silence; its number would collide
    /// (SFU-FWD-05).
    LateAfterSkip,
    /// Its sender is over its packet-rate limit (SFU-LIVE-04).
    RateLimited,
    /// A datagram over its sender's datagram limit, cut at the edge before SRTP
    /// (SFU-EDGE-13). Counts datagrams (RTP, RTX, RTCP, STUN alike), not RTP packets.
    Flooded,
}

impl DropKind {
    /// Every reason, in declaration order (`kind as usize` indexes it).
    pub const ALL: [Self; 15] = [
        Self::SpoofedSsrc,
        Self::Metadata,
        Self::UnknownTrack,
        Self::Layer,
        Self::Repair,
        Self::Padding,
        Self::NotSelected,
        Self::WaitingForKeyFrame,
        Self::NoDependencyDescriptor,
        Self::WriteFailed,
        Self::NotPermitted,
        Self::Silence,
        Self::LateAfterSkip,
        Self::RateLimited,
        Self::Flooded,
    ];

    /// The `reason` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::SpoofedSsrc => "spoofed_ssrc",
            Self::Metadata => "metadata",
            Self::UnknownTrack => "unknown_track",
            Self::Layer => "layer",
            Self::Repair => "repair",
            Self::Padding => "padding",
            Self::NotSelected => "not_selected",
            Self::WaitingForKeyFrame => "waiting_for_key_frame",
            Self::NoDependencyDescriptor => "no_dependency_descriptor",
            Self::WriteFailed => "write_failed",
            Self::NotPermitted => "not_permitted",
            Self::Silence => "silence",
            Self::LateAfterSkip => "late_after_skip",
            Self::RateLimited => "rate_limited",
            Self::Flooded => "flooded",
        }
    }
}

impl DropKind {
    /// What the routing core's refusal of a packet counts as.
    #[must_use]
    pub fn of_error(e: &crate::error::SfuError) -> Self {
        use crate::error::SfuError;
        match e {
            SfuError::SpoofedSsrc { .. } => Self::SpoofedSsrc,
            SfuError::UnknownTrack(_) | SfuError::UnknownParticipant(_) => Self::UnknownTrack,
            SfuError::TooManyLayers(_) | SfuError::UnknownLayer(_) => Self::Layer,
            SfuError::RateLimited(_) => Self::RateLimited,
            // Everything else is not a packet refusal of the routing core; a malformed packet
            // is the closest kind. Listed, not wildcarded, so a new variant must be classified.
            SfuError::Metadata(_)
            | SfuError::UnknownSsrc(_)
            | SfuError::Sdp { .. }
            | SfuError::TcpFrame { .. }
            | SfuError::Unauthenticated(_)
            | SfuError::PermissionDenied(_)
            | SfuError::NoSuchTrack(_)
            | SfuError::NotSubscribed(_)
            | SfuError::AlreadyJoined { .. }
            | SfuError::NotJoined { .. }
            | SfuError::Negotiation(_)
            | SfuError::Protocol(_)
            | SfuError::Limit(_)
            | SfuError::Config(_)
            | SfuError::BadAddress { .. }
            | SfuError::Io { .. }
            | SfuError::WebRtc { .. }
            | SfuError::WebRtcState(_)
            | SfuError::Closed => Self::Metadata,
        }
    }
}

impl From<crate::routing::DropReason> for DropKind {
    fn from(d: crate::routing::DropReason) -> Self {
        use crate::routing::DropReason;
        match d {
            DropReason::NotSelected => Self::NotSelected,
            DropReason::WaitingForKeyFrame => Self::WaitingForKeyFrame,
            DropReason::NoDependencyDescriptor => Self::NoDependencyDescriptor,
            DropReason::Silence => Self::Silence,
            DropReason::LateAfterSkip => Self::LateAfterSkip,
        }
    }
}

/// `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The reason.
    pub reason: &'static str,
}

/// `kind` label (audio, video).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `audio` or `video`.
    pub kind: &'static str,
}

/// Labels of a per-subscriber layer gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberTrack {
    /// Room.
    pub room: String,
    /// Subscriber identity.
    pub subscriber: String,
    /// Track name.
    pub track: String,
}

/// Labels of the RTX counter (SFU-RTX-01..02).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rtx {
    /// `in` (from publishers and subscribers) or `out` (the SFU's retransmissions).
    pub direction: &'static str,
    /// `unwrapped`, `probe` (padding-only, dropped), `unresolved` (an `rrid` no stream has
    /// introduced); `resent` (a NACKed packet, sent again with its original's extensions) or
    /// `missing` (a NACKed packet no longer in the 1 024-packet history) or `limited` (not
    /// resent: the stream has resent as many packets as it sent); `redundant` (in: a
    /// retransmission of a packet that arrived already, dropped, SFU-RTX-07).
    pub outcome: &'static str,
}

/// Counts what every connection's [`veil_rtc::RtxInterceptor`] does into [`Metrics::rtx`].
#[derive(Debug, Clone)]
pub struct RtxCount(pub Family<Rtx, Counter>);

impl RtxCount {
    fn count(&self, direction: &'static str, outcome: &'static str, n: u64) {
        self.0.get_or_create(&Rtx { direction, outcome }).inc_by(n);
    }
}

impl RtxObserver for RtxCount {
    fn inbound(&self, what: Demuxed) {
        match what {
            Demuxed::Media => {}
            Demuxed::Unwrapped(_) => self.count("in", "unwrapped", 1),
            Demuxed::Probe => self.count("in", "probe", 1),
            Demuxed::Unresolved => self.count("in", "unresolved", 1),
            Demuxed::Redundant(_) => self.count("in", "redundant", 1),
        }
    }

    fn outbound(&self, what: Sent, count: u64) {
        match what {
            Sent::Resent => self.count("out", "resent", count),
            Sent::Missing => self.count("out", "missing", count),
            Sent::Limited => self.count("out", "limited", count),
        }
    }
}

/// Labels of the node-to-node leg packet counter (SFU-CAS-02/03).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegDirection {
    /// `out` (local publishers' packets handed to the legs; once per packet, whatever the
    /// number of legs) or `in` (packets that came over a leg).
    pub direction: &'static str,
}

/// Labels of a per-subscriber gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Subscriber {
    /// Room.
    pub room: String,
    /// Subscriber identity.
    pub subscriber: String,
}

/// The per-packet counters of one media kind, resolved from their families once: counting a
/// packet is one atomic add, with no label lookup (and its lock) on the forwarding path.
#[derive(Debug, Clone, Default)]
pub struct KindCounters {
    /// [`Metrics::received_packets`] of this kind.
    pub received: Counter,
    /// [`Metrics::forwarded_packets`] of this kind.
    pub forwarded: Counter,
    /// [`Metrics::forwarded_bytes`] of this kind.
    pub forwarded_bytes: Counter,
}

/// The SFU's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Audio, video.
    by_kind: [KindCounters; 2],
    /// [`Self::dropped`] by [`DropKind`], indexed like [`DropKind::ALL`].
    drops: Vec<Counter>,
    /// Rooms with at least one participant.
    pub rooms: Gauge,
    /// Participants over all rooms.
    pub participants: Gauge,
    /// Published tracks over all rooms.
    pub tracks: Gauge,
    /// Active subscriptions over all rooms.
    pub subscriptions: Gauge,
    /// Rooms in the worker placement map: placed for a participant or a join in flight
    /// (SFU-WRK-03). Back to 0 once every room has ended.
    pub placed_rooms: Gauge,
    /// RTP packets received from publishers.
    pub received_packets: Family<Kind, Counter>,
    /// RTP packets forwarded to subscribers (one per copy).
    pub forwarded_packets: Family<Kind, Counter>,
    /// Payload bytes forwarded to subscribers (one per copy).
    pub forwarded_bytes: Family<Kind, Counter>,
    /// Packets (or copies) dropped, by reason.
    pub dropped: Family<Reason, Counter>,
    /// PLI/FIR received from subscribers (all end at the SFU).
    pub subscriber_key_frame_requests: Counter,
    /// PLIs the SFU sent to publishers (throttled).
    pub publisher_key_frame_requests: Counter,
    /// The layer each subscriber receives per track (-1: none yet).
    pub subscriber_layer: Family<SubscriberTrack, Gauge>,
    /// The send-side bandwidth estimate of each subscriber's connection, in bits per second
    /// (SFU-BWE-01).
    pub subscriber_estimate: Family<Subscriber, Gauge>,
    /// The spatial layer of the decode target each subscriber receives of a scalable track
    /// (SFU-SVC-10); absent for a track that is not thinned.
    pub subscriber_spatial_layer: Family<SubscriberTrack, Gauge>,
    /// The temporal layer of that decode target (SFU-SVC-10).
    pub subscriber_temporal_layer: Family<SubscriberTrack, Gauge>,
    /// Participants who left, by reason.
    pub left: Family<Reason, Counter>,
    /// RTX packets by direction and outcome (SFU-RTX-01..02).
    pub rtx: Family<Rtx, Counter>,
    /// Probe clusters sent towards subscribers (SFU-BWE-06).
    pub probe_clusters: Counter,
    /// Probe clusters the path carried at their rate (SFU-BWE-08).
    pub probe_successes: Counter,
    /// Open ICE-TCP streams (SFU-TCP-04).
    pub tcp_streams: Gauge,
    /// ICE-TCP streams closed, by reason (SFU-TCP-04).
    pub tcp_closed: Family<Reason, Counter>,
    /// Packets not sent on an ICE-TCP stream because its send queue was full (SFU-TCP-04).
    pub tcp_send_dropped: Counter,
    /// Node-to-node legs up (SFU-CAS-01).
    pub legs: Gauge,
    /// Packets relayed over node-to-node legs, by direction (SFU-CAS-02/03).
    pub leg_packets: Family<LegDirection, Counter>,
    /// Messages a leg's full queue lost (SFU-CAS-02).
    pub leg_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("veil_sfu");
        let m = Self {
            registry: Registry::default(),
            by_kind: Default::default(),
            drops: Vec::new(),
            rooms: Gauge::default(),
            participants: Gauge::default(),
            tracks: Gauge::default(),
            subscriptions: Gauge::default(),
            placed_rooms: Gauge::default(),
            received_packets: Family::default(),
            forwarded_packets: Family::default(),
            forwarded_bytes: Family::default(),
            dropped: Family::default(),
            subscriber_key_frame_requests: Counter::default(),
            publisher_key_frame_requests: Counter::default(),
            subscriber_layer: Family::default(),
            subscriber_estimate: Family::default(),
            subscriber_spatial_layer: Family::default(),
            subscriber_temporal_layer: Family::default(),
            left: Family::default(),
            rtx: Family::default(),
            probe_clusters: Counter::default(),
            probe_successes: Counter::default(),
            tcp_streams: Gauge::default(),
            tcp_closed: Family::default(),
            tcp_send_dropped: Counter::default(),
            legs: Gauge::default(),
            leg_packets: Family::default(),
            leg_dropped: Counter::default(),
        };
        registry.register("tcp_streams", "Open ICE-TCP streams", m.tcp_streams.clone());
        registry.register(
            "tcp_closed_streams",
            "ICE-TCP streams closed, by reason",
            m.tcp_closed.clone(),
        );
        registry.register(
            "tcp_send_dropped_packets",
            "Packets not sent on an ICE-TCP stream whose send queue was full",
            m.tcp_send_dropped.clone(),
        );
        registry.register("legs", "Node-to-node legs up", m.legs.clone());
        registry.register(
            "leg_packets",
            "Packets relayed over node-to-node legs, by direction",
            m.leg_packets.clone(),
        );
        registry.register(
            "leg_dropped",
            "Messages lost to a node-to-node leg's full queue",
            m.leg_dropped.clone(),
        );
        registry.register("rooms", "Rooms with participants", m.rooms.clone());
        registry.register("participants", "Participants", m.participants.clone());
        registry.register("tracks", "Published tracks", m.tracks.clone());
        registry.register(
            "subscriptions",
            "Active subscriptions",
            m.subscriptions.clone(),
        );
        registry.register(
            "placed_rooms",
            "Rooms in the worker placement map (placed for a participant or a join in flight)",
            m.placed_rooms.clone(),
        );
        registry.register(
            "received_packets",
            "RTP packets received from publishers",
            m.received_packets.clone(),
        );
        registry.register(
            "forwarded_packets",
            "RTP packets forwarded (one per subscriber copy)",
            m.forwarded_packets.clone(),
        );
        registry.register(
            "forwarded_bytes",
            "RTP payload bytes forwarded (one per subscriber copy)",
            m.forwarded_bytes.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "subscriber_key_frame_requests",
            "PLI/FIR received from subscribers",
            m.subscriber_key_frame_requests.clone(),
        );
        registry.register(
            "publisher_key_frame_requests",
            "PLI sent to publishers",
            m.publisher_key_frame_requests.clone(),
        );
        registry.register(
            "subscriber_layer",
            "Simulcast layer forwarded to each subscriber (-1: none yet)",
            m.subscriber_layer.clone(),
        );
        registry.register(
            "subscriber_estimate_bps",
            "Send-side bandwidth estimate (GCC over transport-cc) of each subscriber's leg",
            m.subscriber_estimate.clone(),
        );
        registry.register(
            "subscriber_spatial_layer",
            "Spatial layer of the decode target forwarded to each subscriber of a scalable track",
            m.subscriber_spatial_layer.clone(),
        );
        registry.register(
            "subscriber_temporal_layer",
            "Temporal layer of the decode target forwarded to each subscriber of a scalable track",
            m.subscriber_temporal_layer.clone(),
        );
        registry.register(
            "participants_left",
            "Participants who left, by reason",
            m.left.clone(),
        );
        registry.register(
            "rtx_packets",
            "RTX packets (retransmissions, per hop) by direction and outcome",
            m.rtx.clone(),
        );
        registry.register(
            "probe_clusters",
            "Probe clusters sent towards subscribers whose estimate is below their need",
            m.probe_clusters.clone(),
        );
        registry.register(
            "probe_successes",
            "Probe clusters the subscriber's path carried at their rate",
            m.probe_successes.clone(),
        );
        let by_kind = ["audio", "video"].map(|kind| KindCounters {
            received: m.received_packets.get_or_create(&Kind { kind }).clone(),
            forwarded: m.forwarded_packets.get_or_create(&Kind { kind }).clone(),
            forwarded_bytes: m.forwarded_bytes.get_or_create(&Kind { kind }).clone(),
        });
        let drops = DropKind::ALL
            .iter()
            .map(|k| {
                m.dropped
                    .get_or_create(&Reason { reason: k.label() })
                    .clone()
            })
            .collect();
        Self {
            registry,
            by_kind,
            drops,
            ..m
        }
    }
}

impl Metrics {
    /// Count a drop.
    pub fn drop(&self, kind: DropKind) {
        self.drops[kind as usize].inc();
    }

    /// Count `n` drops.
    pub fn drop_n(&self, kind: DropKind, n: u64) {
        self.drops[kind as usize].inc_by(n);
    }

    /// Drops so far for `kind`.
    #[must_use]
    pub fn drops(&self, kind: DropKind) -> u64 {
        self.drops[kind as usize].get()
    }

    /// The packet counters of `kind`.
    #[must_use]
    pub fn of(&self, kind: MediaKind) -> &KindCounters {
        &self.by_kind[match kind {
            MediaKind::Audio => 0,
            MediaKind::Video => 1,
        }]
    }

    /// RTX packets so far in `direction` (`in`, `out`) with `outcome` ([`Rtx`]).
    #[must_use]
    pub fn rtx(&self, direction: &'static str, outcome: &'static str) -> u64 {
        self.rtx.get_or_create(&Rtx { direction, outcome }).get()
    }

    /// Copies forwarded so far of `kind` (`"audio"` or `"video"`).
    #[must_use]
    pub fn forwarded(&self, kind: &'static str) -> u64 {
        self.forwarded_packets.get_or_create(&Kind { kind }).get()
    }

    /// The registry in the Prometheus text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_its_own_counter_under_its_own_label() {
        let m = Metrics::default();
        for (i, k) in DropKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "ALL is in declaration order");
            for _ in 0..=i {
                m.drop(*k);
            }
        }
        let text = m.encode();
        for (i, k) in DropKind::ALL.iter().enumerate() {
            assert_eq!(m.drops(*k), i as u64 + 1);
            let line = format!(
                "veil_sfu_dropped_packets_total{{reason=\"{}\"}} {}",
                k.label(),
                i + 1
            );
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        m.of(MediaKind::Video).forwarded.inc_by(3);
        assert_eq!(m.forwarded("video"), 3);
        assert_eq!(m.forwarded("audio"), 0);
    }
}
