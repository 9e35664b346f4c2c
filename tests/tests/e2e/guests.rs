//! A participant who stays while guests come and go one after another (SFU-EDGE-16, SFU-FWD-07):
//! each guest's audio reaches the stayer's SDK on the transceiver the previous guest's used,
//! under a new track name, and the stayer hears every guest, and every guest the stayer, with
//! no decrypt failure.

use std::time::{Duration, Instant};

use veil_client::room::Room;
use veil_e2e::Server;
use veil_testkit::peer::{Peer, all_hear_after};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stayer_hears_every_guest_on_the_transceivers_the_previous_ones_used() {
    let server = Server::start().await;
    let room = "guests";
    let alice = Peer::start(Room::join(server.room(room, "alice")).await.unwrap());
    for round in 0..4 {
        let name = format!("guest{round}");
        let since = Instant::now();
        let guest = Peer::start(Room::join(server.room(room, &name)).await.unwrap());
        let took = all_hear_after(
            &[("alice", &alice), (&name, &guest)],
            since,
            Duration::from_secs(20),
        )
        .await;
        assert!(
            took.is_some(),
            "round {round}: alice heard {:?}; {name} heard {:?}",
            alice.heard(),
            guest.heard()
        );
        assert_eq!(guest.decrypt_failures(), 0, "{name}");
        guest.leave().await;
    }
    assert_eq!(alice.decrypt_failures(), 0);
    alice.leave().await;
}
