//! What the rooms count and record, for the shell to export (SFU-OBS-01, specs/sfu.md
//! "Observability").
//!
//! The session core owns no metrics registry, no channel and no atomic shared with another
//! thread: per packet it adds to plain integers in [`Counters`], and what has labels or a
//! payload (a subscriber's layer or estimate, a tapped packet) it queues as an
//! [`Observation`]. The shell takes both once per pass of its loop
//! ([`EdgeRooms::take_counters`](super::EdgeRooms::take_counters),
//! [`EdgeRooms::poll_observation`](super::EdgeRooms::poll_observation)) and adds them to its
//! Prometheus metrics ([`Metrics::export`]) and its tap: a dozen atomic adds per pass instead
//! of several per forwarded copy, on cache lines every worker thread shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use veil_rtc::rtx::{Demuxed, RtxObserver, Sent};

use crate::routing::{MediaKind, SvcLayer};
use crate::session::metrics::{Rtx, Subscriber, SubscriberTrack};
use crate::session::{DropKind, Metrics, Tap, TappedPacket};

/// Index of a media kind in the per-kind arrays.
pub(crate) const fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

/// The RTX outcomes [`RtxTally`] counts, with their metric labels (direction, outcome).
const RTX_LABELS: [(&str, &str); 7] = [
    ("in", "unwrapped"),
    ("in", "probe"),
    ("in", "unresolved"),
    ("out", "resent"),
    ("out", "missing"),
    ("out", "limited"),
    ("in", "redundant"),
];

/// Counts since the shell last took them. Gauges (tracks, subscriptions) are changes, which
/// may be negative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// RTP packets received from publishers, by kind (audio, video).
    pub received: [u64; 2],
    /// Copies forwarded to subscribers, by kind.
    pub forwarded: [u64; 2],
    /// Payload bytes forwarded (one per copy), by kind.
    pub forwarded_bytes: [u64; 2],
    /// Drops, indexed like [`DropKind::ALL`].
    pub drops: [u64; DropKind::ALL.len()],
    /// PLI/FIR received from subscribers.
    pub subscriber_key_frame_requests: u64,
    /// PLIs sent to publishers.
    pub publisher_key_frame_requests: u64,
    /// RTX packets, indexed like the (direction, outcome) labels of [`Metrics::rtx`]:
    /// in unwrapped, in probe, in unresolved, out resent, out missing, out limited, in
    /// redundant.
    pub rtx: [u64; 7],
    /// Probe clusters sent towards subscribers, and those the path carried at their rate
    /// (SFU-BWE-06, SFU-BWE-08).
    pub probe_clusters: u64,
    /// See `probe_clusters`.
    pub probe_successes: u64,
    /// Change in published tracks.
    pub tracks: i64,
    /// Change in live subscriptions.
    pub subscriptions: i64,
    /// Packets relayed over node-to-node legs: out (local publishers' packets handed to the
    /// legs, once each) and in (SFU-CAS-02/03).
    pub relayed: [u64; 2],
}

impl Counters {
    /// Count one drop of `kind`.
    pub(crate) fn drop(&mut self, kind: DropKind) {
        self.drops[kind as usize] += 1;
    }

    /// Drops of `kind` counted.
    #[must_use]
    pub fn drops(&self, kind: DropKind) -> u64 {
        self.drops[kind as usize]
    }
}

/// What the rooms observed that carries labels or a payload.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The layer a subscriber receives on a track changed; `None`: the subscription is gone.
    Layer {
        /// Room, subscriber identity, the SFU's track name.
        labels: SubscriberTrack,
        /// The layer.
        layer: Option<u8>,
    },
    /// The decode target a subscriber receives of a scalable track changed (SFU-SVC-10);
    /// `None`: the subscription is gone.
    DecodeTarget {
        /// Room, subscriber identity, the SFU's track name.
        labels: SubscriberTrack,
        /// Its spatial and temporal layer.
        layer: Option<SvcLayer>,
    },
    /// A subscriber's send-side estimate, in bits per second; `None`: the subscriber is gone.
    Estimate {
        /// Room and subscriber identity.
        labels: Subscriber,
        /// The estimate.
        bps: Option<u64>,
    },
    /// A packet as a publisher sent it (SFU-TAP-01), while the shell says someone listens
    /// ([`EdgeRooms::set_tapping`](super::EdgeRooms::set_tapping)).
    Tapped(TappedPacket),
}

