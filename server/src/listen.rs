//! The accept loop of every TCP listener of the server (SRV-CONN-01..05, specs/key-service.md
//! §9.2): connection caps, a handshake timeout, and the descriptor limit.
//!
//! A TCP connection costs a file descriptor from `accept` on, before it has sent a byte, and
//! without a token. Without limits, 1,100 silent connections under a 1024-descriptor limit made
//! every new call fail until they went away (issue 22). So:
//!
//! - SRV-CONN-01: at most [`ConnLimits::max_connections`] open connections over all
//!   listeners (gRPC and metrics), and [`ConnLimits::max_connections_per_ip`] per source (an
//!   IPv4 address, an IPv6 /64). Over the per-source cap, a new connection is closed at once.
//!   At the total cap, the oldest connection still waiting for its handshake is closed to
//!   make room (reason `evicted`); only when none waits is the new one closed. So silent
//!   connections, however many sources send them, cannot keep out a client that speaks.
//! - SRV-CONN-02: a gRPC connection reaches tonic only once its 24-byte HTTP/2 preface arrived,
//!   within [`ConnLimits::handshake_timeout`]; the wait runs in a task per connection, so a
//!   slow client never holds up `accept`. A connection that is silent, or sends anything else,
//!   is closed. (The metrics listener gives its HTTP/1 request the same time.)
//! - SRV-CONN-03: an `accept` error (`EMFILE` when descriptors run out) pauses the loop for
//!   100 ms instead of spinning.
//! - SRV-CONN-04: each refusal is counted (`veil_server_connections_refused_total{listener,
//!   reason}`) and logged as a warning at most once per 10 s per listener and reason, with the
//!   number refused since the last warning.
//! - SRV-CONN-05: at start the soft descriptor limit is raised to the hard limit, and the
//!   total cap is lowered to three quarters of the result if it is above, so connections can
//!   never take the descriptors the database and the SFU's sockets need.
//! - SRV-CONN-06: a gRPC connection with no call open for [`ConnLimits::idle_timeout`] is
//!   closed. [`CountCallsLayer`] counts each connection's calls, from the request until its
//!   response body is dropped (a Subscribe stream is one long call), and [`Conn`] ends its read
//!   side once the connection has been idle that long (reason `idle_timeout`). Clients
//!   reconnect when they next call (tonic's channels do so by themselves).
//! - SRV-TLS-03: with TLS ([`crate::tls`]), the TLS handshake runs after admission and inside
//!   the same handshake timeout, before the HTTP/2 preface is read from the decrypted stream;
//!   a failed handshake is counted (reason `tls_handshake`). An unfinished handshake can be
//!   evicted like a silent connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::Stream;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a refusal reason stays quiet after a warning.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits of one listener; every number is a flag of `veil-server serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time a new connection has to send its first request bytes (the HTTP/2 preface).
    pub handshake_timeout: Duration,
    /// Open connections, all sources together (lowered at start to three quarters of the
    /// descriptor limit if that is less).
    pub max_connections: usize,
    /// Open connections from one IPv4 address or one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams (calls) on one gRPC connection.
    pub max_concurrent_streams: u32,
    /// Time a gRPC connection may stay open with no call (SRV-CONN-06).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 256,
        }
    }
}

/// Labels of the connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `grpc` or `metrics`.
    pub listener: &'static str,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    /// `grpc` or `metrics`.
    pub listener: &'static str,
    /// `total_cap`, `ip_cap`, `evicted`, `handshake_timeout`, `bad_preface`, `tls_handshake`,
    /// `accept_error`, `idle_timeout`.
    pub reason: &'static str,
}

/// Connection metrics of every listener (prefix `veil_server_`).
#[derive(Debug)]
pub struct ListenMetrics {
    registry: Registry,
    /// Open connections (admitted, handshake pending or done).
    pub connections: Family<ListenerLabel, Gauge>,
    /// Connections closed by the limits, by reason.
    pub refused: Family<Refusal, Counter>,
}

impl Default for ListenMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("veil_server");
        let connections = Family::<ListenerLabel, Gauge>::default();
        let refused = Family::<Refusal, Counter>::default();
        registry.register(
            "connections",
            "Open TCP connections by listener",
            connections.clone(),
        );
        registry.register(
            "connections_refused",
            "TCP connections closed by the connection limits, by listener and reason",
            refused.clone(),
        );
        Self {
            registry,
            connections,
            refused,
        }
    }
}

