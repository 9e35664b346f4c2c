//! What the SFU's signalling API speaks and how the SFU reports: its configuration
//! ([`SfuConfig`]), a participant's [`Session`], [`Permissions`] and [`SignalEvent`]s, the room
//! events for the key service ([`ParticipantEvent`]), the Prometheus [`Metrics`], and the
//! operator's [`Tap`]. [`crate::edge::EdgeSfu`] implements the API ([`crate::grpc::Backend`]);
//! [`crate::grpc`] serves it as `veil.sfu.v1`.

use std::time::Duration;

use tokio::sync::mpsc;

#[cfg(doc)]
use crate::error::SfuError;
#[cfg(doc)]
use crate::grpc::Backend;
use crate::routing::{Dtx, MediaKind, RateLimit};

pub mod metrics;
mod tap;

pub use metrics::{DropKind, Metrics};
pub use tap::{Tap, TappedPacket};

/// The longest queue an [`SfuConfig`] may ask for (`event_queue`) and the largest [`Tap`]
/// capacity: larger values are clamped to it (`specs/sfu.md`, SFU-LIVE-05). A zero is clamped
/// to 1, since a channel cannot hold nothing.
pub const MAX_QUEUE: usize = 1 << 16;

/// `n` clamped to 1..=[`MAX_QUEUE`]: tokio refuses a zero-length channel, and a queue longer
/// than this is memory a stalled reader could make the SFU hold.
pub(crate) fn queue_len(n: usize) -> usize {
    n.clamp(1, MAX_QUEUE)
}

/// Configuration of the SFU ([`crate::edge::EdgeSfu::new`]). Every timeout is configuration (a
/// test or a relay may need other values), not a constant.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The SFU binds the first of these, and offers it as its only candidate: it must be the
    /// address participants reach. Each worker binds its own port on that address: with port
    /// 0 each takes any free port; with port `p`, worker `i` binds `p + i` (SFU-WRK-01).
    pub udp_addrs: Vec<String>,
    /// The address participants reach, when it is not the bound one (a relay, NAT or port
    /// forwarding in front of the SFU): each worker still binds as `udp_addrs` says, but offers
    /// this address as its candidate, worker `i` at this port plus `i` (SFU-ADV-01). `None`
    /// (the default): the bound address is the candidate.
    pub advertise: Option<std::net::SocketAddr>,
    /// Also accept ICE-TCP (RFC 6544, passive) for participants whose network blocks UDP
    /// (SFU-TCP-01): worker `i` listens on this address's port plus `i` (any free port for
    /// port 0), and offers it as a second, lower-priority candidate. With `advertise`, the
    /// candidate is the advertised IP with that port. `None` (the default): UDP only.
    pub tcp: Option<std::net::SocketAddr>,
    /// Worker threads, each its own edge on its own UDP port; a room lives on one
    /// (SFU-WRK-01..03). At least 1; by default one per available core.
    pub workers: usize,
    /// At most one key-frame request per publisher stream per this interval (SFU-KF-01).
    pub key_frame_interval: Duration,
    /// No ICE consent check from the participant for this long: the connection is disconnected
    /// (SFU-LIVE-01). Only STUN counts as a sign of life: rtc 0.21.1 passes media and RTCP by
    /// its ICE handler's clock (`tests/memory/departure.rs`).
    pub silence_timeout: Duration,
    /// Disconnected for this long: the participant is removed (SFU-LIVE-01).
    pub departure_grace: Duration,
    /// How often ICE consent checks go out on an idle connection (must be well below
    /// `silence_timeout`).
    pub keepalive_interval: Duration,
    /// A participant whose connection is not up this long after joining is removed
    /// (SFU-LIVE-02).
    pub connect_timeout: Duration,
    /// Signalling events queued per participant. A participant that lets this many pile up
    /// unread is removed (`LeaveReason::SlowSignalling`, SFU-LIVE-05), so a stalled client
    /// cannot grow the SFU's memory. Clamped to 1..=[`MAX_QUEUE`].
    pub event_queue: usize,
    /// Participants per room.
    pub max_participants: usize,
    /// Hand every received packet to this tap (SFU-TAP-01); `None` (the default) in production.
    pub tap: Option<Tap>,
    /// Drop silent audio after a hangover, from its audio level (SFU-DTX-01..03); `None`
    /// forwards every audio packet. On by default: digital silence (level 127, no voice) after
    /// 200 ms.
    pub dtx: Option<Dtx>,
    /// Each participant's packet-rate limit (SFU-LIVE-04); `None` turns it off. On by default:
    /// 5,000 packets/s, bursts of 1,000.
    pub rate_limit: Option<RateLimit>,
    /// Probe each subscriber's path when its estimate is below what its requested layers need
    /// (SFU-BWE-06..08). On by default; off, GCC climbs on what the layers send alone.
    pub probing: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            advertise: None,
            tcp: None,
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            key_frame_interval: Duration::from_millis(300),
            silence_timeout: Duration::from_secs(5),
            departure_grace: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(15),
            event_queue: 1024,
            max_participants: 64,
            tap: None,
            dtx: Some(Dtx::default()),
            rate_limit: Some(RateLimit::default()),
            probing: true,
        }
    }
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    /// It said so ([`Backend::leave`]).
    Left,
    /// Its transport went silent and did not come back (ICE disconnected, then failed).
    Timeout,
    /// Its connection never came up.
    NeverConnected,
    /// Its connection was closed (DTLS close, or the connection failed outright).
    Closed,
    /// It did not read its signalling events: `SfuConfig::event_queue` of them were waiting
    /// (SFU-LIVE-05).
    SlowSignalling,
}

