//! The in-memory network: one [`EdgeRooms`] and sans-I/O `rtc` client peers, driven by virtual
//! time (str0m's `tests/common.rs` `progress()` is the model).
//!
//! - **Clock.** `base` (read once) plus `elapsed`, which only [`Net::progress`] advances: to the
//!   earliest `poll_timeout` of the SFU and every peer, or a peer's next media frame, at most
//!   [`MAX_STEP`] and at least [`MIN_STEP`] on. Nothing sleeps and nothing reads the clock again.
//! - **Wire.** A datagram goes from the sender's `poll_transmit`/`poll_write` straight into the
//!   receiver's `handle_datagram`/`handle_read`, in order, through the link's [`Loss`] model (one
//!   per direction per peer). Every datagram moved in one turn is delivered before time moves.
//! - **Signalling.** Direct calls on [`EdgeRooms`] (`join`, `subscribe`, `answer`, `set_layer`,
//!   `remove`), as `edge/serve.rs` makes them; the SFU's offers are answered as they come
//!   ([`Client::auto_answer`]).
//! - **Media.** Each peer publishes what the native SDK does ([`Publish`]): Opus audio with the
//!   audio level, and VP8 simulcast q/h/f with a DD on every packet, mid/rid on the first
//!   frames. Payloads are opaque bytes that name their layer and frame.

mod check;
mod client;
mod link;
pub use check::*;
pub use client::*;
pub use link::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use veil_sfu::SfuConfig;
use veil_sfu::edge::{ConnId, Counters, EdgeRoomEvent, EdgeRooms, Observation};
use veil_sfu::routing::{MediaKind, TrackId};

/// The SFU's one address (its only ICE candidate).
pub const SFU: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    3478,
);
/// The edge's seed (ICE credentials): fixed, so runs are alike.
pub const SEED: [u8; 32] = [7; 32];
/// One video frame (one packet per layer) and one audio packet this often.
pub const FRAME: Duration = Duration::from_millis(20);
/// Time never jumps further than this in one [`Net::progress`].
pub const MAX_STEP: Duration = Duration::from_millis(50);
/// Nor less than this: a timer rtc keeps due cannot hold time still.
pub const MIN_STEP: Duration = Duration::from_millis(1);
/// Simulcast rids, lowest first, as the SDK sends them.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// The SFU's config for these tests: the defaults, with shorter ICE timers (virtual seconds cost
/// nothing, but a departure test reads better with them).
pub fn config() -> SfuConfig {
    SfuConfig {
        silence_timeout: Duration::from_secs(3),
        departure_grace: Duration::from_secs(1),
        ..SfuConfig::default()
    }
}

/// The start of most one-track tests: alice publishes video, bob publishes audio only; both
/// join one room, connect and send, and bob subscribes to alice's camera. Returns the net,
/// alice, bob and the camera's track, right after the subscription is asked for.
pub fn camera_and_viewer() -> (Net, usize, usize, TrackId) {
    let mut net = Net::new(config());
    let alice = net.add_peer(
        "alice",
        Publish {
            audio: false,
            video: true,
        },
    );
    let bob = net.add_peer(
        "bob",
        Publish {
            audio: true,
            video: false,
        },
    );
    net.join(alice, "room");
    net.join(bob, "room");
    net.connect(&[alice, bob]);
    net.start_media(alice);
    net.start_media(bob);
    assert!(net.run_until(Duration::from_secs(1), |n| !n.tracks_of(alice).is_empty()));
    let cam = net.track(alice, MediaKind::Video);
    net.subscribe(bob, cam);
    (net, alice, bob, cam)
}

