//! The impaired call (issue 23, specs/netem.md NETEM-CALL-01..03): the real server, its SFU
//! behind a [`veil_netem::Relay`] that every participant's media goes through (the SFU
//! advertises the relay: SFU-ADV-01), four SDK participants with a join and a leave, and loss
//! bursts. [`run`] plays a [`Plan`] and returns a [`Report`]; the e2e test asserts on a short
//! plan, `cargo run -p veil-e2e --example reliability -- impaired` prints a full-length one and
//! writes its section of RELIABILITY.md.

mod participant;
mod report;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use veil_client::room::{Room, RoomConfig};
use veil_netem::{Impairment, Loss, Relay, RelayConfig};

pub use participant::{Arrival, Log, TICK};
pub use report::{Recovery, Report, Row, Switch};

use crate::{Server, metric};

/// Everyone who takes part: the first three from the start, the fourth joins, the third
/// leaves.
pub const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
const JOINER: usize = 3;
const LEAVER: usize = 2;

/// What to play.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Media time, from when the first three are in the group.
    pub duration: Duration,
    /// When dave joins.
    pub join_at: Duration,
    /// When carol leaves.
    pub leave_at: Duration,
    /// Each leg's impairment, both directions.
    pub impairment: Impairment,
    /// When loss bursts start; each lasts `burst_len` at `burst_loss` (random loss in place of
    /// the impairment's own).
    pub bursts: Vec<Duration>,
    /// A burst's length.
    pub burst_len: Duration,
    /// Loss during a burst.
    pub burst_loss: f64,
    /// The relay's seed.
    pub seed: u64,
}

impl Plan {
    /// The issue's call, `duration` long: 5 % loss, 50 ± 20 ms, 1 % reordering, 1 %
    /// duplication each way on every leg; dave joins at a fifth, carol leaves at half; a 2 s
    /// burst of 20 % loss at 60 % and (if the call is long enough) at 80 %.
    #[must_use]
    pub fn issue(duration: Duration, seed: u64) -> Self {
        let at = |f: f64| duration.mul_f64(f);
        let mut bursts = vec![at(0.6)];
        if duration >= Duration::from_secs(40) {
            bursts.push(at(0.8));
        }
        Self {
            duration,
            join_at: at(0.2),
            leave_at: at(0.45),
            impairment: Impairment::lossy_call(),
            bursts,
            burst_len: Duration::from_secs(2),
            burst_loss: 0.2,
            seed,
        }
    }
}

/// The server with its SFU bound on a port of its own and advertising the relay's address.
async fn server_behind(relay_addr: SocketAddr, sfu_port: u16) -> Server {
    Server::start_with(move |cfg| {
        let sfu = cfg.sfu.as_mut().expect("loopback runs the SFU");
        // One worker: the relay forwards one listening port to one SFU port.
        sfu.workers = 1;
        sfu.udp_addrs = vec![format!("127.0.0.1:{sfu_port}")];
        sfu.advertise = Some(relay_addr);
    })
    .await
}

/// A free UDP port on loopback for the SFU (bound and released: the server binds it itself).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// The server with its SFU reached only through a fresh relay that impairs every flow with
/// `impairment` (seeded with `seed`): what the impaired call, the bandwidth and the outage
/// tests stand on.
///
/// # Panics
/// If the relay or the server does not start.
pub async fn behind_relay(impairment: Impairment, seed: u64) -> (Server, Relay) {
    let bound = Relay::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let relay_addr = bound.local_addrs().unwrap()[0];
    let sfu_port = free_udp_port();
    let server = server_behind(relay_addr, sfu_port).await;
    let relay = bound
        .start(RelayConfig {
            targets: vec![SocketAddr::from(([127, 0, 0, 1], sfu_port))],
            impairment,
            windows: Vec::new(),
            seed,
        })
        .unwrap();
    (server, relay)
}

/// Play `plan`.
///
/// # Panics
/// If the server, the relay or a join fails, or the first three are not in one group within
/// 60 s.
pub async fn run(plan: &Plan) -> Report {
    let (server, relay) = behind_relay(plan.impairment.clone(), plan.seed).await;
    let room = "impaired";
    let cfg = |name: &str| -> RoomConfig { server.room(room, name) };

    let mut first = Vec::new();
    for name in &NAMES[..3] {
        first.push(Room::join(cfg(name)).await.unwrap());
    }
    for r in &first {
        r.group()
            .wait(Duration::from_secs(60), |s| s.members.len() == 3)
            .await
            .unwrap();
    }
    let start = Instant::now();
    let end = start + plan.duration;
    let mut tasks = Vec::new();
    for (who, r) in first.into_iter().enumerate() {
        let (until, leave) = if who == LEAVER {
            (start + plan.leave_at, true)
        } else {
            (end, false)
        };
        tasks.push(tokio::spawn(participant::run(who, r, start, until, leave)));
    }

    // The script: dave joins, carol leaves (her task does), bursts come and go.
    let mut switches = Vec::new();
    let mut burst_ends = Vec::new();
    let mut script: Vec<(Duration, &str)> = vec![(plan.join_at, "join")];
    script.extend(plan.bursts.iter().map(|b| (*b, "burst")));
    script.sort();
    for (at, what) in script {
        tokio::time::sleep_until(start + at).await;
        match what {
            "join" => {
                let began = start.elapsed();
                let dave = Room::join(cfg(NAMES[JOINER])).await.unwrap();
                tasks.push(tokio::spawn(participant::run(
                    JOINER, dave, start, end, false,
                )));
                switches.push(("join", began));
            }
            _ => {
                relay.set_all(
                    plan.impairment
                        .clone()
                        .with_loss(Loss::Random(plan.burst_loss)),
                );
                tokio::time::sleep(plan.burst_len).await;
                relay.set_all(plan.impairment.clone());
                burst_ends.push(start.elapsed());
            }
        }
    }
    switches.push(("leave", plan.leave_at));
    let mut logs = Vec::new();
    let mut rooms = Vec::new();
    for t in tasks {
        let (log, room) = t.await.expect("participant task");
        logs.push(log);
        rooms.extend(room);
    }
    logs.sort_by_key(|l| l.who);
    let text = server.metrics_text().await;
    let m = |name: &str| metric(&text, name).unwrap_or(0.0) as u64;
    let sfu = report::SfuFigures {
        rtx_in_unwrapped: m("veil_sfu_rtx_packets_total{direction=\"in\",outcome=\"unwrapped\"}"),
        rtx_in_redundant: m("veil_sfu_rtx_packets_total{direction=\"in\",outcome=\"redundant\"}"),
        rtx_out_resent: m("veil_sfu_rtx_packets_total{direction=\"out\",outcome=\"resent\"}"),
        rtx_out_missing: m("veil_sfu_rtx_packets_total{direction=\"out\",outcome=\"missing\"}"),
        plis_to_publishers: m("veil_sfu_publisher_key_frame_requests_total"),
        plis_from_subscribers: m("veil_sfu_subscriber_key_frame_requests_total"),
    };
    let report = Report::new(plan, logs, switches, burst_ends, relay.totals(), sfu);
    for r in rooms {
        let _ = r.leave().await;
    }
    report
}
