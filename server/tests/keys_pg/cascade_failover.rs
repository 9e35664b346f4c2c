//! A room that spans two SFU nodes, and one node killed (SFU-CAS-01..07): two `veil-server`
//! processes on one PostgreSQL database, each a key-service replica and an SFU node. Alice and
//! bob connect to the first node, carol to the second (each participant names its own SFU
//! nodes, `RoomConfig::sfu_url`); the nodes find each other in the database and relay the room
//! over a node-to-node leg, so everyone hears everyone. Then carol's node is SIGKILLed: carol
//! fails over to the next URL of her list, and everyone hears everyone again on the same MLS
//! epoch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use veil_client::room::{Room, RoomConfig};

use crate::common::{Server, replica_of};

const ROOM: &str = "cascaded";

/// One participant publishing audio every 20 ms, and when it last heard each other one.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    status: tokio::sync::watch::Receiver<veil_client::group::GroupStatus>,
    _stop: oneshot::Sender<()>,
}

impl Peer {
    /// Join with the key service at `keys` and the SFU nodes `sfu` (both comma lists).
    async fn join(keys: &str, sfu: &str, token: &str, name: &'static str) -> Self {
        let mut cfg = RoomConfig::new(keys, token, ROOM, name);
        cfg.sfu_url = sfu.to_owned();
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
            name,
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

/// Wait until every peer decrypted a frame of every other after `since`.
async fn all_hear(peers: &[&Peer], since: Instant, what: &str) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<(&str, &str)> = peers
            .iter()
            .flat_map(|a| peers.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.name != b.name && !a.heard_since(b.name, since))
            .map(|(a, b)| (a.name, b.name))
            .collect();
        if missing.is_empty() {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: (listener, speaker) pairs never heard: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    let alice = Peer::join(&ab, &ab, &rs[0].token(ROOM, "alice"), "alice").await;
    let bob = Peer::join(&ab, &ab, &rs[0].token(ROOM, "bob"), "bob").await;
    let carol = Peer::join(&ba, &ba, &rs[0].token(ROOM, "carol"), "carol").await;
    let took = all_hear(&[&alice, &bob, &carol], Instant::now(), "across two nodes").await;
    eprintln!("everyone heard everyone across the leg {took:?} after carol joined");
    let epoch = carol.epoch();
    assert!(epoch.is_some());
    assert_eq!(alice.epoch(), epoch);

    // Carol's node (and her key-service replica) dies; she moves to the first node.
    rs[1].kill();
    let killed = Instant::now();
    let took = all_hear(&[&alice, &bob, &carol], killed, "after carol's node died").await;
    eprintln!("everyone heard everyone again {took:?} after the kill");
    for p in [&alice, &bob, &carol] {
        assert_eq!(
            p.epoch(),
            epoch,
            "{}: no new MLS epoch for a node's death",
            p.name
        );
    }
}
