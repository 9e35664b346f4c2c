//! The impaired call, short (specs/netem.md NETEM-CALL-01..03; issue 23): four participants for
//! 24 s, every leg through the userspace relay with 5 % loss, 50 ± 20 ms, 1 % reordering and
//! 1 % duplication each way, dave joining and carol leaving, and a 2 s burst of 20 % loss. The
//! full-length run is `cargo run -p veil-e2e --example reliability -- impaired`
//! (RELIABILITY.md).

use std::time::Duration;

use veil_e2e::impaired::{NAMES, Plan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_participants_through_a_lossy_relay_with_a_join_a_leave_and_a_burst() {
    let plan = Plan::issue(Duration::from_secs(24), 23);
    let report = run(&plan).await;
    let table = report.table();
    eprintln!("{table}");

    // NETEM-CALL-01: everyone decrypts everyone they shared the call with, and nothing wrong
    // gets through: no decrypt failure outside an epoch switch, no replay, no corrupt frame.
    for (r, log) in report.rows.iter().zip(&report.logs) {
        for (p, n) in r.decrypted_from.iter().enumerate() {
            if p != log.who {
                assert!(
                    *n > 0,
                    "{} decrypted nothing from {}\n{table}",
                    r.name,
                    NAMES[p]
                );
            }
        }
        assert!(r.sent > 0 && r.received > 0, "{table}");
        // On failure, say why the frames did not decrypt (by reason, per received track) and
        // when (seconds into the call, running total).
        let reasons: Vec<_> = log
            .stats
            .received
            .values()
            .filter(|t| !t.decrypt_failures.is_empty())
            .map(|t| &t.decrypt_failures)
            .collect();
        assert_eq!(
            r.failures_outside_switches, 0,
            "{}: reasons {reasons:?}, at {:?}\n{table}",
            r.name, log.failures
        );
        assert_eq!(r.replays_accepted, 0, "{}\n{table}", r.name);
        assert_eq!(r.corrupt, 0, "{}\n{table}", r.name);
        assert_eq!(log.unknown, 0, "{}\n{table}", r.name);
    }
    // Every epoch switch completed, and those who stayed end in one epoch of three.
    assert_eq!(report.switches.len(), 2);
    for s in &report.switches {
        assert!(s.completed.is_some(), "{s:?}\n{table}");
    }
    let stayers: Vec<_> = report.rows.iter().filter(|r| r.name != "carol").collect();
    assert!(
        stayers
            .iter()
            .all(|r| r.final_epoch == stayers[0].final_epoch && r.final_epoch.1 == 3),
        "{table}"
    );

    // NETEM-CALL-02: the impairment happened (both ways), and the repairs are visible: NACKs
    // sent, retransmissions received and used by the SFU and sent by it, key-frame requests
    // sent to publishers (a joiner's subscriptions) and answered.
    let (up, down) = report.relay;
    for c in [up, down] {
        assert!(c.lost > 0 && c.duplicated > 0 && c.reordered > 0, "{table}");
    }
    let f = report.sfu;
    assert!(f.rtx_in_unwrapped > 0 && f.rtx_out_resent > 0, "{table}");
    assert!(
        report.rows.iter().map(|r| r.nacks).sum::<u64>() > 0,
        "{table}"
    );
    assert!(
        report.rows.iter().map(|r| r.retransmitted).sum::<u64>() > 0,
        "{table}"
    );
    assert!(f.plis_to_publishers > 0, "{table}");
    assert!(
        report
            .rows
            .iter()
            .map(|r| r.key_frame_requests)
            .sum::<u64>()
            > 0,
        "{table}"
    );

    // NETEM-CALL-03: after the burst, fresh audio and video from every publisher reach every
    // receiver within 3 s.
    assert_eq!(report.recoveries.len(), 1);
    for r in &report.recoveries {
        let worst = r.worst.unwrap_or_else(|| panic!("no recovery\n{table}"));
        assert!(worst <= Duration::from_secs(3), "{worst:?}\n{table}");
    }
}
