//! A subscriber behind a 300 kbit/s bottleneck, then none (issue 23; specs/sfu.md SFU-BWE-10):
//! alice publishes three simulcast layers (about 150, 500 and 1,500 kbit/s) and audio; bob's
//! path through the netem relay is free, capped, then free again. The layer the SFU forwards to
//! bob (its own `veil_sfu_subscriber_layer` gauge) and its estimate are sampled every 500 ms,
//! and bob's audio from alice is counted per phase.
//!
//! The CI test is `tests/tests/e2e/bandwidth.rs`; `cargo run -p veil-e2e --example
//! reliability -- bandwidth` writes its figures to RELIABILITY.md.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use veil_client::media::MediaKind;
use veil_client::room::{Room, VideoLayer};
use veil_netem::{Impairment, RateCap};

use crate::impaired::{behind_relay, free_udp_port};
use crate::reliability::secs;

/// One phase of the path: a name, its cap (bits per second, `None` for none) and its length.
pub type PhasePlan = (&'static str, Option<u64>, Duration);

/// The issue's phases: free 12 s, capped at 300 kbit/s 15 s, free again 20 s.
#[must_use]
pub fn issue_phases() -> Vec<PhasePlan> {
    vec![
        ("free", None, Duration::from_secs(12)),
        ("capped", Some(300_000), Duration::from_secs(15)),
        ("uncapped", None, Duration::from_secs(20)),
    ]
}

/// What one phase showed.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// Its cap, bits per second.
    pub cap: Option<u64>,
    /// Its length.
    pub length: Duration,
    /// The SFU's layer for bob's subscription to alice's video, every 500 ms (-1: none yet).
    pub layers: Vec<i64>,
    /// The SFU's estimate for bob, kbit/s, every 500 ms (-1: none yet).
    pub estimates_kbps: Vec<i64>,
    /// When, from the phase's start, the layer first reached the phase's last value.
    pub settled_after: Option<Duration>,
    /// Audio frames alice sent in the phase that bob decrypted (during the phase or soon
    /// after: a capped queue delivers late).
    pub audio_received: u32,
    /// Audio frames alice sent in the phase.
    pub audio_sent: u32,
    /// Bob's longest audio silence in the phase.
    pub longest_gap: Duration,
}

impl Phase {
    /// The layer at the phase's end.
    #[must_use]
    pub fn last_layer(&self) -> Option<i64> {
        self.layers.last().copied()
    }
}

/// Layer `l`'s frame `i` at 50 frames/s: 375, 1,250 and 3,750 bytes (150, 500, 1,500 kbit/s).
fn layer_frame(l: usize, i: u32) -> Vec<u8> {
    let len = [375, 1250, 3750][l];
    (0..len)
        .map(|j| (j as u32 ^ i ^ (l as u32 * 31)) as u8)
        .collect()
}

/// The largest of bob's values of the SFU gauge `name`, from the SFU's metrics text: his
/// estimate, or the layer of alice's video (her audio track's layer is always 0).
fn bob_gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("subscriber=\"bob\""))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .max()
}

