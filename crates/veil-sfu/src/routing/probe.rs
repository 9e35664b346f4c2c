//! When to probe a subscriber's path, and how hard (SFU-BWE-06, SFU-BWE-08).
//!
//! A subscriber's connection carries only what its layers send, so GCC never sees more than
//! that and climbs from its start by 8 % a second: tens of seconds to a top layer that needs
//! more. A [`ProbeController`] asks for short clusters of extra packets when the estimate is
//! below what the subscriber's requested layers need and the path shows no congestion; the
//! estimator jumps to the rate a cluster crossed the path at (SFU-BWE-07), and a cluster that
//! arrived intact at its full rate is followed by the next at once, up to twice as fast, until
//! the estimate covers the need. A cluster the path could not carry backs the next one off.
//!
//! Sans I/O: time is passed in as a [`Duration`] since the caller's epoch; the caller sends each
//! [`Pulse`] (the edge, through the connection's RTX interceptor) and feeds back the outcome
//! the estimator published.

use std::time::Duration;

/// How the [`ProbeController`] probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbePolicy {
    /// Time between the pulses of one cluster.
    pub pulse: Duration,
    /// Pulses in a cluster: the cluster lasts `pulses × pulse`.
    pub pulses: u32,
    /// A cluster goes at most this many times faster than the current estimate.
    pub growth: f64,
    /// And at most to the need times this.
    pub headroom: f64,
    /// And never above this, in bits per second.
    pub max_bps: u64,
    /// After a cluster that did not arrive at its rate, wait this long before the next; each
    /// further one doubles the wait up to `max_retry`. A cluster that did resets it.
    pub retry: Duration,
    /// The longest wait between clusters while the estimate stays below the need.
    pub max_retry: Duration,
    /// No probing while the loss controller's average loss is at or above this.
    pub max_loss: f64,
    /// A cluster whose outcome has not come this long after its last pulse failed.
    pub outcome_timeout: Duration,
    /// A cluster is a success when the path carried it at this share of its rate or more.
    pub success: f64,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            pulse: Duration::from_millis(5),
            pulses: 6,
            growth: 2.0,
            headroom: 1.1,
            max_bps: 20_000_000,
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(2),
            // GCC's loss controller stops increasing at 2 % (rtc-interceptor's low-loss bound).
            max_loss: 0.02,
            outcome_timeout: Duration::from_millis(1500),
            success: 0.9,
        }
    }
}

/// What the controller is told about a connection every time it decides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProbeInput {
    /// The estimate, bits per second; None before the first feedback (nothing is probed then).
    pub estimate: Option<u64>,
    /// What the subscriber's requested layers need, bits per second.
    pub need: u64,
    /// The loss controller's average loss.
    pub loss: f64,
    /// The delay detector reads a growing queue.
    pub overusing: bool,
    /// The last cluster the estimator judged: its id and the rate the path carried it at.
    pub outcome: Option<(u32, Option<u64>)>,
}

/// One burst of a cluster to send now: `bytes` of probe packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    /// The cluster it belongs to.
    pub cluster: u32,
    /// Bytes on the wire to send.
    pub bytes: usize,
    /// The cluster's last pulse: its outcome can be judged once this one's packets are
    /// reported (SFU-BWE-07).
    pub last: bool,
}

/// Clusters sent and how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Clusters started.
    pub clusters: u64,
    /// Carried at (nearly) their rate.
    pub succeeded: u64,
    /// Not carried at their rate, or no outcome in time.
    pub failed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sending {
    id: u32,
    target: u64,
    bytes: usize,
    left: u32,
    next: Duration,
}

/// One connection's probing (SFU-BWE-06, SFU-BWE-08).
#[derive(Debug, Clone)]
pub struct ProbeController {
    policy: ProbePolicy,
    next_id: u32,
    sending: Option<Sending>,
    /// The cluster sent whose outcome is awaited: id, rate, when its last pulse left.
    waiting: Option<(u32, u64, Duration)>,
    /// The last cluster given up on (no outcome in time): id, rate. Its outcome may still come.
    timed_out: Option<(u32, u64)>,
    not_before: Duration,
    backoff: Duration,
    stats: ProbeStats,
}

