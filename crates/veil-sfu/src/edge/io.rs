//! The edge's batched socket I/O (SFU-EDGE-15): reads drained with `recvmmsg` (and UDP GRO
//! where the kernel has it), and the datagrams of one pass of the edge sent grouped per
//! destination, as UDP GSO segments where the kernel has it. `quinn-udp` makes the system calls
//! (and holds the `unsafe` they need); without GSO or GRO it falls back to one datagram a call.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Receive buffers handed to one `recvmmsg`.
const RECV_SLOTS: usize = 32;
/// One buffer without GRO: every datagram the edge expects fits (the socket's MTU-sized).
const DATAGRAM_BUF: usize = 2048;
/// The most bytes one GSO send may carry (an IP packet's 64 KiB, less the headers).
const GSO_MAX_BYTES: usize = 65_000;

/// The edge's socket and the datagrams of the current pass that wait to be sent.
pub(super) struct BatchIo {
    socket: UdpSocket,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    /// What the current pass produced, in order; flushed by [`BatchIo::flush`].
    out: Vec<(SocketAddr, BytesMut)>,
    /// One GSO send's segments, copied end to end.
    gso: Vec<u8>,
}

impl BatchIo {
    /// `state` was made for `socket` (`UdpSocketState::new`).
    pub(super) fn new(socket: UdpSocket, state: UdpSocketState) -> Self {
        let gro = state.gro_segments().max(1);
        let buf = if gro > 1 { 1 << 16 } else { DATAGRAM_BUF };
        Self {
            socket,
            state,
            bufs: (0..RECV_SLOTS).map(|_| vec![0; buf]).collect(),
            meta: vec![RecvMeta::default(); RECV_SLOTS],
            out: Vec::new(),
            gso: Vec::with_capacity(GSO_MAX_BYTES),
        }
    }

    /// Wait until the socket has something to read.
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Read what the socket holds, up to about `max` datagrams, handing each to `feed` in the
    /// order read (a GRO read is split into its segments). Returns how many were fed. It reads
    /// until the socket would block (or `max`), so that the readiness is cleared in this pass:
    /// stopping at a short read would wake the thread for one more, empty, pass.
    pub(super) fn drain(&mut self, max: usize, mut feed: impl FnMut(SocketAddr, &[u8])) -> usize {
        let mut fed = 0;
        while fed < max {
            let Self {
                socket,
                state,
                bufs,
                meta,
                ..
            } = self;
            let read = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                socket.try_io(Interest::READABLE, || {
                    state.recv(UdpSockRef::from(&*socket), &mut slices, meta)
                })
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!(error = %e, "recv");
                    }
                    break;
                }
            };
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                for segment in buf[..m.len.min(buf.len())].chunks(stride.max(1)) {
                    feed(m.addr, segment);
                    fed += 1;
                }
            }
        }
        fed
    }

    /// Queue `datagram` for `to`, to go out at the next [`BatchIo::flush`].
    pub(super) fn queue(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.out.push((to, datagram));
    }

    /// Send what was queued: grouped per destination (each destination's datagrams keep their
    /// order), consecutive ones of equal size (the last may be shorter) as one GSO send. A send
    /// that would block waits for the socket; a failed one is logged and the others go on.
    pub(super) async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.out);
        // Stable: a destination's datagrams stay in the order they were produced.
        out.sort_by_key(|(to, _)| *to);
        let mut i = 0;
        while i < out.len() {
            let to = out[i].0;
            let size = out[i].1.len();
            let j = gso_run(&out, i, self.state.max_gso_segments());
            if j - i == 1 {
                self.send(to, &out[i].1, None).await;
            } else {
                let mut gso = std::mem::take(&mut self.gso);
                gso.clear();
                for (_, d) in &out[i..j] {
                    gso.extend_from_slice(d);
                }
                if !self.send(to, &gso, Some(size)).await {
                    // The kernel refused the segmentation (quinn-udp then stops asking for
                    // it): the same datagrams, one at a time.
                    for (_, d) in &out[i..j] {
                        self.send(to, d, None).await;
                    }
                }
                self.gso = gso;
            }
            i = j;
        }
        out.clear();
        self.out = out;
    }

    /// The GSO segments the socket may send in one call (1: no GSO).
    #[cfg(test)]
    fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// One send; false only if a GSO send failed in a way a send without it may not.
    async fn send(&self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> bool {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                self.state
                    .try_send(UdpSockRef::from(&self.socket), &transmit)
            });
            match sent {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.socket.writable().await {
                        debug!(%to, error = %e, "send");
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if segment_size.is_some() && self.state.max_gso_segments() <= 1 {
                        return false;
                    }
                    debug!(%to, error = %e, "send");
                    return true;
                }
            }
        }
    }
}

