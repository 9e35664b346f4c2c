use super::*;

const MS: Duration = Duration::from_millis(1);

fn meta(ssrc: u32, seq: u16) -> PacketMeta<'static> {
    PacketMeta {
        ssrc,
        seq,
        timestamp: u32::from(seq) * 3000,
        marker: true,
        ext_profile: None,
        ext_body: &[],
        len: 1000,
    }
}

fn sub(out_ssrc: u32) -> Subscribe {
    Subscribe {
        out_ssrc,
        payload_type: 120,
        ext: ExtMap::default(),
        rid: None,
    }
}

fn room_with_video() -> (Room, TrackId) {
    let mut r = Room::new(500 * MS);
    for p in 1..=3 {
        r.add_participant(p, ExtIds::default());
    }
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    (r, t)
}

#[test]
fn every_subscriber_gets_its_own_ssrc_and_payload_type() {
    let (mut r, t) = room_with_video();
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    r.subscribe(
        3,
        t,
        Subscribe {
            payload_type: 96,
            ..sub(0x33)
        },
        Duration::ZERO,
    )
    .unwrap();
    let out = r.on_rtp(1, t, &meta(0x11, 7), Duration::ZERO).unwrap();
    let mut got: Vec<_> = out
        .forwards
        .iter()
        .map(|f| (f.subscriber, f.ssrc, f.payload_type, f.seq))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(2, 0x22, 120, 7), (3, 0x33, 96, 7)]);
}

#[test]
fn a_spoofed_ssrc_is_rejected_and_the_owner_keeps_it() {
    let (mut r, t) = room_with_video();
    let t3 = r
        .publish(
            3,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    r.on_rtp(1, t, &meta(0x11, 1), Duration::ZERO).unwrap();
    assert!(matches!(
        r.on_rtp(3, t3, &meta(0x11, 2), Duration::ZERO),
        Err(SfuError::SpoofedSsrc {
            ssrc: 0x11,
            owner: 1,
            sender: 3
        })
    ));
    // Nor may participant 3 send on participant 1's track.
    assert!(matches!(
        r.on_rtp(3, t, &meta(0x99, 2), Duration::ZERO),
        Err(SfuError::UnknownTrack(_))
    ));
    assert_eq!(r.spoofs(), 1);
    assert_eq!(
        r.on_rtp(1, t, &meta(0x11, 3), Duration::ZERO)
            .unwrap()
            .forwards
            .len(),
        1
    );
}

#[test]
fn subscriber_plis_are_throttled_and_a_new_subscriber_asks_once_the_ssrc_is_known() {
    let (mut r, t) = room_with_video();
    // Nothing is known of the publisher's SSRC yet: the request waits for its first packet.
    assert!(
        r.subscribe(2, t, sub(0x22), Duration::ZERO)
            .unwrap()
            .is_empty()
    );
    let out = r.on_rtp(1, t, &meta(0x11, 1), 10 * MS).unwrap();
    assert_eq!(out.key_frame_requests, [0x11]);
    let mut sent = 0;
    for ms in (20..1020).step_by(10) {
        sent += usize::from(r.subscriber_key_frame_request(2, t, ms * MS).is_some());
    }
    assert_eq!(sent, 2, "at 510 and 1010 ms");
    assert_eq!(r.key_frame_stats().sent, 3);
}

#[test]
fn simulcast_layers_come_from_rids_and_a_switch_asks_for_a_key_frame() {
    let mut r = Room::new(500 * MS);
    r.add_participant(1, ExtIds::default());
    r.add_participant(2, ExtIds::default());
    let rids = |v: &[&str]| v.iter().map(|r| r.as_bytes().to_vec()).collect();
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: rids(&["q", "h", "f"]),
            },
        )
        .unwrap();
    // No rid known for this SSRC yet: it cannot be placed.
    assert!(matches!(
        r.on_rtp(1, t, &meta(0xF, 1), Duration::ZERO),
        Err(SfuError::UnknownLayer(0xF))
    ));
    assert_eq!(r.bind_layer(t, 0xF, b"f").unwrap(), 2);
    assert_eq!(r.bind_layer(t, 0x9, b"q").unwrap(), 0);
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    // The first layer (q) is forwarded; f is not.
    let q = r.on_rtp(1, t, &meta(0x9, 2), Duration::ZERO).unwrap();
    assert_eq!((q.layer, q.forwards.len()), (0, 1));
    let f = r.on_rtp(1, t, &meta(0xF, 2), Duration::ZERO).unwrap();
    assert_eq!((f.layer, f.forwards.len()), (2, 0));
    assert_eq!(f.dropped, [DropReason::NotSelected]);
    // The subscriber wants f: the SFU asks f's publisher stream for a key frame, and
    // switches at it (without DD it cannot see one, so it keeps q and says why).
    assert_eq!(r.set_layer(2, t, Some(b"f"), 10 * MS).unwrap(), [0xF]);
    let f = r.on_rtp(1, t, &meta(0xF, 3), 20 * MS).unwrap();
    assert_eq!(f.dropped, [DropReason::NoDependencyDescriptor]);
    assert_eq!(r.layers(2, t), Some((Some(0), 2)));
}

