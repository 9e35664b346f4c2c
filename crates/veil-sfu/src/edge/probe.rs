//! Probing each subscriber's path from the edge (SFU-BWE-06..08): one
//! [`ProbeController`] per connection, fed every estimate period with the connection's
//! estimator signals and what the room's core says its subscriptions need, and its pulses sent
//! through the connection's RTX interceptor ([`Edge::send_probe`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ConnId, Edge};
use crate::connection::peer::Signals;
use crate::routing::{ProbeController, ProbeInput, ProbePolicy, ProbeStats};

/// The probing of every connection of one edge.
#[derive(Debug)]
pub(super) struct Probing {
    policy: Option<ProbePolicy>,
    controllers: HashMap<ConnId, ProbeController>,
    /// When the next pulse of any connection is due.
    next: Option<Duration>,
}

impl Probing {
    /// Probing by `policy`; None: no probing.
    pub(super) fn new(policy: Option<ProbePolicy>) -> Self {
        Self {
            policy,
            controllers: HashMap::new(),
            next: None,
        }
    }

    /// Decide for connection `id` at `since` (the rooms' clock): its estimator said `signals`,
    /// its subscriptions `need` that many bits per second. Returns the clusters it started and
    /// the successes it learned of.
    pub(super) fn update(
        &mut self,
        since: Duration,
        id: ConnId,
        signals: &Signals,
        need: u64,
    ) -> (u64, u64) {
        let Some(policy) = self.policy else {
            return (0, 0);
        };
        let c = self
            .controllers
            .entry(id)
            .or_insert_with(|| ProbeController::new(policy));
        let before = c.stats();
        c.update(
            since,
            &ProbeInput {
                estimate: signals.bps,
                need,
                loss: signals.loss,
                overusing: signals.overusing,
                outcome: signals.probe.map(|o| (o.cluster, o.bps)),
            },
        );
        let after = c.stats();
        if after != before {
            tracing::debug!(
                conn = ?id,
                ?since,
                bps = ?signals.bps,
                need,
                probe = ?signals.probe,
                stats = ?after,
                "probing"
            );
        }
        self.next = self
            .controllers
            .values()
            .filter_map(ProbeController::poll_timeout)
            .min();
        (
            after.clusters - before.clusters,
            after.succeeded - before.succeeded,
        )
    }

    /// Send every pulse due at `now` (`since` on the rooms' clock).
    pub(super) fn send_due(&mut self, edge: &mut Edge, now: Instant, since: Duration) {
        if self.next.is_none_or(|t| t > since) {
            return;
        }
        for (&id, c) in &mut self.controllers {
            while let Some(p) = c.poll_pulse(since) {
                edge.send_probe(now, id, p);
            }
        }
        self.next = self
            .controllers
            .values()
            .filter_map(ProbeController::poll_timeout)
            .min();
    }

    /// When the next pulse is due, on the rooms' clock.
    pub(super) fn poll_timeout(&self) -> Option<Duration> {
        self.next
    }

    /// Connection `id` is gone.
    pub(super) fn remove(&mut self, id: ConnId) {
        self.controllers.remove(&id);
    }

    /// Clusters sent by connection `id`, and how they ended.
    pub(super) fn stats(&self, id: ConnId) -> Option<ProbeStats> {
        self.controllers.get(&id).map(ProbeController::stats)
    }
}
