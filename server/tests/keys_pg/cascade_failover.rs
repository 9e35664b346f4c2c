//! A room that spans two SFU nodes, and one node killed (SFU-CAS-01..07): two `veil-server`
//! processes on one PostgreSQL database, each a key-service replica and an SFU node. Alice and
//! bob connect to the first node, carol to the second (each participant names its own SFU
//! nodes, `RoomConfig::sfu_url`); the nodes find each other in the database and relay the room
//! over a node-to-node leg, so everyone hears everyone. Then carol's node is SIGKILLed: carol
//! fails over to the next URL of her list, and everyone hears everyone again on the same MLS
//! epoch.

use std::path::Path;
use std::time::{Duration, Instant};

use veil_client::link::Link;
use veil_client::room::{Room, RoomConfig};
use veil_testkit::peer::{Peer, all_hear_after};

use crate::common::{Server, replica_of};

const ROOM: &str = "cascaded";

/// A participant publishing audio, with the key service at `keys` and the SFU nodes `sfu`
/// (both comma lists).
async fn join(keys: &str, sfu: &str, token: &str, name: &str) -> Peer {
    let mut cfg = RoomConfig::new(keys, token, ROOM, name);
    cfg.sfu_url = sfu.to_owned();
    cfg.group.proposal_commit_delay = Duration::from_millis(100);
    Peer::start(Room::join(cfg).await.unwrap())
}

/// Wait until every peer decrypted a frame of every other after `since`.
async fn all_hear(peers: &[(&str, &Peer)], since: Instant, what: &str) -> Duration {
    all_hear_after(peers, since, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            let heard: Vec<_> = peers.iter().map(|(n, p)| (*n, p.heard())).collect();
            panic!("{what}: not everyone heard everyone; last heard: {heard:?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_two_sfu_nodes_and_survives_one_of_them() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    let mut rs = vec![Server::start(paths[0], 600_000)];
    replica_of(paths[1], paths[0]);
    rs.push(Server::start(paths[1], 600_000));
    let (a, b) = (rs[0].url.clone(), rs[1].url.clone());
    let (ab, ba) = (format!("{a},{b}"), format!("{b},{a}"));

    let alice = join(&ab, &ab, &rs[0].token(ROOM, "alice"), "alice").await;
    let bob = join(&ab, &ab, &rs[0].token(ROOM, "bob"), "bob").await;
    let carol = join(&ba, &ba, &rs[0].token(ROOM, "carol"), "carol").await;
    let all = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
    let took = all_hear(&all, Instant::now(), "across two nodes").await;
    eprintln!("everyone heard everyone across the leg {took:?} after carol joined");
    let epoch = carol.epoch();
    assert!(epoch.is_some());
    assert_eq!(alice.epoch(), epoch);

    // Carol's node (and her key-service replica) dies; she moves to the first node.
    rs[1].kill();
    let killed = Instant::now();
    // Frames heard from 2 s after the kill on: none can be one the dead node forwarded
    // before it died, still on its way.
    let after = killed + Duration::from_secs(2);
    tokio::time::sleep_until(after.into()).await;
    all_hear(&all, after, "after carol's node died").await;
    eprintln!(
        "everyone heard everyone again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        carol.saw(Link::Sfu),
        (true, true),
        "carol's SFU link was lost and came back"
    );
    assert_eq!(
        alice.saw(Link::Sfu),
        (false, false),
        "alice's node lived on"
    );
    for (name, p) in all {
        assert_eq!(
            p.epoch(),
            epoch,
            "{name}: no new MLS epoch for a node's death"
        );
    }
}
