//! Replicas racing on one PostgreSQL database (issue 25): two stores, two connections, many
//! rounds. KDS-ORD-02: exactly one commit per room and epoch; KDS-KP-04: a KeyPackage is
//! handed out at most once; KDS-DUR-04: replicas opening a fresh database together migrate it
//! once.

use std::sync::{Arc, Barrier};

use veil_keys::error::KdsError;
use veil_keys::store::{EventKind, PostgresStore, RoomRecord, Store};

use crate::common::{event, kp, pg_database, room};

const ROUNDS: u64 = 200;

/// Two replicas on one fresh database, each opened on its own thread at the same moment.
fn replicas() -> [Arc<PostgresStore>; 2] {
    let url = pg_database();
    let go = Arc::new(Barrier::new(2));
    let open = |_| {
        let (url, go) = (url.clone(), go.clone());
        std::thread::spawn(move || {
            go.wait();
            Arc::new(PostgresStore::open(&url).unwrap())
        })
    };
    let [a, b] = [0, 1].map(open);
    [a.join().unwrap(), b.join().unwrap()]
}

/// Run `f(replica, round)` on both replicas at once, `ROUNDS` times; the results per round.
fn race<T: Send + 'static>(
    stores: &[Arc<PostgresStore>; 2],
    f: impl Fn(&PostgresStore, usize, u64) -> T + Send + Sync + 'static,
) -> Vec<[T; 2]> {
    let f = Arc::new(f);
    let go = Arc::new(Barrier::new(2));
    let handles = [0, 1].map(|i| {
        let (s, f, go) = (stores[i].clone(), f.clone(), go.clone());
        std::thread::spawn(move || {
            (0..ROUNDS)
                .map(|round| {
                    go.wait();
                    f(&s, i, round)
                })
                .collect::<Vec<T>>()
        })
    });
    let [a, b] = handles.map(|h| h.join().unwrap());
    a.into_iter().zip(b).map(|(x, y)| [x, y]).collect()
}

#[test]
fn replicas_racing_one_epoch_commit_exactly_once_each_time() {
    let stores = replicas();
    stores[0].create_room(&room("r")).unwrap();
    // Round k: the room is at epoch k; each replica commits its own commit for epoch k at log
    // position k + 1, as two replicas with the same in-memory state would.
    let results = race(&stores, |s, replica, epoch| {
        let mut commit = event(EventKind::Commit, epoch + 1, epoch, 8);
        commit.actor = format!("replica{replica}");
        let next = RoomRecord {
            epoch: epoch + 1,
            next_seq: epoch + 2,
            group_info: vec![replica as u8],
            ..room("r")
        };
        s.append(&next, &[commit], &[])
    });
    for (epoch, [a, b]) in (0..).zip(&results) {
        let won: Vec<usize> = [a, b]
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.is_ok().then_some(i))
            .collect();
        assert_eq!(won.len(), 1, "epoch {epoch}: {a:?} {b:?}");
        let lost = if won[0] == 0 { b } else { a };
        assert!(
            matches!(lost, Err(KdsError::EpochTaken { epoch: e }) if *e == epoch),
            "epoch {epoch}: {lost:?}"
        );
        // The stored commit and the room row are the winner's, seen from either replica.
        let stored = stores[1 - won[0]].commit_at("r", epoch).unwrap().unwrap();
        assert_eq!(stored.actor, format!("replica{}", won[0]));
    }
    let r = stores[1].room("r").unwrap().unwrap();
    assert_eq!((r.epoch, r.next_seq), (ROUNDS, ROUNDS + 1));
    let log = stores[0]
        .log_page("r", 0, 0, u64::MAX >> 1, usize::MAX)
        .unwrap();
    assert_eq!(log.len() as u64, ROUNDS, "one commit per epoch, in order");
    assert!(
        log.iter()
            .zip(1..)
            .all(|(e, seq)| e.seq == seq && e.epoch == seq - 1)
    );
}

#[test]
fn replicas_racing_one_key_package_hand_it_out_once() {
    let stores = replicas();
    // Identity idk has one single-use KeyPackage; in round k both replicas claim it, for
    // different claimers, at the same moment.
    for round in 0..ROUNDS {
        stores[round as usize % 2]
            .add_key_packages("r", &format!("id{round}"), &[kp(round as u8, false)], 8)
            .unwrap();
    }
    let results = race(&stores, |s, replica, round| {
        s.claim_key_package("r", &format!("id{round}"), &format!("claimer{replica}"))
            .unwrap()
    });
    for (round, [a, b]) in (0..).zip(&results) {
        let got: Vec<_> = [a, b].into_iter().flatten().collect();
        assert_eq!(got, [&vec![round as u8; 4]], "round {round}: {a:?} {b:?}");
        // Taken for good: a third claimer finds nothing.
        assert_eq!(
            stores[1]
                .claim_key_package("r", &format!("id{round}"), "late")
                .unwrap(),
            None
        );
    }
}

#[test]
fn one_claimer_asking_two_replicas_at_once_gets_one_key_package() {
    let stores = replicas();
    let tags: Vec<_> = (0..=255u8).map(|t| kp(t, false)).collect();
    stores[0].add_key_packages("r", "bob", &tags, 1000).unwrap();
    // Round k: claimer k asks both replicas at the same moment (a retry racing its first
    // try); both answers are the same KeyPackage, and only one is gone (KDS-KP-04).
    let results = race(&stores, |s, _, round| {
        s.claim_key_package("r", "bob", &format!("claimer{round}"))
            .unwrap()
            .map(|m| m[0])
    });
    for (round, [a, b]) in (0..).zip(&results) {
        assert!(a.is_some() && a == b, "round {round}: {a:?} {b:?}");
    }
    let mut got: Vec<u8> = results.iter().filter_map(|[a, _]| *a).collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len() as u64, ROUNDS, "each claimer took one of its own");
}

#[test]
fn replicas_racing_many_claims_of_one_identity_hand_each_out_once() {
    let stores = replicas();
    let tags: Vec<_> = (0..=255u8).map(|t| kp(t, false)).collect();
    // Cap above the 256 uploaded, so all of them stay.
    stores[0].add_key_packages("r", "bob", &tags, 1000).unwrap();
    let results = race(&stores, |s, replica, round| {
        s.claim_key_package("r", "bob", &format!("c{replica}-{round}"))
            .unwrap()
            .map(|m| m[0])
    });
    let mut got: Vec<u8> = results.iter().flatten().flatten().copied().collect();
    let n = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), n, "a KeyPackage handed out twice");
    assert_eq!(n, 256, "every claim got one while any was left");
}