/// What every connection's RTX interceptor reports, counted for one edge (its thread and the
/// interceptors it drives): the interceptors take an `Arc<dyn RtxObserver>`, so these are
/// atomics, but no other thread touches them.
#[derive(Debug, Default)]
pub(crate) struct RtxTally([AtomicU64; 7]);

impl RtxTally {
    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    /// The counts since the last take.
    pub(crate) fn take(&self) -> [u64; 7] {
        std::array::from_fn(|i| self.0[i].swap(0, Ordering::Relaxed))
    }
}

impl RtxObserver for RtxTally {
    fn inbound(&self, what: Demuxed) {
        match what {
            Demuxed::Media => {}
            Demuxed::Unwrapped(_) => self.add(0, 1),
            Demuxed::Probe => self.add(1, 1),
            Demuxed::Unresolved => self.add(2, 1),
            Demuxed::Redundant(_) => self.add(6, 1),
        }
    }

    fn outbound(&self, what: Sent, count: u64) {
        match what {
            Sent::Resent => self.add(3, count),
            Sent::Missing => self.add(4, count),
            Sent::Limited => self.add(5, count),
        }
    }
}

/// A new tally, as the edge's interceptors want it.
pub(crate) fn rtx_tally() -> Arc<RtxTally> {
    Arc::new(RtxTally::default())
}

