//! Durability (KDS-DUR-01..03): the server is SIGKILLed at random points during a join storm
//! and restarted on the same data directory and port. Clients retry and resume. No commit a
//! client saw acknowledged is lost, no epoch has two commits, and everyone converges.

use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use veil_client::group::Group;

use crate::common::{Server, converged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_join_storm_loses_nothing() {
    let seed: u64 = rand::rngs::StdRng::from_os_rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // A long grace: nobody is removed while the server is down.
    let mut server = Server::start(dir.path(), 600_000);
    let room = "storm";
    let alice = Group::create(server.config(room, "alice")).await.unwrap();
    let mut welcomed = Vec::new();
    for i in 0..5 {
        welcomed.push(
            Group::await_welcome(server.config(room, &format!("w{i}")))
                .await
                .unwrap(),
        );
    }
    let alice = std::sync::Arc::new(alice);
    let adder = {
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                alice.add(&[&format!("w{i}")]).await.unwrap();
            }
        })
    };
    let mut external = Vec::new();
    for i in 0..14 {
        let cfg = server.config(room, &format!("x{i}"));
        let delay = Duration::from_millis(rng.random_range(0..400));
        external.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            Group::join_external(cfg).await.unwrap()
        }));
    }
    // Six SIGKILLs at random moments of the storm.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        tokio::task::block_in_place(|| server.restart());
    }
    adder.await.unwrap();
    let mut groups = Vec::new();
    for h in external {
        groups.push(h.await.unwrap());
    }
    let names: Vec<String> = std::iter::once("alice".to_owned())
        .chain((0..5).map(|i| format!("w{i}")))
        .chain((0..14).map(|i| format!("x{i}")))
        .collect();
    let mut all: Vec<&Group> = vec![&alice];
    all.extend(welcomed.iter());
    all.extend(groups.iter());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let epoch = converged(&all, &name_refs).await;
    assert_eq!(epoch, 19, "one commit per joiner, no more");

    // The log: exactly one commit per epoch 0..19, and every acknowledged commit is in it.
    let log: Vec<(u64, String)> = crate::common::store(dir.path())
        .log_page(room, 0, 0, u64::MAX >> 1, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == veil_keys::store::EventKind::Commit)
        .map(|e| (e.epoch, e.actor))
        .collect();
    let epochs: Vec<u64> = log.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs, (0..19).collect::<Vec<_>>());
    for (g, me) in all.iter().zip(&names) {
        for e in &g.status().acknowledged {
            assert!(
                log.contains(&(*e, me.clone())),
                "{me}'s acknowledged commit of epoch {e} is not in the log: {log:?}"
            );
        }
    }
    let acked: usize = all.iter().map(|g| g.status().acknowledged.len()).sum();
    assert_eq!(acked, 19, "every commit acknowledged exactly once");
}
