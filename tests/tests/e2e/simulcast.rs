//! Simulcast end to end (real key service + blind SFU on loopback): alice publishes three
//! layers, each frame encrypted on its own; bob asks the SFU for q (the default), then f, then
//! h. Every frame bob decrypts is byte-identical to the frame alice published on one layer, the
//! layer changes only at a key frame (SFU-FWD-01/02), timestamps rise, and nothing
//! fails to decrypt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use veil_client::media::MediaKind;
use veil_client::room::{Room, VideoLayer};
use veil_e2e::{Server, video_frame};

const KEY_EVERY: u32 = 10;
const RIDS: [&str; 3] = ["q", "h", "f"];

/// Layer `l`'s frame `i`: distinct content per layer.
fn layer_frame(l: usize, i: u32) -> Vec<u8> {
    video_frame(10 + l, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moves_between_encrypted_simulcast_layers_at_key_frames() {
    let server = Server::start().await;
    let room = "simulcast";
    let mut alice_cfg = server.room(room, "alice");
    alice_cfg.simulcast = VideoLayer::browser_defaults(1280, 720);
    let alice = Arc::new(Room::join(alice_cfg).await.unwrap());
    let mut bob = Room::join(server.room(room, "bob")).await.unwrap();
    for r in [&*alice, &bob] {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    assert!(
        alice.publish_video(&[1, 2, 3], 0, true).await.is_err(),
        "a simulcast room must refuse a single-layer frame"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU32::new(0));
    let publisher = {
        let (alice, stop, published) = (alice.clone(), stop.clone(), published.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let frames: Vec<Vec<u8>> = (0..3).map(|l| layer_frame(l, i)).collect();
                let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                alice
                    .publish_video_layers(&refs, i * 3000, i.is_multiple_of(KEY_EVERY))
                    .await
                    .unwrap();
                i += 1;
                published.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // (frame index, layer, RTP timestamp) of every video frame bob decrypts, in arrival order.
    let mut seen: Vec<(u32, usize, u32)> = Vec::new();
    let mut track = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Ask for the next layer once 15 frames of the current one have arrived.
    let plan = ["q", "f", "h"];
    let mut step = 0;
    let mut on_current = 0;
    while step < plan.len() {
        let f = tokio::time::timeout_at(deadline, bob.next_frame())
            .await
            .unwrap_or_else(|_| panic!("stuck at step {step}; seen {seen:?}"))
            .unwrap();
        if f.kind != MediaKind::Video {
            continue;
        }
        assert_eq!(f.participant, "alice");
        track.get_or_insert_with(|| f.track.clone());
        // The SFU rewrites timestamps per subscriber; the content says which frame it is.
        let (i, layer) = (0..published.load(Ordering::Relaxed) + 1)
            .rev()
            .flat_map(|i| (0..3).map(move |l| (i, l)))
            .find(|&(i, l)| layer_frame(l, i) == f.frame)
            .unwrap_or_else(|| panic!("a frame matches nothing alice published: {seen:?}"));
        if let Some(&(_, _, ts)) = seen.last() {
            assert!(f.timestamp > ts, "timestamps go back at frame {i}");
        }
        seen.push((i, layer, f.timestamp));
        if RIDS[layer] == plan[step] {
            on_current += 1;
            if on_current == 15 {
                step += 1;
                on_current = 0;
                if let Some(rid) = plan.get(step) {
                    bob.set_video_layer(track.as_ref().unwrap(), rid)
                        .await
                        .unwrap();
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();

    // The layers bob got, in order: q, then f, then h; each change at a key frame.
    let mut runs: Vec<usize> = Vec::new();
    for w in seen.windows(2) {
        let ((_, a, _), (i, b, _)) = (w[0], w[1]);
        if a != b {
            assert_eq!(
                i % KEY_EVERY,
                0,
                "switched {a} → {b} at delta frame {i}: {seen:?}"
            );
        }
    }
    for (_, l, _) in &seen {
        if runs.last() != Some(l) {
            runs.push(*l);
        }
    }
    assert_eq!(runs, vec![0, 2, 1], "{seen:?}");
    // Capture instants in order. One repeats only where the new layer's key frame is of the
    // instant the old layer already delivered (alice sends q, h, f in turn, and the SFU
    // switches at the first key-frame packet of the wanted layer); the SFU's timestamps still
    // rise across it, as its DD frame numbers do.
    for w in seen.windows(2) {
        let ((i, a, _), (j, b, _)) = (w[0], w[1]);
        assert!(j > i || (j == i && a != b), "{seen:?}");
    }
    let stats = bob.stats();
    for (t, s) in &stats.received {
        assert!(s.decrypt_failures.is_empty(), "{t}: {s:?}");
    }
    let sent = alice.stats().video_layers_sent;
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|l| l.frames == sent[0].frames && l.refused == 0)
    );
}
