//! Rooms placed on SFU nodes (KDS-PLACE-01/02): two `veil-server` processes on one PostgreSQL
//! database, each a key-service replica and an SFU node. Two participants who list the
//! replicas in opposite orders still meet on one node; when that node is killed, both move to
//! the other by themselves and hear each other again on the same MLS epoch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use veil_client::keys::KeyClient;
use veil_client::room::{Room, RoomConfig};

use crate::common::{Server, replica_of};

const ROOM: &str = "placed";

/// One participant publishing audio every 20 ms, and when it last heard each other one.
struct Peer {
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    status: tokio::sync::watch::Receiver<veil_client::group::GroupStatus>,
    _stop: oneshot::Sender<()>,
}

impl Peer {
    async fn join(urls: &str, token: &str, identity: &str) -> Self {
        let mut cfg = RoomConfig::new(urls, token, ROOM, identity);
        cfg.group.proposal_commit_delay = Duration::from_millis(100);
        let mut room = Room::join(cfg).await.unwrap();
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let status = room.group().watch_status();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let h = heard.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {
                        n += 1;
                        // Refused while the SFU is away.
                        let _ = room.publish_audio(&[0xfc, n as u8, (n >> 8) as u8], n * 960, (true, 40)).await;
                    }
                    f = room.next_frame() => {
                        let Some(f) = f else { return };
                        h.lock().unwrap().insert(f.participant, Instant::now());
                    }
                }
            }
        });
        Self {
            heard,
            status,
            _stop: stop,
        }
    }

    fn heard_since(&self, other: &str, since: Instant) -> bool {
        self.heard
            .lock()
            .unwrap()
            .get(other)
            .is_some_and(|t| *t > since)
    }

    fn epoch(&self) -> Option<u64> {
        self.status.borrow().epoch
    }
}

/// Wait until alice and bob each decrypted a frame of the other after `since`.
async fn both_hear(alice: &Peer, bob: &Peer, since: Instant, what: &str) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if alice.heard_since("bob", since) && bob.heard_since("alice", since) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: alice and bob never heard each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_meets_on_one_sfu_node_and_moves_on_when_it_dies() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(tempfile::TempDir::path).collect();
    let mut rs = vec![Server::start(paths[0], 600_000)];
    replica_of(paths[1], paths[0]);
    rs.push(Server::start(paths[1], 600_000));
    let (a, b) = (rs[0].url.clone(), rs[1].url.clone());

    let alice = Peer::join(&format!("{a},{b}"), &rs[0].token(ROOM, "alice"), "alice").await;
    let bob = Peer::join(&format!("{b},{a}"), &rs[0].token(ROOM, "bob"), "bob").await;
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