/// Add `b` to `a`, field by field.
pub fn add(a: &mut Counters, b: &Counters) {
    for i in 0..2 {
        a.received[i] += b.received[i];
        a.forwarded[i] += b.forwarded[i];
        a.forwarded_bytes[i] += b.forwarded_bytes[i];
        a.relayed[i] += b.relayed[i];
    }
    for (x, y) in a.drops.iter_mut().zip(&b.drops) {
        *x += y;
    }
    for (x, y) in a.rtx.iter_mut().zip(&b.rtx) {
        *x += y;
    }
    a.subscriber_key_frame_requests += b.subscriber_key_frame_requests;
    a.publisher_key_frame_requests += b.publisher_key_frame_requests;
    a.tracks += b.tracks;
    a.subscriptions += b.subscriptions;
}

/// The SFU, its peers, and virtual time.
pub struct Net {
    pub sfu: EdgeRooms,
    pub peers: Vec<Client>,
    base: Instant,
    elapsed: Duration,
    /// Everything the rooms said, when.
    pub events: Vec<(Duration, EdgeRoomEvent)>,
    /// Everything the rooms counted, summed.
    pub counters: Counters,
    pub observations: Vec<Observation>,
    /// Datagrams the SFU sent to addresses no peer has (or a peer not alive): when, to where,
    /// how long.
    pub undelivered: Vec<(Duration, SocketAddr, usize)>,
}