/// SFU-BWE-03: the estimate moves the choice down to the layer that fits, asking that
/// layer for a key frame, and back up after the cooldown.
#[test]
fn the_layer_follows_the_subscribers_estimate() {
    let mut r = Room::new(500 * MS);
    r.add_participant(1, ExtIds::default());
    r.add_participant(2, ExtIds::default());
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![b"q".to_vec(), b"h".to_vec(), b"f".to_vec()],
            },
        )
        .unwrap();
    for (ssrc, rid) in [(0xA, b"q"), (0xB, b"h"), (0xC, b"f")] {
        r.bind_layer(t, ssrc, rid).unwrap();
    }
    r.subscribe(
        2,
        t,
        Subscribe {
            rid: Some(b"f".to_vec()),
            ..sub(0x22)
        },
        Duration::ZERO,
    )
    .unwrap();
    // q, h, f at 100, 300, 900 kbit/s: a packet per layer every 10 ms.
    let mut plis = Vec::new();
    let mut run = |r: &mut Room, from: u64, to: u64, estimate: u64| {
        for ms in from..to {
            if ms % 100 == 0 {
                r.set_estimate(2, Some(estimate), Duration::from_millis(ms));
            }
            if ms % 10 != 0 {
                continue;
            }
            for (ssrc, len) in [(0xA, 125), (0xB, 375), (0xC, 1125)] {
                let m = PacketMeta {
                    len,
                    ..meta(ssrc, (ms / 10) as u16)
                };
                let now = Duration::from_millis(ms);
                plis.extend(r.on_rtp(1, t, &m, now).unwrap().key_frame_requests);
            }
        }
        r.layers(2, t).unwrap().1
    };
    assert_eq!(run(&mut r, 0, 2000, 2_000_000), 2);
    let rates = r.layer_rates(t, 2000 * MS);
    assert!((850_000..950_000).contains(&rates[2]), "{rates:?}");
    assert_eq!(run(&mut r, 2000, 3000, 500_000), 1, "down to h");
    assert_eq!(run(&mut r, 3000, 4000, 50_000), 0, "down to q");
    assert_eq!(
        run(&mut r, 4000, 6000, 2_000_000),
        0,
        "not before the cooldown"
    );
    assert_eq!(run(&mut r, 6000, 10_000, 2_000_000), 2, "back up to f");
    for ssrc in [0xB, 0xA, 0xC] {
        assert!(
            plis.contains(&ssrc),
            "a key frame asked of {ssrc:#x}: {plis:?}"
        );
    }
    // A request below the estimate's choice is followed at once.
    assert_eq!(r.set_layer(2, t, Some(b"h"), 10_000 * MS).unwrap(), [0xB]);
    assert_eq!(r.layers(2, t).unwrap().1, 1);
}

