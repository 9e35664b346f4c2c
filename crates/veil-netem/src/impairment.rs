//! What a link does to the datagrams it carries ([`Impairment`]): loss ([`Loss`], random or in
//! bursts), delay and jitter, reordering, duplication, an optional rate cap ([`RateCap`]) and
//! a blackout; and scripted loss for a span of time ([`LossWindow`]).

use std::time::Duration;

/// How datagrams are lost (NETEM-LOSS-01..02, specs/netem.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Nothing is lost.
    None,
    /// Each datagram independently, with this probability (0..=1).
    Random(f64),
    /// In bursts: a two-state Gilbert–Elliott chain, stepped once per datagram.
    Bursts(GilbertElliott),
}

/// A two-state loss chain: in the good state a datagram is lost with `loss_good`, in the bad
/// state with `loss_bad`; before each datagram the chain moves good → bad with `to_bad` and
/// bad → good with `to_good`. Mean burst length (in datagrams) is `1 / to_good`, and the share
/// of time in the bad state `to_bad / (to_bad + to_good)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// P(good → bad) per datagram.
    pub to_bad: f64,
    /// P(bad → good) per datagram.
    pub to_good: f64,
    /// Loss in the good state.
    pub loss_good: f64,
    /// Loss in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The long-run loss rate of the chain.
    #[must_use]
    pub fn mean_loss(&self) -> f64 {
        let total = self.to_bad + self.to_good;
        if total <= 0.0 {
            return self.loss_good;
        }
        let bad = self.to_bad / total;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// A bottleneck: datagrams leave at `bits_per_second`, queued behind each other; one that
/// would make the queue hold more than `queue_bytes` is dropped (tail drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCap {
    /// The rate.
    pub bits_per_second: u64,
    /// The queue's size.
    pub queue_bytes: usize,
}

/// Loss `loss` (0..=1, random) for datagrams pushed between `from` and `to` after the link's
/// start, in place of the [`Impairment`]'s own loss (NETEM-LOSS-03): "20 % loss for 2 s".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWindow {
    /// Start, from the link's start.
    pub from: Duration,
    /// End (exclusive).
    pub to: Duration,
    /// Loss probability inside the window.
    pub loss: f64,
}

/// One direction's impairments. [`Impairment::default`] is a perfect link (nothing lost,
/// delayed, reordered or duplicated).
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// Loss.
    pub loss: Loss,
    /// Base one-way delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` plus a uniform value in `[-jitter, +jitter]` (never
    /// below zero). Jitter alone keeps the order, as a path's queue does: a datagram leaves no
    /// earlier than the one before it (NETEM-DELAY-01).
    pub jitter: Duration,
    /// Probability that a datagram is held back by `reorder_hold` past its own delay, outside
    /// the order the others keep, so that later ones overtake it (NETEM-ORD-01).
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_hold: Duration,
    /// Probability that a datagram is delivered twice (NETEM-DUP-01).
    pub duplicate: f64,
    /// A rate cap, if any (NETEM-RATE-01).
    pub rate: Option<RateCap>,
    /// Drop everything (NETEM-BLK-01).
    pub blackout: bool,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss: Loss::None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_hold: Duration::from_millis(30),
            duplicate: 0.0,
            rate: None,
            blackout: false,
        }
    }
}

impl Impairment {
    /// The impaired call, each way: 5 % random loss, 50 ± 20 ms, 1 % reordering,
    /// 1 % duplication.
    #[must_use]
    pub fn lossy_call() -> Self {
        Self {
            loss: Loss::Random(0.05),
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            reorder: 0.01,
            duplicate: 0.01,
            ..Self::default()
        }
    }

    /// The same impairment with `loss` in place of its own.
    #[must_use]
    pub fn with_loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// The same impairment, blacked out or not.
    #[must_use]
    pub fn with_blackout(mut self, blackout: bool) -> Self {
        self.blackout = blackout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gilbert_elliott_chain_knows_its_mean_loss() {
        let ge = GilbertElliott {
            to_bad: 0.01,
            to_good: 0.09,
            loss_good: 0.0,
            loss_bad: 0.5,
        };
        assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
    }
}
