//! Prometheus metrics of the key service, and a small HTTP endpoint serving them with a health
//! check (`GET /metrics`, `GET /healthz`).

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

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

/// Join OpenMetrics expositions into one: each ends with `# EOF`, which may appear only once,
/// at the end.
#[must_use]
pub fn join_expositions(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(p.strip_suffix("# EOF\n").unwrap_or(p));
    }
    out.push_str("# EOF\n");
    out
}

/// What `/metrics` serves: the text exposition of every role in this process.
pub type Exposition = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve `GET /metrics` and `GET /healthz` on `listener` until the task is dropped, under
/// `gate`'s connection caps; a request must arrive within its handshake timeout
/// (SRV-CONN-01/02).
pub async fn serve_http(listener: TcpListener, gate: crate::listen::Gate, metrics: Exposition) {
    loop {
        let (mut sock, peer, slot) = gate.accept(&listener, "metrics").await;
        let (metrics, gate) = (metrics.clone(), gate.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 1024];
            let wait = gate.limits().handshake_timeout;
            let n = match tokio::time::timeout(wait, sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return,
                Err(_) => {
                    gate.refused("metrics", "handshake_timeout", peer);
                    return;
                }
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Count a rejection.
pub fn reject(metrics: &Metrics, rpc: &'static str, reason: &'static str) {
    metrics
        .rejected
        .get_or_create(&Rejection { rpc, reason })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_roles_make_one_exposition_with_one_eof() {
        let keys = Metrics::default();
        keys.commits.inc();
        let sfu =
            "# HELP veil_sfu_rooms Rooms.\n# TYPE veil_sfu_rooms gauge\nveil_sfu_rooms 2\n# EOF\n";
        let text = join_expositions(&[keys.encode(), sfu.to_owned()]);
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("veil_sfu_rooms 2\n# EOF\n"), "{text}");
        assert!(text.contains("veil_keys_commits_total 1\n"), "{text}");
        // One part, or one without an EOF of its own, still ends with exactly one.
        assert_eq!(join_expositions(&["a 1\n".to_owned()]), "a 1\n# EOF\n");
    }
}
