//! A participant whose network disappears for 10 s and comes back (issue 23; specs/sfu.md
//! SFU-CLI-01..04): bob's media path through the relay goes black, his SDK notices the dead
//! connection and keeps reconnecting by itself; once the path is back, alice and bob hear each
//! other again on the epoch they had, with no user action. (The key service's TCP stream is
//! not behind the relay: this is a media-path outage.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use veil_client::link::Link;
use veil_client::room::{Room, RoomEvent};
use veil_e2e::impaired::{behind_relay, free_udp_port};
use veil_netem::Impairment;

/// A participant publishing audio every 20 ms; when it last heard whom, and its room events.
struct Peer {
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    events: Arc<Mutex<Vec<RoomEvent>>>,
    status: tokio::sync::watch::Receiver<veil_client::group::GroupStatus>,
    _stop: oneshot::Sender<()>,
}

impl Peer {
    fn start(mut room: Room) -> Self {
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let status = room.group().watch_status();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (h, e) = (heard.clone(), events.clone());
        let mut rx = room.events();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {
                        n += 1;
                        let _ = room.publish_audio(&[0xfc, n as u8, (n >> 8) as u8], n * 960, (true, 40)).await;
                    }
                    f = room.next_frame() => {
                        let Some(f) = f else { return };
                        h.lock().unwrap().insert(f.participant, Instant::now());
                    }
                    ev = rx.recv() => {
                        if let Ok(ev) = ev {
                            e.lock().unwrap().push(ev);
                        }
                    }
                }
            }
        });
        Self {
            heard,
            events,
            status,
            _stop: stop,
        }
    }

    fn last_heard(&self, other: &str) -> Option<Instant> {
        self.heard.lock().unwrap().get(other).copied()
    }

    fn reconnected(&self) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, RoomEvent::Reconnected { link: l, .. } if *l == Link::Sfu))
    }
}

async fn both_hear_after(alice: &Peer, bob: &Peer, since: Instant, limit: Duration) -> Duration {
    let deadline = Instant::now() + limit;
    loop {
        let after = |p: &Peer, o: &str| p.last_heard(o).is_some_and(|t| t > since);
        if after(alice, "bob") && after(bob, "alice") {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "alice and bob did not hear each other within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_by_itself_after_a_10_s_network_outage() {
    let (server, relay) = behind_relay(Impairment::default(), 7).await;
    let room = "outage";
    let alice = Room::join(server.room(room, "alice")).await.unwrap();
    // Bob's media leaves from one known port, so the relay can cut his path alone.
    let bob_port = free_udp_port();
    let bob_addr = SocketAddr::from(([127, 0, 0, 1], bob_port));
    let mut cfg = server.room(room, "bob");
    cfg.udp_addrs = vec![bob_addr.to_string()];
    let bob = Room::join(cfg).await.unwrap();
    for r in [&alice, &bob] {
        r.group()
            .wait(Duration::from_secs(30), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    let (alice, bob) = (Peer::start(alice), Peer::start(bob));
    both_hear_after(&alice, &bob, Instant::now(), Duration::from_secs(20)).await;
    let epoch = alice.status.borrow().epoch;

    // Bob's network disappears for 10 s.
    relay.set_flow(bob_addr, Impairment::default().with_blackout(true));
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let alice_heard_bob = alice.last_heard("bob").unwrap();
    assert!(
        alice_heard_bob < cut + Duration::from_secs(1),
        "the outage cut bob's media ({:?} after the cut)",
        alice_heard_bob - cut
    );
    relay.set_flow(bob_addr, Impairment::default());
    let back = Instant::now();
    let took = both_hear_after(&alice, &bob, back, Duration::from_secs(30)).await;
    eprintln!("media back {took:?} after the network returned");
    assert!(
        bob.reconnected(),
        "bob's SDK reconnected to the SFU by itself"
    );
    assert_eq!(
        alice.status.borrow().epoch,
        epoch,
        "same MLS epoch: nobody was removed"
    );
    assert_eq!(bob.status.borrow().epoch, epoch);
}