impl LeaveReason {
    /// The metric label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Timeout => "timeout",
            Self::NeverConnected => "never_connected",
            Self::Closed => "closed",
            Self::SlowSignalling => "slow_signalling",
        }
    }
}

/// Room-level events, for the key service (e.g. to propose the MLS removal of a participant
/// who left or vanished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParticipantEvent {
    /// A participant joined.
    ParticipantJoined {
        /// Room.
        room: String,
        /// Identity (from the access token).
        identity: String,
    },
    /// A participant left or was removed.
    ParticipantLeft {
        /// Room.
        room: String,
        /// Identity.
        identity: String,
        /// Why.
        reason: LeaveReason,
    },
}

/// A published track, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// The SFU's name for it (`t<n>`): the argument of [`Backend::subscribe`], and the msid track
    /// id of the subscriber's m-section.
    pub track: String,
    /// The publisher's identity.
    pub publisher: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's own msid track id.
    pub publisher_track_id: String,
    /// Simulcast rids (empty: one layer).
    pub rids: Vec<String>,
}

/// Events for one participant, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalEvent {
    /// The SFU renegotiates (after subscribe or unsubscribe): answer with [`Backend::answer`].
    Offer {
        /// SDP.
        sdp: String,
    },
    /// A track can be subscribed to.
    TrackPublished(TrackInfo),
    /// A track ended (its subscription, if any, is gone).
    TrackUnpublished {
        /// The track.
        track: String,
    },
    /// A subscription is live: packets of `track` arrive on `ssrc`.
    Subscribed {
        /// The track.
        track: String,
        /// The SSRC on this participant's connection.
        ssrc: u32,
    },
    /// Another participant joined.
    ParticipantJoined {
        /// Identity.
        identity: String,
    },
    /// Another participant left.
    ParticipantLeft {
        /// Identity.
        identity: String,
        /// Why.
        reason: LeaveReason,
    },
    /// The room's active speaker changed (SFU-SPK-03); a joiner hears the current one.
    ActiveSpeaker {
        /// Identity.
        identity: String,
    },
    /// This participant was removed; no more events follow.
    Closed {
        /// Why.
        reason: LeaveReason,
    },
}

/// What a participant may do (from its access token's grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// Send media: without it, the participant's tracks are not published and their packets
    /// are dropped (`not_permitted`).
    pub publish: bool,
    /// Receive media: without it, [`Backend::subscribe`] fails with
    /// [`SfuError::PermissionDenied`].
    pub subscribe: bool,
}

impl Permissions {
    /// Publish and subscribe.
    pub const ALL: Self = Self {
        publish: true,
        subscribe: true,
    };
}

/// What [`Backend::join_with`] returns.
#[derive(Debug)]
pub struct Session {
    /// The SFU's answer, with its candidates.
    pub answer: String,
    /// This participant's events.
    pub events: mpsc::Receiver<SignalEvent>,
}

/// An ICE candidate from a participant (trickle ICE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceCandidate {
    /// The `candidate:` attribute.
    pub candidate: String,
    /// Its m-section's mid.
    pub sdp_mid: Option<String>,
    /// Its m-section's index.
    pub sdp_mline_index: Option<u16>,
}
