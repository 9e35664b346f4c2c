//! What every store keeps (KDS-DUR-01, KDS-ORD-02, KDS-KP-03, KDS-LIM-04, KDS-GC-03,
//! KDS-REP-01), one check per behaviour, each run against SQLite and PostgreSQL.

use veil_keys::error::KdsError;
use veil_keys::store::{EventKind, RoomRecord, Store};

use crate::common::{both_stores, event, kp, room};

both_stores!(
    key_packages_single_use_first_last_resort_kept,
    key_package_cap_rolls_the_whole_upload_back,
    one_commit_per_epoch_even_past_the_room_lock,
    log_pages_end_at_the_byte_budget,
    welcomes_commits_and_deletion,
    meta_init_keeps_the_first_value,
    a_replica_reads_every_event_it_missed,
);

fn key_packages_single_use_first_last_resort_kept(s: &dyn Store) {
    let n = s
        .add_key_packages("r", "bob", &[kp(1, false), kp(9, true), kp(2, false)], 64)
        .unwrap();
    assert_eq!(n, 3);
    let claims: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|claimer| s.claim_key_package("r", "bob", claimer).unwrap().unwrap()[0])
        .collect();
    assert_eq!(claims, [1, 2, 9, 9]);
    // A claimer asking again (its reply was lost) gets the same single-use KeyPackage.
    assert_eq!(s.claim_key_package("r", "bob", "a").unwrap().unwrap()[0], 1);
    assert_eq!(s.claim_key_package("r", "bob", "b").unwrap().unwrap()[0], 2);
    // Every hand-out is recorded for this room only.
    for tag in [1, 2, 9] {
        assert_eq!(
            s.claimed_key_package("r", &[tag; 16]).unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(s.claimed_key_package("other", &[tag; 16]).unwrap(), None);
    }
    assert_eq!(s.claim_key_package("r", "carol", "a").unwrap(), None);
    // A new last-resort KeyPackage replaces the old one; the hand-out record stays.
    s.add_key_packages("r", "bob", &[kp(8, true)], 64).unwrap();
    assert_eq!(s.claim_key_package("r", "bob", "e").unwrap().unwrap()[0], 8);
    assert_eq!(
        s.claimed_key_package("r", &[9; 16]).unwrap().as_deref(),
        Some("bob")
    );
}

fn key_package_cap_rolls_the_whole_upload_back(s: &dyn Store) {
    s.add_key_packages("r", "bob", &[kp(1, false), kp(2, false)], 3)
        .unwrap();
    let e = s
        .add_key_packages("r", "bob", &[kp(3, false), kp(4, false)], 3)
        .unwrap_err();
    assert!(matches!(e, KdsError::TooManyKeyPackages { cap: 3 }));
    let first = s.claim_key_package("r", "bob", "x").unwrap().unwrap();
    let second = s.claim_key_package("r", "bob", "y").unwrap().unwrap();
    assert_eq!((first[0], second[0]), (1, 2));
    assert_eq!(s.claim_key_package("r", "bob", "z").unwrap(), None);
}

fn one_commit_per_epoch_even_past_the_room_lock(s: &dyn Store) {
    let room = room("r");
    s.create_room(&room).unwrap();
    assert!(matches!(s.create_room(&room), Err(KdsError::RoomExists(_))));
    let next = RoomRecord {
        epoch: 1,
        next_seq: 2,
        ..room.clone()
    };
    s.append(&next, &[event(EventKind::Commit, 1, 0, 4)], &[])
        .unwrap();
    // A second commit for epoch 0 (as a second replica would try) is refused, and the room
    // row is untouched.
    let bad = RoomRecord {
        epoch: 1,
        next_seq: 3,
        group_info: vec![9],
        ..room
    };
    assert!(matches!(
        s.append(&bad, &[event(EventKind::Commit, 2, 0, 4)], &[]),
        Err(KdsError::EpochTaken { epoch: 0 })
    ));
    assert_eq!(s.rooms().unwrap(), vec![next.clone()]);
    assert_eq!(s.room("r").unwrap(), Some(next));
    assert_eq!(s.log_page("r", 0, 0, 10, usize::MAX).unwrap().len(), 1);
}

/// Rooms `r` at epoch 3 after commits in epochs 0..3, a proposal and a Welcome.
fn three_epochs(s: &dyn Store) {
    s.create_room(&room("r")).unwrap();
    let events = [
        event(EventKind::Commit, 1, 0, 10),
        event(EventKind::Welcome, 2, 1, 10),
        event(EventKind::Proposal, 3, 1, 10),
        event(EventKind::Commit, 4, 1, 10),
        event(EventKind::Commit, 5, 2, 10),
    ];
    let last = RoomRecord {
        epoch: 3,
        next_seq: 6,
        ..room("r")
    };
    s.append(&last, &events, &[]).unwrap();
}

