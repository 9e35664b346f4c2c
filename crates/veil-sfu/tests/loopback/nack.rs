//! NACK per hop (SFU-NACK-01..02) through a userspace UDP relay that drops every 7th RTP packet
//! in one direction:
//! - towards a subscriber: the subscriber's NACKs are answered by the SFU from the rewritten
//!   packets it sent on that leg (the publisher's leg is loss-free, so the repair comes from
//!   the SFU);
//! - from a publisher: the SFU's NACKs are answered by the publisher, and the repaired packets
//!   are forwarded like any other.
//!
//! Either way every packet reaches the subscriber, byte for byte.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use veil_sfu::routing::MediaKind;
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

/// Drops every `nth` RTP packet (not RTCP, STUN or DTLS) that passes.
struct Dropper {
    nth: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
}

impl Dropper {
    fn keep(&self, p: &[u8]) -> bool {
        if self.nth == 0 || !is_rtp(p) {
            return true;
        }
        if (self.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.nth) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
                seen: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
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
    for i in 0..1000u16 {
        if !sfu.tracks(room).is_empty() {
            break;
        }
        video.send(i, 0, true, &[], payload(1, 100)).await;
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

    // 200 packets, 10 ms apart, numbered from 5000.
    let mut sent = BTreeMap::new();
    for i in 0..200u16 {
        let body = payload(7000 + u64::from(i), 400 + usize::from(i));
        video
            .send(5000 + i, 3000 * u32::from(i), true, &[], body.clone())
            .await;
        sent.insert(5000 + i, body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A loss is noticed from the packets after it: the stream goes on a little.
    for i in 200..230u16 {
        video
            .send(5000 + i, 3000 * u32::from(i), true, &[], payload(9, 100))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got: BTreeMap<u16, Bytes> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sent.keys().all(|s| got.contains_key(s)) {
        let r = tokio::time::timeout_at(deadline, bob.received.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = sent.keys().filter(|s| !got.contains_key(s)).collect();
                panic!("missing {} packets: {missing:?}", missing.len())
            })
            .unwrap();
        got.insert(r.packet.header.sequence_number, r.packet.payload);
    }
    for (seq, body) in &sent {
        assert_eq!(&got[seq], body, "packet {seq}");
    }
    let dropped = relays[0].dropped.dropped.load(Ordering::Relaxed);
    eprintln!(
        "{room}: the relay dropped {dropped} RTP packets; all {} arrived",
        sent.len()
    );
    assert!(dropped >= 20, "the relay did drop packets: {dropped}");
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
