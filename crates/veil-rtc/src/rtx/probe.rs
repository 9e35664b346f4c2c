//! Bandwidth probes through the retransmission history (specs/sfu.md §"Probing", SFU-BWE-06).
//!
//! A probe cluster is a short burst of redundant retransmissions: real packets from the send
//! history, on the RTX stream, so that each carries a full packet's bytes (rtc-rtp 0.21.1 pads a
//! padding-only packet with at most 4 bytes) and a transport-wide sequence number that the
//! receiver's feedback reports. Only the [`super::RtxInterceptor`] may number the RTX stream
//! (the receiver's SRTP replay check drops a reused number), so the application hands it
//! requests through a [`ProbeLink`], and the interceptor reports back which packets it sent for
//! which cluster, for the estimator that reads the feedback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// One request: send at least `bytes` of probe packets for `cluster`, stamped `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The cluster the packets belong to.
    pub cluster: u32,
    /// Bytes on the wire (RTP header and payload) to send.
    pub bytes: usize,
    /// When they leave: the departure time congestion control records.
    pub now: Instant,
    /// The cluster's last request: the estimator judges a cluster only once this one's packets
    /// are reported, never on the first pulses alone (SFU-BWE-07).
    pub last: bool,
}

/// A probe packet the interceptor sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePacket {
    /// Its cluster.
    pub cluster: u32,
    /// The RTX SSRC it went on.
    pub ssrc: u32,
    /// Its RTX sequence number.
    pub seq: u16,
    /// Sent for the cluster's last request ([`ProbeRequest::last`]).
    pub last: bool,
}

#[derive(Debug, Default)]
struct Shared {
    requests: VecDeque<ProbeRequest>,
    sent: Vec<ProbePacket>,
}

/// Probe requests from the application to one connection's [`super::RtxInterceptor`], and the
/// packets sent for them. Cheap to clone; the clones share one queue. The interceptor sits
/// inside webrtc-rs's chain, out of the application's reach, so this is the way in (as
/// `Estimate` is the SFU's way out of its estimator).
#[derive(Debug, Clone, Default)]
pub struct ProbeLink(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// A request waits: the interceptor looks at this on every write and locks only when set.
    pending: AtomicBool,
    shared: Mutex<Shared>,
}

/// How many sent probe packets a link remembers until the estimator takes them: a cluster is at
/// most a few dozen, and an estimator that never takes them must not grow the list.
const MAX_SENT: usize = 1024;

impl ProbeLink {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind, never a broken invariant.
        self.0.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ask for a probe: it leaves with the connection's next write.
    pub fn request(&self, r: ProbeRequest) {
        self.shared().requests.push_back(r);
        self.0.pending.store(true, Ordering::Release);
    }

    /// The requests waiting (the interceptor takes them).
    pub(crate) fn take_requests(&self) -> Vec<ProbeRequest> {
        if !self.0.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        let mut s = self.shared();
        if s.requests.is_empty() {
            return Vec::new();
        }
        s.requests.drain(..).collect()
    }

    /// The interceptor sent `p`.
    pub(crate) fn record(&self, p: ProbePacket) {
        let mut s = self.shared();
        if s.sent.len() < MAX_SENT {
            s.sent.push(p);
        }
    }

    /// The probe packets sent since the last call (for the estimator, which tells them apart in
    /// the feedback).
    pub fn take_sent(&self) -> Vec<ProbePacket> {
        std::mem::take(&mut self.shared().sent)
    }
}