impl ListenMetrics {
    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The source a per-address cap counts: an IPv4 address, or the /64 of an IPv6 address (one
/// host commonly holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Connections waiting for their handshake, oldest first: closing one frees its place.
    pending: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
    next_id: u64,
}

/// When a warning was last logged, and how many refusals came since.
type WarnState = (Option<Instant>, u64);

#[derive(Debug)]
struct GateInner {
    limits: ConnLimits,
    counts: Mutex<Counts>,
    /// Per listener and reason: when it last warned, and refusals since.
    warned: Mutex<HashMap<(&'static str, &'static str), WarnState>>,
    metrics: Arc<ListenMetrics>,
}

/// The connection limits of the process, shared by every listener's accept loop and by the
/// connections they admitted.
#[derive(Debug, Clone)]
pub struct Gate(Arc<GateInner>);

/// One admitted connection's place under the caps; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    gate: Gate,
    source: IpAddr,
    listener: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let g = &self.gate.0;
        let mut c = g
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.total -= 1;
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
        g.metrics
            .connections
            .get_or_create(&ListenerLabel {
                listener: self.listener,
            })
            .dec();
    }
}

impl Slot {
    /// Mark the connection as waiting for its handshake until the returned guard is dropped;
    /// the receiver fires if the total cap needs its place (SRV-CONN-01).
    fn handshake(&self) -> (Handshake, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut c = self
            .gate
            .0
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = c.next_id;
        c.next_id += 1;
        c.pending.insert(id, tx);
        (
            Handshake {
                gate: self.gate.clone(),
                id,
            },
            rx,
        )
    }
}

/// A connection's entry among those waiting for their handshake.
#[derive(Debug)]
struct Handshake {
    gate: Gate,
    id: u64,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut c = self
            .gate
            .0
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.pending.remove(&self.id);
    }
}

impl Gate {
    /// A gate enforcing `limits`, counting into `metrics`.
    #[must_use]
    pub fn new(limits: ConnLimits, metrics: Arc<ListenMetrics>) -> Self {
        Self(Arc::new(GateInner {
            limits,
            counts: Mutex::default(),
            warned: Mutex::default(),
            metrics,
        }))
    }

    /// Its limits.
    #[must_use]
    pub fn limits(&self) -> &ConnLimits {
        &self.0.limits
    }

    /// A place for a connection from `peer` on `listener`, or the cap it would break
    /// (SRV-CONN-01).
    fn admit(&self, listener: &'static str, peer: SocketAddr) -> Result<Slot, &'static str> {
        let g = &self.0;
        let source = source_key(peer.ip());
        let mut c = g
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.per_source.get(&source).copied().unwrap_or(0) >= g.limits.max_connections_per_ip {
            return Err("ip_cap");
        }
        if c.total >= g.limits.max_connections {
            // Close the oldest connection still in its handshake: its task drops its slot at
            // once, so the total exceeds the cap only for that moment.
            match c.pending.pop_first() {
                Some((_, evict)) => {
                    let _ = evict.send(());
                }
                None => return Err("total_cap"),
            }
        }
        let n = c.per_source.entry(source).or_default();
        *n += 1;
        c.total += 1;
        g.metrics
            .connections
            .get_or_create(&ListenerLabel { listener })
            .inc();
        Ok(Slot {
            gate: self.clone(),
            source,
            listener,
        })
    }

    /// Count a refused connection and warn, at most once per 10 s and reason
    /// (SRV-CONN-04).
    pub fn refused(&self, listener: &'static str, reason: &'static str, peer: SocketAddr) {
        let g = &self.0;
        g.metrics
            .refused
            .get_or_create(&Refusal { listener, reason })
            .inc();
        let mut warned = g
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let entry = warned.entry((listener, reason)).or_default();
        entry.1 += 1;
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            let l = &g.limits;
            tracing::warn!(
                listener,
                reason,
                %peer,
                refused = entry.1,
                max_connections = l.max_connections,
                max_connections_per_ip = l.max_connections_per_ip,
                handshake_timeout_ms = l.handshake_timeout.as_millis(),
                "connection limit: closed connections (count since the last warning)"
            );
            *entry = (Some(now), 0);
        }
    }

