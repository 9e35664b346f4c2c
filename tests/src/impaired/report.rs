//! What an impaired call measured ([`Report`]) and its Markdown table.

use std::fmt::Write as _;
use std::time::Duration;

use veil_client::media::MediaKind;
use veil_netem::LinkCounters;

use super::participant::{Log, TICK};
use super::{NAMES, Plan};

/// Decrypt failures this long after an epoch switch completed still count as the switch's.
const SWITCH_SLACK: Duration = Duration::from_secs(1);

/// The SFU's retransmission and key-frame counters (`/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SfuFigures {
    /// Retransmissions from publishers, unwrapped and used (`rtx_packets{in,unwrapped}`).
    pub rtx_in_unwrapped: u64,
    /// Retransmissions of packets that had arrived already (`in,redundant`).
    pub rtx_in_redundant: u64,
    /// Retransmissions the SFU sent subscribers (`out,resent`).
    pub rtx_out_resent: u64,
    /// NACKed packets no longer in the SFU's history (`out,missing`).
    pub rtx_out_missing: u64,
    /// PLIs the SFU sent publishers.
    pub plis_to_publishers: u64,
    /// PLI/FIR subscribers sent the SFU.
    pub plis_from_subscribers: u64,
}

/// One participant's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// Identity.
    pub name: &'static str,
    /// Audio and video frames published.
    pub sent: u64,
    /// Frames reassembled from the packets received.
    pub received: u64,
    /// Frames decrypted and delivered, by publisher index.
    pub decrypted_from: [u64; 4],
    /// Frames that lost packets for good.
    pub incomplete: u64,
    /// Decrypt failures, all.
    pub decrypt_failures: u64,
    /// Decrypt failures outside an epoch switch (and its second of slack).
    pub failures_outside_switches: u64,
    /// Frames delivered twice.
    pub replays_accepted: u64,
    /// Frames whose bytes were not the publisher's.
    pub corrupt: u64,
    /// The epoch and member count at the end.
    pub final_epoch: (Option<u64>, usize),
    /// NACKs this participant sent.
    pub nacks: u64,
    /// Packets it retransmitted after the SFU's NACKs.
    pub retransmitted: u64,
    /// Key-frame requests it was sent (and answered).
    pub key_frame_requests: u64,
    /// Packets lost on its received streams (RFC 3550, after retransmission).
    pub packets_lost: i64,
    /// Audio and video frames delivered, as a share of those sent between the first and the
    /// last frame received of each publisher's stream.
    pub delivered: [f64; 2],
}

impl Row {
    /// Frames decrypted from everyone.
    #[must_use]
    pub fn decrypted(&self) -> u64 {
        self.decrypted_from.iter().sum()
    }
}

/// An epoch switch (a join or a leave).
#[derive(Debug, Clone)]
pub struct Switch {
    /// `join` or `leave`.
    pub what: &'static str,
    /// When it began (from the run's start).
    pub began: Duration,
    /// When the last participant concerned reached the new epoch, if all did, in one epoch.
    pub completed: Option<Duration>,
}

/// How fast media came back after a burst: for each receiver and publisher present, the first
/// frame of each kind sent after the burst's end, arriving.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// When the burst ended.
    pub burst_end: Duration,
    /// The slowest pair's wait (`None`: some pair got nothing).
    pub worst: Option<Duration>,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan.
    pub plan: Plan,
    /// Per participant, by [`NAMES`].
    pub rows: Vec<Row>,
    /// The join's and the leave's switches.
    pub switches: Vec<Switch>,
    /// One per burst.
    pub recoveries: Vec<Recovery>,
    /// The relay's counters, client → SFU and SFU → client, all flows.
    pub relay: (LinkCounters, LinkCounters),
    /// The SFU's counters.
    pub sfu: SfuFigures,
    /// Each participant's log.
    pub logs: Vec<Log>,
}

/// When participant `who` was in the call (from the run's start).
fn presence(plan: &Plan, who: usize) -> (Duration, Duration) {
    match who {
        super::JOINER => (plan.join_at, plan.duration),
        super::LEAVER => (Duration::ZERO, plan.leave_at),
        _ => (Duration::ZERO, plan.duration),
    }
}

