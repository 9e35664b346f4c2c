//! The process's metrics and health endpoint: one OpenMetrics exposition for every role this
//! process runs (the key service's `veil_keys_*`, the SFU's `veil_sfu_*`, the connection gate's
//! `veil_server_*`), served over a small HTTP listener (`GET /metrics`, `GET /healthz`), and
//! the process's own figures ([`process_exposition`]: resident memory, open descriptors,
//! threads, the runtime's live tasks; SRV-OBS-01), which a soak run watches for leaks.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

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

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`), if readable.
#[must_use]
pub fn resident_memory_bytes() -> Option<u64> {
    status_field("VmRSS:").map(|kb| kb * 1024)
}

/// The process's threads (`Threads` of `/proc/self/status`), if readable.
#[must_use]
pub fn threads() -> Option<u64> {
    status_field("Threads:")
}

/// The process's open file descriptors (entries of `/proc/self/fd`), if readable.
#[must_use]
pub fn open_fds() -> Option<u64> {
    // The directory handle itself is one of the entries while it is read.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// A numeric field of `/proc/self/status` (`VmRSS:   1234 kB` → 1234).
fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process gauges (SRV-OBS-01), read when called: `process_resident_memory_bytes`,
/// `process_open_fds`, `process_threads` (the Prometheus conventional names; absent where
/// `/proc` is not) and `veil_server_tokio_alive_tasks` (tasks alive on the runtime this is
/// called on; absent outside one).
#[must_use]
pub fn process_exposition() -> String {
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    let mut registry = Registry::default();
    let mut gauge = |name: &str, help: &str, value: Option<u64>| {
        if let Some(v) = value {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            registry.register(name, help, g);
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        resident_memory_bytes(),
    );
    gauge(
        "process_open_fds",
        "Number of open file descriptors",
        open_fds(),
    );
    gauge("process_threads", "Number of OS threads", threads());
    gauge(
        "veil_server_tokio_alive_tasks",
        "Tasks alive on the server's tokio runtime",
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.metrics().num_alive_tasks() as u64),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_roles_make_one_exposition_with_one_eof() {
        let keys = veil_keys::Metrics::default();
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

    /// The value of the unlabelled series `name` in `text`.
    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn process_gauges_follow_what_the_process_holds() {
        // SRV-OBS-01: each gauge is read when the exposition is made.
        let text = process_exposition();
        let rss = value(&text, "process_resident_memory_bytes").expect("RSS");
        assert!(
            rss > 1_000_000.0,
            "a test process holds more than 1 MB: {text}"
        );
        assert!(value(&text, "process_threads").expect("threads") >= 1.0);
        let fds = value(&text, "process_open_fds").expect("fds");
        let tasks = value(&text, "veil_server_tokio_alive_tasks").expect("tasks");
        // 64 more descriptors and a task more: the gauges see them.
        let files: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let (stop, wait) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = wait.await;
        });
        let text = process_exposition();
        // Under `cargo test` other tests of this binary run on threads of this process and
        // may open or close a few files meanwhile: half of the 64 must show.
        assert!(
            value(&text, "process_open_fds").unwrap() >= fds + 32.0,
            "{text}"
        );
        assert_eq!(
            value(&text, "veil_server_tokio_alive_tasks"),
            Some(tasks + 1.0)
        );
        drop(files);
        let _ = stop.send(());
        task.await.unwrap();
        assert_eq!(
            value(&process_exposition(), "veil_server_tokio_alive_tasks"),
            Some(tasks)
        );
        // Outside a runtime the task gauge is left out, the others stay.
        let text = std::thread::spawn(process_exposition).join().unwrap();
        assert!(!text.contains("tokio_alive_tasks"), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
    }
}
