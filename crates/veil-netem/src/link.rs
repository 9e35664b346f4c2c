//! [`Link`]: one direction of one flow, sans-I/O. Datagrams go in with [`Link::push`] at the
//! time they arrive; [`Link::poll`] hands back, at a later time, those the impairment lets
//! through, when they are due; [`Link::next_timeout`] says when to poll next. It reads no
//! clock and no OS randomness: time is the caller's, randomness a seeded [`SplitMix64`], so a
//! seed and the same inputs give the same outputs (NETEM-DET-01).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::impairment::{Impairment, Loss, LossWindow};
use crate::rng::SplitMix64;

/// What a link did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Datagrams pushed.
    pub received: u64,
    /// Datagrams handed out by [`Link::poll`] (duplicates included).
    pub forwarded: u64,
    /// Datagrams lost to the loss model or a [`LossWindow`].
    pub lost: u64,
    /// Datagrams dropped during a blackout.
    pub blacked_out: u64,
    /// Datagrams dropped at a full rate-cap queue.
    pub queue_drops: u64,
    /// Datagrams sent twice (each counts once here; both copies count in `forwarded`).
    pub duplicated: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
}

impl LinkCounters {
    /// Everything dropped, for whatever reason.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.lost + self.blacked_out + self.queue_drops
    }
}

/// A datagram waiting for its time; ordered by time, then by arrival.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    at: Instant,
    seq: u64,
    datagram: Vec<u8>,
}

/// One direction of a flow under an [`Impairment`].
#[derive(Debug)]
pub struct Link {
    impairment: Impairment,
    windows: Vec<LossWindow>,
    rng: SplitMix64,
    start: Instant,
    /// The Gilbert–Elliott chain's state.
    bad: bool,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    /// When the last in-order datagram is due: the next one is not due earlier.
    last_in_order: Option<Instant>,
    /// When the rate cap's bottleneck is free again.
    free_at: Option<Instant>,
    counters: LinkCounters,
}

impl Link {
    /// A link that starts at `start` (what [`LossWindow`]s count from) with randomness from
    /// `seed`.
    #[must_use]
    pub fn new(impairment: Impairment, seed: u64, start: Instant) -> Self {
        Self {
            impairment,
            windows: Vec::new(),
            rng: SplitMix64::new(seed),
            start,
            bad: false,
            queue: BinaryHeap::new(),
            seq: 0,
            last_in_order: None,
            free_at: None,
            counters: LinkCounters::default(),
        }
    }

    /// The same link with scripted loss windows (NETEM-LOSS-03).
    #[must_use]
    pub fn with_windows(mut self, windows: Vec<LossWindow>) -> Self {
        self.windows = windows;
        self
    }

    /// Change the impairment from now on; datagrams already queued keep their times.
    pub fn set_impairment(&mut self, impairment: Impairment) {
        if !matches!(impairment.loss, Loss::Bursts(_)) {
            self.bad = false;
        }
        self.impairment = impairment;
    }

    /// The impairment in force.
    #[must_use]
    pub fn impairment(&self) -> &Impairment {
        &self.impairment
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    /// Datagrams waiting.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A datagram arrives at `now`.
    pub fn push(&mut self, now: Instant, datagram: Vec<u8>) {
        self.counters.received += 1;
        if self.impairment.blackout {
            self.counters.blacked_out += 1;
            return;
        }
        if self.lose(now) {
            self.counters.lost += 1;
            return;
        }
        let Some(departs) = self.bottleneck(now, datagram.len()) else {
            self.counters.queue_drops += 1;
            return;
        };
        let mut at = departs + self.delay();
        if self.rng.chance(self.impairment.reorder) {
            // Held back outside the order: the datagrams after it may overtake it.
            at += self.impairment.reorder_hold;
            self.counters.reordered += 1;
        } else {
            at = at.max(self.last_in_order.unwrap_or(at));
            self.last_in_order = Some(at);
        }
        if self.rng.chance(self.impairment.duplicate) {
            self.counters.duplicated += 1;
            self.enqueue(at, datagram.clone());
        }
        self.enqueue(at, datagram);
    }

    /// The next datagram due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        self.counters.forwarded += 1;
        self.queue.pop().map(|Reverse(q)| q.datagram)
    }

    /// When the next datagram is due (`None`: nothing waits).
    #[must_use]
    pub fn next_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(q)| q.at)
    }

    fn enqueue(&mut self, at: Instant, datagram: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            datagram,
        }));
    }

    /// Whether the datagram arriving at `now` is lost. The chain steps on every datagram, so
    /// a window does not freeze its state.
    fn lose(&mut self, now: Instant) -> bool {
        let p = match self.impairment.loss {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::Bursts(ge) => {
                let flip = if self.bad { ge.to_good } else { ge.to_bad };
                if self.rng.chance(flip) {
                    self.bad = !self.bad;
                }
                if self.bad { ge.loss_bad } else { ge.loss_good }
            }
        };
        let since = now.saturating_duration_since(self.start);
        let p = self
            .windows
            .iter()
            .find(|w| w.from <= since && since < w.to)
            .map_or(p, |w| w.loss);
        self.rng.chance(p)
    }

    /// When a datagram of `len` bytes arriving at `now` leaves the bottleneck; `None` if the
    /// queue is full (NETEM-RATE-01).
    fn bottleneck(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Some(cap) = self.impairment.rate else {
            return Some(now);
        };
        let rate = cap.bits_per_second.max(1) as f64;
        let start = self.free_at.map_or(now, |f| f.max(now));
        // The bytes still waiting ahead of this one.
        let backlog = start.saturating_duration_since(now).as_secs_f64() * rate / 8.0;
        if backlog + len as f64 > cap.queue_bytes as f64 {
            return None;
        }
        let done = start + Duration::from_secs_f64(len as f64 * 8.0 / rate);
        self.free_at = Some(done);
        Some(done)
    }

    /// `delay` ± `jitter`, uniform, never negative.
    fn delay(&mut self) -> Duration {
        let i = &self.impairment;
        let (delay, jitter) = (i.delay.as_secs_f64(), i.jitter.as_secs_f64());
        let u = self.rng.unit() * 2.0 - 1.0;
        Duration::from_secs_f64((delay + u * jitter).max(0.0))
    }
}

#[cfg(test)]
mod tests;