#[test]
fn leaving_frees_tracks_subscriptions_and_ssrcs() {
    let (mut r, t) = room_with_video();
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    r.on_rtp(1, t, &meta(0x11, 1), Duration::ZERO).unwrap();
    assert_eq!(r.remove_participant(1), [(t, vec![2])]);
    assert_eq!(r.layers(2, t), None);
    let t3 = r
        .publish(
            3,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    assert!(r.on_rtp(3, t3, &meta(0x11, 1), Duration::ZERO).is_ok());
    assert_eq!(r.participant_count(), 2);
}

/// SFU-LIVE-04: a flooding publisher is cut to its limit; the others are not touched.
#[test]
fn a_flooding_publisher_is_cut_to_its_limit_and_nobody_else_is() {
    let (mut r, t) = room_with_video();
    r.set_rate_limit(Some(RateLimit {
        packets_per_second: 1000.0,
        burst: 100.0,
    }));
    let t3 = r
        .publish(
            3,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    r.subscribe(2, t3, sub(0x23), Duration::ZERO).unwrap();
    // One second: participant 1 floods at 20,000 packets/s, participant 3 sends 100.
    let (mut flood_ok, mut flood_limited, mut calm_ok) = (0, 0, 0);
    for i in 0..20_000u32 {
        let now = Duration::from_micros(u64::from(i) * 50);
        match r.on_rtp(1, t, &meta(0x11, i as u16), now) {
            Ok(out) => flood_ok += out.forwards.len(),
            Err(SfuError::RateLimited(1)) => flood_limited += 1,
            Err(e) => panic!("{e}"),
        }
        if i % 200 == 0 {
            calm_ok += r
                .on_rtp(3, t3, &meta(0x33, (i / 200) as u16), now)
                .unwrap()
                .forwards
                .len();
        }
    }
    // The burst plus a second at the rate, give or take a packet.
    assert!((1099..=1101).contains(&flood_ok), "{flood_ok}");
    assert_eq!(flood_ok + flood_limited, 20_000);
    assert_eq!(calm_ok, 100);
    r.set_rate_limit(None);
    assert!(
        r.on_rtp(1, t, &meta(0x11, 1), Duration::from_secs(1))
            .is_ok()
    );
}

/// SFU-KF-05: a stream whose DD needs a structure the SFU never saw.
#[test]
fn a_stream_without_a_known_structure_asks_for_a_key_frame_and_waits_for_it() {
    use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
    use veil_wire::ext::{Extension, write_block};
    let ids = ExtIds {
        dd: Some(3),
        ..ExtIds::default()
    };
    let mut r = Room::new(Duration::from_millis(300));
    for p in 1..=2 {
        r.add_participant(p, ids);
    }
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    let structure = Arc::new(TemplateStructure::single_layer(640, 360, 1));
    let packet = |n: u16, key: bool, at_ms: u64, r: &mut Room| {
        let mut dd = DependencyDescriptor::new(true, true, u8::from(!key), n, &structure).unwrap();
        if key {
            dd = dd.with_structure(structure.clone());
        }
        let mut raw = [0u8; 64];
        let len = dd.write(&structure, &mut raw).unwrap();
        let mut block = [0u8; 80];
        let (profile, blen) = write_block(
            &[Extension {
                id: 3,
                data: &raw[..len],
            }],
            &mut block,
        )
        .unwrap();
        let meta = PacketMeta {
            ext_profile: Some(profile),
            ext_body: &block[..blen],
            ..meta(0x11, n)
        };
        r.on_rtp(1, t, &meta, Duration::from_millis(at_ms)).unwrap()
    };
    // Delta frames first: dropped, and one request per throttle interval.
    let mut requests = 0;
    for (i, ms) in (0..20u16).zip((0..).step_by(33)) {
        let out = packet(i + 1, false, ms, &mut r);
        assert!(out.forwards.is_empty());
        assert_eq!(out.dropped, [DropReason::WaitingForKeyFrame]);
        requests += out.key_frame_requests.len();
    }
    assert_eq!(requests, 2, "at 0 and 330 ms: one per 300 ms at most");
    // The key frame brings the structure: forwarded, and so are the frames after it.
    assert_eq!(packet(21, true, 700, &mut r).forwards.len(), 1);
    assert_eq!(packet(22, false, 733, &mut r).forwards.len(), 1);
}

/// SFU-DTX-01..02 in the core: one audio publisher, two subscribers.
#[test]
fn silent_audio_is_skipped_for_every_subscriber_and_keeps_their_numbers_contiguous() {
    let ids = ExtIds {
        audio_level: Some(1),
        ..ExtIds::default()
    };
    let mut r = Room::new(Duration::from_millis(300));
    for p in 1..=3 {
        r.add_participant(p, ids);
    }
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Audio,
                clock_rate: 48_000,
                rids: vec![],
            },
        )
        .unwrap();
    for (s, ssrc) in [(2, 0x22), (3, 0x33)] {
        let sub = Subscribe {
            out_ssrc: ssrc,
            payload_type: 111,
            ext: ExtMap::default(),
            rid: None,
        };
        r.subscribe(s, t, sub, Duration::ZERO).unwrap();
    }
    // 20 talk, 50 silent, 20 talk packets of 20 ms, sequence numbers wrapping on the way.
    let (mut out, mut silence_drops, mut speaker) = (Vec::new(), 0, None);
    for i in 0..90u16 {
        let talk = !(20..70).contains(&i);
        let byte = if talk { 0x80 | 25 } else { 127 };
        let body = [0x10, byte, 0, 0]; // one-byte form: id 1, one byte of data, padding
        let meta = PacketMeta {
            timestamp: 960 * u32::from(i),
            ext_profile: Some(0xBEDE),
            ext_body: &body,
            ..meta(0xA, 65_500u16.wrapping_add(i))
        };
        let now = Duration::from_millis(20 * u64::from(i));
        let routed = r.on_rtp(1, t, &meta, now).unwrap();
        speaker = routed.active_speaker.or(speaker);
        silence_drops += routed
            .dropped
            .iter()
            .filter(|d| **d == DropReason::Silence)
            .count();
        assert_eq!(routed.forwards.len() + routed.dropped.len(), 2);
        for f in routed.forwards.iter().filter(|f| f.subscriber == 2) {
            out.push((i, f.seq, f.timestamp));
        }
    }
    // Silence began at packet 20; 10 packets (200 ms) still go, 40 are dropped for each of
    // the two subscribers; talk resumes at packet 70 at once.
    let sent: Vec<u16> = out.iter().map(|o| o.0).collect();
    let want: Vec<u16> = (0..30).chain(70..90).collect();
    assert_eq!(sent, want);
    assert_eq!(silence_drops, 80);
    assert!(
        out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
        "{out:?}"
    );
    assert!(
        out.windows(2).all(|w| w[1].2 > w[0].2),
        "timestamps go forward"
    );
    // The timestamp keeps the silence's length: 41 packets of 960 ticks between 29 and 70.
    assert_eq!(out[30].2 - out[29].2, 41 * 960);
    assert_eq!(speaker, Some(1));

    // Off: every packet is forwarded.
    r.set_dtx(None);
    let body = [0x10, 127, 0, 0];
    let meta = PacketMeta {
        timestamp: 960 * 90,
        ext_profile: Some(0xBEDE),
        ext_body: &body,
        ..meta(0xA, 65_500u16.wrapping_add(90))
    };
    let routed = r.on_rtp(1, t, &meta, Duration::from_secs(2)).unwrap();
    assert_eq!(routed.forwards.len(), 2);
}

