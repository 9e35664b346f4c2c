//! Both packetizations under loss and reordering (RTP-PKT-01..08): random frames of 0–64 KiB,
//! random MTUs, sequence numbers that wrap, packets shuffled within a bounded window and a
//! random subset dropped. Every frame whose packets all arrived comes back byte-identical; every
//! other frame is reported incomplete; nothing is invented or reported twice.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use veil_wire::packetize::{
    IncompleteReason, Output, PacketFormat, Packetizer, Reassembler, ReassemblerConfig, RtpIn,
    Vp8Descriptor,
};

struct Sent {
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    frame: usize,
}

fn frame_size(rng: &mut StdRng, format: PacketFormat, mtu: usize) -> usize {
    match (format, rng.random_range(0..10)) {
        (PacketFormat::Opus, _) => rng.random_range(0..=mtu.min(1500)),
        (_, 0) => 0,
        (_, 1) => rng.random_range(1..=8),
        (_, 2..=5) => rng.random_range(0..=4 * mtu),
        _ => rng.random_range(0..=64 * 1024),
    }
}

/// Packetize `n` random frames; returns frames and packets in send order.
fn send(rng: &mut StdRng, format: PacketFormat, mtu: usize, n: usize) -> (Vec<Vec<u8>>, Vec<Sent>) {
    let p = Packetizer::new(format, mtu).unwrap();
    let mut seq: u16 = rng.random_range(65_000..=65_535); // wraps during the run
    let mut ts: u32 = rng.random();
    let mut frames = Vec::new();
    let mut packets = Vec::new();
    let mut buf = vec![0u8; mtu];
    for i in 0..n {
        let mut f = vec![0u8; frame_size(rng, format, mtu)];
        rng.fill_bytes(&mut f);
        let vp8 = Vp8Descriptor {
            picture_id: Some((i % 0x8000) as u16),
            tl0_pic_idx: Some(i as u8),
            tid: Some((i % 3) as u8),
            ..Default::default()
        };
        let frags = p.packetize(&f, Some(&vp8)).unwrap();
        for frag in frags {
            let len = frag.write_to(&mut buf).unwrap();
            assert!(len <= mtu, "payload {len} exceeds the MTU budget {mtu}");
            packets.push(Sent {
                seq,
                ts,
                marker: frag.marker,
                payload: buf[..len].to_vec(),
                frame: i,
            });
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(3000);
        frames.push(f);
    }
    (frames, packets)
}

/// Shuffle within consecutive chunks, so no packet moves more than `2 * chunk` positions.
fn shuffle_bounded(rng: &mut StdRng, packets: &mut [Sent], chunk: usize) {
    for c in packets.chunks_mut(chunk) {
        c.shuffle(rng);
    }
}

fn run(seed: u64, format: PacketFormat) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mtu = match format {
        PacketFormat::Opus => rng.random_range(200..=1400),
        _ => rng.random_range(50..=1400),
    };
    let n = if format == PacketFormat::Opus {
        200
    } else {
        40
    };
    let (frames, mut packets) = send(&mut rng, format, mtu, n);
    // Drop ~2% of packets; remember which frames lost one.
    let mut lost_frames = BTreeSet::new();
    packets.retain(|p| {
        let keep = !rng.random_bool(0.02);
        if !keep {
            lost_frames.insert(p.frame);
        }
        keep
    });
    // Duplicate a few packets too.
    let dups: Vec<usize> = (0..packets.len() / 50)
        .map(|_| rng.random_range(0..packets.len()))
        .collect();
    for d in dups {
        let p = &packets[d];
        let copy = Sent {
            seq: p.seq,
            ts: p.ts,
            marker: p.marker,
            payload: p.payload.clone(),
            frame: p.frame,
        };
        packets.push(copy);
    }
    shuffle_bounded(&mut rng, &mut packets, 256);

    let cfg = ReassemblerConfig {
        max_pending_frames: 1024,
        ..Default::default()
    };
    let mut r = Reassembler::with_config(format, cfg);
    let mut complete: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut incomplete: BTreeSet<u32> = BTreeSet::new();
    let drain = |r: &mut Reassembler,
                 complete: &mut BTreeMap<u32, Vec<u8>>,
                 incomplete: &mut BTreeSet<u32>| {
        while let Some(o) = r.poll() {
            match o {
                Output::Complete(f) => {
                    assert!(
                        complete.insert(f.timestamp, f.data).is_none(),
                        "frame emitted twice"
                    );
                }
                Output::Incomplete(i) => {
                    assert!(incomplete.insert(i.timestamp), "frame reported twice");
                }
            }
        }
    };
    for p in &packets {
        r.push(RtpIn {
            seq: p.seq,
            timestamp: p.ts,
            marker: p.marker,
            payload: &p.payload,
            start: None,
            end: None,
        })
        .unwrap();
        drain(&mut r, &mut complete, &mut incomplete);
    }
    r.flush();
    drain(&mut r, &mut complete, &mut incomplete);

    // Ground truth, frame by frame.
    let ts_for: BTreeMap<usize, u32> = packets.iter().map(|p| (p.frame, p.ts)).collect();
    let mut got_complete = 0;
    for (i, f) in frames.iter().enumerate() {
        let Some(&ts) = ts_for.get(&i) else {
            // Every packet of this frame was dropped: the receiver cannot know it existed.
            assert!(lost_frames.contains(&i));
            continue;
        };
        if lost_frames.contains(&i) {
            assert!(
                incomplete.contains(&ts),
                "{format:?} seed {seed}: frame {i} lost a packet but was not reported"
            );
            assert!(
                !complete.contains_key(&ts),
                "{format:?} seed {seed}: frame {i} invented"
            );
        } else {
            assert_eq!(
                complete.get(&ts),
                Some(f),
                "{format:?} seed {seed} mtu {mtu}: frame {i} ({} B)",
                f.len()
            );
            assert!(!incomplete.contains(&ts));
            got_complete += 1;
        }
    }
    assert_eq!(complete.len(), got_complete, "no extra frames");
    let s = r.stats();
    assert_eq!(s.frames as usize, complete.len());
    assert_eq!(s.incomplete as usize, incomplete.len());
    (got_complete, incomplete.len())
}

