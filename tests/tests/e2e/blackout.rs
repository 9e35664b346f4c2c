//! A participant whose network disappears for 10 s and comes back (issue 23; specs/sfu.md
//! SFU-CLI-01..04): bob's media path through the relay goes black, his SDK notices the dead
//! connection and keeps reconnecting by itself; once the path is back, alice and bob hear each
//! other again on the epoch they had, with no user action (the scenario:
//! `veil_e2e::outage`).

use std::time::Duration;

use veil_e2e::outage::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_by_itself_after_a_10_s_network_outage() {
    let o = run(Duration::from_secs(10)).await;
    eprintln!("{}", o.table());
    assert!(
        o.last_heard_after_cut < Duration::from_secs(1),
        "the outage cut bob's media: {o:?}"
    );
    let back = o
        .back_after
        .unwrap_or_else(|| panic!("media never came back: {o:?}"));
    eprintln!("media back {back:?} after the network returned");
    assert_eq!(
        o.bob_reconnected,
        (true, true),
        "bob's SDK reported the SFU lost and reconnected by itself: {o:?}"
    );
    let (before, alice, bob) = o.epochs;
    assert!(before.is_some(), "{o:?}");
    assert_eq!(
        (alice, bob),
        (before, before),
        "same MLS epoch: nobody was removed"
    );
    assert_eq!(o.decrypt_failures, (0, 0), "{o:?}");
}
