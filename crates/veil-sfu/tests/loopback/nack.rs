//! NACK and RTX per hop (SFU-NACK-01..02, SFU-RTX-01..03) through a userspace UDP relay that
//! drops every 7th RTP packet in one direction:
//! - towards a subscriber: the subscriber's NACKs are answered by the SFU from the rewritten
//!   packets it sent on that leg (the publisher's leg is loss-free, so the repair comes from
//!   the SFU);
//! - from a publisher: the SFU's NACKs are answered by the publisher, and the repaired packets
//!   are forwarded like any other.
//!
//! Either way every packet reaches the subscriber, byte for byte and with its dependency
//! descriptor; every repair crosses the lossy hop as RTX (PT 97 on the RTX SSRC, never a repeat
//! on the media SSRC), and each loss is repaired about once, not re-requested after it arrived.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use veil_rtc::VP8_PT;
use veil_sfu::routing::MediaKind;
use veil_sfu::shell::sdp::DD_URI;
use veil_sfu::{Sfu, SfuConfig};

use crate::common::*;

/// SFU candidate port → relay port, in every candidate line of `sdp`.
fn via(sdp: &str, sfu_port: u16, relay_port: u16) -> String {
    sdp.replace(
        &format!(" 127.0.0.1 {sfu_port} typ host"),
        &format!(" 127.0.0.1 {relay_port} typ host"),
    )
}

