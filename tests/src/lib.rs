//! Helpers for Veil's end-to-end tests: a real `veil-server` (key service and blind SFU) in
//! this process on loopback, with a fresh SQLite file, and tokens from its key (both from
//! veil-testkit), plus the frames and waits the calls share.
#![forbid(unsafe_code)]

use std::time::Duration;

use std::collections::BTreeMap;

use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomConfig};
use veil_testkit::server::InProcess;

pub mod bandwidth;
pub mod impaired;
pub mod outage;
pub use veil_testkit::peer;
pub mod reliability;
pub mod restart;
pub mod soak;
pub mod udp_blocked;

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics: std::net::SocketAddr,
    /// Every packet the SFU receives, as it receives it (SFU-TAP-01): what a curious SFU
    /// operator could record.
    pub tap: veil_sfu::Tap,
    server: InProcess,
}

impl Server {
    /// Start both roles on a free port.
    ///
    /// # Panics
    /// If the server cannot start.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start both roles on a free port, after `configure` has adjusted the configuration.
    ///
    /// # Panics
    /// If the server cannot start.
    pub async fn start_with(configure: impl FnOnce(&mut veil_server::ServerConfig)) -> Self {
        let tap = veil_sfu::Tap::new(1 << 16);
        let server = InProcess::start("e2e", |cfg| {
            cfg.kds.departure_grace = Duration::from_secs(2);
            cfg.sfu.as_mut().expect("loopback runs the SFU").tap = Some(tap.clone());
            cfg.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            configure(cfg);
        })
        .await;
        Self {
            url: server.url.clone(),
            metrics: server.bound.metrics.expect("a metrics listener"),
            tap,
            server,
        }
    }

    /// A token for `identity` in `room` with every grant.
    ///
    /// # Panics
    /// Never for valid names.
    #[must_use]
    pub fn token(&self, room: &str, identity: &str) -> String {
        self.server.token(room, identity, Duration::from_secs(600))
    }

    /// A room configuration for `identity`.
    #[must_use]
    pub fn room(&self, room: &str, identity: &str) -> RoomConfig {
        let mut c = RoomConfig::new(&self.url, &self.token(room, identity), room, identity);
        c.group.proposal_commit_delay = Duration::from_millis(50);
        c
    }
}

impl Server {
    /// Where the browser page is served (the web listener).
    ///
    /// # Panics
    /// If the server has no web listener.
    #[must_use]
    pub fn web(&self) -> std::net::SocketAddr {
        self.server.bound.web.expect("a web listener")
    }

    /// `GET /metrics`: the body.
    ///
    /// # Panics
    /// If the endpoint does not answer 200.
    pub async fn metrics_text(&self) -> String {
        self.server.metrics_text().await
    }
}

/// The value of the series `name` (with its labels, exactly as exposed) in `text`.
#[must_use]
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A deterministic audio frame of participant `who`, number `i`.
#[must_use]
pub fn audio_frame(who: usize, i: u32) -> Vec<u8> {
    (0..60 + i % 40)
        .map(|j| (who as u32 * 77 + i * 3 + j) as u8)
        .collect()
}

/// A deterministic video frame of participant `who`, number `i`.
#[must_use]
pub fn video_frame(who: usize, i: u32) -> Vec<u8> {
    (0..300 + (i * 211) % 3000)
        .map(|j| ((who as u32 * 13) ^ i ^ j) as u8)
        .collect()
}

/// Whether `frame` is one of `who`'s [`audio_frame`]s, whatever its number: 60 + i mod 40
/// bytes counting up from 77·who + 3i, so i mod 1280 decides it (171 is 3's inverse mod 256),
/// and the first byte and the length give it back.
#[must_use]
pub fn is_audio_frame_of(who: usize, frame: &[u8]) -> bool {
    let (Some(&first), len) = (frame.first(), frame.len() as u32) else {
        return false;
    };
    let low = ((u32::from(first).wrapping_sub(who as u32 * 77) & 0xff) * 171) & 0xff;
    (0..5)
        .map(|k| low + 256 * k)
        .filter(|i| 60 + i % 40 == len)
        .any(|i| frame == audio_frame(who, i))
}

/// Whether `frame` is one of `who`'s [`video_frame`]s, whatever its number: 300 + 211·i mod
/// 3000 bytes of 13·who ^ i ^ j, so i mod 96000 decides it, and the first byte and the length
/// give it back.
#[must_use]
pub fn is_video_frame_of(who: usize, frame: &[u8]) -> bool {
    let (Some(&first), len) = (frame.first(), frame.len() as u32) else {
        return false;
    };
    let low = (u32::from(first) ^ (who as u32 * 13)) & 0xff;
    (0..375)
        .map(|k| low + 256 * k)
        .filter(|i| 300 + (i * 211) % 3000 == len)
        .any(|i| frame == video_frame(who, i))
}

/// Frames received, by (publisher, kind), then RTP timestamp.
pub type Got = BTreeMap<(String, MediaKind), BTreeMap<u32, Vec<u8>>>;

/// Receive frames into a [`Got`] until `until` holds.
///
/// # Panics
/// After 30 s without `until` holding.
pub async fn collect(room: &mut Room, until: impl Fn(&Got) -> bool) -> Got {
    let mut got: Got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !until(&got) {
        let f = tokio::time::timeout_at(deadline, room.next_frame())
            .await
            .unwrap_or_else(|_| panic!("frames missing: {:?}", summary(&got)))
            .expect("room open");
        got.entry((f.participant, f.kind))
            .or_default()
            .insert(f.timestamp, f.frame);
    }
    got
}

/// Receive whatever arrives within `quiet` of silence.
pub async fn drain(room: &mut Room, quiet: Duration) -> Got {
    let mut got: Got = BTreeMap::new();
    while let Ok(Some(f)) = tokio::time::timeout(quiet, room.next_frame()).await {
        got.entry((f.participant, f.kind))
            .or_default()
            .insert(f.timestamp, f.frame);
    }
    got
}

/// `(publisher, kind, frames)` of a [`Got`].
#[must_use]
pub fn summary(got: &Got) -> Vec<(String, MediaKind, usize)> {
    got.iter()
        .map(|((p, k), v)| (p.clone(), *k, v.len()))
        .collect()
}

/// Everyone publishes audio until every room decrypts every other participant's tracks
/// (subscriptions are negotiated when a track is published), using timestamps below 1,000,000;
/// then the warm-up frames are drained.
///
/// # Panics
/// If subscriptions do not settle within 60 s (generous: a loaded 2-core CI).
pub async fn warm_up(rooms: &mut [Room], tracks_each: usize) {
    let started = tokio::time::Instant::now();
    let mut round = 0u32;
    loop {
        round += 1;
        for (w, r) in rooms.iter().enumerate() {
            r.publish_audio(&audio_frame(w, round), round * 960, (true, 30))
                .await
                .unwrap();
            r.publish_video(&video_frame(w, round), round * 3000, true)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let want = tracks_each * (rooms.len() - 1);
        let ready = rooms.iter().all(|r| {
            let s = r.stats();
            s.received.len() >= want && s.received.values().all(|t| t.decrypted > 0)
        });
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "subscriptions never settled: {:?}",
            rooms.iter().map(|r| r.stats().received).collect::<Vec<_>>()
        );
    }
    for r in rooms.iter_mut() {
        drain(r, Duration::from_millis(100)).await;
    }
}
