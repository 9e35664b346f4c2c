//! The operator's view of the media, for demonstrations and tests (SFU-TAP-01, specs/sfu.md):
//! every packet a publisher sent, as the SFU received it, before any routing decision. The SFU
//! holds no key, so this is exactly what a curious or compromised SFU operator could record;
//! the end-to-end tests and `veil demo` use it to show that it is ciphertext.
//!
//! Off unless [`SfuConfig::tap`](super::SfuConfig::tap) is set. The SFU never reads the payload
//! it taps: it hands the same shared bytes to the tap's subscribers.

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::routing::MediaKind;

/// One tapped packet.
#[derive(Debug, Clone)]
pub struct TappedPacket {
    /// Room.
    pub room: String,
    /// The publisher's identity.
    pub publisher: String,
    /// The SFU's track name.
    pub track: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// The publisher's sequence number.
    pub seq: u16,
    /// The publisher's RTP timestamp.
    pub timestamp: u32,
    /// The RTP marker bit.
    pub marker: bool,
    /// The payload, as received.
    pub payload: Bytes,
}

impl TappedPacket {
    /// The record of `p`, as `publisher` sent it on `track` in `room`.
    pub(crate) fn of(
        room: &str,
        publisher: &str,
        track: String,
        kind: MediaKind,
        p: &rtc::rtp::Packet,
    ) -> Self {
        Self {
            room: room.to_owned(),
            publisher: publisher.to_owned(),
            track,
            kind,
            ssrc: p.header.ssrc,
            seq: p.header.sequence_number,
            timestamp: p.header.timestamp,
            marker: p.header.marker,
            payload: p.payload.clone(),
        }
    }
}

/// A tap on every packet the SFU receives. Cheap to clone; clones are the same tap.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: broadcast::Sender<TappedPacket>,
}

impl Tap {
    /// A tap whose subscribers may fall `capacity` packets behind before they lose some.
    /// `capacity` is clamped to 1..=[`MAX_QUEUE`](super::MAX_QUEUE): the channel allocates
    /// every slot up front, and tokio refuses zero or more than `usize::MAX / 2`.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(super::queue_len(capacity)).0,
        }
    }

    /// Packets from now on. A subscriber that falls behind gets
    /// [`broadcast::error::RecvError::Lagged`] with the count it lost.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<TappedPacket> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (the SFU skips building records otherwise).
    pub(crate) fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub(crate) fn record(&self, packet: TappedPacket) {
        // No receiver: nothing to do.
        let _ = self.tx.send(packet);
    }
}

// Caller input never panics (issue 19): tokio's broadcast channel panics on a capacity of 0 or
// above `usize::MAX / 2` and allocates every slot at once; the tap clamps to 1..=MAX_QUEUE.
#[cfg(test)]
mod caller_input {
    use proptest::prelude::*;

    use super::*;
    use crate::session::MAX_QUEUE;

    proptest! {
        #[test]
        fn any_capacity(capacity in prop_oneof![0usize..4, Just(usize::MAX / 2 + 1), Just(usize::MAX)]) {
            let tap = Tap::new(capacity);
            let mut rx = tap.subscribe();
            prop_assert!(tap.listening());
            let packet = TappedPacket {
                room: "r".into(),
                publisher: "p".into(),
                track: "t".into(),
                kind: crate::routing::MediaKind::Audio,
                ssrc: 1,
                seq: 1,
                timestamp: 1,
                marker: false,
                payload: Bytes::new(),
            };
            tap.record(packet);
            prop_assert_eq!(rx.try_recv().unwrap().seq, 1);
        }

        #[test]
        fn queue_lengths_are_clamped(n: usize) {
            prop_assert_eq!(crate::session::queue_len(n), n.clamp(1, MAX_QUEUE));
        }
    }
}
