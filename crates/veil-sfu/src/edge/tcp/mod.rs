//! ICE-TCP for participants whose network blocks UDP (specs/sfu.md "Networks that block UDP",
//! SFU-TCP-01..07): each worker listens on a TCP port, offers it as a passive candidate
//! (RFC 6544), and carries each participant's STUN, DTLS, SRTP and SRTCP as RFC 4571 frames
//! ([`framing`]) on the stream the participant opens.
//!
//! The protocol is the edge's: a frame's body goes to [`super::Edge::handle_tcp_frame`] as a
//! datagram would, and what [`super::Edge::poll_tcp_transmit`] returns goes back framed. This
//! module is the shell around it, on the worker's thread: the listener, one task per stream
//! (reading and decoding, writing what the worker queued), and the limits that keep a stream
//! from costing the worker more than a UDP participant does (SFU-TCP-03):
//!
//! - a frame longer than [`framing::MAX_FRAME`] closes its stream;
//! - at most [`MAX_STREAMS`] streams per worker; more are closed as they are accepted;
//! - a stream that no connection claimed (no valid STUN request naming a participant's ufrag)
//!   within [`CLAIM_TIMEOUT`] is closed, and so is a claimed one once its connection is gone;
//! - each stream has a send queue of [`SEND_QUEUE`] packets; past it, packets are dropped (as
//!   a full UDP buffer would drop them) and counted; a write stuck for [`WRITE_TIMEOUT`]
//!   closes the stream.

pub mod framing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::SfuError;
use crate::session::Metrics;
use crate::session::metrics::Reason;

/// Open ICE-TCP streams per worker (SFU-TCP-03).
pub const MAX_STREAMS: usize = 1024;
/// How long a new stream has to be claimed by a participant's STUN request (SFU-TCP-03).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets queued per stream for sending (SFU-TCP-03).
pub const SEND_QUEUE: usize = 512;
/// How long one write may wait for the peer to read (SFU-TCP-03).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per call.
const READ_CHUNK: usize = 16 << 10;
/// Frames from all of a worker's streams waiting for its thread; a stream whose frames do not
/// fit waits (TCP flow control pushes back on the participant).
const INBOUND_QUEUE: usize = 1024;

/// Bind an ICE-TCP listener on `addr` (non-blocking, for a worker's runtime).
///
/// # Errors
/// [`SfuError::Io`] if the address cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, SfuError> {
    let io = |what: String| move |source| SfuError::Io { what, source };
    let l = std::net::TcpListener::bind(addr).map_err(io(format!("cannot bind TCP {addr}")))?;
    l.set_nonblocking(true).map_err(io(format!("TCP {addr}")))?;
    Ok(l)
}

/// Why a stream ended (the `reason` label of `veil_sfu_tcp_closed_streams_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The participant closed it.
    Eof,
    /// A read or write failed.
    Error,
    /// A frame over the limit.
    Oversized,
    /// Nobody claimed it in time.
    Unclaimed,
    /// Its connection is gone.
    Released,
    /// A write waited too long.
    Stalled,
    /// The worker had [`MAX_STREAMS`] already.
    Limit,
}

impl Closed {
    /// The metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Error => "error",
            Self::Oversized => "oversized",
            Self::Unclaimed => "unclaimed",
            Self::Released => "released",
            Self::Stalled => "stalled",
            Self::Limit => "limit",
        }
    }
}

/// What a stream's task tells the worker.
enum Inbound {
    Packet(SocketAddr, u64, BytesMut),
    Gone(SocketAddr, u64, Closed),
}

/// What the worker has to act on.
pub enum TcpEvent {
    /// A packet from the stream of this peer: for the edge.
    Packet(SocketAddr, BytesMut),
    /// Nothing for the edge (a stream opened or ended).
    Nothing,
}

struct Stream {
    id: u64,
    out: mpsc::Sender<BytesMut>,
    opened: Instant,
    claimed: bool,
    task: JoinHandle<()>,
}

/// A worker's ICE-TCP listener and streams.
pub struct TcpShell {
    listener: TcpListener,
    local: SocketAddr,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound: mpsc::Receiver<Inbound>,
    streams: HashMap<SocketAddr, Stream>,
    next_id: u64,
    metrics: Arc<Metrics>,
}