/// SFU-SVC-09: Chromium's AV1 L3T3_KEY track through the room: each subscriber gets its
/// own decode target on contiguous numbers, and a spatial step down that needs a key frame
/// asks the publisher for one.
#[test]
fn a_scalable_track_is_thinned_per_subscriber() {
    const DD: &str =
        "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
    let v = veil_vectors::chromium("av1_l3t3key_sframe_raw_dd.json");
    let ids = ExtIds {
        dd: veil_vectors::ext_id(&v, DD),
        ..ExtIds::default()
    };
    let mut r = Room::new(500 * MS);
    for p in 1..=4 {
        r.add_participant(p, ids);
    }
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![],
            },
        )
        .unwrap();
    for p in 2..=4 {
        r.subscribe(p, t, sub(0x20 + p as u32), Duration::ZERO)
            .unwrap();
    }
    r.set_svc_layer(3, t, SvcLayer::new(0, 0)).unwrap();
    r.set_svc_layer(4, t, SvcLayer::new(1, 1)).unwrap();
    let packets: Vec<&serde_json::Value> = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pt"].as_u64() == Some(45))
        .collect();
    let mut reader = StreamRegistry::new(ids);
    let ts0 = packets[0]["ts"].as_u64().unwrap();
    let mut got: HashMap<ParticipantId, Vec<(usize, u16)>> = HashMap::new();
    // The decode targets each subscriber was told of (SFU-SVC-10), in order.
    let mut targets: HashMap<ParticipantId, Vec<SvcLayer>> = HashMap::new();
    let mut dds = Vec::new();
    let mut requests_after_change = 0;
    let change = packets.len() / 2;
    for (i, p) in packets.iter().enumerate() {
        if i == change {
            r.set_svc_layer(2, t, SvcLayer::new(0, 2)).unwrap();
        }
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let ts = p["ts"].as_u64().unwrap();
        let meta = PacketMeta {
            ssrc: p["ssrc"].as_u64().unwrap() as u32,
            seq: p["seq"].as_u64().unwrap() as u16,
            timestamp: ts as u32,
            marker: p["marker"].as_u64() == Some(1),
            ext_profile: Some(
                u16::from_str_radix(
                    p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
                    16,
                )
                .unwrap(),
            ),
            ext_body: &body,
            len: 1200,
        };
        let now = Duration::from_millis((ts - ts0) / 90);
        dds.push(reader.ingest(&meta).unwrap().dd.unwrap());
        let routed = r.on_rtp(1, t, &meta, now).unwrap();
        if i >= change && routed.key_frame_requests.contains(&meta.ssrc) {
            requests_after_change += 1;
        }
        for f in &routed.forwards {
            got.entry(f.subscriber).or_default().push((i, f.seq));
            if let Some(l) = f.decode_target {
                targets.entry(f.subscriber).or_default().push(l);
            }
        }
    }
    // Each change of decode target is reported once, at the frame it happens: the capped
    // subscribers reach theirs and stay; subscriber 2 goes from S1T2 to S2T2 once S2 is on.
    assert_eq!(targets[&3], [SvcLayer::new(0, 0)]);
    assert_eq!(targets[&4], [SvcLayer::new(1, 1)]);
    assert_eq!(targets[&2], [SvcLayer::new(1, 2), SvcLayer::new(2, 2)]);
    for (sub, out) in &got {
        assert!(
            out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
            "subscriber {sub}: numbers not contiguous"
        );
    }
    // Subscriber 3: S0T0 only, every packet of every S0T0 frame.
    let s0t0: Vec<usize> = (0..dds.len())
        .filter(|&i| dds[i].spatial_id() == 0 && dds[i].temporal_id() == 0)
        .collect();
    assert_eq!(got[&3].iter().map(|g| g.0).collect::<Vec<_>>(), s0t0);
    assert_eq!(
        r.svc_layers(3, t),
        Some((Some(SvcLayer::new(0, 0)), SvcLayer::new(0, 0)))
    );
    // Subscriber 4: exactly the frames of decode target S1T1 (index 4).
    let s1t1: Vec<usize> = (0..dds.len())
        .filter(|&i| dds[i].dti(4) != Some(veil_wire::dd::Dti::NotPresent))
        .collect();
    assert_eq!(got[&4].iter().map(|g| g.0).collect::<Vec<_>>(), s1t1);
    // Subscriber 2 asked for nothing: S1T2 on Chromium's first key frame (S2 not active
    // yet), then S2T2, which in a KEY structure leaves out the lower layers' delta frames.
    let s2t2: Vec<usize> = (0..change)
        .filter(|&i| {
            dds[i].frame_number <= 2 || dds[i].dti(8) != Some(veil_wire::dd::Dti::NotPresent)
        })
        .collect();
    let first_half: Vec<usize> = got[&2]
        .iter()
        .map(|g| g.0)
        .filter(|&i| i < change)
        .collect();
    assert_eq!(first_half, s2t2);
    // Then it asked for S0T2: a spatial step down in a KEY structure waits for a key frame,
    // which the room asks for (throttled); the capture has none, so it keeps S2T2.
    assert_eq!(
        r.svc_layers(2, t),
        Some((Some(SvcLayer::new(2, 2)), SvcLayer::new(0, 2)))
    );
    assert!(requests_after_change >= 2, "{requests_after_change}");
    assert!(
        got[&2]
            .iter()
            .all(|g| g.0 < change || dds[g.0].spatial_id() == 2)
    );
}

