//! A room across two SFU nodes that speak TLS (SFU-CAS-08): both nodes' gRPC listeners use a
//! certificate from one private CA, participants trust that CA, and each node is told to trust
//! it for the legs it dials (`node_ca_file`, `--node-ca-file`). Alice on the first node and
//! bob on the second hear each other, so the leg between `https://` nodes came up verified.
//! A node given no CA (the system's roots, which do not hold the test CA) opens no leg.

use std::time::Duration;

use veil_auth::TokenKey;
use veil_client::endpoint::Security;
use veil_client::room::{Room, RoomConfig};
use veil_testkit::peer::{Peer, all_hear_after};
use veil_testkit::postgres::TempPostgres;
use veil_testkit::server::{InProcess, TestPki};

const ROOM: &str = "spanning-tls";

/// Two TLS nodes on one fresh database; `trust` gives them the CA for their legs.
async fn nodes(pki: &TestPki, trust: bool) -> (Vec<InProcess>, TokenKey) {
    let db = TempPostgres::shared().database();
    let key = TokenKey::generate("deployment").unwrap();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (db, key, files, ca) = (db.clone(), key.clone(), pki.files(), pki.ca.clone());
        nodes.push(
            InProcess::start("deployment", move |cfg| {
                cfg.database = veil_server::database::Database::Postgres(db);
                cfg.token_keys = vec![key];
                cfg.tls = Some(files);
                cfg.node_ca_file = trust.then_some(ca);
                cfg.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            })
            .await,
        );
    }
    (nodes, key)
}

async fn join(node: &InProcess, key: &TokenKey, pki: &TestPki, who: &str) -> Room {
    let token = veil_testkit::token::mint(key, ROOM, who, Duration::from_secs(600));
    let mut cfg = RoomConfig::new(&node.url, &token, ROOM, who);
    cfg.sfu_url = node.url.clone();
    cfg.group.security = Security {
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        ..Security::default()
    };
    Room::join(cfg).await.unwrap()
}

/// Alice on the first node and bob on the second, in one group, publishing.
async fn alice_and_bob(nodes: &[InProcess], key: &TokenKey, pki: &TestPki) -> (Peer, Peer) {
    let alice = join(&nodes[0], key, pki, "alice").await;
    let bob = join(&nodes[1], key, pki, "bob").await;
    for r in [&alice, &bob] {
        r.group()
            .wait(Duration::from_secs(30), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    (Peer::start(alice), Peer::start(bob))
}

/// The node's `veil_sfu_legs` gauge.
async fn legs(node: &InProcess) -> f64 {
    node.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("veil_sfu_legs "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_two_tls_nodes_over_a_verified_leg() {
    let pki = TestPki::new("nodes");
    let (nodes, key) = nodes(&pki, true).await;
    assert!(nodes.iter().all(|n| n.url.starts_with("https://")));
    let (alice, bob) = alice_and_bob(&nodes, &key, &pki).await;
    let took = all_hear_after(
        &[("alice", &alice), ("bob", &bob)],
        std::time::Instant::now(),
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|| panic!("alice and bob never heard each other across the TLS leg"));
    eprintln!("alice and bob heard each other across nodes {took:?} after joining");
    assert_eq!(
        legs(&nodes[0]).await + legs(&nodes[1]).await,
        2.0,
        "one leg, both ends"
    );
    alice.leave().await;
    bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_trust_the_others_certificate_opens_no_leg() {
    let pki = TestPki::new("nodes");
    let (nodes, key) = nodes(&pki, false).await;
    let (alice, bob) = alice_and_bob(&nodes, &key, &pki).await;
    // Several discovery rounds (1 s each) and dial attempts: no leg comes up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(legs(&nodes[0]).await + legs(&nodes[1]).await, 0.0);
    assert!(alice.last_heard("bob").is_none() && bob.last_heard("alice").is_none());
    alice.leave().await;
    bob.leave().await;
}
