//! End-to-end call figures (a bench binary, not a timed test), for 2, 5 and 10 participants on
//! loopback, with the real server (key service + blind SFU, SQLite) in this process:
//!
//! - **join → first decrypted frame**: a participant joins a call in progress (the others talk:
//!   audio, 50 frames/s each) and the clock stops at its first decrypted frame;
//! - **rekey after a leave**: a participant leaves; the clock stops when every remaining member
//!   is on an epoch without it (from then on they send under keys it never has);
//! - **frame latency**: `publish_audio` → `next_frame` at each receiver, with SFrame (the SDK's
//!   `Room`), against the same transport without SFrame (the SDK's SFU session and WebRTC
//!   track, the same SFU, the same packet sizes, no MLS and no SFrame) measured in the same run.
//!
//! `cargo bench -p veil-e2e --bench call` (`-- --quick` for a short run; `-- --sizes 2,5`).
//! Everything shares this machine's cores, so the absolute figures include every client's
//! CPU; the ratio is what to compare across machines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;
use veil_client::group::GroupStatus;
use veil_client::media::{MediaKind, RtpOut};
use veil_client::room::Room;
use veil_client::sfu::SfuSession;
use veil_client::transport::LocalTrack;
use veil_e2e::Server;

/// Audio frame size (a 20 ms Opus frame at ~32 kbit/s).
const FRAME_BYTES: usize = 80;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);

type Hist = Arc<Mutex<Histogram<u64>>>;

fn hist() -> Hist {
    Arc::new(Mutex::new(Histogram::new(3).unwrap()))
}

/// A frame carrying its send time (µs since `t0`) and the sender; the rest is filler.
fn frame(t0: Instant, who: u8) -> Vec<u8> {
    let mut f = vec![who; FRAME_BYTES];
    let us = t0.elapsed().as_micros() as u64;
    f[..8].copy_from_slice(&us.to_be_bytes());
    f
}

fn record(h: &Hist, t0: Instant, f: &[u8]) {
    let Some(sent) = f.get(..8) else { return };
    let sent = u64::from_be_bytes(sent.try_into().unwrap());
    let now = t0.elapsed().as_micros() as u64;
    h.lock()
        .unwrap()
        .saturating_record(now.saturating_sub(sent));
}

/// One SFrame participant: talks every 20 ms and receives, in its own task.
struct Peer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    status: watch::Receiver<GroupStatus>,
    first_frame: watch::Receiver<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    fn start(mut room: Room, who: u8, t0: Instant, latency: Option<Hist>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (first_tx, first_frame) = watch::channel(None);
        let status = room.group().watch_status();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(FRAME_INTERVAL);
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        // `NotSending` until the first epoch: not an error here.
                        let _ = room.publish_audio(&frame(t0, who), n * 960, (true, 30)).await;
                    }
                    f = room.next_frame() => {
                        let Some(f) = f else { break };
                        if first_tx.borrow().is_none() {
                            first_tx.send_replace(Some(Instant::now()));
                        }
                        if let Some(h) = &latency {
                            record(h, t0, &f.frame);
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            let _ = room.leave().await;
        });
        Self {
            stop: Some(stop),
            status,
            first_frame,
            task,
        }
    }

    async fn leave(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// One participant without SFrame: the same SFU session and track, plaintext payloads.
async fn plain_peer(
    server: &Server,
    room: &str,
    who: u8,
    t0: Instant,
    latency: Hist,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let name = format!("plain{who}");
    let track = LocalTrack::new(MediaKind::Audio, &name, "audio", 0x5000 + u32::from(who));
    let (sfu, mut media) = SfuSession::connect(
        &server.url,
        &server.token(room, &name),
        room,
        std::slice::from_ref(&track),
        vec!["127.0.0.1:0".to_owned()],
        veil_client::media::Packetization::Browser,
    )
    .await
    .unwrap();
    let ext = sfu.ext_ids(0).await.unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FRAME_INTERVAL);
        let mut n = 0u16;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    let mut extensions = Vec::new();
                    if let Some(id) = ext.audio_level {
                        extensions.push((id, vec![0x80 | 30]));
                    }
                    let p = RtpOut {
                        seq: n,
                        timestamp: u32::from(n) * 960,
                        marker: false,
                        extensions,
                        payload: frame(t0, who),
                    };
                    let _ = track.send(std::slice::from_ref(&p)).await;
                }
                m = media.recv() => {
                    let Some(m) = m else { break };
                    record(&latency, t0, &m.packet.payload);
                }
            }
        }
        sfu.leave().await;
    })
}