#[test]
fn vp8_browser_format_survives_loss_and_reordering() {
    let (mut ok, mut lost) = (0, 0);
    for seed in 0..12 {
        let (c, i) = run(seed, PacketFormat::Vp8);
        ok += c;
        lost += i;
    }
    assert!(ok > 150 && lost > 20, "complete {ok}, incomplete {lost}");
}

#[test]
fn ietf_sframe_format_survives_loss_and_reordering() {
    let (mut ok, mut lost) = (0, 0);
    for seed in 100..112 {
        let (c, i) = run(seed, PacketFormat::Sframe);
        ok += c;
        lost += i;
    }
    assert!(ok > 150 && lost > 20, "complete {ok}, incomplete {lost}");
}

#[test]
fn opus_format_carries_one_frame_per_packet() {
    let (mut ok, mut lost) = (0, 0);
    for seed in 200..204 {
        let (c, i) = run(seed, PacketFormat::Opus);
        ok += c;
        lost += i;
    }
    // One packet per frame: a dropped packet takes its whole frame, which the receiver never
    // learns of (the sequence gap is the jitter buffer's business), so nothing is incomplete.
    assert!(ok > 700 && lost == 0, "complete {ok}, incomplete {lost}");
}

#[test]
fn fragments_are_even_and_fill_the_mtu_budget() {
    let p = Packetizer::new(PacketFormat::Sframe, 101).unwrap();
    // 1000 bytes at 100 per fragment: exactly 10 full fragments.
    let sizes: Vec<usize> = p
        .packetize(&[0u8; 1000], None)
        .unwrap()
        .map(|f| f.len())
        .collect();
    assert_eq!(sizes, vec![101; 10]);
    // 1001 bytes: 11 fragments of 91 or 92 bytes, never a tiny tail.
    let sizes: Vec<usize> = p
        .packetize(&[0u8; 1001], None)
        .unwrap()
        .map(|f| f.body().len())
        .collect();
    assert_eq!(sizes.len(), 11);
    assert!(sizes.iter().all(|&s| s == 91 || s == 92));
    // An empty frame is one packet carrying only the descriptor, marked as start and end.
    let f: Vec<_> = p.packetize(&[], None).unwrap().collect();
    assert_eq!(f.len(), 1);
    let mut buf = [0u8; 4];
    assert_eq!(f[0].write_to(&mut buf).unwrap(), 1);
    assert_eq!(buf[0], 0xC0);
}