/// SFU-SVC-08: Chromium's VP8 simulcast L1T3 through the room: a congested subscriber of
/// f loses f's top temporal layer(s) before it is moved down to h, on one contiguous
/// sequence.
#[test]
fn congestion_drops_temporal_layers_before_a_simulcast_layer() {
    const DD: &str =
        "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";
    let v = veil_vectors::chromium("sim_vp8_l1t3_sframe_dd.json");
    let ids = ExtIds {
        rid: veil_vectors::ext_id(&v, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        dd: veil_vectors::ext_id(&v, DD),
        ..ExtIds::default()
    };
    let mut r = Room::new(500 * MS);
    r.add_participant(1, ids);
    r.add_participant(2, ids);
    let t = r
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: vec![b"q".to_vec(), b"h".to_vec(), b"f".to_vec()],
            },
        )
        .unwrap();
    r.subscribe(
        2,
        t,
        Subscribe {
            rid: Some(b"f".to_vec()),
            ..sub(0x22)
        },
        Duration::ZERO,
    )
    .unwrap();
    let packets: Vec<&serde_json::Value> = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pt"].as_u64() == Some(96))
        .collect();
    let n = packets.len() as u64;
    let at = |i: usize| Duration::from_millis(i as u64 * 10_000 / n);
    let mut reader = StreamRegistry::new(ids);
    let congested = packets.len() * 4 / 10;
    let mut estimate = None;
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let now = at(i);
        if i == congested {
            let rungs = r.svc_rungs(t, now);
            let f = |tid: u8| {
                rungs
                    .iter()
                    .find(|g| g.simulcast == 2 && g.layer == SvcLayer::new(0, tid))
                    .unwrap()
                    .bits_per_second
            };
            assert_eq!(rungs.len(), 9, "{rungs:?}");
            let est = f(2) * 7 / 10;
            assert!(f(0) <= est, "{rungs:?}");
            estimate = Some(est);
        }
        if i % 10 == 0 {
            r.set_estimate(2, estimate, now);
        }
        let body = hex::decode(p["ext_block_hex"].as_str().unwrap()).unwrap();
        let meta = PacketMeta {
            ssrc: p["ssrc"].as_u64().unwrap() as u32,
            seq: p["seq"].as_u64().unwrap() as u16,
            timestamp: p["ts"].as_u64().unwrap() as u32,
            marker: p["marker"].as_u64() == Some(1),
            ext_profile: Some(
                u16::from_str_radix(
                    p["ext_profile"].as_str().unwrap().trim_start_matches("0x"),
                    16,
                )
                .unwrap(),
            ),
            ext_body: &body,
            len: 1000,
        };
        let ing = reader.ingest(&meta).unwrap();
        let routed = r.on_rtp(1, t, &meta, now).unwrap();
        for f in &routed.forwards {
            out.push((i, f.seq, ing.rid.clone(), ing.dd.clone().unwrap()));
        }
    }
    assert!(out.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)));
    assert!(
        out.iter().all(|o| o.2.as_deref() == Some(&b"f"[..])),
        "f throughout"
    );
    assert_eq!(r.layers(2, t), Some((Some(2), 2)));
    // Before the congestion every f frame; some time after it, no T2 frame any more.
    let before: Vec<u8> = out
        .iter()
        .filter(|o| o.0 < congested)
        .map(|o| o.3.temporal_id())
        .collect();
    assert!(before.contains(&2));
    let late = congested + packets.len() / 5;
    let after: Vec<u8> = out
        .iter()
        .filter(|o| o.0 > late)
        .map(|o| o.3.temporal_id())
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|t| *t < 2),
        "{after:?}"
    );
    let (current, cap) = r.svc_layers(2, t).unwrap();
    assert_eq!(cap, SvcLayer::ALL);
    assert!(current.is_some_and(|c| c.temporal < 2), "{current:?}");
}

