//! Replicas of the key service on one PostgreSQL database (specs/key-service.md §5.2,
//! KDS-REP-01..04): real `veil-server` processes, members spread over them.

use std::path::Path;
use std::time::Duration;

use veil_client::group::{Group, GroupConfig};
use veil_keys::store::EventKind;

use crate::common::{Server, converged, replica_of, store};
use crate::race::{RawMember, one_round};

/// `n` replicas sharing the first one's database and token key, each with departure grace
/// `grace_ms`.
fn replicas(dirs: &[&Path], grace_ms: u64) -> Vec<Server> {
    let first = Server::start(dirs[0], grace_ms);
    let mut out = vec![first];
    for dir in &dirs[1..] {
        replica_of(dir, dirs[0]);
        out.push(Server::start(dir, grace_ms));
    }
    out
}

/// KDS-REP-01/02, KDS-ORD-02: nine members on three replicas, 20 times each builds a commit
/// on the same epoch and all nine go out at once. The database accepts exactly one per epoch;
/// every member learns the winner from its own replica's stream, in one order, and all end in
/// the same epoch with the same authenticator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_over_three_replicas_one_winner_one_order() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    let rs = replicas(&paths, 600_000);
    let room = "ward";
    let mut members = vec![RawMember::creator(&rs[0], room, "m0").await];
    for i in 1..9 {
        // Each joins through its own replica, after the previous join was accepted on another.
        let m = RawMember::external(&rs[i % 3], room, &format!("m{i}")).await;
        let epoch = m.s.epoch().unwrap();
        for other in &mut members {
            other.catch_up(epoch).await;
        }
        members.push(m);
    }
    let mut epoch = members[0].s.epoch().unwrap();
    assert_eq!(epoch, 8);
    for trial in 0..20 {
        // Each member learns the winner from its own replica's stream, wherever it won.
        epoch = one_round(&mut members, epoch, trial).await;
    }
    // One commit per epoch in the shared log, the winner's each time.
    let st = store(paths[0]);
    for e in 0..epoch {
        let c = st
            .commit_at(room, e)
            .unwrap()
            .expect("a commit in every epoch");
        assert_eq!(c.kind, EventKind::Commit);
    }
    assert!(st.commit_at(room, epoch).unwrap().is_none());
}

fn config(url: &str, server: &Server, room: &str, identity: &str) -> GroupConfig {
    let mut c = GroupConfig::new(url, &server.token(room, identity), room, identity);
    c.proposal_commit_delay = Duration::from_millis(100);
    c
}

/// KDS-REP-04 and KDS-DUR-01 across replicas: three SDK members given both replicas' URLs
/// (two starting on the first replica), the first replica killed with SIGKILL mid-call. Its
/// members move to the second by themselves; every commit acknowledged before the kill is
/// in the shared log, commits go on after it, and nobody forks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_s_members_continue_through_another() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    let mut rs = replicas(&paths, 600_000);
    let (a, b) = (rs[0].url.clone(), rs[1].url.clone());
    let first_then_second = format!("{a},{b}");
    let second_then_first = format!("{b},{a}");
    let room = "clinic";
    let alice = Group::create(config(&first_then_second, &rs[0], room, "alice"))
        .await
        .unwrap();
    let bob = Group::join_external(config(&second_then_first, &rs[0], room, "bob"))
        .await
        .unwrap();
    let carol = Group::join_external(config(&first_then_second, &rs[0], room, "carol"))
        .await
        .unwrap();
    let all = [&alice, &bob, &carol];
    converged(&all, &["alice", "bob", "carol"]).await;
    let mut acked = Vec::new();
    for g in &all {
        acked.push(g.self_update().await.unwrap());
    }
    converged(&all, &["alice", "bob", "carol"]).await;

    rs[0].kill();
    // Alice and carol were on the killed replica: their next commits find it gone, move to
    // the second one and are accepted there; bob's stream never broke.
    acked.push(alice.self_update().await.unwrap());
    acked.push(carol.self_update().await.unwrap());
    acked.push(bob.self_update().await.unwrap());
    let end = converged(&all, &["alice", "bob", "carol"]).await;
    assert_eq!(end, *acked.iter().max().unwrap());
    for w in acked.windows(2) {
        assert!(w[1] > w[0], "acknowledged epochs go up: {acked:?}");
    }
    let st = store(paths[1]);
    for e in &acked {
        let c = st.commit_at(room, e - 1).unwrap();
        assert!(
            c.is_some(),
            "the commit acknowledged as epoch {e} is in the log"
        );
    }
    drop(rs);
}

/// KDS-REP-03: a member whose stream is on one replica is not removed by another replica
/// that holds the room with no stream of it; once its replica dies and its lease runs out,
/// the other replica proposes its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_another_replica_keeps_a_member_until_its_lease_ends() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    // A departure grace of 1 s: far shorter than the wait below.
    let mut rs = replicas(&paths, 1_000);
    let room = "lab";
    let alice = Group::create(config(&rs[0].url, &rs[0], room, "alice"))
        .await
        .unwrap();
    let bob = Group::join_external(config(&rs[1].url, &rs[1], room, "bob"))
        .await
        .unwrap();
    let epoch = converged(&[&alice, &bob], &["alice", "bob"]).await;
    // Replica 0 holds the room (alice's stream) and has no stream of bob; replica 1 has.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        converged(&[&alice, &bob], &["alice", "bob"]).await,
        epoch,
        "nobody was removed while bob's stream was open on the other replica"
    );
    // Bob's replica dies (and bob with it): its lease runs out and replica 0 removes him.
    bob.vanish();
    rs[1].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = alice.status();
        if st.members == ["alice"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob was never removed: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
