//! How fast a subscriber's layer follows its path (SFU-BWE-06..08), with probing off and on in
//! the same run: a bench binary that prints a table, not a timed test.
//!
//! A webrtc-rs publisher sends three simulcast layers shaped like a browser's 720p (≈ 150, 500
//! and 2 500 kbit/s of payload, DD on every packet, a key frame every 0.5 s) to an [`EdgeSfu`] on
//! loopback; a webrtc-rs subscriber asks for f, through a userspace UDP relay with a token bucket
//! (200 ms of queue, tail drop) on the SFU → subscriber direction.
//!
//! - **to f**: from subscribing to the moment the subscriber is on f for good (f for the 3 s
//!   after), the relay uncapped. f needs more than GCC's 1.5 Mbit/s start.
//! - **down**: on f, the relay is capped at `--cap` (1 Mbit/s: h fits, f does not); the time
//!   until the estimate falls below 2 Mbit/s (f no longer fits: the layer choice keeps a layer
//!   down to 0.75 × its bitrate) and until the SFU forwards a lower layer (after the choice's
//!   0.5 s hold and the lower layer's next key frame; this publisher sends one every 0.5 s and
//!   does not answer PLIs).
//! - **up**: 10 s later the cap is lifted; the time until the subscriber is on f again.
//!
//! `cargo bench -p veil-sfu --bench ramp` (`-- --runs 5 --cap-runs 3 --cap 1000000`). Layer and
//! estimate are read every 20 ms from the SFU's own API and metrics.

#![allow(dead_code, unreachable_pub)] // the loopback tests' helpers, shared

#[path = "../tests/loopback/common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use veil_sfu::{EdgeSfu, Permissions, SfuConfig};

const ROOM: &str = "ramp";
/// Per 20 ms tick: packets and payload bytes of q, h, f.
const SHAPE_HD: [(usize, usize); 3] = [(1, 375), (2, 625), (5, 1250)];
/// Give up waiting after this long.
const LIMIT: Duration = Duration::from_secs(60);
/// On f for this long counts as on f for good.
const SETTLED: Duration = Duration::from_secs(3);

struct Call {
    sfu: EdgeSfu,
    relay: ShapedRelay,
    track: String,
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<()>,
    _alice: Peer,
    _bob: Peer,
    subscribed: Instant,
}

impl Call {
    async fn start(probing: bool) -> Call {
        let sfu = EdgeSfu::new(SfuConfig {
            key_frame_interval: Duration::from_millis(100),
            probing,
            ..SfuConfig::default()
        })
        .unwrap();
        let mut alice = Peer::new(ROOM, "alice", true).await;
        let cam = Simulcast::add(&alice).await;
        alice.join(&sfu).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sender = send_layers(cam.track.clone(), cam.ids().await, SHAPE_HD, stop.clone());
        let deadline = Instant::now() + LIMIT;
        while sfu.metrics().tracks.get() != 1 {
            assert!(Instant::now() < deadline, "the SFU never saw the track");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut bob = Peer::new(ROOM, "bob", false).await;
        let offer = bob.offer().await;
        let session = sfu
            .join_with(ROOM, "bob", &offer, Permissions::ALL)
            .await
            .unwrap();
        let sfu_port = candidate_port(&session.answer);
        let relay = ShapedRelay::start(SocketAddr::from(([127, 0, 0, 1], sfu_port)), 0).await;
        let relay_port = relay.port();
        bob.sdp_filter = Some(Arc::new(move |sdp: &str| via(sdp, sfu_port, relay_port)));
        bob.accept(&sfu, session).await;
        bob.connected().await;
        let track = bob.track_named("alice", "cam").await;
        bob.subscribe(&sfu, &track).await;
        sfu.set_layer_preference(ROOM, "bob", &track, Some("f"))
            .await
            .unwrap();
        let subscribed = Instant::now();
        // What bob receives is not read here; drain it so nothing queues.
        let mut rx = std::mem::replace(&mut bob.received, tokio::sync::mpsc::unbounded_channel().1);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Call {
            sfu,
            relay,
            track,
            stop,
            sender,
            _alice: alice,
            _bob: bob,
            subscribed,
        }
    }

    async fn layer(&self) -> Option<u8> {
        self.sfu.layer(ROOM, "bob", &self.track).await
    }

    fn estimate(&self) -> Option<u64> {
        let prefix =
            format!("veil_sfu_subscriber_estimate_bps{{room=\"{ROOM}\",subscriber=\"bob\"}} ");
        self.sfu
            .metrics()
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    /// From `from`, how long until the layer is f and stays f for [`SETTLED`] (the time it went
    /// to f that last time), or None within [`LIMIT`].
    async fn settled_on_f(&self, from: Instant) -> Option<Duration> {
        let mut on_f_since: Option<Instant> = None;
        while from.elapsed() < LIMIT {
            let now = Instant::now();
            match (self.layer().await == Some(2), on_f_since) {
                (true, None) => on_f_since = Some(now),
                (true, Some(s)) if now - s >= SETTLED => return Some(s - from),
                (false, _) => on_f_since = None,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// From `from`, how long until the estimate is below `bps` and until the layer is below f
    /// (each None if not within [`LIMIT`]).
    async fn below_f(&self, from: Instant, bps: u64) -> (Option<Duration>, Option<Duration>) {
        let mut estimate = None;
        while from.elapsed() < LIMIT {
            if estimate.is_none() && self.estimate().is_some_and(|e| e < bps) {
                estimate = Some(from.elapsed());
            }
            if self.layer().await.is_some_and(|l| l < 2) {
                return (estimate, Some(from.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (estimate, None)
    }

    async fn end(self) -> (u64, u64) {
        let m = self.sfu.metrics();
        let probes = (m.probe_clusters.get(), m.probe_successes.get());
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.sender.await;
        probes
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!("> {} s", LIMIT.as_secs()),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = arg("--runs", 5);
    let cap_runs = arg("--cap-runs", 3);
    let cap = arg("--cap", 1_000_000);
    println!(
        "| probing | run | to f | estimate on f | capped at {cap} bit/s: estimate < 2 Mbit/s | down | up (cap lifted) | clusters sent / carried |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for probing in [false, true] {
        let label = if probing { "on" } else { "off" };
        for run in 1..=runs.max(cap_runs) {
            let call = Call::start(probing).await;
            let to_f = call.settled_on_f(call.subscribed).await;
            let estimate = call.estimate();
            let (mut falls, mut down, mut up) = (None, None, None);
            let capped = run <= cap_runs && to_f.is_some();
            if capped {
                call.relay.shaper.rate.store(cap, Ordering::Relaxed);
                let at = Instant::now();
                (falls, down) = call.below_f(at, 2_000_000).await;
                tokio::time::sleep(Duration::from_secs(10).saturating_sub(at.elapsed())).await;
                call.relay.shaper.rate.store(0, Ordering::Relaxed);
                let lifted = Instant::now();
                up = call.settled_on_f(lifted).await;
            }
            let (sent, carried) = call.end().await;
            let show = |d: Option<Duration>| if capped { secs(d) } else { "–".to_owned() };
            println!(
                "| {label} | {run} | {} | {} kbit/s | {} | {} | {} | {sent} / {carried} |",
                secs(to_f),
                estimate.map_or(0, |e| e / 1000),
                show(falls),
                show(down),
                show(up),
            );
            if run >= runs && run >= cap_runs {
                break;
            }
        }
    }
}
