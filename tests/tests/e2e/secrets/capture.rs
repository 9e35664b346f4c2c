//! What the leak test records: every log line of the process at TRACE (the in-process server,
//! the clients and their libraries, `log` records included), and every byte the clients send
//! to the gRPC listener (key service and SFU signalling), through a recording TCP proxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

type Shared = Arc<Mutex<Vec<u8>>>;

fn append(buf: &Shared, bytes: &[u8]) {
    buf.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend_from_slice(bytes);
}

/// Everything logged in this process from [`Logs::install`] on.
#[derive(Clone, Debug, Default)]
pub(super) struct Logs(Shared);

struct Writer(Shared);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        append(&self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every field of every span (when made and when recorded) and event, `Debug`-formatted: what
/// any other formatter could print of them.
struct Fields(Shared);

struct Visitor(String);

impl Visit for Visitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Fields {
    fn put(&self, kind: &str, name: &str, record: impl FnOnce(&mut Visitor)) {
        let mut v = Visitor(format!("{kind} {name}:"));
        record(&mut v);
        v.0.push('\n');
        append(&self.0, v.0.as_bytes());
    }
}

impl<S> tracing_subscriber::Layer<S> for Fields
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        self.put("span", attrs.metadata().name(), |v| attrs.record(v));
    }

    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: Context<'_, S>,
    ) {
        self.put("record", "", |v| values.record(v));
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        self.put("event", event.metadata().target(), |v| event.record(v));
    }
}

impl Logs {
    /// Install the process's subscriber: no filter, so every target at TRACE, formatted as the
    /// server's own log lines are (with span context) and again field by field; `log` records
    /// (webrtc-rs, rustls, openmls) are turned into events.
    ///
    /// Once per process; later calls share the first one's buffer.
    ///
    /// # Panics
    /// If another subscriber is already installed (run this test in its own process, as
    /// nextest does).
    pub(super) fn install() -> Self {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(Self::install_once).clone()
    }

    fn install_once() -> Self {
        let logs = Self::default();
        let out = logs.0.clone();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || Writer(out.clone())),
            )
            .with(Fields(logs.0.clone()))
            .try_init()
            .expect("a global subscriber already runs: run this test in its own process");
        assert_eq!(
            tracing::level_filters::LevelFilter::current(),
            tracing::level_filters::LevelFilter::TRACE
        );
        logs
    }

    /// The text logged so far.
    pub(super) fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A TCP proxy to the server's gRPC listener that keeps every byte clients send, per
/// connection.
#[derive(Clone, Debug, Default)]
pub(super) struct Proxy {
    conns: Arc<Mutex<Vec<Shared>>>,
}

impl Proxy {
    /// Listen on loopback and forward to `upstream`; returns the proxy and its `http://` URL.
    pub(super) async fn start(upstream: SocketAddr) -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let proxy = Self::default();
        let conns = proxy.conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = Shared::default();
                conns.lock().unwrap().push(record.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            append(&record, &buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        (proxy, url)
    }

    /// What each connection sent, as sent.
    pub(super) fn connections(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

/// The requests of one client-to-server HTTP/2 byte stream (prior knowledge, as tonic speaks
/// it over `http://`): each stream's DATA reassembled and split into gRPC messages, so a secret
/// cut by a frame boundary is still found whole. Returns (streams, gRPC messages).
///
/// # Panics
/// If the bytes are not HTTP/2 or a message is compressed (the scan would be blind to it).
pub(super) fn grpc_messages(conn: &[u8]) -> (usize, Vec<Vec<u8>>) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if conn.is_empty() {
        return (0, Vec::new());
    }
    assert!(conn.starts_with(PREFACE), "not HTTP/2 with prior knowledge");
    let mut rest = &conn[PREFACE.len()..];
    let mut data: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        if rest.len() < 9 + len {
            break; // cut off when the connection closed
        }
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        match kind {
            0 => {
                let body = if flags & 0x8 != 0 {
                    let pad = usize::from(payload[0]);
                    &payload[1..payload.len() - pad]
                } else {
                    payload
                };
                data.entry(stream).or_default().extend_from_slice(body);
            }
            1 => {
                data.entry(stream).or_default();
            }
            _ => {}
        }
    }
    let mut messages = Vec::new();
    for body in data.values() {
        let mut b = &body[..];
        while b.len() >= 5 {
            assert_eq!(b[0], 0, "a compressed gRPC message");
            let n = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            let end = (5 + n).min(b.len());
            messages.push(b[5..end].to_vec());
            b = &b[end..];
        }
    }
    (data.len(), messages)
}