impl TcpShell {
    /// The shell over a listener from [`bind`]; call inside the worker's runtime.
    ///
    /// # Errors
    /// [`SfuError::Io`] if the listener cannot join the runtime.
    pub fn new(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> Result<Self, SfuError> {
        let local = listener.local_addr().map_err(|source| SfuError::Io {
            what: "TCP listener".into(),
            source,
        })?;
        let listener = TcpListener::from_std(listener).map_err(|source| SfuError::Io {
            what: format!("TCP {local}"),
            source,
        })?;
        info!(%local, "SFU edge worker listening for ICE-TCP (SFU-TCP-01)");
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        Ok(Self {
            listener,
            local,
            inbound_tx,
            inbound,
            streams: HashMap::new(),
            next_id: 0,
            metrics,
        })
    }

    /// The next thing that happened: a stream accepted, a packet, a stream gone.
    pub async fn next(&mut self, now: impl Fn() -> Instant) -> TcpEvent {
        tokio::select! {
            accepted = self.listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => self.open(stream, peer, now()),
                    Err(e) => warn!(local = %self.local, error = %e, "ICE-TCP accept failed"),
                }
                TcpEvent::Nothing
            }
            Some(m) = self.inbound.recv() => match m {
                Inbound::Packet(peer, id, p) if self.is(peer, id) => TcpEvent::Packet(peer, p),
                Inbound::Gone(peer, id, why) if self.is(peer, id) => {
                    self.close(peer, why);
                    TcpEvent::Nothing
                }
                _ => TcpEvent::Nothing,
            },
        }
    }

    fn is(&self, peer: SocketAddr, id: u64) -> bool {
        self.streams.get(&peer).is_some_and(|s| s.id == id)
    }

    fn open(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.streams.len() >= MAX_STREAMS {
            debug!(%peer, "ICE-TCP stream refused: the worker has its maximum");
            self.count(Closed::Limit);
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let (out, rx) = mpsc::channel(SEND_QUEUE);
        let task = tokio::spawn(serve(stream, peer, id, self.inbound_tx.clone(), rx));
        if let Some(old) = self.streams.insert(
            peer,
            Stream {
                id,
                out,
                opened: now,
                claimed: false,
                task,
            },
        ) {
            old.task.abort();
        } else {
            self.metrics.tcp_streams.inc();
        }
        debug!(%peer, "ICE-TCP stream opened");
    }

    fn count(&self, why: Closed) {
        self.metrics
            .tcp_closed
            .get_or_create(&Reason {
                reason: why.label(),
            })
            .inc();
    }

    fn close(&mut self, peer: SocketAddr, why: Closed) {
        if let Some(s) = self.streams.remove(&peer) {
            s.task.abort();
            self.metrics.tcp_streams.dec();
            self.count(why);
            debug!(%peer, reason = why.label(), "ICE-TCP stream closed");
        }
    }

    /// Queue `packet` for the stream of `peer`, framed; dropped (and counted) if that stream's
    /// queue is full, silently if the stream is gone (as a datagram to a vanished address).
    pub fn send(&mut self, peer: SocketAddr, packet: &[u8]) {
        let Some(s) = self.streams.get(&peer) else {
            return;
        };
        match framing::encode(packet) {
            Ok(frame) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = s.out.try_send(frame) {
                    self.metrics.tcp_send_dropped.inc();
                }
            }
            Err(e) => warn!(%peer, error = %e, "a packet too long for ICE-TCP was not sent"),
        }
    }

    /// Close streams no connection claimed within [`CLAIM_TIMEOUT`], and claimed ones whose
    /// connection is gone. `claimed` says whether a connection holds a peer's stream now.
    pub fn sweep(&mut self, now: Instant, claimed: impl Fn(SocketAddr) -> bool) {
        let mut done = Vec::new();
        for (peer, s) in &mut self.streams {
            if claimed(*peer) {
                s.claimed = true;
            } else if s.claimed {
                done.push((*peer, Closed::Released));
            } else if now.saturating_duration_since(s.opened) >= CLAIM_TIMEOUT {
                done.push((*peer, Closed::Unclaimed));
            }
        }
        for (peer, why) in done {
            self.close(peer, why);
        }
    }
}

impl Drop for TcpShell {
    fn drop(&mut self) {
        for (_, s) in self.streams.drain() {
            s.task.abort();
            self.metrics.tcp_streams.dec();
        }
    }
}

