//! The soak, short (issue 23; specs/netem.md SOAK-01..04): three stable participants in
//! one room for 40 s, a churner joining or leaving every 3 s, side rooms created and ended,
//! `/metrics` read every 3 s. The long run is `cargo run -p veil-e2e --example soak -- --minutes
//! 5` (RELIABILITY.md's soak section). Memory is printed, never asserted: a short run's slope
//! is mostly warm-up.

use std::time::Duration;

use veil_e2e::soak::{FDS, Plan, RSS, TASKS, run};

/// Descriptors and tasks may differ from the baseline by this much once every room has ended
/// (a connection the clients' pool is still closing, a timer about to fire).
const MARGIN: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_ended_rooms_leave_no_state_descriptors_or_tasks_behind() {
    let plan = Plan {
        sample_every: Duration::from_secs(3),
        side_every: Duration::from_secs(12),
        side_life: Duration::from_secs(4),
        ..Plan::issue(Duration::from_secs(40))
    };
    let report = run(&plan).await;
    let text = format!("{}\n{}", report.table(100), report.summary());
    eprintln!("{text}");
    eprintln!(
        "RSS slope: {:+.1} MiB/h over the run, {:+.1} MiB/h over its second half (not asserted)",
        report.slope(RSS, false).unwrap_or(0.0) / 1_048_576.0,
        report.slope(RSS, true).unwrap_or(0.0) / 1_048_576.0,
    );

    // The plan happened: churn in the main room, side rooms, enough samples for a slope.
    assert!(report.churners.len() >= 5, "{text}");
    assert!(report.sides.len() >= 4, "{text}");
    assert!(report.during().len() >= 8, "{text}");

    // SOAK-01: the stable members decrypt everyone all along: no decrypt failure outside an
    // epoch switch, nothing corrupt, and they end as one group of themselves.
    for l in &report.stable {
        assert!(l.frames > 0, "{} received nothing\n{text}", l.name);
        assert_eq!(
            report.failures_outside_switches(l),
            0,
            "{} failed to decrypt outside a switch: {:?} at {:?}\n{text}",
            l.name,
            l.reasons,
            l.failures
        );
        assert_eq!(l.corrupt, 0, "{text}");
        assert_eq!(l.last.1, plan.stable, "{text}");
    }
    for l in report.churners.iter().chain(&report.sides) {
        assert!(l.frames > 0, "{} received nothing\n{text}", l.name);
        assert_eq!(l.corrupt, 0, "{text}");
    }

    // SOAK-02: once every room has ended, no per-room state is left in either service.
    assert_eq!(report.after.room_state_left(), vec![], "{text}");
    assert!(report.idle_after.is_some(), "{text}");

    // SOAK-04: the participants hold nothing for tracks and participants gone: with the base
    // alone in the call, their runtime holds as many tasks at the end as at the start (each
    // churner's track used to leave two tasks behind at every stable member, SFU-CLI-05).
    let (first, last) = report
        .base_alone_client_tasks()
        .expect("samples of the base alone");
    assert!(
        last <= first + 4,
        "the participants' tasks grew from {first} to {last} with the same participants\n{text}"
    );

    // SOAK-03: descriptors and the server's tasks are back at their baseline.
    for (i, what) in [(FDS, "open descriptors"), (TASKS, "server tasks")] {
        let (before, after) = (report.baseline.get(i), report.after.get(i));
        assert!(
            (after - before).abs() <= MARGIN,
            "{what}: {before} before, {after} after\n{text}"
        );
    }
}