impl Net {
    /// An SFU with `config` and no peer.
    pub fn new(config: SfuConfig) -> Self {
        let base = Instant::now();
        Self {
            sfu: EdgeRooms::new(SFU, config, base, SEED),
            peers: Vec::new(),
            base,
            elapsed: Duration::ZERO,
            events: Vec::new(),
            counters: Counters::default(),
            observations: Vec::new(),
            undelivered: Vec::new(),
        }
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// A peer (not joined yet); returns its index.
    pub fn add_peer(&mut self, name: &str, what: Publish) -> usize {
        let i = self.peers.len();
        let c = Client::new(i, name, what, self.now());
        self.peers.push(c);
        i
    }

    /// A peer whose streams use these SSRCs (to spoof another's).
    pub fn add_peer_with_ssrcs(
        &mut self,
        name: &str,
        what: Publish,
        audio: u32,
        video0: u32,
    ) -> usize {
        let i = self.peers.len();
        let c = Client::with_ssrcs(i, name, what, self.now(), audio, video0);
        self.peers.push(c);
        i
    }

    /// Peer `i` joins `room` (may publish) and applies the SFU's answer. Returns the answer.
    pub fn join(&mut self, i: usize, room: &str) -> String {
        let now = self.now();
        let offer = self.peers[i].offer(now);
        let name = self.peers[i].name.clone();
        let (conn, answer) = self.sfu.join(now, room, &name, &offer, true).unwrap();
        let p = &mut self.peers[i];
        p.conn = Some(conn);
        p.pc.set_remote_description(now, RTCSessionDescription::answer(answer.clone()).unwrap())
            .unwrap();
        self.collect();
        answer
    }

    /// Run until every peer given is connected (at most 5 virtual seconds).
    pub fn connect(&mut self, peers: &[usize]) {
        self.run_until(Duration::from_secs(5), |n| {
            peers.iter().all(|&i| n.peers[i].connected())
        });
        for &i in peers {
            assert!(
                self.peers[i].connected(),
                "{} did not connect",
                self.peers[i].name
            );
        }
    }

    /// Peer `i` starts sending a frame every [`FRAME`], from now.
    pub fn start_media(&mut self, i: usize) {
        let e = self.elapsed;
        let p = &mut self.peers[i];
        p.sending = true;
        p.next_frame = e;
    }

    /// The tracks published so far, as (publisher's connection, track, kind), in order.
    pub fn published(&self) -> Vec<(ConnId, TrackId, MediaKind)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                EdgeRoomEvent::Published {
                    publisher,
                    track,
                    kind,
                    ..
                } => Some((*publisher, *track, *kind)),
                _ => None,
            })
            .collect()
    }

    /// The tracks peer `i` published.
    pub fn tracks_of(&self, i: usize) -> Vec<(TrackId, MediaKind)> {
        let conn = self.peers[i].conn;
        self.published()
            .into_iter()
            .filter(|(p, _, _)| Some(*p) == conn)
            .map(|(_, t, k)| (t, k))
            .collect()
    }

    /// Peer `i`'s track of `kind`, once published.
    pub fn track(&self, i: usize, kind: MediaKind) -> TrackId {
        self.tracks_of(i)
            .into_iter()
            .find(|(_, k)| *k == kind)
            .unwrap_or_else(|| panic!("{} published no {kind:?}", self.peers[i].name))
            .0
    }

    /// Subscribe peer `i` to `track` (its offer is answered as it comes).
    pub fn subscribe(&mut self, i: usize, track: TrackId) {
        let now = self.now();
        let conn = self.peers[i].conn.unwrap();
        self.sfu.subscribe(now, conn, track).unwrap();
        self.collect();
    }

    /// Peer `i` answers the SFU's `offer` now (one it left unanswered).
    pub fn answer_pending(&mut self, i: usize, offer: &str) {
        let now = self.now();
        let p = &mut self.peers[i];
        p.pc.set_remote_description(now, RTCSessionDescription::offer(offer.to_owned()).unwrap())
            .unwrap();
        let a = p.pc.create_answer(None).unwrap();
        p.pc.set_local_description(now, a).unwrap();
        let sdp = p.pc.local_description().unwrap().sdp;
        p.answered += 1;
        let conn = p.conn.unwrap();
        self.sfu.answer(now, conn, &sdp).unwrap();
        self.collect();
    }

    /// Whether the SFU said `subscriber` gets `track`.
    pub fn subscribed(&self, i: usize, track: TrackId) -> bool {
        let conn = self.peers[i].conn;
        self.events.iter().any(|(_, e)| {
            matches!(e, EdgeRoomEvent::Subscribed { subscriber, track: t, .. }
                if Some(*subscriber) == conn && *t == track)
        })
    }

    /// Events since `from` (an index into [`Net::events`]).
    pub fn events_since(&self, from: usize) -> impl Iterator<Item = &EdgeRoomEvent> {
        self.events[from..].iter().map(|(_, e)| e)
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.elapsed + d;
        while self.elapsed < end {
            self.progress(end);
        }
    }

    /// Run until `done` holds, at most `limit` of virtual time; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.elapsed + limit;
        while !done(self) {
            if self.elapsed >= end {
                return false;
            }
            self.progress(end);
        }
        true
    }

    /// One turn: media that is due, every datagram delivered, then time moves to the earliest
    /// timer (never past `end`) and the timers that are due run, and what they made is
    /// delivered.
    pub fn progress(&mut self, end: Duration) {
        let now = self.now();
        let at = self.elapsed;
        for p in &mut self.peers {
            if p.alive && p.sending && p.connected() && p.next_frame <= at {
                p.send_frame(now, at);
                p.next_frame = at + FRAME;
            }
        }
        self.deliver();
        // The earliest timer of anyone, then the step bounds.
        let mut next = self.sfu.poll_timeout();
        for p in &mut self.peers {
            if !p.alive {
                continue;
            }
            let t = p.pc.poll_timeout();
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if p.sending && p.connected() {
                let f = self.base + p.next_frame;
                next = Some(next.map_or(f, |n| n.min(f)));
            }
        }
        let floor = self.elapsed + MIN_STEP;
        let mut to = next
            .map_or(self.elapsed + MAX_STEP, |t| {
                t.saturating_duration_since(self.base)
            })
            .clamp(floor, self.elapsed + MAX_STEP);
        if end > self.elapsed {
            to = to.min(end);
        }
        self.elapsed = to;
        let now = self.now();
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.sfu.handle_timeout(now);
        }
        for p in &mut self.peers {
            if p.alive && p.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = p.pc.handle_timeout(now);
            }
        }
        self.deliver();
    }

    /// Move every datagram until none is left, answering the SFU's offers on the way.
    fn deliver(&mut self) {
        let at = self.elapsed;
        let now = self.now();
        loop {
            let mut moved = false;
            for p in &mut self.peers {
                if !p.alive {
                    // Its process is gone: what its connection had queued never leaves.
                    while p.pc.poll_write().is_some() {}
                    continue;
                }
                while let Some(out) = p.pc.poll_write() {
                    moved = true;
                    if out.transport.peer_addr == SFU && p.up.pass(&out.message, at) {
                        self.sfu.handle_datagram(now, p.addr, &out.message);
                    }
                }
            }
            while let Some((to, d)) = self.sfu.poll_transmit() {
                moved = true;
                self.carry(now, to, d);
            }
            for p in &mut self.peers {
                if p.alive {
                    p.poll(at);
                }
            }
            moved |= self.collect();
            if !moved {
                break;
            }
        }
    }

    /// A datagram from the SFU to `to`.
    fn carry(&mut self, now: Instant, to: SocketAddr, d: BytesMut) {
        let Some(p) = self.peers.iter_mut().find(|p| p.addr == to && p.alive) else {
            self.undelivered.push((self.elapsed, to, d.len()));
            return;
        };
        if !p.down.pass(&d, self.elapsed) {
            return;
        }
        let _ = p.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: p.addr,
                peer_addr: SFU,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: d,
        });
    }

    /// Take the rooms' events, counters and observations; answer offers. Whether an offer was
    /// answered (which makes datagrams).
    fn collect(&mut self) -> bool {
        let at = self.elapsed;
        let now = self.now();
        let mut answered = false;
        while let Some(ev) = self.sfu.poll_event() {
            if let EdgeRoomEvent::Offer { to, sdp } = &ev
                && let Some(p) = self
                    .peers
                    .iter_mut()
                    .find(|p| p.conn == Some(*to) && p.alive && p.auto_answer)
            {
                p.pc.set_remote_description(
                    now,
                    RTCSessionDescription::offer(sdp.clone()).unwrap(),
                )
                .unwrap();
                let a = p.pc.create_answer(None).unwrap();
                p.pc.set_local_description(now, a).unwrap();
                let sdp = p.pc.local_description().unwrap().sdp;
                p.answered += 1;
                self.sfu.answer(now, *to, &sdp).unwrap();
                answered = true;
            }
            self.events.push((at, ev));
        }
        add(&mut self.counters, &self.sfu.take_counters());
        while let Some(o) = self.sfu.poll_observation() {
            self.observations.push(o);
        }
        answered
    }

    /// Take what the rooms counted so far out of [`Net::counters`] (a fresh count from here).
    pub fn take_counters(&mut self) -> Counters {
        self.collect();
        std::mem::take(&mut self.counters)
    }

    /// Peer `i` closes its connection (its DTLS `close_notify` goes out) and its process ends.
    pub fn close_peer(&mut self, i: usize) {
        let _ = self.peers[i].pc.close();
        self.deliver();
        self.peers[i].alive = false;
    }

    /// Peer `i`'s process is gone: nothing more from it, nothing reaches it.
    pub fn vanish(&mut self, i: usize) {
        self.peers[i].alive = false;
    }

    /// When the rooms said `i` left.
    pub fn left_at(&self, i: usize) -> Option<Duration> {
        let conn = self.peers[i].conn?;
        self.events
            .iter()
            .find(|(_, e)| *e == EdgeRoomEvent::Left(conn))
            .map(|(at, _)| *at)
    }

    /// A datagram from `from`, straight to the SFU (an attacker's, or a forged one).
    pub fn inject(&mut self, from: SocketAddr, d: &[u8]) {
        let now = self.now();
        self.sfu.handle_datagram(now, from, d);
        self.collect();
    }
}