impl Report {
    pub(super) fn new(
        plan: &Plan,
        logs: Vec<Log>,
        switches: Vec<(&'static str, Duration)>,
        burst_ends: Vec<Duration>,
        relay: (LinkCounters, LinkCounters),
        sfu: SfuFigures,
    ) -> Self {
        let switches: Vec<Switch> = switches
            .into_iter()
            .map(|(what, began)| switch(plan, &logs, what, began))
            .collect();
        let windows: Vec<(Duration, Duration)> = switches
            .iter()
            .map(|s| {
                (
                    s.began,
                    s.completed.map_or(plan.duration, |c| c + SWITCH_SLACK),
                )
            })
            .collect();
        let rows = logs.iter().map(|l| row(l, &windows)).collect();
        let recoveries = burst_ends
            .into_iter()
            .map(|end| recovery(plan, &logs, end))
            .collect();
        Self {
            plan: plan.clone(),
            rows,
            switches,
            recoveries,
            relay,
            sfu,
            logs,
        }
    }

    /// The figures as Markdown (RELIABILITY.md's table).
    #[must_use]
    pub fn table(&self) -> String {
        let p = &self.plan;
        let i = &p.impairment;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Impaired call: {} s, 4 participants (dave joins at {:.1} s, carol leaves at {:.1} s); \
             every leg through the relay, each way: {:?}, {} ± {} ms, {} % reordering, {} % \
             duplication; bursts of {} % loss for {} s at {:?} s; seed {}.\n",
            p.duration.as_secs(),
            p.join_at.as_secs_f64(),
            p.leave_at.as_secs_f64(),
            i.loss,
            i.delay.as_millis(),
            i.jitter.as_millis(),
            i.reorder * 100.0,
            i.duplicate * 100.0,
            p.burst_loss * 100.0,
            p.burst_len.as_secs(),
            p.bursts.iter().map(|b| b.as_secs()).collect::<Vec<_>>(),
            p.seed,
        );
        s.push_str(
            "| participant | frames sent | frames received | decrypted (from a/b/c/d) | delivered audio / video | incomplete | decrypt failures (outside switches) | replays accepted | corrupt | final epoch (members) | NACKs sent | RTX sent | key-frame requests |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let from = r.decrypted_from.map(|n| n.to_string()).join("/");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} ({}) | {:.1} % / {:.1} % | {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {} |",
                r.name,
                r.sent,
                r.received,
                r.decrypted(),
                from,
                r.delivered[0] * 100.0,
                r.delivered[1] * 100.0,
                r.incomplete,
                r.decrypt_failures,
                r.failures_outside_switches,
                r.replays_accepted,
                r.corrupt,
                r.final_epoch.0.map_or("-".into(), |e| e.to_string()),
                r.final_epoch.1,
                r.nacks,
                r.retransmitted,
                r.key_frame_requests,
            );
        }
        let secs =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        s.push('\n');
        for w in &self.switches {
            let _ = writeln!(
                s,
                "- epoch switch ({}) at {:.1} s: completed after {}",
                w.what,
                w.began.as_secs_f64(),
                secs(w.completed.map(|c| c.saturating_sub(w.began)))
            );
        }
        for r in &self.recoveries {
            let _ = writeln!(
                s,
                "- burst ending at {:.1} s: every receiver had fresh audio and video from every \
                 publisher after {}",
                r.burst_end.as_secs_f64(),
                secs(r.worst)
            );
        }
        let (up, down) = self.relay;
        let _ = writeln!(
            s,
            "- relay, client → SFU: {} datagrams, {} lost, {} duplicated, {} reordered; SFU → \
             client: {} datagrams, {} lost, {} duplicated, {} reordered",
            up.received,
            up.lost,
            up.duplicated,
            up.reordered,
            down.received,
            down.lost,
            down.duplicated,
            down.reordered
        );
        let f = &self.sfu;
        let _ = writeln!(
            s,
            "- SFU: retransmissions received and used {} (redundant {}), sent {} (missing from \
             history {}); PLIs to publishers {}, from subscribers {}",
            f.rtx_in_unwrapped,
            f.rtx_in_redundant,
            f.rtx_out_resent,
            f.rtx_out_missing,
            f.plis_to_publishers,
            f.plis_from_subscribers
        );
        s
    }
}