#[test]
fn bad_configurations_and_payloads_are_errors_not_panics() {
    assert!(Packetizer::new(PacketFormat::Vp8, 6).is_err());
    assert!(Packetizer::new(PacketFormat::Sframe, 1).is_err());
    let opus = Packetizer::new(PacketFormat::Opus, 100).unwrap();
    assert!(opus.packetize(&[0u8; 101], None).is_err());
    let vp8 = Packetizer::new(PacketFormat::Vp8, 100).unwrap();
    assert!(
        vp8.packetize(&[0u8; 10], None).is_err(),
        "VP8 needs descriptor fields"
    );
    let capped = Packetizer::new(PacketFormat::Sframe, 100)
        .unwrap()
        .with_max_frame(10);
    assert!(capped.packetize(&[0u8; 11], None).is_err());

    let mut r = Reassembler::new(PacketFormat::Sframe);
    let pkt = |payload: &'static [u8]| RtpIn {
        seq: 1,
        timestamp: 1,
        marker: true,
        payload,
        start: None,
        end: None,
    };
    assert!(r.push(pkt(&[])).is_err());
    assert!(r.push(pkt(&[0xE0, 1, 2])).is_err(), "T=1 is refused");
    let mut r = Reassembler::new(PacketFormat::Vp8);
    assert!(r.push(pkt(&[0x80])).is_err(), "truncated VP8 descriptor");
    assert!(r.push(pkt(&[0x90, 0x80, 0x81])).is_err());
    assert_eq!(r.stats().malformed, 2);
    // Garbage of every length never panics.
    let mut rng = StdRng::seed_from_u64(9);
    for format in [PacketFormat::Vp8, PacketFormat::Sframe, PacketFormat::Opus] {
        let mut r = Reassembler::new(format);
        for i in 0..5000u32 {
            let mut p = vec![0u8; rng.random_range(0..40)];
            rng.fill_bytes(&mut p);
            let _ = r.push(RtpIn {
                seq: rng.random(),
                timestamp: i % 7,
                marker: rng.random(),
                payload: &p,
                start: None,
                end: None,
            });
            while r.poll().is_some() {}
        }
    }
}