/// The end of the GSO send that starts at `out[i]`: the datagrams after it to the same
/// destination of the same size, then at most one shorter one, within `max` segments and
/// [`GSO_MAX_BYTES`].
fn gso_run(out: &[(SocketAddr, BytesMut)], i: usize, max: usize) -> usize {
    let (to, size) = (out[i].0, out[i].1.len());
    let mut j = i + 1;
    let mut bytes = size;
    while j < out.len() && j - i < max.max(1) && out[j].0 == to && size > 0 {
        let len = out[j].1.len();
        if len > size || bytes + len > GSO_MAX_BYTES {
            break;
        }
        bytes += len;
        j += 1;
        if len < size {
            break;
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(to: SocketAddr, len: usize, tag: u8) -> (SocketAddr, BytesMut) {
        (to, BytesMut::from(&vec![tag; len][..]))
    }

    #[test]
    fn a_gso_run_is_one_destination_one_size_and_a_shorter_last() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let out = vec![
            dg(a, 100, 0),
            dg(a, 100, 1),
            dg(a, 60, 2),
            dg(a, 60, 3),
            dg(a, 100, 4),
            dg(a, 200, 5),
            dg(b, 200, 6),
        ];
        assert_eq!(gso_run(&out, 0, 64), 3, "equal sizes, then one shorter");
        assert_eq!(gso_run(&out, 3, 64), 4, "a longer one starts a new run");
        assert_eq!(gso_run(&out, 4, 64), 5);
        assert_eq!(
            gso_run(&out, 5, 64),
            6,
            "another destination starts a new run"
        );
        assert_eq!(gso_run(&out, 0, 1), 1, "no GSO: one datagram a send");
        assert_eq!(gso_run(&out, 0, 2), 2, "at most the kernel's segments");
        let big: Vec<_> = (0..100).map(|k| dg(a, 1200, k)).collect();
        assert_eq!(gso_run(&big, 0, 64), 54, "at most GSO_MAX_BYTES");
    }

    /// SFU-EDGE-15: interleaved datagrams to two destinations, flushed in one pass, reach each
    /// destination all, once, in the order they were queued.
    #[tokio::test]
    async fn a_flush_keeps_each_destinations_datagrams_in_order() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&sock).into()).unwrap();
        let mut io = BatchIo::new(UdpSocket::from_std(sock).unwrap(), state);
        let rx: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        // 40 to each, interleaved; equal sizes but every tenth shorter (a run's end).
        let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for k in 0..80u32 {
            let d = (k % 2) as usize;
            let len = if k % 20 >= 18 { 300 } else { 500 };
            let mut v = vec![0u8; len];
            v[..4].copy_from_slice(&k.to_be_bytes());
            sent[d].push(v.clone());
            io.queue(to[d], BytesMut::from(&v[..]));
        }
        io.flush().await;
        for (d, s) in rx.iter().enumerate() {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let got: Vec<Vec<u8>> = (0..sent[d].len())
                .map(|_| {
                    let n = s.recv(&mut buf).unwrap();
                    buf[..n].to_vec()
                })
                .collect();
            assert_eq!(got, sent[d], "destination {d}: all, once, in order");
            s.set_nonblocking(true).unwrap();
            assert!(s.recv(&mut buf).is_err(), "destination {d}: nothing more");
        }
        // On Linux loopback the kernel segments: the runs above went out as GSO sends.
        if cfg!(target_os = "linux") {
            assert!(io.max_gso_segments() > 1, "GSO on Linux loopback");
        }
    }
}