    /// The next connection of `socket` (listener `name`) under the caps; connections over
    /// them are closed here. `accept` errors (descriptors exhausted) pause for 100 ms
    /// (SRV-CONN-03).
    pub async fn accept(
        &self,
        socket: &TcpListener,
        name: &'static str,
    ) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match socket.accept().await {
                Ok((sock, peer)) => match self.admit(name, peer) {
                    Ok(slot) => return (sock, peer, slot),
                    Err(reason) => {
                        drop(sock);
                        self.refused(name, reason, peer);
                    }
                },
                Err(e) => {
                    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                    tracing::debug!(listener = name, error = %e, "accept failed");
                    self.refused(name, "accept_error", unspecified);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// An admitted connection whose first bytes arrived (on the gRPC listener, the HTTP/2
/// preface); it gives them back to tonic, then reads the stream. Holds its [`Slot`].
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    /// The first bytes read, given back before the stream is read.
    first: [u8; HTTP2_PREFACE.len()],
    /// How many of `first` were read, and how many were given back.
    first_len: usize,
    replayed: usize,
    activity: Arc<Activity>,
    /// Wakes the connection when it would turn idle (SRV-CONN-06).
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    idle_closed: bool,
    peer: SocketAddr,
    slot: Slot,
    /// The listener's name in the refusal counters.
    listener: &'static str,
}

impl Conn {
    /// Whether the connection has had no call for the idle timeout; if not yet, arm the timer
    /// that wakes the connection's task when it would be (SRV-CONN-06).
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.activity.idle_since() else {
            return false;
        };
        let deadline = since + self.slot.gate.limits().idle_timeout;
        if Instant::now() >= deadline {
            if !self.idle_closed {
                self.idle_closed = true;
                self.slot
                    .gate
                    .refused(self.listener, "idle_timeout", self.peer);
            }
            return true;
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.idle_timer.deadline() != deadline {
            self.idle_timer.as_mut().reset(deadline);
        }
        // Pending now; it wakes this task at the deadline, and the next read checks again.
        let _ = self.idle_timer.as_mut().poll(cx);
        false
    }
}

/// The calls of one gRPC connection, for its idle timeout (SRV-CONN-06).
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    calls: AtomicUsize,
    /// Milliseconds after `base` of the last call's start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            calls: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A call starts; it ends when the guard is dropped.
    fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.touch();
        CallGuard(self.clone())
    }

    /// Since when no call has been open, or `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        (self.calls.load(Ordering::Acquire) == 0)
            .then(|| self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One open call of a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What tonic puts in each request's extensions for a [`Conn`]: its TCP addresses, and its
/// call count for [`CountCallsLayer`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP addresses.
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// A tower layer for the gRPC server: counts each connection's open calls, from the request
/// until its response body is dropped, so an idle connection can be told apart from one with
/// a long stream (SRV-CONN-06).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCallsLayer;

impl<S> tower_layer::Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls(inner)
    }
}

/// The service [`CountCallsLayer`] makes.
#[derive(Debug, Clone)]
pub struct CountCalls<S>(S);

impl<S, B, RB> tonic::codegen::Service<http::Request<B>> for CountCalls<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.activity.begin());
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| CountedBody { body, _call: call }))
        })
    }
}

