//! Key-service load figures (a bench binary, not a timed test): join latency, commit fan-out
//! latency to 100 members, and join throughput with 200 concurrent joiners. The server runs in
//! this process on loopback with a fresh SQLite file (synchronous=FULL); the clients are
//! veil-client members in the same process, so on a 2-core machine client CPU (building
//! commits) competes with the service. A plain RPC round trip (`GetServiceInfo`) measured in the
//! same run is the baseline.
//!
//! `cargo bench -p veil-server --bench keys_load` (add `-- --quick` for a short run, and
//! `-- --postgres` to keep the state in a PostgreSQL server the bench starts instead of SQLite).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_stream::StreamExt as _;
use veil_auth::TokenKey;
use veil_client::group::{Group, GroupConfig};
use veil_client::keys::KeyClient;
use veil_mls::{CallSession, KeyConfig};
use veil_proto::keys::v1::room_event::Event as Ev;
use veil_testkit::server::InProcess;

struct Bench {
    url: String,
    key: TokenKey,
}

impl Bench {
    fn token(&self, room: &str, id: &str) -> String {
        veil_testkit::token::mint(&self.key, room, id, Duration::from_secs(3600))
    }

    fn cfg(&self, room: &str, id: &str) -> GroupConfig {
        GroupConfig::new(&self.url, &self.token(room, id), room, id)
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new(3).unwrap()
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

fn row(name: &str, h: &Histogram<u64>, extra: &str) {
    println!(
        "| {name} | {} | {} | {} | {} | {extra} |",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let postgres = std::env::args()
        .any(|a| a == "--postgres")
        .then(|| veil_testkit::postgres::TempPostgres::shared().database());
    println!(
        "store: {}",
        if postgres.is_some() {
            "PostgreSQL (Unix socket, same machine)"
        } else {
            "SQLite"
        }
    );
    let server = InProcess::start("bench", |cfg| {
        cfg.kds.departure_grace = Duration::from_secs(3600);
        // One owner claims for 100 members and commits in a loop: a load, not an abuse
        // (LIM-RATE-01 would measure the limit instead of the service).
        cfg.kds.request_rate = veil_auth::RequestRate::OFF;
        if let Some(url) = postgres {
            cfg.database = veil_server::database::Database::Postgres(url);
        }
    })
    .await;
    let b = Arc::new(Bench {
        url: server.url.clone(),
        key: server.key.clone(),
    });

    println!("| measurement | samples | p50 | p99 | max | notes |");
    println!("|---|---|---|---|---|---|");

    // Baseline: a plain authenticated RPC round trip.
    let mut c = KeyClient::connect(&b.url, &b.token("r", "x"), "r")
        .await
        .unwrap();
    c.service_info().await.unwrap();
    let mut rtt = hist();
    for _ in 0..500 {
        let t = Instant::now();
        c.service_info().await.unwrap();
        rtt.record(t.elapsed().as_micros() as u64).unwrap();
    }
    row(
        "baseline: GetServiceInfo round trip",
        &rtt,
        "same run, same client",
    );

    // Join latency: token minted → member of the group (external commit), one at a time, into
    // a room that grows to 1 + n members.
    let n_join = if quick { 20 } else { 60 };
    let creator = Group::create(b.cfg("join", "creator")).await.unwrap();
    let mut members = vec![creator];
    let mut join = hist();
    for i in 0..n_join {
        let t = Instant::now();
        let g = Group::join_external(b.cfg("join", &format!("j{i}")))
            .await
            .unwrap();
        join.record(t.elapsed().as_micros() as u64).unwrap();
        members.push(g);
    }
    row(
        "join latency (token → member, external commit)",
        &join,
        &format!("room grows 1 → {} members", n_join + 1),
    );
    drop(members);

    // Fan-out: 100 members; the creator commits (self-update); latency from SendCommit to the
    // commit event arriving on each of the 100 members' streams.
    let n_members = 100;
    let rounds = if quick { 10 } else { 40 };
    let mut creator = CallSession::new(b"owner", KeyConfig::default()).unwrap();
    let mut oc = KeyClient::connect(&b.url, &b.token("fan", "owner"), "fan")
        .await
        .unwrap();
    let info = oc.service_info().await.unwrap();
    creator
        .create_group_with_external_senders(
            b"fan",
            &[(info.external_sender_key, info.external_sender_identity)],
            Duration::ZERO,
        )
        .unwrap();
    oc.create_room(creator.group_info().unwrap()).await.unwrap();
    let mut kps = Vec::new();
    let mut listeners = Vec::new();
    for i in 1..n_members {
        let id = format!("f{i}");
        let s = CallSession::new(id.as_bytes(), KeyConfig::default()).unwrap();
        let mut c = KeyClient::connect(&b.url, &b.token("fan", &id), "fan")
            .await
            .unwrap();
        c.publish_key_packages(vec![s.key_package(false).unwrap()])
            .await
            .unwrap();
        kps.push(oc.claim_key_package(&id).await.unwrap());
        listeners.push(c);
    }
    let out = creator.add_members(&kps).unwrap();
    oc.send_commit(out.commit, out.welcome.unwrap(), out.group_info.unwrap())
        .await
        .unwrap();
    creator.confirm_commit(Duration::ZERO).unwrap();
    let (arr_tx, mut arr_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut streams = vec![oc.subscribe(creator.epoch()).await.unwrap()];
    for c in &mut listeners {
        streams.push(c.subscribe(creator.epoch()).await.unwrap());
    }
    for mut s in streams {
        let tx = arr_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = s.next().await {
                if let Some(Ev::Commit(c)) = ev.event {
                    let _ = tx.send((c.epoch, Instant::now()));
                }
            }
        });
    }
    let mut fan = hist();
    let mut send = hist();
    for _ in 0..rounds {
        let epoch = creator.epoch().unwrap();
        let out = creator.self_update().unwrap();
        let t = Instant::now();
        oc.send_commit(out.commit, vec![], out.group_info.unwrap())
            .await
            .unwrap();
        send.record(t.elapsed().as_micros() as u64).unwrap();
        creator.confirm_commit(Duration::ZERO).unwrap();
        let mut got = 0;
        while got < n_members {
            let (e, at) = arr_rx.recv().await.unwrap();
            if e == epoch {
                got += 1;
                fan.record(at.saturating_duration_since(t).as_micros() as u64)
                    .unwrap();
            }
        }
    }
    row(
        "SendCommit (validate + fsync + reply), 100 members",
        &send,
        "self-update commits",
    );
    row(
        "commit fan-out to 100 members",
        &fan,
        &format!("{rounds} commits × {n_members} streams"),
    );

    // Throughput: 200 concurrent joiners, two shapes.
    let joiners = 200;
    // (a) 20 rooms of 10 joiners each, external commits.
    let mut creators = Vec::new();
    for r in 0..20 {
        creators.push(
            Group::create(b.cfg(&format!("tp{r}"), "creator"))
                .await
                .unwrap(),
        );
    }
    let t = Instant::now();
    let hs: Vec<_> = (0..joiners)
        .map(|i| {
            let cfg = b.cfg(&format!("tp{}", i % 20), &format!("t{i}"));
            tokio::spawn(async move { Group::join_external(cfg).await.unwrap() })
        })
        .collect();
    let mut done = Vec::new();
    for h in hs {
        done.push(h.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| joins/s, {joiners} concurrent joiners in 20 rooms (external commit) | {joiners} | {:.1} joins/s | | | {:.2} s total |",
        f64::from(joiners) / secs,
        secs
    );
    drop(done);
    drop(creators);

    // (b) one room; joiners publish KeyPackages concurrently and one member admits them by
    // Welcome in commits of up to 20.
    let admin = Group::create(b.cfg("big", "admin")).await.unwrap();
    let t = Instant::now();
    let hs: Vec<_> = (0..joiners)
        .map(|i| {
            let cfg = b.cfg("big", &format!("b{i}"));
            tokio::spawn(async move { Group::await_welcome(cfg).await.unwrap() })
        })
        .collect();
    let mut waiting = Vec::new();
    for h in hs {
        waiting.push(h.await.unwrap());
    }
    let names: Vec<String> = (0..joiners).map(|i| format!("b{i}")).collect();
    for chunk in names.chunks(20) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        admin.add(&refs).await.unwrap();
    }
    for w in &waiting {
        w.wait(Duration::from_secs(120), |s| s.epoch.is_some())
            .await
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| joins/s, {joiners} concurrent joiners in one room (Welcome, 20 per commit) | {joiners} | {:.1} joins/s | | | {:.2} s total |",
        f64::from(joiners) / secs,
        secs
    );
    println!(
        "\nratios vs baseline RTT p50: join {:.1}×, fan-out {:.1}×",
        join.value_at_quantile(0.5) as f64 / rtt.value_at_quantile(0.5) as f64,
        fan.value_at_quantile(0.5) as f64 / rtt.value_at_quantile(0.5) as f64
    );
}