fn candidate_port(sdp: &str) -> u16 {
    let line = sdp.lines().find(|l| l.starts_with("a=candidate:")).unwrap();
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

/// RFC 7983: 128..=191 is RTP or RTCP; RTCP packet types are 192..=223.
fn is_rtp(p: &[u8]) -> bool {
    p.len() > 1 && (128..=191).contains(&p[0]) && !(192..=223).contains(&p[1])
}

/// Drops every `nth` RTP packet (not RTCP, STUN or DTLS) that passes, and tells retransmissions
/// apart from the clear RTP header that SRTP leaves (RFC 3711 §3.1).
#[derive(Default)]
struct Dropper {
    nth: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
    /// RTX packets (PT 97) that reached the relay, and those of them it dropped.
    rtx: AtomicU64,
    rtx_dropped: AtomicU64,
    /// VP8 packets whose (SSRC, sequence number) had passed before: retransmissions that did
    /// not go as RTX.
    repeats: AtomicU64,
    media: std::sync::Mutex<HashSet<(u32, u16)>>,
}

impl Dropper {
    fn keep(&self, p: &[u8]) -> bool {
        if !is_rtp(p) || p.len() < 12 {
            return true;
        }
        let pt = p[1] & 0x7f;
        let is_rtx = pt == veil_rtc::RTX_PT;
        if is_rtx {
            self.rtx.fetch_add(1, Ordering::Relaxed);
        } else if pt == VP8_PT {
            let key = (
                u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            if !self.media.lock().unwrap().insert(key) {
                self.repeats.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.nth == 0 {
            return true;
        }
        if (self.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.nth) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if is_rtx {
                self.rtx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        true
    }
}

/// A two-socket UDP relay: `front` faces the peer, `back` the SFU.
struct Relay {
    front: Arc<UdpSocket>,
    dropped: Arc<Dropper>,
}

impl Relay {
    /// Drop every `nth` RTP packet towards the peer, or (`to_sfu`) towards the SFU.
    async fn start(sfu: SocketAddr, nth: u64, to_sfu: bool) -> Relay {
        let dropper = |on: bool| {
            Arc::new(Dropper {
                nth: if on { nth } else { 0 },
                ..Dropper::default()
            })
        };
        let (up, down) = (dropper(to_sfu), dropper(!to_sfu));
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let subscriber: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, subscriber) = (front.clone(), back.clone(), subscriber.clone());
            let up = up.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *subscriber.lock().await = Some(from);
                    if up.keep(&buf[..n]) {
                        let _ = back.send_to(&buf[..n], sfu).await;
                    }
                }
            });
        }
        {
            let (front, down) = (front.clone(), down.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = back.recv(&mut buf).await {
                    if down.keep(&buf[..n])
                        && let Some(to) = *subscriber.lock().await
                    {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        let dropped = if to_sfu { up } else { down };
        Relay { front, dropped }
    }

    fn port(&self) -> u16 {
        self.front.local_addr().unwrap().port()
    }
}

/// Alice publishes video, bob subscribes; one of them reaches the SFU through a lossy relay.
async fn run(lossy_publisher: bool) {
    init_tracing();
    let sfu = Sfu::new(SfuConfig::default());
    let room = if lossy_publisher {
        "nack-up"
    } else {
        "nack-down"
    };
    let through_relay = |answer: &str, to_sfu: bool| {
        let sfu_port = candidate_port(answer);
        async move {
            let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], sfu_port)), 7, to_sfu).await;
            let relay_port = relay.port();
            (
                relay,
                Arc::new(move |sdp: &str| via(sdp, sfu_port, relay_port)) as SdpFilter,
            )
        }
    };
    let mut alice = Peer::new(room, "alice", true).await;
    let video = alice.add_track(MediaKind::Video, 0xBEEF, "cam").await;
    let dd_id = video.ext_id(DD_URI).await.expect("DD negotiated");
    let offer = alice.offer().await;
    let session = sfu.join(room, "alice", &offer).await.unwrap();
    let mut relays = Vec::new();
    if lossy_publisher {
        let (relay, filter) = through_relay(&session.answer, true).await;
        alice.sdp_filter = Some(filter);
        relays.push(relay);
    }
    alice.accept(&sfu, session).await;
    alice.connected().await;
    // Frame numbers run on from these announcing key frames.
    let mut announced = 0u16;
    for i in 0..1000u16 {
        if !sfu.tracks(room).is_empty() {
            break;
        }
        video
            .send(i, 0, true, &[(dd_id, dd(i, true))], payload(1, 100))
            .await;
        announced = i + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut bob = Peer::new(room, "bob", false).await;
    let offer = bob.offer().await;
    let session = sfu.join(room, "bob", &offer).await.unwrap();
    if !lossy_publisher {
        let (relay, filter) = through_relay(&session.answer, false).await;
        bob.sdp_filter = Some(filter);
        relays.push(relay);
    }
    bob.accept(&sfu, session).await;
    bob.connected().await;
    let track = bob.track_named("alice", "cam").await;
    bob.subscribe(&sfu, &track).await;

    // 200 one-packet frames, 10 ms apart, numbered from 5000; a key frame every 50.
    let bob_dd = remote_ext_ids(&bob.pc).await.dd.expect("DD towards bob");
    let frame = |i: u16| dd(announced + i, i.is_multiple_of(50));
    let mut sent = BTreeMap::new();
    for i in 0..200u16 {
        let body = payload(7000 + u64::from(i), 400 + usize::from(i));
        video
            .send(
                5000 + i,
                3000 * u32::from(i),
                true,
                &[(dd_id, frame(i))],
                body.clone(),
            )
            .await;
        sent.insert(5000 + i, (body, frame(i)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A loss is noticed from the packets after it: the stream goes on a little.
    for i in 200..230u16 {
        video
            .send(
                5000 + i,
                3000 * u32::from(i),
                true,
                &[(dd_id, frame(i))],
                payload(9, 100),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got: BTreeMap<u16, (Bytes, Option<Bytes>)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sent.keys().all(|s| got.contains_key(s)) {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = sent.keys().filter(|s| !got.contains_key(s)).collect();
                panic!("missing {} packets: {missing:?}", missing.len())
            })
            .unwrap();
        let dd = r.packet.header.get_extension(bob_dd);
        got.insert(r.packet.header.sequence_number, (r.packet.payload, dd));
    }
    for (seq, (body, dd)) in &sent {
        assert_eq!(&got[seq].0, body, "packet {seq}");
        assert_eq!(got[seq].1.as_ref(), Some(dd), "packet {seq}'s DD");
    }
    let lossy = &relays[0].dropped;
    let dropped = lossy.dropped.load(Ordering::Relaxed);
    let rtx = lossy.rtx.load(Ordering::Relaxed);
    let repeats = lossy.repeats.load(Ordering::Relaxed);
    eprintln!(
        "{room}: the relay dropped {dropped} RTP packets and saw {rtx} RTX packets and {repeats} \
         repeats on the media SSRC; all {} arrived",
        sent.len()
    );
    assert!(dropped >= 20, "the relay did drop packets: {dropped}");
    assert_eq!(repeats, 0, "retransmissions go as RTX");
    // Each lost packet (media or RTX) takes one RTX; a packet NACKed again after its RTX arrived
    // (the RTX unwrapped only after the NACK generator looked) would push this far above.
    assert!(
        rtx >= dropped / 2 && rtx <= dropped + 5,
        "{rtx} RTX packets for {dropped} losses"
    );
    // The SFU's own account of it, on /metrics.
    let m = sfu.metrics();
    if lossy_publisher {
        let arrived = rtx - lossy.rtx_dropped.load(Ordering::Relaxed);
        assert_eq!(m.rtx("in", "unwrapped"), arrived, "{}", m.encode());
    } else {
        assert_eq!(m.rtx("out", "restored"), rtx, "{}", m.encode());
        assert_eq!(m.rtx("out", "bare"), 0);
    }
}

/// SFU-NACK-01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_towards_a_subscriber_are_repaired_by_the_sfu() {
    run(false).await;
}

/// SFU-NACK-02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_from_a_publisher_are_repaired_on_its_leg() {
    run(true).await;
}
