//! A three-member call's frames end to end, in one process and without servers: SFrame,
//! packetization, a lossy network and reassembly. (`veil demo` runs a call through the real key
//! service and SFU.)
//!
//! ```text
//! cargo run --release -p veil-sframe --example call_frames [-- [FILE.ivf] [--ietf] [--loss PCT]]
//! ```
//!
//! Member 0 publishes video and members 1 and 2 publish audio. The video comes from a VP8 IVF
//! file, or from a built-in synthetic 30 fps source that needs no file. Each frame is
//! SFrame-encrypted with its sender's RFC 9605 §5.2 key, then packetized. The default is the
//! browser-compatible packetization (VP8 payload descriptor, Opus one frame per packet);
//! `--ietf` selects the IETF SFrame payload format instead. The packets then cross a simulated
//! network, separately for each receiver: they are reordered within a window, duplicated, and
//! lost at `--loss` percent (default 1). Each receiver reassembles and decrypts every frame and
//! compares it with what was sent.
//!
//! Halfway through, the group moves to a new epoch. The old keys stay for a grace period, then
//! are retired, and a late copy of an old-epoch frame is refused. The example prints one row per
//! (sender, receiver) pair. It exits non-zero if any frame that arrived whole fails to decrypt or
//! differs from what was sent.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use veil_sframe::{
    CipherSuite, KeyStore, MlsKidLayout, SenderKey, SframeError, default_backend, mls_sender_key,
};
use veil_wire::packetize::{
    Output, PacketFormat, Packetizer, Reassembler, ReassemblerConfig, RtpIn, Vp8Descriptor,
};

const MEMBERS: usize = 3;
const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
const MAX_PAYLOAD: usize = 1200;

struct Options {
    ivf: Option<String>,
    ietf: bool,
    loss: f64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        ivf: None,
        ietf: false,
        loss: 0.01,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ietf" => o.ietf = true,
            "--loss" => {
                let v = args
                    .next()
                    .ok_or("--loss needs a percentage, e.g. --loss 2")?;
                let pct: f64 = v.parse().map_err(|_| format!("--loss {v}: not a number"))?;
                if !(0.0..=50.0).contains(&pct) {
                    return Err(format!("--loss {pct}: use 0 to 50 percent"));
                }
                o.loss = pct / 100.0;
            }
            "-h" | "--help" => {
                return Err("usage: call_frames [FILE.ivf] [--ietf] [--loss PCT]".into());
            }
            path => o.ivf = Some(path.to_string()),
        }
    }
    Ok(o)
}

/// Frames of a VP8 IVF file (32-byte file header, 12-byte frame headers).
fn read_ivf(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if data.len() < 32 || &data[..4] != b"DKIF" {
        return Err(format!("{path} is not an IVF file (no DKIF signature)"));
    }
    let mut frames = Vec::new();
    let mut at = usize::from(u16::from_le_bytes([data[6], data[7]]));
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

/// Ten seconds of 30 fps video: a 15–25 KB key frame every 60 frames, 0.8–4 KB deltas.
fn synthetic_video(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..300)
        .map(|i| {
            let len = if i % 60 == 0 {
                rng.random_range(15_000..25_000)
            } else {
                rng.random_range(800..4_000)
            };
            let mut f = vec![0u8; len];
            rng.fill_bytes(&mut f);
            f
        })
        .collect()
}

