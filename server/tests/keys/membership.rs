//! A room's life: create, 9 joins (Welcome and external commit, concurrently), leaves, a
//! vanished member timed out; everyone ends on one epoch with one authenticator.

use std::time::{Duration, Instant};

use veil_client::group::Group;

use crate::common::{Server, converged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_members_join_and_leave_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1500);
    let room = "standup";

    let alice = Group::create(server.config(room, "alice")).await.unwrap();
    assert_eq!(alice.status().epoch, Some(0));

    // Five join by Welcome: they publish KeyPackages and wait; alice adds them in two commits.
    let mut welcomed = Vec::new();
    for name in ["bob", "carol", "dave", "erin", "frank"] {
        welcomed.push(
            Group::await_welcome(server.config(room, name))
                .await
                .unwrap(),
        );
    }
    alice.add(&["bob", "carol"]).await.unwrap();
    // Four join by external commit at the same time as alice's second add.
    let ext = ["grace", "heidi", "ivan", "judy"].map(|n| {
        let cfg = server.config(room, n);
        tokio::spawn(async move { Group::join_external(cfg).await.unwrap() })
    });
    alice.add(&["dave", "erin", "frank"]).await.unwrap();
    let mut external = Vec::new();
    for h in ext {
        external.push(h.await.unwrap());
    }
    let all = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    ];
    let groups: Vec<&Group> = std::iter::once(&alice)
        .chain(welcomed.iter())
        .chain(external.iter())
        .collect();
    let epoch = converged(&groups, &all).await;
    // 1 create + 2 adds + 4 external commits.
    assert_eq!(epoch, 6);

    // Two leave politely; the service proposes their removal, a remaining member commits it.
    let carol = welcomed.remove(1);
    let grace = external.remove(0);
    carol.leave().await.unwrap();
    grace.leave().await.unwrap();
    // One vanishes without a word: its stream closes, the grace runs out, it is removed.
    let judy = external.pop().unwrap();
    let vanished = Instant::now();
    judy.vanish();
    let remaining = ["alice", "bob", "dave", "erin", "frank", "heidi", "ivan"];
    let groups: Vec<&Group> = std::iter::once(&alice)
        .chain(welcomed.iter())
        .chain(external.iter())
        .collect();
    let end = converged(&groups, &remaining).await;
    let took = vanished.elapsed();
    assert!(end > epoch);
    // The departure bound: grace (1.5 s) plus a commit round; generous for a loaded CI.
    assert!(took < Duration::from_secs(15), "removal took {took:?}");

    let m = server.scrape().await;
    assert!(server.get("/healthz").await.ends_with("ok\n"));
    assert!(m.contains("veil_keys_rooms 1"), "{m}");
    assert!(m.contains("veil_keys_members 7"), "{m}");
    assert!(m.contains("veil_keys_proposals_total"), "{m}");
}
