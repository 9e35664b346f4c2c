//! What a soak measured ([`Report`]): its samples, the least-squares slope of each figure per
//! hour, the figures after every room ended against the baseline, and the participants'
//! decrypt failures; as RELIABILITY.md's soak section ([`Report::section`], written with
//! [`crate::reliability::write_section`]).

use std::fmt::Write as _;
use std::time::Duration;

use super::member::MemberLog;
use super::sample::{
    FIGURES, KEYS_ROOMS, RSS, SESSIONS, SFU_ROOMS, SUBSCRIPTIONS, Sample, slope_per_hour,
};
use super::{Plan, SWITCH_SLACK};

/// The soak's section name in RELIABILITY.md (`<!-- soak:begin -->` … `<!-- soak:end -->`).
pub const SECTION: &str = "soak";
/// At most this many sample rows go into the Markdown table (evenly spread, the last always);
/// the slopes use every sample.
const TABLE_ROWS: usize = 31;

/// What a soak measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Whether the server was a child process (every figure its own) rather than in the
    /// soak's process.
    pub child: bool,
    /// What was played.
    pub plan: Plan,
    /// Before anyone joined.
    pub baseline: Sample,
    /// When the base was one group (the run's samples start here).
    pub began: Duration,
    /// When the base's time was up (it then left).
    pub ended: Duration,
    /// Every sample, the last one [`Report::after`].
    pub samples: Vec<Sample>,
    /// After every room ended and the per-room figures idled (or 60 s passed).
    pub after: Sample,
    /// When the last participant had left.
    pub left_at: Duration,
    /// From then until every per-room figure was 0, if it came.
    pub idle_after: Option<Duration>,
    /// The stable members.
    pub stable: Vec<MemberLog>,
    /// The churners, one per join.
    pub churners: Vec<MemberLog>,
    /// When each join and leave of the main room began.
    pub switches: Vec<Duration>,
    /// The side rooms' members, two per room.
    pub sides: Vec<MemberLog>,
}