/// A response body that holds its call open until it is dropped.
#[derive(Debug)]
pub struct CountedBody<B> {
    body: B,
    _call: Option<CallGuard>,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle(cx) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        if self.replayed < self.first_len {
            let from = self.replayed;
            let n = (self.first_len - from).min(buf.remaining());
            buf.put_slice(&self.first[from..from + n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.tcp().connect_info(),
            activity: self.activity.clone(),
        }
    }
}

/// The connections of a gRPC listener for `serve_with_incoming_shutdown`: admitted under the
/// gate's caps, through `tls`'s handshake if given (SRV-TLS-03), and handed on once their
/// HTTP/2 preface arrived (SRV-CONN-01/02). The accept loop ends when the stream is dropped.
pub fn grpc_incoming(
    listener: TcpListener,
    gate: Gate,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<Conn>> {
    incoming(listener, gate, "grpc", true, tls)
}

/// The connections of the web listener (the page and gRPC-Web over HTTP/1.1, SRV-WEB-01):
/// the gRPC listener's caps, timers and TLS, handed on once a first byte arrived (it is given
/// back to tonic), since an HTTP/1 request has no fixed preface.
pub fn web_incoming(
    listener: TcpListener,
    gate: Gate,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<Conn>> {
    incoming(listener, gate, "web", false, tls)
}

/// Why a new connection was not handed on.
enum Opening {
    /// The peer closed or reset: nothing to count.
    Gone,
    /// A refusal reason for the counters.
    Refused(&'static str),
}

/// The first steps of an admitted connection: TLS if configured, then its first bytes (the
/// HTTP/2 preface if `http2`, else one byte), which are kept for [`Conn`] to give back.
async fn open(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    http2: bool,
    first: &mut [u8; HTTP2_PREFACE.len()],
) -> Result<(Stream, usize), Opening> {
    let mut stream = match tls {
        Some(acceptor) => Stream::Tls(Box::new(
            acceptor
                .accept(stream)
                .await
                .map_err(|_| Opening::Refused("tls_handshake"))?,
        )),
        None => Stream::Plain(stream),
    };
    let want = if http2 { HTTP2_PREFACE.len() } else { 1 };
    match stream.read_exact(&mut first[..want]).await {
        Ok(_) if !http2 || first == HTTP2_PREFACE => Ok((stream, want)),
        Ok(_) => Err(Opening::Refused("bad_preface")),
        Err(_) => Err(Opening::Gone),
    }
}

/// Admitted connections of the listener `name` (its counters' label); `http2`: one waits for
/// the HTTP/2 preface, else for any first byte; `tls`: the handshake comes first.
fn incoming(
    listener: TcpListener,
    gate: Gate,
    name: &'static str,
    http2: bool,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer, slot) = tokio::select! {
                () = tx.closed() => return,
                c = gate.accept(&listener, name) => c,
            };
            let (tx, gate, tls) = (tx.clone(), gate.clone(), tls.clone());
            tokio::spawn(async move {
                // Small replies must not wait for Nagle's algorithm (it added ~40 ms to every
                // unary call behind a delayed ACK).
                let _ = stream.set_nodelay(true);
                let mut first = [0u8; HTTP2_PREFACE.len()];
                let wait = gate.limits().handshake_timeout;
                let (waiting, evicted) = slot.handshake();
                let read = tokio::select! {
                    r = tokio::time::timeout(wait, open(stream, tls.as_ref(), http2, &mut first)) => r,
                    _ = evicted => {
                        gate.refused(name, "evicted", peer);
                        return;
                    }
                };
                drop(waiting);
                match read {
                    Ok(Ok((stream, first_len))) => {
                        let conn = Conn {
                            stream,
                            first,
                            first_len,
                            replayed: 0,
                            activity: Activity::new(),
                            idle_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                            idle_closed: false,
                            peer,
                            slot,
                            listener: name,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(Opening::Refused(reason))) => gate.refused(name, reason, peer),
                    Ok(Err(Opening::Gone)) => {}
                    Err(_) => gate.refused(name, "handshake_timeout", peer),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Raise the soft descriptor limit to the hard limit (SRV-CONN-05); the soft limit in force
/// after, if the platform has one.
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// `limits` with the total cap lowered to three quarters of `descriptors`, if that is less
/// (SRV-CONN-05).
#[must_use]
pub fn fit_to_descriptors(mut limits: ConnLimits, descriptors: Option<u64>) -> ConnLimits {
    if let Some(d) = descriptors {
        let room = usize::try_from(d / 4 * 3).unwrap_or(usize::MAX).max(1);
        if limits.max_connections > room {
            tracing::warn!(
                configured = limits.max_connections,
                descriptors = d,
                max_connections = room,
                "the connection cap is lowered to three quarters of the descriptor limit"
            );
            limits.max_connections = room;
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_hold_and_slots_free_their_place() {
        let limits = ConnLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..ConnLimits::default()
        };
        let gate = Gate::new(limits, Arc::default());
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 1));
        let c = SocketAddr::from(([10, 0, 0, 3], 1));
        let a1 = gate.admit("grpc", a).unwrap();
        // The caps count every listener together.
        let _a2 = gate.admit("metrics", a).unwrap();
        assert_eq!(gate.admit("grpc", a).unwrap_err(), "ip_cap");
        let _b1 = gate.admit("grpc", b).unwrap();
        assert_eq!(gate.admit("grpc", c).unwrap_err(), "total_cap");
        drop(a1);
        let c1 = gate.admit("grpc", c).unwrap();
        assert_eq!(gate.admit("grpc", a).unwrap_err(), "total_cap");

        // At the total cap, a connection still in its handshake makes room.
        let (waiting, mut evicted) = c1.handshake();
        assert!(evicted.try_recv().is_err());
        let _a3 = gate.admit("grpc", a).unwrap();
        assert!(
            evicted.try_recv().is_ok(),
            "the oldest handshake is evicted"
        );
        drop((waiting, c1));
        assert_eq!(gate.admit("grpc", c).unwrap_err(), "total_cap");
    }

    #[test]
    fn the_total_cap_fits_the_descriptor_limit() {
        let l = fit_to_descriptors(ConnLimits::default(), Some(1024));
        assert_eq!(l.max_connections, 768);
        let l = fit_to_descriptors(ConnLimits::default(), Some(1 << 20));
        assert_eq!(l.max_connections, ConnLimits::default().max_connections);
        let l = fit_to_descriptors(ConnLimits::default(), None);
        assert_eq!(l.max_connections, ConnLimits::default().max_connections);
    }
}