#[test]
fn bounds_report_frames_instead_of_growing() {
    // Eviction: the oldest of too many pending frames is reported.
    let cfg = ReassemblerConfig {
        max_pending_frames: 4,
        ..Default::default()
    };
    let mut r = Reassembler::with_config(PacketFormat::Sframe, cfg);
    for i in 0..10u16 {
        // Start fragments only: none can complete.
        r.push(RtpIn {
            seq: i * 2,
            timestamp: u32::from(i),
            marker: false,
            payload: &[0x80, 1],
            start: None,
            end: None,
        })
        .unwrap();
    }
    assert_eq!(r.pending_frames(), 4);
    let evicted: Vec<u32> = std::iter::from_fn(|| r.poll())
        .map(|o| match o {
            Output::Incomplete(i) => {
                assert_eq!(i.reason, IncompleteReason::Evicted);
                i.timestamp
            }
            Output::Complete(_) => panic!("nothing can complete"),
        })
        .collect();
    assert_eq!(evicted, vec![0, 1, 2, 3, 4, 5]);

    // Size: a frame over the byte cap is given up as soon as it crosses it.
    let cfg = ReassemblerConfig {
        max_frame_bytes: 100,
        ..Default::default()
    };
    let mut r = Reassembler::with_config(PacketFormat::Sframe, cfg);
    r.push(RtpIn {
        seq: 0,
        timestamp: 5,
        marker: false,
        payload: &[0x80; 80],
        start: None,
        end: None,
    })
    .unwrap();
    r.push(RtpIn {
        seq: 1,
        timestamp: 5,
        marker: false,
        payload: &[0x00; 80],
        start: None,
        end: None,
    })
    .unwrap();
    assert!(
        matches!(r.poll(), Some(Output::Incomplete(i)) if i.reason == IncompleteReason::TooLarge)
    );
    // Its late packets are dropped, not turned into a new frame.
    r.push(RtpIn {
        seq: 2,
        timestamp: 5,
        marker: true,
        payload: &[0x40, 1],
        start: None,
        end: None,
    })
    .unwrap();
    assert_eq!((r.poll(), r.stats().late), (None, 1));

    // Aging: a frame the reorder window has passed is reported.
    let cfg = ReassemblerConfig {
        reorder_window: 10,
        ..Default::default()
    };
    let mut r = Reassembler::with_config(PacketFormat::Opus, cfg);
    let mut s = Reassembler::with_config(PacketFormat::Sframe, cfg);
    s.push(RtpIn {
        seq: 0,
        timestamp: 1,
        marker: false,
        payload: &[0x80, 1],
        start: None,
        end: None,
    })
    .unwrap();
    for i in 1..=12u16 {
        s.push(RtpIn {
            seq: i,
            timestamp: 100 + u32::from(i),
            marker: true,
            payload: &[0xC0, 1],
            start: None,
            end: None,
        })
        .unwrap();
    }
    let aged = std::iter::from_fn(|| s.poll()).filter(|o| matches!(o, Output::Incomplete(i) if i.reason == IncompleteReason::Aged && i.timestamp == 1)).count();
    assert_eq!(aged, 1);
    r.push(RtpIn {
        seq: 0,
        timestamp: 1,
        marker: true,
        payload: &[1],
        start: None,
        end: None,
    })
    .unwrap();
    assert!(matches!(r.poll(), Some(Output::Complete(_))));
}

#[test]
fn dd_boundaries_override_the_payload_descriptor() {
    // With DD, start/end come from the descriptor, not from S/PID or the marker bit.
    let p = Packetizer::new(PacketFormat::Vp8, 20).unwrap();
    let frame: Vec<u8> = (0..40).collect();
    let vp8 = Vp8Descriptor {
        picture_id: Some(5),
        ..Default::default()
    };
    let frags: Vec<_> = p.packetize(&frame, Some(&vp8)).unwrap().collect();
    let mut r = Reassembler::new(PacketFormat::Vp8);
    let n = frags.len();
    for (i, f) in frags.iter().enumerate().rev() {
        let mut buf = [0u8; 20];
        let len = f.write_to(&mut buf).unwrap();
        // The marker bit is deliberately wrong; DD's end flag is right.
        r.push(RtpIn {
            seq: i as u16,
            timestamp: 7,
            marker: false,
            payload: &buf[..len],
            start: Some(i == 0),
            end: Some(i + 1 == n),
        })
        .unwrap();
    }
    match r.poll() {
        Some(Output::Complete(f)) => {
            assert_eq!(f.data, frame);
            assert_eq!(f.vp8.unwrap().picture_id, Some(5));
            assert_eq!(f.packets, n);
        }
        other => panic!("{other:?}"),
    }
}