impl Metrics {
    /// Add what a core counted (the shell, once per pass).
    pub fn export(&self, c: &Counters) {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let (i, k) = (kind_index(kind), self.of(kind));
            if c.received[i] > 0 {
                k.received.inc_by(c.received[i]);
            }
            if c.forwarded[i] > 0 {
                k.forwarded.inc_by(c.forwarded[i]);
                k.forwarded_bytes.inc_by(c.forwarded_bytes[i]);
            }
        }
        for (kind, &n) in DropKind::ALL.iter().zip(&c.drops) {
            if n > 0 {
                self.drop_n(*kind, n);
            }
        }
        if c.subscriber_key_frame_requests > 0 {
            self.subscriber_key_frame_requests
                .inc_by(c.subscriber_key_frame_requests);
        }
        if c.publisher_key_frame_requests > 0 {
            self.publisher_key_frame_requests
                .inc_by(c.publisher_key_frame_requests);
        }
        for (&(direction, outcome), &n) in RTX_LABELS.iter().zip(&c.rtx) {
            if n > 0 {
                self.rtx
                    .get_or_create(&Rtx { direction, outcome })
                    .inc_by(n);
            }
        }
        if c.probe_clusters > 0 {
            self.probe_clusters.inc_by(c.probe_clusters);
        }
        for (direction, &n) in ["out", "in"].into_iter().zip(&c.relayed) {
            if n > 0 {
                self.leg_packets
                    .get_or_create(&crate::session::metrics::LegDirection { direction })
                    .inc_by(n);
            }
        }
        if c.probe_successes > 0 {
            self.probe_successes.inc_by(c.probe_successes);
        }
        if c.tracks != 0 {
            self.tracks.inc_by(c.tracks);
        }
        if c.subscriptions != 0 {
            self.subscriptions.inc_by(c.subscriptions);
        }
    }

    /// Carry out one observation: gauges are set or removed; a tapped packet goes to `tap`.
    pub fn observe(&self, o: Observation, tap: Option<&Tap>) {
        match o {
            Observation::Layer { labels, layer } => match layer {
                Some(l) => {
                    self.subscriber_layer
                        .get_or_create(&labels)
                        .set(i64::from(l));
                }
                None => {
                    self.subscriber_layer.remove(&labels);
                }
            },
            Observation::DecodeTarget { labels, layer } => match layer {
                Some(l) => {
                    self.subscriber_spatial_layer
                        .get_or_create(&labels)
                        .set(i64::from(l.spatial));
                    self.subscriber_temporal_layer
                        .get_or_create(&labels)
                        .set(i64::from(l.temporal));
                }
                None => {
                    self.subscriber_spatial_layer.remove(&labels);
                    self.subscriber_temporal_layer.remove(&labels);
                }
            },
            Observation::Estimate { labels, bps } => match bps {
                Some(bps) => {
                    self.subscriber_estimate
                        .get_or_create(&labels)
                        .set(i64::try_from(bps).unwrap_or(i64::MAX));
                }
                None => {
                    self.subscriber_estimate.remove(&labels);
                }
            },
            Observation::Tapped(p) => {
                if let Some(tap) = tap {
                    tap.record(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter of a core lands in the metric of its name, once.
    #[test]
    fn exported_counters_land_in_their_metrics() {
        let m = Metrics::default();
        let mut c = Counters {
            received: [2, 3],
            forwarded: [5, 7],
            forwarded_bytes: [50, 70],
            subscriber_key_frame_requests: 11,
            publisher_key_frame_requests: 13,
            rtx: [1, 2, 3, 4, 5, 6, 7],
            tracks: 2,
            subscriptions: 3,
            relayed: [17, 19],
            ..Counters::default()
        };
        c.drop(DropKind::Silence);
        c.drop(DropKind::Silence);
        m.export(&c);
        c.tracks = -1;
        c.subscriptions = -3;
        m.export(&c);
        assert_eq!(m.of(MediaKind::Audio).received.get(), 4);
        assert_eq!(m.forwarded("video"), 14);
        assert_eq!(m.of(MediaKind::Video).forwarded_bytes.get(), 140);
        assert_eq!(m.drops(DropKind::Silence), 4);
        assert_eq!(m.drops(DropKind::Padding), 0);
        assert_eq!(m.subscriber_key_frame_requests.get(), 22);
        assert_eq!(m.publisher_key_frame_requests.get(), 26);
        assert_eq!(m.rtx("in", "probe"), 4);
        assert_eq!(m.rtx("out", "limited"), 12);
        assert_eq!(m.tracks.get(), 1);
        assert_eq!(m.subscriptions.get(), 0);
        let leg = |direction| {
            m.leg_packets
                .get_or_create(&crate::session::metrics::LegDirection { direction })
                .get()
        };
        assert_eq!((leg("out"), leg("in")), (34, 38));
    }

    #[test]
    fn the_rtx_tally_counts_each_outcome_and_starts_again_when_taken() {
        let t = RtxTally::default();
        t.inbound(Demuxed::Media);
        t.inbound(Demuxed::Probe);
        t.outbound(Sent::Resent, 3);
        t.outbound(Sent::Missing, 1);
        assert_eq!(t.take(), [0, 1, 0, 3, 1, 0, 0]);
        assert_eq!(t.take(), [0; 7]);
    }

    #[test]
    fn a_gone_subscription_takes_its_gauge_with_it() {
        let m = Metrics::default();
        let labels = SubscriberTrack {
            room: "r".into(),
            subscriber: "bob".into(),
            track: "t1".into(),
        };
        m.observe(
            Observation::Layer {
                labels: labels.clone(),
                layer: Some(2),
            },
            None,
        );
        assert!(m.encode().contains("subscriber=\"bob\",track=\"t1\"} 2"));
        m.observe(
            Observation::Layer {
                labels,
                layer: None,
            },
            None,
        );
        assert!(!m.encode().contains("subscriber=\"bob\""));
    }

    /// SFU-SVC-10: the decode target is two gauges per subscription, set as it changes and
    /// gone with the subscription.
    #[test]
    fn a_decode_target_is_exported_and_leaves_with_its_subscription() {
        let m = Metrics::default();
        let labels = SubscriberTrack {
            room: "r".into(),
            subscriber: "bob".into(),
            track: "t1".into(),
        };
        let target = |layer| Observation::DecodeTarget {
            labels: labels.clone(),
            layer,
        };
        m.observe(target(Some(SvcLayer::new(1, 2))), None);
        m.observe(target(Some(SvcLayer::new(1, 0))), None);
        let text = m.encode();
        assert!(
            text.contains(
                "veil_sfu_subscriber_spatial_layer{room=\"r\",subscriber=\"bob\",track=\"t1\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "veil_sfu_subscriber_temporal_layer{room=\"r\",subscriber=\"bob\",track=\"t1\"} 0"
        ));
        m.observe(target(None), None);
        assert!(!m.encode().contains("subscriber=\"bob\""));
    }
}
