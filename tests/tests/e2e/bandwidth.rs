//! A subscriber behind a 300 kbit/s bottleneck, then none (issue 23; specs/sfu.md SFU-BWE):
//! alice publishes three simulcast layers (about 150, 500 and 1,500 kbit/s) and audio; bob's
//! path through the netem relay is capped, then uncapped. The layer the SFU forwards to bob
//! (its own `veil_sfu_subscriber_layer` gauge) follows the cap down and back up, and bob keeps
//! decrypting alice's audio all along.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use veil_client::media::MediaKind;
use veil_client::room::{Room, VideoLayer};
use veil_e2e::impaired::{behind_relay, free_udp_port};
use veil_netem::{Impairment, RateCap};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_layer_follows_a_300_kbit_cap_and_audio_goes_on() {
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
    let publisher = {
        let (alice, stop, sent) = (alice.clone(), stop.clone(), sent_audio.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
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

    // Phases: free (12 s), capped at 300 kbit/s (15 s), free again (20 s). Bob's audio from
    // alice is counted per phase; the SFU's layer for bob is sampled every 500 ms.
    let phases = [
        ("free", None, 12u64),
        ("capped", Some(300_000u64), 15),
        ("uncapped", None, 20),
    ];
    let mut summary = Vec::new();
    for (name, cap, secs) in phases {
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
        let end = Instant::now() + Duration::from_secs(secs);
        let mut next_sample = Instant::now();
        let (mut audio, mut last_audio, mut longest_gap) = (0u32, Instant::now(), Duration::ZERO);
        let (mut layers, mut estimates) = (Vec::new(), Vec::new());
        while Instant::now() < end {
            if Instant::now() >= next_sample {
                let text = server.metrics_text().await;
                layers.push(bob_gauge(&text, "veil_sfu_subscriber_layer").unwrap_or(-1));
                estimates.push(
                    bob_gauge(&text, "veil_sfu_subscriber_estimate_bps").unwrap_or(-1) / 1000,
                );
                next_sample += Duration::from_millis(500);
            }
            if let Ok(Some(f)) =
                tokio::time::timeout(Duration::from_millis(100), bob.next_frame()).await
                && f.kind == MediaKind::Audio
            {
                audio += 1;
                longest_gap = longest_gap.max(last_audio.elapsed());
                last_audio = Instant::now();
            }
        }
        longest_gap = longest_gap.max(last_audio.elapsed());
        eprintln!("{name}: estimates (kbit/s) {estimates:?}");
        eprintln!(
            "{name}: layers {layers:?}, audio frames {audio} (phase), longest gap {longest_gap:?}"
        );
        let sent = sent_audio.load(Ordering::Relaxed) - sent_before;
        summary.push((name, layers, audio, sent, longest_gap));
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();

    let last = |l: &Vec<i64>| *l.last().unwrap();
    let (free, capped, uncapped) = (&summary[0], &summary[1], &summary[2]);
    assert_eq!(last(&free.1), 2, "top layer on a free path: {summary:?}");
    assert_eq!(
        last(&capped.1),
        0,
        "the lowest layer at 300 kbit/s: {summary:?}"
    );
    assert_eq!(
        last(&uncapped.1),
        2,
        "the top layer again once uncapped: {summary:?}"
    );
    for (name, _, audio, sent, gap) in &summary {
        // The cap's first second drops what the SFU still sends at the top layer, audio
        // among it, until its estimate falls (specs/sfu.md SFU-BWE-10): at most a tenth of a
        // phase's audio, and never a silence of a second.
        assert!(
            *audio * 10 >= *sent * 9,
            "{name}: bob decrypted {audio} of {sent} audio frames alice sent"
        );
        assert!(
            *gap < Duration::from_secs(1),
            "{name}: audio stopped for {gap:?}"
        );
    }
}
