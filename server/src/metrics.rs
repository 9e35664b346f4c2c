//! The process's metrics and health endpoint: one OpenMetrics exposition for every role this
//! process runs (the key service's `veil_keys_*`, the SFU's `veil_sfu_*`, the connection gate's
//! `veil_server_*`), served over a small HTTP listener (`GET /metrics`, `GET /healthz`).

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
}
