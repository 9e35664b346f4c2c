//! The routing core's cost per packet: `Room::on_rtp` for one published video track (DD on
//! every packet, a key frame every 30 frames) with 1, 10 and 50 subscribers.
//!
//! `cargo bench -p veil-sfu --bench route`
//!
//! This is the sans-I/O decision only (SSRC ownership, stream latch and DD parse, one
//! `LayerForwarder` per subscriber); SRTP and webrtc-rs's channels come on top.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use veil_sfu::routing::{ExtIds, ExtMap, MediaKind, PacketMeta, Publish, Room, Subscribe};
use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
use veil_wire::ext::{Extension, write_block};

const DD_ID: u8 = 12;
const PACKETS: usize = 3000;

/// (seq, ts, extension profile, extension block) of `PACKETS` one-packet frames.
fn packets() -> Vec<(u16, u32, u16, Vec<u8>)> {
    let s = Arc::new(TemplateStructure::single_layer(1280, 720, 1));
    (0..PACKETS)
        .map(|i| {
            let key = i % 30 == 0;
            let d = DependencyDescriptor::new(true, true, u8::from(!key), i as u16, &s).unwrap();
            let d = if key { d.with_structure(s.clone()) } else { d };
            let mut dd = [0u8; 128];
            let n = d.write(&s, &mut dd).unwrap();
            let mut block = [0u8; 256];
            let (profile, len) = write_block(
                &[Extension {
                    id: DD_ID,
                    data: &dd[..n],
                }],
                &mut block,
            )
            .unwrap();
            (i as u16, 3000 * i as u32, profile, block[..len].to_vec())
        })
        .collect()
}

fn route(c: &mut Criterion) {
    let pkts = packets();
    let mut g = c.benchmark_group("room_on_rtp");
    g.measurement_time(Duration::from_secs(3));
    for subscribers in [1u64, 10, 50] {
        let mut room = Room::new(Duration::from_millis(300));
        room.add_participant(
            0,
            ExtIds {
                dd: Some(DD_ID),
                ..ExtIds::default()
            },
        );
        let track = room
            .publish(
                0,
                Publish {
                    kind: MediaKind::Video,
                    clock_rate: 90_000,
                    rids: vec![],
                },
            )
            .unwrap();
        for s in 1..=subscribers {
            room.add_participant(s, ExtIds::default());
            let sub = Subscribe {
                out_ssrc: 0x1000 + s as u32,
                payload_type: 96,
                ext: ExtMap::new(&[(DD_ID, 3)]),
                rid: None,
            };
            room.subscribe(s, track, sub, Duration::ZERO).unwrap();
        }
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                let mut i = 0usize;
                let mut now = Duration::ZERO;
                b.iter(|| {
                    let (seq, ts, profile, block) = &pkts[i % PACKETS];
                    // Sequence numbers and time move on across passes over the packet list.
                    let pass = (i / PACKETS) as u16;
                    let meta = PacketMeta {
                        ssrc: 0xABCD,
                        seq: seq.wrapping_add(pass.wrapping_mul(PACKETS as u16)),
                        timestamp: *ts,
                        marker: true,
                        ext_profile: Some(*profile),
                        ext_body: block,
                        len: 0,
                    };
                    now += Duration::from_micros(33);
                    i += 1;
                    black_box(room.on_rtp(0, track, &meta, now).unwrap())
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