impl ProbeController {
    /// A controller that may probe at once.
    #[must_use]
    pub fn new(policy: ProbePolicy) -> Self {
        Self {
            policy,
            next_id: 1,
            sending: None,
            waiting: None,
            timed_out: None,
            not_before: Duration::ZERO,
            backoff: policy.retry,
            stats: ProbeStats::default(),
        }
    }

    /// Clusters sent and how they ended.
    #[must_use]
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    /// Decide at `now`: take the awaited cluster's outcome, and start a cluster if the estimate
    /// is below the need, the path shows no congestion and no cluster is out or backed off.
    pub fn update(&mut self, now: Duration, input: &ProbeInput) {
        let p = self.policy;
        self.late_outcome(now, input.outcome);
        if let Some((id, target, sent)) = self.waiting {
            let carried = match input.outcome {
                Some((o, bps)) if o == id => Some(bps),
                _ if now.saturating_sub(sent) >= p.outcome_timeout => {
                    self.timed_out = Some((id, target));
                    Some(None)
                }
                _ => None,
            };
            let Some(bps) = carried else {
                return;
            };
            self.waiting = None;
            if self.carried(bps, target) {
                // SFU-BWE-08: the path carried it; the next may go at once, faster.
                self.stats.succeeded += 1;
                self.backoff = p.retry;
                self.not_before = now;
            } else {
                self.stats.failed += 1;
                self.not_before = now + self.backoff;
                self.backoff = (self.backoff * 2).min(p.max_retry.max(p.retry));
            }
        }
        if self.sending.is_some() || now < self.not_before {
            return;
        }
        let Some(estimate) = input.estimate else {
            return;
        };
        if input.need <= estimate
            || input.overusing
            || input.loss.is_nan()
            || input.loss >= p.max_loss
        {
            return;
        }
        let target = (input.need as f64 * p.headroom)
            .min(estimate as f64 * p.growth)
            .min(p.max_bps as f64);
        if target.is_nan() || target <= estimate as f64 || p.pulses == 0 {
            return;
        }
        let bytes = (target * p.pulse.as_secs_f64() / 8.0).max(1.0) as usize;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.stats.clusters += 1;
        self.sending = Some(Sending {
            id,
            target: target as u64,
            bytes,
            left: p.pulses,
            next: now,
        });
    }

    /// Whether a cluster sent at `target` was carried at `bps` (SFU-BWE-08).
    fn carried(&self, bps: Option<u64>, target: u64) -> bool {
        bps.is_some_and(|b| b as f64 >= self.policy.success * target as f64)
    }

    /// SFU-BWE-08: the outcome of the cluster given up on came after all (a feedback later than
    /// the timeout). The estimator moved the estimate up on it if it was carried, and then the
    /// need may read as met, so no other cluster would ever count the success: count it now,
    /// instead of the failure, and lift the backoff.
    fn late_outcome(&mut self, now: Duration, outcome: Option<(u32, Option<u64>)>) {
        let (Some((id, target)), Some((o, bps))) = (self.timed_out, outcome) else {
            return;
        };
        if o != id {
            return;
        }
        self.timed_out = None;
        if self.carried(bps, target) {
            self.stats.failed = self.stats.failed.saturating_sub(1);
            self.stats.succeeded += 1;
            self.backoff = self.policy.retry;
            self.not_before = self.not_before.min(now);
        }
    }

    /// The pulse due at `now`, if one is.
    pub fn poll_pulse(&mut self, now: Duration) -> Option<Pulse> {
        let s = self.sending.as_mut().filter(|s| s.next <= now)?;
        s.left -= 1;
        let pulse = Pulse {
            cluster: s.id,
            bytes: s.bytes,
            last: s.left == 0,
        };
        s.next = now + self.policy.pulse;
        if s.left == 0 {
            self.waiting = Some((s.id, s.target, now));
            self.sending = None;
        }
        Some(pulse)
    }