/// Play `phases` on bob's path.
///
/// # Panics
/// If the server, the relay or a join fails, or no video reaches bob within 20 s.
pub async fn run(phases: &[PhasePlan]) -> Vec<Phase> {
    let (server, relay) = behind_relay(Impairment::default(), 11).await;
    let room = "bottleneck";
    let mut alice_cfg = server.room(room, "alice");
    alice_cfg.simulcast = VideoLayer::browser_defaults(1280, 720);
    let alice = Arc::new(Room::join(alice_cfg).await.unwrap());
    let bob_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut bob_cfg = server.room(room, "bob");
    bob_cfg.udp_addrs = vec![bob_addr.to_string()];
    let mut bob = Room::join(bob_cfg).await.unwrap();
    for r in [&*alice, &bob] {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent_audio = Arc::new(AtomicU32::new(0));
    // The index of the frame alice publishes next (its RTP timestamp over 960).
    let next_index = Arc::new(AtomicU32::new(0));
    let publisher = {
        let (alice, stop, sent) = (alice.clone(), stop.clone(), sent_audio.clone());
        let next = next_index.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                next.store(i, Ordering::Relaxed);
                let frames: Vec<Vec<u8>> = (0..3).map(|l| layer_frame(l, i)).collect();
                let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                let _ = alice
                    .publish_video_layers(&refs, i * 1800, i.is_multiple_of(50))
                    .await;
                if alice
                    .publish_audio(&[0xfc, i as u8, (i >> 8) as u8], i * 960, (true, 40))
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Bob asks for the top layer; the SFU gives what his path carries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let track = loop {
        if let Some(f) = tokio::time::timeout(Duration::from_secs(5), bob.next_frame())
            .await
            .ok()
            .flatten()
            && f.kind == MediaKind::Video
        {
            break f.track;
        }
        assert!(Instant::now() < deadline, "no video reached bob");
    };
    bob.set_video_layer(&track, "f").await.unwrap();

    let mut out = Vec::new();
    // The index of every audio frame bob decrypted, and each phase's range of indices.
    let mut heard = Vec::new();
    let mut ranges = Vec::new();
    for &(name, cap, length) in phases {
        let imp = Impairment {
            rate: cap.map(|bits_per_second| RateCap {
                bits_per_second,
                queue_bytes: 30_000,
            }),
            ..Impairment::default()
        };
        relay.set_flow(bob_addr, imp);
        // As an application would: the top layer stays what bob asks for.
        bob.set_video_layer(&track, "f").await.unwrap();
        let sent_before = sent_audio.load(Ordering::Relaxed);
        let first = next_index.load(Ordering::Relaxed);
        let start = Instant::now();
        let end = start + length;
        let mut next_sample = start;
        let (mut last_audio, mut longest_gap) = (start, Duration::ZERO);
        let (mut layers, mut estimates) = (Vec::new(), Vec::new());
        let mut changed = Vec::new();
        while Instant::now() < end {
            if Instant::now() >= next_sample {
                let text = server.metrics_text().await;
                let layer = bob_gauge(&text, "veil_sfu_subscriber_layer").unwrap_or(-1);
                if layers.last() != Some(&layer) {
                    changed.push(start.elapsed());
                }
                layers.push(layer);
                estimates.push(
                    bob_gauge(&text, "veil_sfu_subscriber_estimate_bps").unwrap_or(-1) / 1000,
                );
                next_sample += Duration::from_millis(500);
            }
            if let Ok(Some(f)) =
                tokio::time::timeout(Duration::from_millis(100), bob.next_frame()).await
                && f.kind == MediaKind::Audio
            {
                heard.push(f.timestamp / 960);
                longest_gap = longest_gap.max(last_audio.elapsed());
                last_audio = Instant::now();
            }
        }
        longest_gap = longest_gap.max(last_audio.elapsed());
        ranges.push(first..next_index.load(Ordering::Relaxed));
        out.push(Phase {
            name,
            cap,
            length,
            layers,
            estimates_kbps: estimates,
            settled_after: changed.last().copied(),
            audio_received: 0,
            audio_sent: sent_audio.load(Ordering::Relaxed) - sent_before,
            longest_gap,
        });
    }
    // What the last phase's queue still held.
    let end = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(f)) = tokio::time::timeout_at(end.into(), bob.next_frame()).await {
        if f.kind == MediaKind::Audio {
            heard.push(f.timestamp / 960);
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    for (p, range) in out.iter_mut().zip(ranges) {
        p.audio_received = heard.iter().filter(|i| range.contains(i)).count() as u32;
    }
    out
}

/// The Markdown section for RELIABILITY.md.
#[must_use]
pub fn table(phases: &[Phase]) -> String {
    let mut s = String::from(
        "| phase | cap | length | SFU layer for bob (every 0.5 s) | last layer change after | estimate at the end | audio decrypted / sent | longest audio gap |\n|---|---|---|---|---|---|---|---|\n",
    );
    for p in phases {
        let layers: String = p
            .layers
            .iter()
            .map(|l| {
                if *l < 0 {
                    "-".to_owned()
                } else {
                    l.to_string()
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | `{}` | {} | {} kbit/s | {} / {} ({:.1} %) | {} |",
            p.name,
            p.cap
                .map_or_else(|| "none".to_owned(), |c| format!("{} kbit/s", c / 1000)),
            secs(p.length),
            layers,
            p.settled_after.map_or_else(|| "-".to_owned(), secs),
            p.estimates_kbps.last().copied().unwrap_or(-1),
            p.audio_received,
            p.audio_sent,
            100.0 * f64::from(p.audio_received) / f64::from(p.audio_sent.max(1)),
            secs(p.longest_gap),
        );
    }
    s
}
