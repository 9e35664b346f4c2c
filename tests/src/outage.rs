//! A participant whose network disappears and comes back (issue 23; specs/sfu.md
//! SFU-CLI-01..04, "Reconnecting"): bob's media path through the relay goes black for a while,
//! his SDK notices the dead connection and reconnects by itself, and once the path is back
//! alice and bob hear each other again on the epoch they had. The key service's TCP stream is
//! not behind the relay: this is a media-path outage.
//!
//! The CI test is `tests/tests/e2e/blackout.rs`; `cargo run -p veil-e2e --example reliability
//! -- outage` writes its figures to RELIABILITY.md.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use veil_client::link::Link;
use veil_client::room::Room;
use veil_netem::Impairment;

use crate::impaired::{behind_relay, free_udp_port};
use crate::peer::{Peer, all_hear_after};
use crate::reliability::{epoch, secs};

/// What one outage showed.
#[derive(Debug, Clone)]
pub struct Outage {
    /// How long bob's path was black.
    pub length: Duration,
    /// When alice last heard bob, from the cut (the cut took effect if this is short).
    pub last_heard_after_cut: Duration,
    /// From the path's return until alice and bob heard each other again (`None`: not within
    /// 30 s).
    pub back_after: Option<Duration>,
    /// Bob's SDK reported the SFU link lost and back.
    pub bob_reconnected: (bool, bool),
    /// `(before, alice after, bob after)` epochs.
    pub epochs: (Option<u64>, Option<u64>, Option<u64>),
    /// Decrypt failures of alice and bob over the whole call.
    pub decrypt_failures: (u64, u64),
}

/// Cut bob's media path for `length` in a two-party call through the relay.
///
/// # Panics
/// If the server, the relay or a join fails, or alice and bob never hear each other before
/// the cut.
pub async fn run(length: Duration) -> Outage {
    let (server, relay) = behind_relay(Impairment::default(), 7).await;
    let room = "outage";
    let alice = Room::join(server.room(room, "alice")).await.unwrap();
    // Bob's media leaves from one known port, so the relay can cut his path alone.
    let bob_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
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
    let pair = [("alice", &alice), ("bob", &bob)];
    all_hear_after(&pair, Instant::now(), Duration::from_secs(20))
        .await
        .expect("alice and bob hear each other before the outage");
    let before = alice.epoch();

    relay.set_flow(bob_addr, Impairment::default().with_blackout(true));
    let cut = Instant::now();
    tokio::time::sleep(length).await;
    let last_heard_after_cut = alice
        .last_heard("bob")
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(cut));
    relay.set_flow(bob_addr, Impairment::default());
    let back = Instant::now();
    let back_after = all_hear_after(&pair, back, Duration::from_secs(30)).await;
    let out = Outage {
        length,
        last_heard_after_cut,
        back_after,
        bob_reconnected: bob.saw(Link::Sfu),
        epochs: (before, alice.epoch(), bob.epoch()),
        decrypt_failures: (alice.decrypt_failures(), bob.decrypt_failures()),
    };
    alice.leave().await;
    bob.leave().await;
    out
}

impl Outage {
    /// The Markdown section for RELIABILITY.md.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| outage | alice last heard bob after the cut | media back after the path returned | bob's SDK: SFU link lost / back | epoch before → after (alice, bob) | decrypt failures (alice, bob) |\n|---|---|---|---|---|---|\n",
        );
        let back = self
            .back_after
            .map_or_else(|| "not within 30 s".to_owned(), secs);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} → {}, {} | {}, {} |",
            secs(self.length),
            secs(self.last_heard_after_cut),
            back,
            self.bob_reconnected.0,
            self.bob_reconnected.1,
            epoch(self.epochs.0),
            epoch(self.epochs.1),
            epoch(self.epochs.2),
            self.decrypt_failures.0,
            self.decrypt_failures.1,
        );
        s
    }
}