/// One stream: decode what it reads and hand it to the worker; write what the worker queued.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    inbound: mpsc::Sender<Inbound>,
    mut out: mpsc::Receiver<BytesMut>,
) {
    let (mut r, mut w) = stream.into_split();
    let mut decoder = framing::FrameDecoder::new(framing::MAX_FRAME);
    let mut buf = vec![0u8; READ_CHUNK];
    let why = loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n {
                    Ok(0) => break Closed::Eof,
                    Ok(n) => n,
                    Err(_) => break Closed::Error,
                };
                decoder.extend(&buf[..n]);
                loop {
                    match decoder.next_packet() {
                        Ok(Some(p)) => {
                            if inbound.send(Inbound::Packet(peer, id, p)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%peer, error = %e, "ICE-TCP stream out of bounds");
                            let _ = inbound.send(Inbound::Gone(peer, id, Closed::Oversized)).await;
                            return;
                        }
                    }
                }
            }
            frame = out.recv() => {
                let Some(frame) = frame else { return };
                match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Closed::Error,
                    Err(_) => break Closed::Stalled,
                }
            }
        }
    };
    let _ = inbound.send(Inbound::Gone(peer, id, why)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shell() -> (TcpShell, SocketAddr, Arc<Metrics>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        (
            TcpShell::new(listener, metrics.clone()).unwrap(),
            addr,
            metrics,
        )
    }

    fn closed(m: &Metrics, why: Closed) -> u64 {
        m.tcp_closed
            .get_or_create(&Reason {
                reason: why.label(),
            })
            .get()
    }

    /// Reads until the peer closes; what it read.
    async fn read_to_end(c: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("the SFU closes the stream")
            .expect("a clean close");
        out
    }

    /// SFU-TCP-02, SFU-TCP-03: packets framed by the participant come out whole, one per
    /// frame; what the worker sends goes back framed; a frame over the limit closes the
    /// stream and is counted.
    #[tokio::test]
    async fn frames_cross_both_ways_and_a_frame_over_the_limit_closes_the_stream() {
        let (mut sh, addr, m) = shell().await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let peer = c.local_addr().unwrap();
        assert!(matches!(sh.next(Instant::now).await, TcpEvent::Nothing));
        assert_eq!(m.tcp_streams.get(), 1);
        let mut both = framing::encode(b"hello").unwrap();
        both.extend_from_slice(&framing::encode(b"world!").unwrap());
        // In two pieces, cut inside the second frame.
        c.write_all(&both[..9]).await.unwrap();
        c.write_all(&both[9..]).await.unwrap();
        for want in [&b"hello"[..], b"world!"] {
            match sh.next(Instant::now).await {
                TcpEvent::Packet(from, p) => {
                    assert_eq!(from, peer);
                    assert_eq!(&p[..], want);
                }
                TcpEvent::Nothing => panic!("a packet was due"),
            }
        }
        sh.send(peer, b"back");
        let mut got = [0u8; 6];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x00\x04back");

        let too_long = u16::try_from(framing::MAX_FRAME + 1).unwrap();
        c.write_all(&too_long.to_be_bytes()).await.unwrap();
        assert!(matches!(sh.next(Instant::now).await, TcpEvent::Nothing));
        assert_eq!(read_to_end(&mut c).await, b"");
        assert_eq!(m.tcp_streams.get(), 0);
        assert_eq!(closed(&m, Closed::Oversized), 1);
        // A packet for a stream that is gone goes nowhere.
        sh.send(peer, b"late");
        assert_eq!(m.tcp_send_dropped.get(), 0);
    }

    /// SFU-TCP-03: a stream no connection claims is closed after the claim timeout; a claimed
    /// one stays while its connection does, and is closed once it is gone.
    #[tokio::test]
    async fn unclaimed_and_released_streams_are_closed() {
        let (mut sh, addr, m) = shell().await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        let pa = a.local_addr().unwrap();
        for _ in 0..2 {
            assert!(matches!(sh.next(Instant::now).await, TcpEvent::Nothing));
        }
        assert_eq!(m.tcp_streams.get(), 2);
        let start = Instant::now();
        sh.sweep(start, |p| p == pa);
        sh.sweep(start + CLAIM_TIMEOUT / 2, |p| p == pa);
        assert_eq!(m.tcp_streams.get(), 2);
        // a's connection is still there past the timeout; b was never claimed.
        sh.sweep(start + CLAIM_TIMEOUT, |p| p == pa);
        assert_eq!(m.tcp_streams.get(), 1);
        assert_eq!(closed(&m, Closed::Unclaimed), 1);
        assert_eq!(read_to_end(&mut b).await, b"");
        // a's connection goes.
        sh.sweep(start + CLAIM_TIMEOUT, |_| false);
        assert_eq!(m.tcp_streams.get(), 0);
        assert_eq!(closed(&m, Closed::Released), 1);
        assert_eq!(read_to_end(&mut a).await, b"");
    }
}