    /// When the next pulse is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.sending.map(|s| s.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const M: u64 = 1_000_000;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn input(estimate: u64, need: u64) -> ProbeInput {
        ProbeInput {
            estimate: Some(estimate),
            need,
            ..ProbeInput::default()
        }
    }

    /// Every pulse of the cluster started, sent at its time; returns (cluster, bytes, times).
    /// Only the last pulse says it is (the estimator judges the cluster after it).
    fn send_cluster(c: &mut ProbeController, from: Duration) -> (u32, usize, Vec<Duration>) {
        let mut times = Vec::new();
        let mut id = None;
        let mut bytes = 0;
        let mut now = from;
        while let Some(t) = c.poll_timeout() {
            now = now.max(t);
            let p = c.poll_pulse(now).expect("due");
            assert_eq!(p.last, c.poll_timeout().is_none());
            assert!(id.is_none_or(|i| i == p.cluster));
            id = Some(p.cluster);
            bytes = p.bytes;
            times.push(now);
        }
        (id.expect("a cluster"), bytes, times)
    }

    /// SFU-BWE-06, SFU-BWE-08: below the need, a cluster at twice the estimate (capped by the
    /// need's headroom) goes at once, in 6 pulses 5 ms apart; its success allows the next at
    /// once, and once the estimate covers the need nothing more is sent.
    #[test]
    fn a_low_estimate_is_probed_up_to_the_need_in_clusters() {
        let mut c = ProbeController::new(ProbePolicy::default());
        c.update(at(100), &input(1_500_000, 6 * M));
        let (id, bytes, times) = send_cluster(&mut c, at(100));
        // 3 Mbit/s for 5 ms is 1 875 bytes a pulse.
        assert_eq!(bytes, 1875);
        assert_eq!(times, (0..6).map(|i| at(100 + 5 * i)).collect::<Vec<_>>());
        // Nothing new while its outcome is awaited.
        c.update(at(200), &input(1_500_000, 6 * M));
        assert_eq!(c.poll_timeout(), None);
        // Carried at 2.9 Mbit/s (≥ 90 %): the estimate jumped; the next goes at once, at 5.8.
        let o = ProbeInput {
            outcome: Some((id, Some(2_900_000))),
            ..input(2_900_000, 6 * M)
        };
        c.update(at(300), &o);
        let (id2, bytes, _) = send_cluster(&mut c, at(300));
        assert_ne!(id2, id);
        assert_eq!(bytes, 5_800_000 * 5 / 8000);
        // That one carried too, and the estimate covers the need: no more.
        let o = ProbeInput {
            outcome: Some((id2, Some(5_800_000))),
            ..input(6_100_000, 6 * M)
        };
        c.update(at(500), &o);
        assert_eq!(c.poll_timeout(), None);
        c.update(at(5000), &input(6_100_000, 6 * M));
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(
            c.stats(),
            ProbeStats {
                clusters: 2,
                succeeded: 2,
                failed: 0
            }
        );
        // The last cluster stops at the need's headroom: 1.1 × 6 Mbit/s, not 2 × 5.
        let mut c = ProbeController::new(ProbePolicy::default());
        c.update(at(0), &input(5 * M, 6 * M));
        assert_eq!(send_cluster(&mut c, at(0)).1, 6_600_000 * 5 / 8000);
    }

    /// SFU-BWE-06: no cluster without an estimate, with one that covers the need, on a path
    /// that loses 2 % or more, or while the delay detector reads a growing queue.
    #[test]
    fn a_congested_or_covered_path_is_not_probed() {
        let mut c = ProbeController::new(ProbePolicy::default());
        let cases = [
            ProbeInput {
                estimate: None,
                need: 3 * M,
                ..ProbeInput::default()
            },
            input(3 * M, 3 * M),
            ProbeInput {
                loss: 0.02,
                ..input(M, 3 * M)
            },
            ProbeInput {
                overusing: true,
                ..input(M, 3 * M)
            },
            ProbeInput {
                loss: f64::NAN,
                ..input(M, 3 * M)
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            c.update(at(100 * i as u64), case);
            assert_eq!(c.poll_timeout(), None, "case {i}");
        }
        assert_eq!(c.stats().clusters, 0);
    }

    /// SFU-BWE-08: a cluster the path did not carry at its rate (or whose outcome never came)
    /// backs the next off 1 s, then 2 s and no more; a success resets the wait. Over a minute
    /// of failures the clusters take about 1 % of the time.
    #[test]
    fn failures_back_off_and_the_duty_cycle_stays_small() {
        let p = ProbePolicy::default();
        let mut c = ProbeController::new(p);
        let mut starts = Vec::new();
        let mut busy = Duration::ZERO;
        let mut now = Duration::ZERO;
        let mut last: Option<u32> = None;
        while now < Duration::from_secs(60) {
            // The path carries 40 % of any cluster; outcomes come 100 ms after the last pulse.
            let outcome = last.map(|id| (id, Some(400_000)));
            c.update(
                now,
                &ProbeInput {
                    outcome,
                    ..input(M, 3 * M)
                },
            );
            if c.poll_timeout().is_some() {
                let (id, _, times) = send_cluster(&mut c, now);
                starts.push(now);
                busy += *times.last().unwrap() - times[0] + p.pulse;
                now = *times.last().unwrap();
                last = Some(id);
            }
            now += 100 * MS;
        }
        let gaps: Vec<u64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        // Outcome 100 ms after the last pulse (25 ms after the first), then the wait.
        assert!((1100..=1200).contains(&gaps[0]), "{gaps:?}");
        assert!(
            gaps[1..].iter().all(|g| (2100..=2200).contains(g)),
            "{gaps:?}"
        );
        assert!(busy.as_secs_f64() / 60.0 < 0.02, "{busy:?}");
        assert_eq!(c.stats().succeeded, 0);
        // A timeout counts as a failure; then a success resets the wait to nothing.
        let mut c = ProbeController::new(p);
        c.update(at(0), &input(M, 3 * M));
        let (_, _, t) = send_cluster(&mut c, at(0));
        let end = *t.last().unwrap();
        c.update(end + p.outcome_timeout - MS, &input(M, 3 * M));
        assert_eq!(c.stats().failed, 0, "still waiting");
        c.update(end + p.outcome_timeout, &input(M, 3 * M));
        assert_eq!(c.stats().failed, 1);
        assert_eq!(c.poll_timeout(), None, "backed off");
        let later = end + p.outcome_timeout + p.retry;
        c.update(later, &input(M, 3 * M));
        let (id, _, t) = send_cluster(&mut c, later);
        let o = ProbeInput {
            outcome: Some((id, Some(2 * M))),
            ..input(2 * M, 3 * M)
        };
        c.update(*t.last().unwrap() + 100 * MS, &o);
        assert!(c.poll_timeout().is_some(), "at once after a success");
    }

    /// SFU-BWE-08: a cluster's outcome that comes after the controller gave up on it still
    /// counts. The estimator moves the estimate up on a carried cluster whenever its feedback
    /// comes; counted as a failure, the success would be lost, and with the estimate then
    /// covering the need no other cluster would go to count one. A late outcome that was not
    /// carried changes nothing; an outcome is counted once.
    #[test]
    fn an_outcome_after_the_timeout_still_counts() {
        let p = ProbePolicy::default();
        let mut c = ProbeController::new(p);
        c.update(at(0), &input(M, 3 * M));
        let (id, _, t) = send_cluster(&mut c, at(0));
        let end = *t.last().unwrap();
        let gave_up = end + p.outcome_timeout;
        c.update(gave_up, &input(M, 3 * M));
        assert_eq!((c.stats().failed, c.stats().succeeded), (1, 0));
        assert_eq!(c.poll_timeout(), None, "backed off");
        // 200 ms later its feedback comes: carried at 2 Mbit/s (the target), the estimate
        // jumped there, still below the need: the next goes at once, not after the backoff.
        let late = ProbeInput {
            outcome: Some((id, Some(2 * M))),
            ..input(2 * M, 3 * M)
        };
        c.update(gave_up + 200 * MS, &late);
        assert_eq!(
            c.stats(),
            ProbeStats {
                clusters: 2,
                succeeded: 1,
                failed: 0
            }
        );
        let (id2, bytes, t) = send_cluster(&mut c, gave_up + 200 * MS);
        assert_ne!(id2, id);
        assert_eq!(bytes, 3_300_000 * 5 / 8000);
        // The same outcome seen again (it stays published) is not counted twice.
        c.update(*t.last().unwrap() + MS, &late);
        assert_eq!(c.stats().succeeded, 1);
        // A late outcome that was not carried leaves the failure and the backoff.
        let mut c = ProbeController::new(p);
        c.update(at(0), &input(M, 3 * M));
        let (id, _, t) = send_cluster(&mut c, at(0));
        let gave_up = *t.last().unwrap() + p.outcome_timeout;
        c.update(gave_up, &input(M, 3 * M));
        let late = ProbeInput {
            outcome: Some((id, Some(M))),
            ..input(M, 3 * M)
        };
        c.update(gave_up + 200 * MS, &late);
        assert_eq!((c.stats().failed, c.stats().succeeded), (1, 0));
        assert_eq!(c.poll_timeout(), None, "still backed off");
    }
}