impl Report {
    /// The samples taken while the base was in (from when it was one group until its time
    /// was up).
    #[must_use]
    pub fn during(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.at < self.ended).collect()
    }

    /// The least-squares slope of figure `i` per hour over [`Report::during`]; with `half`,
    /// over its second half only (after warm-up).
    #[must_use]
    pub fn slope(&self, i: usize, half: bool) -> Option<f64> {
        let during = self.during();
        let from = if half { during.len() / 2 } else { 0 };
        let points: Vec<_> = during[from..]
            .iter()
            .filter_map(|s| Some((s.at, s.values[i]?)))
            .collect();
        slope_per_hour(&points)
    }

    /// The slope of the participants' runtime's tasks per hour over [`Report::during`].
    #[must_use]
    pub fn client_task_slope(&self) -> Option<f64> {
        let points: Vec<_> = self
            .during()
            .iter()
            .map(|s| (s.at, s.client_tasks as f64))
            .collect();
        slope_per_hour(&points)
    }

    /// The participants' runtime's tasks in the first and the last sample in which the base
    /// was alone (one room, the stable members its only sessions, each receiving the others'
    /// audio and video): equal but for a join
    /// starting, if nothing per track or per participant outlives its track or participant
    /// (SOAK-04).
    #[must_use]
    pub fn base_alone_client_tasks(&self) -> Option<(usize, usize)> {
        // Each stable member receives the others' audio and video.
        let n = self.plan.stable;
        let base_subscriptions = (n * n.saturating_sub(1) * 2) as f64;
        let alone: Vec<&Sample> = self
            .during()
            .into_iter()
            .filter(|s| {
                s.values[SFU_ROOMS] == Some(1.0)
                    && s.values[SESSIONS] == Some(self.plan.stable as f64)
                    && s.values[KEYS_ROOMS] == Some(1.0)
                    && s.values[SUBSCRIPTIONS] == Some(base_subscriptions)
            })
            .collect();
        Some((alone.first()?.client_tasks, alone.last()?.client_tasks))
    }

    /// Decrypt failures of `log` outside the main room's switches: a switch's window runs from
    /// when it began until [`SWITCH_SLACK`] after `log`'s member reached an epoch after the one
    /// it had then (to the end of the run if it never did).
    #[must_use]
    pub fn failures_outside_switches(&self, log: &MemberLog) -> u64 {
        let windows: Vec<(Duration, Duration)> = self
            .switches
            .iter()
            .map(|&b| {
                let before = log
                    .epochs
                    .iter()
                    .take_while(|(at, ..)| *at <= b)
                    .last()
                    .and_then(|(_, e, _)| *e);
                let reached = log
                    .epochs
                    .iter()
                    .find(|(at, e, _)| *at > b && *e > before)
                    .map_or(Duration::MAX, |(at, ..)| *at + SWITCH_SLACK);
                (b, reached)
            })
            .collect();
        log.failures
            .iter()
            .filter(|(at, _)| !windows.iter().any(|(a, b)| (*a..=*b).contains(at)))
            .map(|(_, n)| n)
            .sum()
    }

    /// The figures' header row and separator.
    fn header() -> String {
        let mut h = String::from("| t (s) |");
        for f in &FIGURES {
            let _ = write!(h, " {} |", f.header);
        }
        h.push_str(" client tasks |\n|---|");
        for _ in 0..=FIGURES.len() {
            h.push_str("---|");
        }
        h.push('\n');
        h
    }

    fn row(s: &Sample, label: &str) -> String {
        let mut r = format!("| {label} |");
        for (i, v) in s.values.iter().enumerate() {
            let _ = match v {
                None => write!(r, " - |"),
                Some(v) if i == RSS => write!(r, " {:.1} |", v / 1_048_576.0),
                Some(v) => write!(r, " {v} |"),
            };
        }
        let _ = writeln!(r, " {} |", s.client_tasks);
        r
    }

    fn slope_row(&self, half: bool) -> String {
        let mut r = String::from(if half {
            "| slope/h, 2nd half |"
        } else {
            "| slope/h |"
        });
        for i in 0..FIGURES.len() {
            let _ = match self.slope(i, half) {
                None => write!(r, " - |"),
                Some(v) if i == RSS => write!(r, " {:+.1} |", v / 1_048_576.0),
                Some(v) => write!(r, " {v:+.1} |"),
            };
        }
        if half {
            r.push_str(" |\n");
        } else {
            let _ = writeln!(
                r,
                " {} |",
                self.client_task_slope()
                    .map_or("-".to_owned(), |v| format!("{v:+.1}"))
            );
        }
        r
    }

    /// The table of samples (`rows` of them at most, evenly spread, plus the baseline and the
    /// final sample), then the slopes.
    #[must_use]
    pub fn table(&self, rows: usize) -> String {
        let mut t = Self::header();
        t.push_str(&Self::row(&self.baseline, "baseline"));
        let during = self.during();
        let step = during.len().div_ceil(rows.max(1)).max(1);
        for (k, s) in during.iter().enumerate() {
            if k % step == 0 || k + 1 == during.len() {
                t.push_str(&Self::row(s, &format!("{:.0}", s.at.as_secs_f64())));
            }
        }
        t.push_str(&Self::row(
            &self.after,
            &format!("after ({:.0})", self.after.at.as_secs_f64()),
        ));
        t.push_str(&self.slope_row(false));
        t.push_str(&self.slope_row(true));
        t
    }

    /// What the participants saw and what was left after the rooms ended, one line each.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let _ = writeln!(
            s,
            "- server: {}",
            if self.child {
                "the `veil-server` binary in a process of its own: every figure is the server's"
            } else {
                "in the soak's process on a runtime of its own: tasks are the server's; RSS, \
                 descriptors and threads the whole process's (participants included)"
            }
        );
        let _ = writeln!(
            s,
            "- plan: {:.0} s with {} stable participants (audio and video) in one room; a churner \
             (audio) joining it and leaving every {:.0} s; a side room (2 participants, audio) \
             every {:.0} s for {:.0} s; `/metrics` read every {:.0} s; rooms unloaded after {:.0} s \
             idle",
            p.duration.as_secs_f64(),
            p.stable,
            p.churn_every.as_secs_f64(),
            p.side_every.as_secs_f64(),
            p.side_life.as_secs_f64(),
            p.sample_every.as_secs_f64(),
            p.room_idle.as_secs_f64(),
        );
        for l in &self.stable {
            let _ = writeln!(
                s,
                "- {}: {} frames decrypted, {} decrypt failures ({} outside the {} switches), \
                 {} corrupt; final epoch {} with {} members",
                l.name,
                l.frames,
                l.failures_total(),
                self.failures_outside_switches(l),
                self.switches.len(),
                l.corrupt,
                l.last.0.map_or("-".into(), |e| e.to_string()),
                l.last.1,
            );
        }
        let sum = |logs: &[MemberLog], f: fn(&MemberLog) -> u64| logs.iter().map(f).sum::<u64>();
        let _ = writeln!(
            s,
            "- churners: {} joins and leaves, {} frames decrypted, {} decrypt failures, {} corrupt; \
             side rooms: {} created and ended, {} frames decrypted, {} decrypt failures, {} corrupt",
            self.churners.len(),
            sum(&self.churners, |l| l.frames),
            sum(&self.churners, MemberLog::failures_total),
            sum(&self.churners, |l| l.corrupt),
            self.sides.len() / 2,
            sum(&self.sides, |l| l.frames),
            sum(&self.sides, MemberLog::failures_total),
            sum(&self.sides, |l| l.corrupt),
        );
        if let Some((first, last)) = self.base_alone_client_tasks() {
            let _ = writeln!(
                s,
                "- the participants' tasks with the base alone in the call: {first} at first, \
                 {last} at last"
            );
        }
        let left = self.after.room_state_left();
        let _ = writeln!(
            s,
            "- after every room ended: per-room state {} {}; against the baseline: fds {:+}, \
             server tasks {:+}, threads {:+}, client tasks {:+}, RSS {:+.1} MiB",
            if left.is_empty() { "all 0" } else { "LEFT" },
            match (self.idle_after, left.is_empty()) {
                (Some(d), true) => format!("{:.1} s after the last leave", d.as_secs_f64()),
                _ => format!("{left:?}"),
            },
            self.after.get(super::FDS) - self.baseline.get(super::FDS),
            self.after.get(super::TASKS) - self.baseline.get(super::TASKS),
            self.after.get(2) - self.baseline.get(2),
            self.after.client_tasks as i64 - self.baseline.client_tasks as i64,
            (self.after.get(RSS) - self.baseline.get(RSS)) / 1_048_576.0,
        );
        s
    }

    /// RELIABILITY.md's soak section (without its markers); `command` is how it was made.
    #[must_use]
    pub fn section(&self, command: &str) -> String {
        format!(
            "## Soak\n\n\
             A long call with churn, against the server's own figures on `/metrics` \
             (SRV-OBS-01, SOAK-01..04): resident memory, open descriptors and threads of the \
             process, tasks alive on the server's tokio runtime, and the per-room state of both \
             services, in a process of its own (`--server-binary`) or in the soak's (its \
             tasks counted apart; memory, descriptors and threads shared with the \
             participants; the summary says which). \"client tasks\": the participants' \
             runtime's. \"slope/h\": the least-squares slope per hour over the \
             samples taken while the base was in (the second row: their second half, \
             after warm-up); RSS in MiB. A short run is in CI (`tests/tests/e2e/soak.rs`).\n\n\
             Regenerate with `{command}`.\n\n{}\n{}",
            self.table(TABLE_ROWS),
            self.summary(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(epochs: &[(u64, Option<u64>)], failures: &[(u64, u64)]) -> MemberLog {
        let ms = Duration::from_millis;
        MemberLog {
            epochs: epochs.iter().map(|(t, e)| (ms(*t), *e, 3)).collect(),
            failures: failures.iter().map(|(t, n)| (ms(*t), *n)).collect(),
            ..MemberLog::default()
        }
    }

    #[test]
    fn failures_count_outside_a_switch_and_its_slack_only() {
        let sample = Sample::parse(Duration::ZERO, "", 0);
        let mut report = Report {
            child: false,
            plan: Plan::issue(Duration::from_secs(10)),
            baseline: sample.clone(),
            began: Duration::ZERO,
            ended: Duration::ZERO,
            samples: Vec::new(),
            after: sample,
            left_at: Duration::ZERO,
            idle_after: None,
            stable: Vec::new(),
            churners: Vec::new(),
            switches: vec![Duration::from_millis(2_000)],
            sides: Vec::new(),
        };
        // Epoch 1 until 2.5 s, then 2: the switch's window is 2.0 ..= 3.5 s.
        let l = log(
            &[(0, Some(1)), (2_500, Some(2))],
            &[(1_900, 1), (2_100, 2), (3_500, 4), (3_600, 8)],
        );
        assert_eq!(l.failures_total(), 15);
        assert_eq!(report.failures_outside_switches(&l), 9);
        // A switch the member never completed covers the rest of the run.
        report.switches = vec![Duration::from_millis(3_550)];
        assert_eq!(report.failures_outside_switches(&l), 7);
    }
}