fn log_pages_end_at_the_byte_budget(s: &dyn Store) {
    three_epochs(s);
    let seqs = |page: Vec<veil_keys::store::Event>| page.iter().map(|e| e.seq).collect::<Vec<_>>();
    // The page ends with the event that brings it to the budget or past it.
    assert_eq!(seqs(s.log_page("r", 0, 0, 10, 15).unwrap()), [1, 3]);
    assert_eq!(seqs(s.log_page("r", 0, 0, 10, 20).unwrap()), [1, 3]);
    assert_eq!(seqs(s.log_page("r", 0, 0, 10, 21).unwrap()), [1, 3, 4]);
    // At least one event while any is left, even under a budget of one byte.
    assert_eq!(seqs(s.log_page("r", 0, 3, 10, 1).unwrap()), [4]);
    // Bounds: epoch, after, up_to; Welcomes are never in a replay.
    assert_eq!(seqs(s.log_page("r", 1, 0, 10, 1000).unwrap()), [3, 4, 5]);
    assert_eq!(seqs(s.log_page("r", 0, 1, 4, 1000).unwrap()), [3, 4]);
    assert!(s.log_page("r", 0, 5, 10, 1000).unwrap().is_empty());
    let page = s.log_page("r", 0, 0, 1, 1000).unwrap();
    assert_eq!(page, vec![event(EventKind::Commit, 1, 0, 10)]);
}

fn welcomes_commits_and_deletion(s: &dyn Store) {
    three_epochs(s);
    s.add_key_packages("r", "bob", &[kp(1, false)], 8).unwrap();
    let w = s.latest_welcome("r", "bob", 10).unwrap().unwrap();
    assert_eq!(
        (w.seq, w.kind, w.recipient.as_deref()),
        (2, EventKind::Welcome, Some("bob"))
    );
    assert_eq!(s.latest_welcome("r", "bob", 1).unwrap(), None);
    assert_eq!(s.latest_welcome("r", "carol", 10).unwrap(), None);
    assert_eq!(s.commit_at("r", 1).unwrap().unwrap().seq, 4);
    assert_eq!(s.commit_at("r", 3).unwrap(), None);
    assert!(s.delete_room("r").unwrap());
    assert!(!s.delete_room("r").unwrap());
    assert_eq!(s.room("r").unwrap(), None);
    assert!(s.log_page("r", 0, 0, 10, 1000).unwrap().is_empty());
    assert_eq!(s.claim_key_package("r", "bob", "x").unwrap(), None);
    // The name can be used again.
    s.create_room(&room("r")).unwrap();
}

fn meta_init_keeps_the_first_value(s: &dyn Store) {
    assert_eq!(s.meta("k").unwrap(), None);
    assert_eq!(s.meta_init("k", b"one").unwrap(), b"one");
    assert_eq!(s.meta_init("k", b"two").unwrap(), b"one");
    assert_eq!(s.meta("k").unwrap().as_deref(), Some(&b"one"[..]));
}

/// KDS-REP-01: what a replica reads when another one wrote: the room's position, then every
/// event between its own and that one, Welcomes included, in log order.
fn a_replica_reads_every_event_it_missed(s: &dyn Store) {
    assert_eq!(s.next_seq("r").unwrap(), None);
    three_epochs(s);
    assert_eq!(s.next_seq("r").unwrap(), Some(6));
    // The sweep's one read (KDS-REP-02): the rooms that exist, with their positions.
    s.create_room(&room("q")).unwrap();
    let names = ["r", "q", "gone"].map(String::from);
    let heads = s.next_seqs(&names).unwrap();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_eq!((heads["r"], heads["q"]), (6, 1));
    assert!(s.next_seqs(&[]).unwrap().is_empty());
    let seqs = |after, before| -> Vec<(u64, EventKind)> {
        s.events("r", after, before)
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.kind))
            .collect()
    };
    assert_eq!(
        seqs(1, 6),
        [
            (2, EventKind::Welcome),
            (3, EventKind::Proposal),
            (4, EventKind::Commit),
            (5, EventKind::Commit)
        ]
    );
    assert_eq!(seqs(0, 2), [(1, EventKind::Commit)]);
    assert!(seqs(5, 6).is_empty());
    let w = &s.events("r", 1, 3).unwrap()[0];
    assert_eq!(w, &event(EventKind::Welcome, 2, 1, 10));
}
