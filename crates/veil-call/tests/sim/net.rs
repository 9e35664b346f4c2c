//! The simulation's randomness and its network: a seeded generator and a queue of deliveries
//! in virtual time.

use std::collections::BTreeMap;
use std::time::Duration;

use veil_call::{Failure, Reply, Request, RequestId, ServiceEvent};

/// splitmix64: all the randomness of a run comes from its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5eed_ca11_0000_0000)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    pub(crate) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// What a member's process receives from its stream.
#[derive(Debug, Clone)]
pub(crate) enum StreamItem {
    /// The `Subscribe` reply (it travels in order with the stream's events).
    Opened(Reply),
    Event(ServiceEvent),
    End(Option<Failure>),
}

/// One delivery.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A request reaches the service.
    Request {
        peer: usize,
        life: u32,
        rid: RequestId,
        req: Request,
    },
    /// A reply reaches a member.
    Reply {
        peer: usize,
        life: u32,
        rid: RequestId,
        reply: Reply,
    },
    /// An item of a member's stream `sid`.
    Stream {
        peer: usize,
        life: u32,
        sid: RequestId,
        item: StreamItem,
    },
}

/// Deliveries by time; equal times in the order they were sent.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: BTreeMap<(Duration, u64), Item>,
    seq: u64,
    /// The last delivery time of each stream: a stream is in order (gRPC over one connection).
    tails: BTreeMap<(usize, u32, RequestId), Duration>,
}

impl Queue {
    pub(crate) fn push(&mut self, at: Duration, item: Item) {
        self.seq += 1;
        self.items.insert((at, self.seq), item);
    }

    /// Push onto a stream, no earlier than its last item.
    pub(crate) fn push_stream(
        &mut self,
        at: Duration,
        peer: usize,
        life: u32,
        sid: RequestId,
        item: StreamItem,
    ) {
        let tail = self.tails.entry((peer, life, sid)).or_default();
        let at = at.max(*tail);
        *tail = at;
        self.push(
            at,
            Item::Stream {
                peer,
                life,
                sid,
                item,
            },
        );
    }

    pub(crate) fn next_time(&self) -> Option<Duration> {
        self.items.keys().next().map(|k| k.0)
    }

    pub(crate) fn pop_due(&mut self, now: Duration) -> Option<Item> {
        let (&k, _) = self.items.iter().next()?;
        if k.0 > now {
            return None;
        }
        self.items.remove(&k)
    }
}