fn row(log: &Log, windows: &[(Duration, Duration)]) -> Row {
    let st = &log.stats;
    let mut decrypted_from = [0u64; 4];
    for a in &log.arrivals {
        decrypted_from[a.from] += 1;
    }
    let mut outside = 0;
    let mut before = 0;
    for &(at, total) in &log.failures {
        if !windows.iter().any(|(a, b)| (*a..=*b).contains(&at)) {
            outside += total - before;
        }
        before = total;
    }
    Row {
        name: NAMES[log.who],
        sent: st.audio_sent.frames + st.video_sent.frames,
        received: st.received.values().map(|t| t.frames).sum(),
        decrypted_from,
        incomplete: st.received.values().map(|t| t.incomplete).sum(),
        decrypt_failures: before,
        failures_outside_switches: outside,
        replays_accepted: log.replays_accepted,
        corrupt: log.corrupt,
        final_epoch: (st.group.epoch, st.group.members.len()),
        nacks: log
            .net
            .inbound
            .iter()
            .map(|i| u64::from(i.nack_count))
            .sum(),
        retransmitted: log
            .net
            .outbound
            .iter()
            .map(|o| o.retransmitted_packets)
            .sum(),
        key_frame_requests: log.key_frame_requests,
        packets_lost: st.received.values().map(|t| t.packets_lost).sum(),
        delivered: [MediaKind::Audio, MediaKind::Video].map(|k| delivered(log, k)),
    }
}

/// Frames of `kind` delivered over frames sent, per publisher between the first and the last
/// tick received, summed over publishers.
fn delivered(log: &Log, kind: MediaKind) -> f64 {
    let step = if kind == MediaKind::Video {
        super::participant::VIDEO_EVERY
    } else {
        1
    };
    let (mut got, mut sent) = (0u64, 0u64);
    for p in 0..NAMES.len() {
        let ticks: Vec<u32> = log
            .arrivals
            .iter()
            .filter(|a| a.from == p && a.kind == kind)
            .map(|a| a.tick)
            .collect();
        if let (Some(lo), Some(hi)) = (ticks.iter().min(), ticks.iter().max()) {
            got += ticks.len() as u64;
            sent += u64::from((hi - lo) / step + 1);
        }
    }
    if sent == 0 {
        0.0
    } else {
        got as f64 / sent as f64
    }
}

/// When everyone concerned by a switch beginning at `began` reached an epoch after it with
/// the new member count, and whether they reached the same one.
fn switch(plan: &Plan, logs: &[Log], what: &'static str, began: Duration) -> Switch {
    let members = if what == "join" { 4 } else { 3 };
    let mut reached = Vec::new();
    for l in logs {
        let (from, to) = presence(plan, l.who);
        if to <= began || (what == "join" && from > began && l.who != super::JOINER) {
            continue;
        }
        if what == "leave" && l.who == super::LEAVER {
            continue;
        }
        let old = l
            .epochs
            .iter()
            .rfind(|(at, ..)| *at <= began)
            .and_then(|e| e.1);
        let hit = l.epochs.iter().find(|(at, epoch, n)| {
            *at >= began && *n == members && epoch.is_some() && (old.is_none() || *epoch > old)
        });
        reached.push(hit.map(|(at, epoch, _)| (*at, *epoch)));
    }
    let all: Option<Vec<(Duration, Option<u64>)>> = reached.into_iter().collect();
    let completed = all.and_then(|v| {
        let same = v.windows(2).all(|w| w[0].1 == w[1].1);
        same.then(|| v.iter().map(|(at, _)| *at).max())?
    });
    Switch {
        what,
        began,
        completed,
    }
}

fn recovery(plan: &Plan, logs: &[Log], end: Duration) -> Recovery {
    let mut worst = Some(Duration::ZERO);
    let present = |who: usize| {
        let (from, to) = presence(plan, who);
        from <= end && end < to
    };
    for r in logs.iter().filter(|l| present(l.who)) {
        for p in (0..NAMES.len()).filter(|&p| p != r.who && present(p)) {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let first = r
                    .arrivals
                    .iter()
                    .filter(|a| a.from == p && a.kind == kind && TICK * a.tick >= end)
                    .map(|a| a.at.saturating_sub(end))
                    .min();
                worst = match (worst, first) {
                    (Some(w), Some(f)) => Some(w.max(f)),
                    _ => None,
                };
            }
        }
    }
    Recovery {
        burst_end: end,
        worst,
    }
}
