//! Veil's main job until the servers exist: a three-member call's frames, end to end.
//!
//! ```text
//! cargo run --release -p veil-sframe --example call_frames [-- FILE.ivf]
//! ```
//!
//! Each member holds the epoch's MLS exporter secret and derives RFC 9605 §5.2 keys. Every frame
//! is encrypted by its sender and decrypted by the two other members, who check it byte for byte.
//! The frames come from a VP8 IVF file, or from a built-in synthetic source that needs no file.
//! Halfway through, the group moves to a new epoch. Receivers keep the old epoch's keys for a
//! grace period, so frames that were already in flight still decrypt. After the grace period the
//! old keys are retired and frames under them are refused. The example prints one row per member
//! and fails (non-zero exit) on any mismatch.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use veil_sframe::{
    CipherSuite, KeyStore, MlsKidLayout, SenderKey, SframeError, default_backend, mls_sender_key,
};

const MEMBERS: u32 = 3;
const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

/// Frames of a VP8 IVF file (32-byte file header, 12-byte frame headers).
fn read_ivf(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if data.len() < 32 || &data[..4] != b"DKIF" {
        return Err(format!("{path} is not an IVF file (no DKIF signature)"));
    }
    let header_len = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    let mut at = header_len;
    while at + 12 <= data.len() {
        let size = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 12;
        let end = at
            .checked_add(size)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| format!("{path}: frame at byte {at} runs past the end of the file"))?;
        frames.push(data[at..end].to_vec());
        at = end;
    }
    Ok(frames)
}

/// Ten seconds of a 30 fps video stream: a key frame (15–25 KB) every 60 frames, delta
/// frames of 0.8–4 KB in between, plus a 60–160 byte audio frame every 20 ms.
fn synthetic(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for i in 0..300 {
        let len = if i % 60 == 0 {
            rng.random_range(15_000..25_000)
        } else {
            rng.random_range(800..4_000)
        };
        let mut f = vec![0u8; len];
        rng.fill_bytes(&mut f);
        frames.push(f);
        for _ in 0..2 {
            let mut a = vec![0u8; rng.random_range(60..160)];
            rng.fill_bytes(&mut a);
            frames.push(a);
        }
    }
    frames
}

#[derive(Default)]
struct Row {
    sent: usize,
    bytes: usize,
    received: usize,
    decrypted: usize,
    refused_after_retire: usize,
}

struct Member {
    index: u32,
    sender: SenderKey,
    store: KeyStore,
}

fn epoch_keys(secret: &[u8], layout: MlsKidLayout, epoch: u64) -> Vec<Member> {
    (0..MEMBERS)
        .map(|index| {
            let (kid, material) = mls_sender_key(SUITE, secret, layout, 0, index, epoch).unwrap();
            let sender = SenderKey::new(SUITE, kid, &material, default_backend()).unwrap();
            let mut store = KeyStore::new();
            store
                .insert_mls_epoch(SUITE, secret, layout, 0, epoch, 0..MEMBERS)
                .unwrap();
            Member {
                index,
                sender,
                store,
            }
        })
        .collect()
}

fn main() {
    let mut rng = StdRng::from_os_rng();
    let (source, frames) = match std::env::args().nth(1) {
        Some(path) => match read_ivf(&path) {
            Ok(f) => (path, f),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        None => (
            "synthetic 30 fps video + 50 fps audio".to_string(),
            synthetic(&mut rng),
        ),
    };
    let layout = MlsKidLayout::for_group(4, u64::from(MEMBERS)).unwrap();
    // Stand-ins for MLS-Exporter("SFrame 1.0 Base Key", "", 16) of epochs 1 and 2.
    let mut secrets = [[0u8; 16]; 2];
    rng.fill_bytes(&mut secrets[0]);
    rng.fill_bytes(&mut secrets[1]);

    let mut members = epoch_keys(&secrets[0], layout, 1);
    let mut rows: Vec<Row> = (0..MEMBERS).map(|_| Row::default()).collect();
    let mut in_flight_old: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut failures = 0usize;
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let half = frames.len() / 2;

    for (n, frame) in frames.iter().enumerate() {
        let from = (n as u32) % MEMBERS;
        if n == half {
            // Epoch change: every member installs epoch 2 and switches its sender after the
            // commit is merged; epoch 1 stays decryptable for `grace`.
            let next = epoch_keys(&secrets[1], layout, 2);
            for (m, new) in members.iter_mut().zip(next) {
                let old_kids: Vec<u64> = m.store.kids().collect();
                for kid in old_kids {
                    m.store.set_expiry(kid, started.elapsed() + grace);
                }
                m.store
                    .insert_mls_epoch(SUITE, &secrets[1], layout, 0, 2, 0..MEMBERS)
                    .unwrap();
                m.sender = new.sender;
            }
        }
        let sender = &mut members[from as usize];
        let mut wire = vec![0u8; frame.len() + sender.sender.max_overhead()];
        let len = sender.sender.encrypt(b"", frame, &mut wire).unwrap();
        wire.truncate(len);
        rows[from as usize].sent += 1;
        rows[from as usize].bytes += len;
        if n + 1 == half {
            // One frame per sender is still in flight when the epoch changes.
            in_flight_old.push((from, wire.clone()));
        }
        for m in members.iter_mut().filter(|m| m.index != from) {
            rows[m.index as usize].received += 1;
            let mut buf = wire.clone();
            match m.store.decrypt_in_place(b"", &mut buf) {
                Ok(d) if d.plaintext == &frame[..] => rows[m.index as usize].decrypted += 1,
                Ok(_) => failures += 1,
                Err(e) => {
                    eprintln!("member {} could not decrypt frame {n}: {e}", m.index);
                    failures += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed();

    // After the grace period the old epoch is gone: a late copy of an epoch-1 frame is refused.
    for m in &mut members {
        m.store
            .expire(started.elapsed() + grace + Duration::from_millis(1));
        for (from, wire) in &in_flight_old {
            if *from == m.index {
                continue;
            }
            let mut buf = wire.clone();
            if let Err(SframeError::KeyRetired { .. }) = m.store.decrypt_in_place(b"", &mut buf) {
                rows[m.index as usize].refused_after_retire += 1;
            } else {
                failures += 1;
            }
        }
    }

    println!("source: {source} ({} frames), suite {SUITE}", frames.len());
    println!("epochs: 1 → 2 at frame {half}; old epoch kept for {grace:?}, then retired\n");
    println!(
        "{:<8} {:>8} {:>12} {:>10} {:>10} {:>22}",
        "member", "sent", "bytes sent", "received", "decrypted", "late epoch-1 refused"
    );
    for (i, r) in rows.iter().enumerate() {
        println!(
            "{:<8} {:>8} {:>12} {:>10} {:>10} {:>22}",
            i, r.sent, r.bytes, r.received, r.decrypted, r.refused_after_retire
        );
    }
    let total: usize = rows.iter().map(|r| r.decrypted).sum();
    println!(
        "\n{total} frame decryptions in {:.1} ms; decrypt failures: {failures}",
        elapsed.as_secs_f64() * 1e3
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