fn q(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Row {
    n: usize,
    join: Histogram<u64>,
    joined: Histogram<u64>,
    rekey: Histogram<u64>,
    e2ee: Histogram<u64>,
    plain: Histogram<u64>,
}

async fn measure(n: usize, trials: usize, latency_for: Duration) -> Row {
    let server = Server::start().await;
    let room = format!("bench{n}");
    let t0 = Instant::now();
    let mut join = Histogram::<u64>::new(3).unwrap();
    let mut joined = Histogram::<u64>::new(3).unwrap();
    let mut rekey = Histogram::<u64>::new(3).unwrap();

    // The call in progress: n - 1 participants.
    let mut peers = Vec::new();
    for i in 0..n - 1 {
        let r = Room::join(server.room(&room, &format!("p{i}")))
            .await
            .unwrap();
        peers.push(Peer::start(r, i as u8, t0, None));
    }
    for trial in 0..trials {
        // Join: the n-th participant, until its first decrypted frame.
        let name = format!("joiner{trial}");
        let started = Instant::now();
        let r = Room::join(server.room(&room, &name)).await.unwrap();
        joined.record(started.elapsed().as_micros() as u64).unwrap();
        let joiner = Peer::start(r, 200, t0, None);
        let mut first = joiner.first_frame.clone();
        tokio::time::timeout(Duration::from_secs(30), first.wait_for(Option::is_some))
            .await
            .expect("the joiner decrypts a frame within 30 s")
            .unwrap();
        let at = first.borrow().unwrap();
        join.record(at.duration_since(started).as_micros() as u64)
            .unwrap();
        // Everyone on the epoch with the joiner before it leaves.
        for p in &peers {
            let mut s = p.status.clone();
            tokio::time::timeout(
                Duration::from_secs(30),
                s.wait_for(|s| s.members.contains(&name)),
            )
            .await
            .unwrap()
            .unwrap();
        }

        // Leave: until every remaining member is on an epoch without the leaver.
        let started = Instant::now();
        joiner.leave().await;
        for p in &peers {
            let mut s = p.status.clone();
            tokio::time::timeout(
                Duration::from_secs(30),
                s.wait_for(|s| !s.members.contains(&name)),
            )
            .await
            .expect("the leaver is removed within 30 s")
            .unwrap();
        }
        rekey.record(started.elapsed().as_micros() as u64).unwrap();
    }

    // Frame latency with SFrame: all n talking in a fresh room; measured once every peer
    // decrypts frames and the subscriptions have settled.
    for p in peers.drain(..) {
        p.leave().await;
    }
    let e2ee = hist();
    let latency_room = format!("{room}-latency");
    for i in 0..n {
        let r = Room::join(server.room(&latency_room, &format!("l{i}")))
            .await
            .unwrap();
        peers.push(Peer::start(r, i as u8, t0, Some(e2ee.clone())));
    }
    for p in &peers {
        let mut s = p.status.clone();
        tokio::time::timeout(
            Duration::from_secs(30),
            s.wait_for(|s| s.members.len() == n),
        )
        .await
        .unwrap()
        .unwrap();
        let mut f = p.first_frame.clone();
        tokio::time::timeout(Duration::from_secs(30), f.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    e2ee.lock().unwrap().reset();
    tokio::time::sleep(latency_for).await;
    let e2ee = e2ee.lock().unwrap().clone();
    for p in peers.drain(..) {
        p.leave().await;
    }

    // The same without SFrame.
    let plain = hist();
    let plain_room = format!("{room}-plain");
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(
            plain_peer(
                &server,
                &plain_room,
                i as u8,
                t0,
                plain.clone(),
                stopped.clone(),
            )
            .await,
        );
    }
    // Settled when every peer receives every other (as for the E2EE clients above).
    let want = (n * (n - 1)) as u64 * 25;
    let settle = Instant::now();
    while plain.lock().unwrap().len() < want && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    plain.lock().unwrap().reset();
    tokio::time::sleep(latency_for).await;
    let plain = plain.lock().unwrap().clone();
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Row {
        n,
        join,
        joined,
        rekey,
        e2ee,
        plain,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || vec![2, 5, 10],
            |s| s.split(',').filter_map(|x| x.parse().ok()).collect(),
        );
    let (trials, latency_for) = if quick {
        (3, Duration::from_secs(2))
    } else {
        (10, Duration::from_secs(5))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Veil call bench: {trials} join/leave trials per size; latency over {:?} of 50 frames/s \
         audio per participant\n",
        latency_for
    );
    println!(
        "| participants | join → first frame p50 / p95 | of which Room::join p50 | rekey after leave p50 / p95 | frame latency E2EE p50 / p99 (frames) | without SFrame p50 / p99 (frames) | E2EE / plain p50 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let r = rt.block_on(measure(n.max(2), trials, latency_for));
        println!(
            "| {} | {:.1} / {:.1} ms | {:.1} ms | {:.1} / {:.1} ms | {:.2} / {:.2} ms ({}) | {:.2} / {:.2} ms ({}) | {:.2} |",
            r.n,
            q(&r.join, 0.5),
            q(&r.join, 0.95),
            q(&r.joined, 0.5),
            q(&r.rekey, 0.5),
            q(&r.rekey, 0.95),
            q(&r.e2ee, 0.5),
            q(&r.e2ee, 0.99),
            r.e2ee.len(),
            q(&r.plain, 0.5),
            q(&r.plain, 0.99),
            r.plain.len(),
            q(&r.e2ee, 0.5) / q(&r.plain, 0.5).max(1e-9),
        );
    }
}
