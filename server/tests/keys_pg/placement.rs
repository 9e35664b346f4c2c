//! Rooms placed on SFU nodes (KDS-PLACE-01/02): two `veil-server` processes on one PostgreSQL
//! database, each a key-service replica and an SFU node. Two participants who list the
//! replicas in opposite orders still meet on one node; when that node is killed, both move to
//! the other by themselves and hear each other again on the same MLS epoch.

use std::path::Path;
use std::time::{Duration, Instant};

use veil_client::keys::KeyClient;
use veil_client::room::{Room, RoomConfig};
use veil_testkit::peer::{Peer, all_hear_after};

use crate::common::{Server, replica_of};

const ROOM: &str = "placed";

/// A participant publishing audio, listing the key-service replicas `urls`.
async fn join(urls: &str, token: &str, identity: &str) -> Peer {
    let mut cfg = RoomConfig::new(urls, token, ROOM, identity);
    cfg.group.proposal_commit_delay = Duration::from_millis(100);
    Peer::start(Room::join(cfg).await.unwrap())
}

/// Wait until alice and bob each decrypted a frame of the other after `since`.
async fn both_hear(alice: &Peer, bob: &Peer, since: Instant, what: &str) -> Duration {
    all_hear_after(
        &[("alice", alice), ("bob", bob)],
        since,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|| panic!("{what}: alice and bob never heard each other"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_meets_on_one_sfu_node_and_moves_on_when_it_dies() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    let mut rs = vec![Server::start(paths[0], 600_000)];
    replica_of(paths[1], paths[0]);
    rs.push(Server::start(paths[1], 600_000));
    let (a, b) = (rs[0].url.clone(), rs[1].url.clone());

    let alice = join(&format!("{a},{b}"), &rs[0].token(ROOM, "alice"), "alice").await;
    let bob = join(&format!("{b},{a}"), &rs[0].token(ROOM, "bob"), "bob").await;
    both_hear(&alice, &bob, Instant::now(), "on the first node").await;
    let epoch = alice.epoch();
    assert!(epoch.is_some());

    // Both asked different replicas; the database placed the room once.
    let mut ka = KeyClient::connect(&a, &rs[0].token(ROOM, "alice"), ROOM)
        .await
        .unwrap();
    let mut kb = KeyClient::connect(&b, &rs[0].token(ROOM, "bob"), ROOM)
        .await
        .unwrap();
    let node = ka.placement().await.unwrap();
    assert_eq!(kb.placement().await.unwrap(), node);
    let dead = rs
        .iter()
        .position(|r| r.url == node)
        .expect("placed on a replica");

    rs[dead].kill();
    let killed = Instant::now();
    let took = both_hear(&alice, &bob, killed, "after the node died").await;
    eprintln!("media back on the other node {took:?} after the kill");
    let live = &rs[1 - dead];
    let mut k = KeyClient::connect(&live.url, &live.token(ROOM, "alice"), ROOM)
        .await
        .unwrap();
    assert_eq!(
        k.placement().await.unwrap(),
        live.url,
        "placed again on the live node"
    );
    assert_eq!(alice.epoch(), epoch, "no new MLS epoch for a new SFU node");
    assert_eq!(bob.epoch(), epoch);
}
