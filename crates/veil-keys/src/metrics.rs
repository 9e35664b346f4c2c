//! Prometheus metrics of the key service (prefix `veil_keys_`, specs/key-service.md §10). The
//! process that runs the service exposes them (`veil-server`'s `/metrics`).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set for rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    /// The RPC.
    pub rpc: &'static str,
    /// [`KdsError::reason`](crate::KdsError::reason).
    pub reason: &'static str,
}

/// The key service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rooms in memory (a room leaves memory when idle, KDS-GC-01).
    pub rooms: Gauge,
    /// Rooms deleted: every member departed, or `DeleteRoom` (KDS-GC-02/03).
    pub rooms_deleted: Counter,
    /// Members over all rooms.
    pub members: Gauge,
    /// Open Subscribe streams.
    pub streams: Gauge<i64, AtomicI64>,
    /// Accepted commits.
    pub commits: Counter,
    /// Commits acknowledged again (identical retries).
    pub duplicate_commits: Counter,
    /// Remove proposals the service sent.
    pub proposals: Counter,
    /// Welcomes delivered to the log.
    pub welcomes: Counter,
    /// KeyPackages stored.
    pub key_packages_published: Counter,
    /// KeyPackages handed out.
    pub key_packages_claimed: Counter,
    /// Rejected requests by RPC and reason (`rpc="SendCommit"` are the rejected commits).
    pub rejected: Family<Rejection, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("veil_keys");
        let m = Self {
            rooms: Gauge::default(),
            rooms_deleted: Counter::default(),
            members: Gauge::default(),
            streams: Gauge::default(),
            commits: Counter::default(),
            duplicate_commits: Counter::default(),
            proposals: Counter::default(),
            welcomes: Counter::default(),
            key_packages_published: Counter::default(),
            key_packages_claimed: Counter::default(),
            rejected: Family::default(),
            registry: Registry::default(),
        };
        registry.register("rooms", "Rooms in memory", m.rooms.clone());
        registry.register(
            "rooms_deleted",
            "Rooms deleted (every member departed, or DeleteRoom)",
            m.rooms_deleted.clone(),
        );
        registry.register("members", "Members over all rooms", m.members.clone());
        registry.register("streams", "Open Subscribe streams", m.streams.clone());
        registry.register("commits", "Accepted commits", m.commits.clone());
        registry.register(
            "duplicate_commits",
            "Identical commit retries acknowledged again",
            m.duplicate_commits.clone(),
        );
        registry.register(
            "proposals",
            "Remove proposals sent as external sender",
            m.proposals.clone(),
        );
        registry.register(
            "welcomes",
            "Welcomes stored for delivery",
            m.welcomes.clone(),
        );
        registry.register(
            "key_packages_published",
            "KeyPackages stored",
            m.key_packages_published.clone(),
        );
        registry.register(
            "key_packages_claimed",
            "KeyPackages handed out",
            m.key_packages_claimed.clone(),
        );
        registry.register(
            "rejected",
            "Rejected requests by RPC and reason",
            m.rejected.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Count a rejection.
pub fn reject(metrics: &Metrics, rpc: &'static str, reason: &'static str) {
    metrics
        .rejected
        .get_or_create(&Rejection { rpc, reason })
        .inc();
}