/// SFU-FWD-07: a subscriber's output SSRC that carried one track and then another (the edge
/// reuses the m-section) continues its numbering, whichever way the first subscription ended;
/// a new SSRC starts afresh, and nothing is kept of a subscriber that left.
#[test]
fn a_reused_output_ssrc_continues_its_numbering_after_the_track_it_carried_ends() {
    let (mut r, t) = room_with_video();
    let video = || Publish {
        kind: MediaKind::Video,
        clock_rate: 90_000,
        rids: vec![],
    };
    r.subscribe(2, t, sub(0x22), Duration::ZERO).unwrap();
    let mut last = None;
    for seq in 100..110 {
        let out = r
            .on_rtp(1, t, &meta(0x11, seq), MS * u32::from(seq))
            .unwrap();
        last = Some((out.forwards[0].seq, out.forwards[0].timestamp));
    }
    let (seq, ts) = last.unwrap();
    // The track ends (its publisher unpublishes); a track from participant 3 takes the SSRC.
    r.unpublish(t);
    let t3 = r.publish(3, video()).unwrap();
    r.subscribe(2, t3, sub(0x22), 200 * MS).unwrap();
    let out = r.on_rtp(3, t3, &meta(0x33, 5000), 300 * MS).unwrap();
    let f = &out.forwards[0];
    assert_eq!((f.ssrc, f.seq), (0x22, seq.wrapping_add(1)));
    // 191 ms after the last packet (at 109 ms), at 90 kHz.
    assert_eq!(f.timestamp, ts.wrapping_add(191 * 90));
    // Unsubscribing keeps the place too.
    r.unsubscribe(2, t3);
    let t4 = r.publish(1, video()).unwrap();
    r.subscribe(2, t4, sub(0x22), 400 * MS).unwrap();
    let out = r.on_rtp(1, t4, &meta(0x44, 9), 400 * MS).unwrap();
    assert_eq!(out.forwards[0].seq, seq.wrapping_add(2));
    // Another SSRC starts from the publisher's own numbers.
    let t5 = r.publish(3, video()).unwrap();
    r.subscribe(2, t5, sub(0x23), 500 * MS).unwrap();
    let out = r.on_rtp(3, t5, &meta(0x55, 77), 500 * MS).unwrap();
    assert_eq!(out.forwards[0].seq, 77);
    // The subscriber leaves: nothing of it stays.
    r.unsubscribe(2, t5);
    assert_eq!(r.ended.len(), 1);
    r.remove_participant(2);
    assert!(r.ended.is_empty());
}