/// One RTP packet on the simulated wire.
#[derive(Clone)]
struct Packet {
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

/// What one receiver saw of one sender.
#[derive(Default, Clone, Copy)]
struct PairStats {
    frames: usize,
    decrypted: usize,
    incomplete: usize,
    failures: usize,
}

struct Member {
    sender: SenderKey,
    store: KeyStore,
    format: PacketFormat,
    seq: u16,
    ts: u32,
}

fn install_epoch(members: &mut [Member], secret: &[u8], layout: MlsKidLayout, epoch: u64) {
    for (i, m) in members.iter_mut().enumerate() {
        let (kid, material) = mls_sender_key(SUITE, secret, layout, 0, i as u32, epoch).unwrap();
        // Senders switch only after the commit is merged; receivers keep the old keys a while.
        m.sender = SenderKey::new(SUITE, kid, &material, default_backend()).unwrap();
        m.store
            .insert_mls_epoch(SUITE, secret, layout, 0, epoch, 0..MEMBERS as u32)
            .unwrap();
    }
}

fn main() {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut rng = StdRng::from_os_rng();
    let (source, video) = match &opts.ivf {
        Some(path) => match read_ivf(path) {
            Ok(f) => (path.clone(), f),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        None => (
            "synthetic 30 fps video".to_string(),
            synthetic_video(&mut rng),
        ),
    };
    let layout = MlsKidLayout::for_group(4, MEMBERS as u64).unwrap();
    // Stand-ins for MLS-Exporter("SFrame 1.0 Base Key", "", 16) of epochs 1 and 2.
    let mut secrets = [[0u8; 16]; 2];
    rng.fill_bytes(&mut secrets[0]);
    rng.fill_bytes(&mut secrets[1]);

    let (video_fmt, audio_fmt) = if opts.ietf {
        (PacketFormat::Sframe, PacketFormat::Sframe)
    } else {
        (PacketFormat::Vp8, PacketFormat::Opus)
    };
    let mut members: Vec<Member> = (0..MEMBERS)
        .map(|i| Member {
            sender: SenderKey::from_base_key(SUITE, 0, b"placeholder").unwrap(),
            store: KeyStore::new(),
            format: if i == 0 { video_fmt } else { audio_fmt },
            seq: rng.random(),
            ts: rng.random(),
        })
        .collect();
    install_epoch(&mut members, &secrets[0], layout, 1);

    // Per (sender, receiver): a reassembler and counters. Wire: per receiver, per sender.
    let mut reassemblers: Vec<Vec<Reassembler>> = (0..MEMBERS)
        .map(|_| {
            members
                .iter()
                .map(|m| Reassembler::with_config(m.format, ReassemblerConfig::default()))
                .collect()
        })
        .collect();
    let mut stats = [[PairStats::default(); MEMBERS]; MEMBERS];
    let mut sent_frames: Vec<std::collections::HashMap<u32, Vec<u8>>> =
        vec![Default::default(); MEMBERS];
    let (mut packets_sent, mut bytes_sent) = (0usize, 0usize);
    let mut late_old_epoch: Option<(usize, Vec<u8>)> = None;
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let steps = video.len();

    for (step, frame) in video.iter().enumerate() {
        if step == steps / 2 {
            for m in &mut members {
                for kid in m.store.kids().collect::<Vec<_>>() {
                    m.store.set_expiry(kid, started.elapsed() + grace);
                }
            }
            install_epoch(&mut members, &secrets[1], layout, 2);
        }
        // Member 0: one video frame; members 1 and 2: an audio frame each (20 ms at 30 fps, roughly).
        for from in 0..MEMBERS {
            let plain = if from == 0 {
                frame.clone()
            } else {
                let mut a = vec![0u8; rng.random_range(60..160)];
                rng.fill_bytes(&mut a);
                a
            };
            let m = &mut members[from];
            let mut enc = vec![0u8; plain.len() + m.sender.max_overhead()];
            let n = m.sender.encrypt(b"", &plain, &mut enc).unwrap();
            enc.truncate(n);
            if step + 1 == steps / 2 && from == 1 {
                late_old_epoch = Some((from, enc.clone()));
            }
            m.ts = m.ts.wrapping_add(if from == 0 { 3000 } else { 960 });
            sent_frames[from].insert(m.ts, plain);
            let vp8 = Vp8Descriptor {
                picture_id: Some((step % 0x8000) as u16),
                ..Default::default()
            };
            let p = Packetizer::new(m.format, MAX_PAYLOAD).unwrap();
            let mut wire = Vec::new();
            let mut buf = [0u8; MAX_PAYLOAD];
            for frag in p.packetize(&enc, Some(&vp8)).unwrap() {
                let len = frag.write_to(&mut buf).unwrap();
                wire.push(Packet {
                    seq: m.seq,
                    ts: m.ts,
                    marker: frag.marker,
                    payload: buf[..len].to_vec(),
                });
                m.seq = m.seq.wrapping_add(1);
                packets_sent += 1;
                bytes_sent += len;
            }
            // The network, separately towards each receiver: loss, duplicates, local reordering.
            for to in (0..MEMBERS).filter(|&to| to != from) {
                let mut arriving: Vec<Packet> = Vec::new();
                for pkt in &wire {
                    if rng.random_bool(opts.loss) {
                        continue;
                    }
                    arriving.push(pkt.clone());
                    if rng.random_bool(0.01) {
                        arriving.push(pkt.clone());
                    }
                }
                arriving.shuffle(&mut rng);
                let r = &mut reassemblers[to][from];
                for pkt in &arriving {
                    let _ = r.push(RtpIn {
                        seq: pkt.seq,
                        timestamp: pkt.ts,
                        marker: pkt.marker,
                        payload: &pkt.payload,
                        start: None,
                        end: None,
                    });
                }
                drain(
                    r,
                    &mut members[to].store,
                    &sent_frames[from],
                    &mut stats[to][from],
                );
            }
        }
    }
    for to in 0..MEMBERS {
        for from in 0..MEMBERS {
            reassemblers[to][from].flush();
            drain(
                &mut reassemblers[to][from],
                &mut members[to].store,
                &sent_frames[from],
                &mut stats[to][from],
            );
        }
    }
    let elapsed = started.elapsed();

    // After the grace period epoch 1 is retired: a late copy of an epoch-1 frame is refused.
    let mut refused = 0;
    if let Some((from, frame)) = &late_old_epoch {
        for (to, m) in members.iter_mut().enumerate().filter(|(to, _)| to != from) {
            m.store
                .expire(started.elapsed() + grace + Duration::from_millis(1));
            let mut buf = frame.clone();
            match m.store.decrypt_in_place(b"", &mut buf) {
                Err(SframeError::KeyRetired { .. }) => refused += 1,
                other => {
                    eprintln!("member {to}: a retired epoch-1 frame was not refused: {other:?}");
                    stats[to][*from].failures += 1;
                }
            }
        }
    }

    println!(
        "source: {source}; packetization: {}",
        if opts.ietf {
            "IETF SFrame payload format"
        } else {
            "browser-compatible (VP8 descriptor / Opus)"
        }
    );
    println!(
        "suite {SUITE}; network: {:.1}% loss, 1% duplicates, reordering",
        opts.loss * 100.0
    );
    println!(
        "{packets_sent} packets ({:.1} MB) sent; epoch 1 → 2 at step {}\n",
        bytes_sent as f64 / 1e6,
        steps / 2
    );
    println!(
        "{:<10} {:<9} {:>7} {:>10} {:>11} {:>17}",
        "sender", "receiver", "frames", "decrypted", "incomplete", "decrypt failures"
    );
    let mut failures = 0;
    for from in 0..MEMBERS {
        for (to, row) in stats.iter().enumerate().filter(|&(to, _)| to != from) {
            let s = row[from];
            failures += s.failures;
            let kind = if from == 0 { "(video)" } else { "(audio)" };
            println!(
                "{:<10} {:<9} {:>7} {:>10} {:>11} {:>17}",
                format!("{from} {kind}"),
                to,
                s.frames,
                s.decrypted,
                s.incomplete,
                s.failures
            );
        }
    }
    println!(
        "\nlate epoch-1 frame refused after the grace period by {refused} of {} receivers",
        MEMBERS - 1
    );
    println!(
        "{:.1} ms for the whole call; decrypt failures of complete frames: {failures}",
        elapsed.as_secs_f64() * 1e3
    );
    if failures > 0 || refused != MEMBERS - 1 {
        std::process::exit(1);
    }
}

/// Decrypt every frame the reassembler completed and compare it with what was sent.
fn drain(
    r: &mut Reassembler,
    store: &mut KeyStore,
    sent: &std::collections::HashMap<u32, Vec<u8>>,
    s: &mut PairStats,
) {
    while let Some(out) = r.poll() {
        match out {
            Output::Complete(mut f) => {
                s.frames += 1;
                match store.decrypt_in_place(b"", &mut f.data) {
                    Ok(d)
                        if sent
                            .get(&f.timestamp)
                            .is_some_and(|p| p[..] == d.plaintext[..]) =>
                    {
                        s.decrypted += 1
                    }
                    Ok(_) => s.failures += 1,
                    Err(e) => {
                        eprintln!("frame at ts {} did not decrypt: {e}", f.timestamp);
                        s.failures += 1;
                    }
                }
            }
            Output::Incomplete(_) => s.incomplete += 1,
        }
    }
}
