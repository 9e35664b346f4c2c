//! The `route` target (fuzz/README.md).
use std::collections::HashMap;
use std::time::Duration;

use veil_sfu::SfuError;
use veil_sfu::routing::{
    DropReason, Dtx, ExtIds, ExtMap, MediaKind, PacketMeta, Publish, Room, Subscribe, TrackId,
};

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

const RIDS: [&[u8]; 4] = [b"q", b"h", b"f", b"x"];

/// The SFU's routing core fed arbitrary packets and signalling (SFU-SEC-03): `Room::on_rtp` with
/// any header fields, extension profile and block, interleaved with subscribe, unsubscribe,
/// layer requests, subscriber key-frame requests (what the shell makes of a PLI/FIR; the RTCP
/// parsing itself is webrtc-rs's), leaves, DTX settings and time. Never panics, and:
/// - a copy goes only to a subscriber of that track, on its SSRC and payload type;
/// - a packet from an SSRC another participant owns is refused;
/// - a packet the silence gate drops is forwarded to nobody.
pub fn route(data: &[u8]) {
    let mut inp = Input(data);
    let Some(sel) = inp.u16() else { return };
    // Extension ids 0..=15 (0 and 15 are never valid one-byte ids), colliding if the input says so.
    let id = |n: u16| Some(((sel >> n) & 0xF) as u8).filter(|i| *i != 0);
    let ids = ExtIds {
        mid: None,
        rid: id(0),
        rrid: id(4),
        dd: id(8),
        audio_level: id(12),
    };
    let mut room = Room::new(Duration::from_millis(300));
    for p in 1..=3 {
        room.add_participant(p, ids);
    }
    let audio = room
        .publish(
            1,
            Publish {
                kind: MediaKind::Audio,
                clock_rate: 48_000,
                rids: vec![],
            },
        )
        .unwrap();
    let video = room
        .publish(
            1,
            Publish {
                kind: MediaKind::Video,
                clock_rate: 90_000,
                rids: RIDS[..3].iter().map(|r| r.to_vec()).collect(),
            },
        )
        .unwrap();
    let other = room
        .publish(
            3,
            Publish {
                kind: MediaKind::Audio,
                clock_rate: 48_000,
                rids: vec![],
            },
        )
        .unwrap();
    let tracks = [audio, video, other];
    // (subscriber, track) → (out SSRC, payload type)
    let mut subs: HashMap<(u64, TrackId), (u32, u8)> = HashMap::new();
    let mut owner: HashMap<u32, u64> = HashMap::new();
    // SSRCs bound to a layer by the shell's own latch (webrtc-rs's OnOpen), owned or not.
    let mut bound = std::collections::HashSet::new();
    let mut gone = [false; 4];
    let mut dtx_on = true;
    let mut now = Duration::ZERO;
    while let Some(op) = inp.u8() {
        now += Duration::from_millis(u64::from(op >> 4) * 7);
        match op & 0xF {
            0..=8 => {
                let Some(who) = inp.u8() else { return };
                let publisher = if who & 1 == 0 { 1 } else { 3 };
                let track = tracks[usize::from(who >> 1) % 3];
                let Some(ssrc_sel) = inp.u8() else { return };
                let ssrc = [0xA, 0xB, 0xC, 0xD, 0xE][usize::from(ssrc_sel) % 5];
                let (Some(seq), Some(ts), Some(form), Some(len)) =
                    (inp.u16(), inp.u32(), inp.u8(), inp.u8())
                else {
                    return;
                };
                let ext_profile = match form % 4 {
                    0 => None,
                    1 => Some(0xBEDE),
                    2 => Some(0x1000 | u16::from(form >> 4)),
                    _ => Some(u16::from(form) << 8 | u16::from(len)),
                };
                let ext_body = inp.bytes(usize::from(len));
                // The length feeds only the layers' rate meters: any value.
                let size = 12 + ext_body.len() + usize::from(op) * 40;
                let meta = PacketMeta {
                    ssrc,
                    seq,
                    timestamp: ts,
                    marker: form & 0x80 != 0,
                    ext_profile,
                    ext_body,
                    len: size,
                };
                match room.on_rtp(publisher, track, &meta, now) {
                    Ok(r) => {
                        assert!(!gone[publisher as usize]);
                        if let Some(o) = owner.insert(ssrc, publisher) {
                            assert_eq!(
                                o, publisher,
                                "an SSRC owned by {o} was routed for {publisher}"
                            );
                        }
                        if r.dropped.contains(&DropReason::Silence) {
                            assert!(dtx_on);
                            assert!(r.forwards.is_empty(), "a silent packet was forwarded");
                        }
                        for f in &r.forwards {
                            let (out, pt) = subs[&(f.subscriber, track)];
                            assert_eq!((f.ssrc, f.payload_type), (out, pt));
                        }
                        for k in &r.key_frame_requests {
                            assert!(owner.get(k) == Some(&publisher) || bound.contains(k));
                        }
                    }
                    Err(SfuError::SpoofedSsrc { owner: o, .. }) => {
                        assert_ne!(o, publisher);
                    }
                    Err(_) => {}
                }
            }
            9 | 10 => {
                let (Some(s), Some(t), Some(pt)) = (inp.u8(), inp.u8(), inp.u8()) else {
                    return;
                };
                let subscriber = u64::from(s % 3) + 1;
                let track = tracks[usize::from(t) % 3];
                let out_ssrc = 0x1000 + u32::from(s) * 16 + u32::from(t % 3);
                let rid = (t & 0x80 != 0).then(|| RIDS[usize::from(t >> 5) & 3].to_vec());
                let s = Subscribe {
                    out_ssrc,
                    payload_type: pt,
                    ext: ExtMap::default(),
                    rid,
                };
                if room.subscribe(subscriber, track, s, now).is_ok() {
                    subs.insert((subscriber, track), (out_ssrc, pt));
                }
            }
            11 => {
                let (Some(s), Some(t)) = (inp.u8(), inp.u8()) else {
                    return;
                };
                let key = (u64::from(s % 3) + 1, tracks[usize::from(t) % 3]);
                assert_eq!(room.unsubscribe(key.0, key.1), subs.remove(&key).is_some());
            }
            12 => {
                let (Some(s), Some(r)) = (inp.u8(), inp.u8()) else {
                    return;
                };
                let rid = (r & 0x80 == 0).then_some(RIDS[usize::from(r) & 3]);
                let _ = room.set_layer(u64::from(s % 3) + 1, video, rid, now);
                let ssrc = [0xA, 0xB, 0xC, 0xD, 0xE][usize::from(r >> 2) % 5];
                if room
                    .bind_layer(video, ssrc, RIDS[usize::from(r) & 3])
                    .is_ok()
                {
                    bound.insert(ssrc);
                }
            }
            13 => {
                let (Some(s), Some(t)) = (inp.u8(), inp.u8()) else {
                    return;
                };
                if let Some(ssrc) = room.subscriber_key_frame_request(
                    u64::from(s % 3) + 1,
                    tracks[usize::from(t) % 3],
                    now,
                ) {
                    assert!(owner.contains_key(&ssrc) || bound.contains(&ssrc));
                }
            }
            14 => {
                let Some(level) = inp.u8() else { return };
                dtx_on = level & 0x80 == 0;
                room.set_dtx(dtx_on.then(|| Dtx {
                    silence_level: level & 0x7F,
                    hangover: Duration::from_millis(u64::from(level) * 4),
                }));
            }
            _ => {
                let Some(p) = inp.u8() else { return };
                let p = u64::from(p % 3) + 1;
                room.remove_participant(p);
                gone[p as usize] = true;
                subs.retain(|(s, _), _| *s != p);
                owner.retain(|_, o| *o != p);
                // Its tracks are gone with it: nobody is subscribed to them any more.
                let mine: Vec<TrackId> = match p {
                    1 => vec![audio, video],
                    3 => vec![other],
                    _ => vec![],
                };
                subs.retain(|(_, t), _| !mine.contains(t));
            }
        }
    }
}
