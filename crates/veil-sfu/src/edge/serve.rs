//! [`EdgeSfu`]: the SFU's rooms on one UDP socket ([`EdgeRooms`]), driven by one thread, behind
//! the SFU's signalling API ([`Backend`]).
//!
//! One OS thread owns the socket and the rooms (a single-threaded tokio runtime: the socket,
//! the timers and the command queue). Signalling calls ([`Backend::join_with`],
//! [`Backend::subscribe`], …) are closures sent to that thread, run between datagrams, and
//! answered on a oneshot; what they change in the rooms turns into each participant's
//! [`SignalEvent`]s before the call returns. Nothing is shared with the thread but the metrics
//! and the room-event channel, so no lock is taken per packet.
//!
//! The participant's lifetime (SFU-LIVE-01, 02, 05): a connection not up `connect_timeout`
//! after the join is removed (`never_connected`); a silent one is disconnected after
//! `silence_timeout` and removed after a further `departure_grace` (`timeout`); a participant
//! that leaves its `event_queue` full is removed (`slow_signalling`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::ConnId;
use super::io::BatchIo;
use super::room::{EdgeRoomEvent as Happened, EdgeRooms, parse_track_name, track_name};
use crate::error::SfuError;
use crate::grpc::Backend;
use crate::session::metrics::Reason;
use crate::session::{
    IceCandidate, LeaveReason, Metrics, ParticipantEvent, Permissions, Session, SfuConfig,
    SignalEvent, TrackInfo, queue_len,
};

/// Datagrams read (and handled) in one turn before the thread looks at commands and timers again.
const READ_BATCH: usize = 64;
/// The socket buffers asked for: every participant's bursts (a key frame from each publisher
/// at once) land in one receive buffer. The kernel grants at most `net.core.rmem_max` /
/// `wmem_max`; what it granted is logged.
const SOCKET_BUFFER: usize = 4 << 20;
/// How often joiners that never connected are looked for.
const SWEEP_PERIOD: Duration = Duration::from_millis(250);

type Command = Box<dyn FnOnce(&mut Driver, Instant) + Send>;

/// The blind SFU with every participant on one UDP port (`veil_sfu::edge`). Cheap to clone;
/// all clones are the same SFU; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct EdgeSfu {
    commands: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<ParticipantEvent>,
    local: SocketAddr,
}

impl core::fmt::Debug for EdgeSfu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EdgeSfu")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl EdgeSfu {
    /// Bind the first of `config.udp_addrs` and start the SFU's thread. The address must be
    /// the one participants reach (it is the only candidate the SFU offers), so an unspecified
    /// address (`0.0.0.0`) is refused.
    ///
    /// # Errors
    /// [`SfuError::Config`] if there is no address, it is unspecified, or it cannot be bound.
    pub fn new(config: SfuConfig) -> Result<Self, SfuError> {
        let addr = config.udp_addrs.first().ok_or_else(|| {
            SfuError::Config("no UDP address to bind (udp_addrs is empty)".into())
        })?;
        let addr: SocketAddr = addr.parse().map_err(|source| SfuError::BadAddress {
            addr: addr.clone(),
            source,
        })?;
        if addr.ip().is_unspecified() {
            return Err(SfuError::Config(format!(
                "UDP address {addr} is unspecified: the edge offers its bound address as its one \
                 candidate, so bind the address participants reach"
            )));
        }
        let socket = std::net::UdpSocket::bind(addr).map_err(|source| SfuError::Io {
            what: format!("cannot bind UDP {addr}"),
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| SfuError::Io {
                what: format!("UDP {addr}"),
                source,
            })?;
        let buffers = socket2::SockRef::from(&socket);
        let _ = buffers.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = buffers.set_send_buffer_size(SOCKET_BUFFER);
        let granted = (
            buffers.recv_buffer_size().unwrap_or(0),
            buffers.send_buffer_size().unwrap_or(0),
        );
        let local = socket.local_addr().map_err(|source| SfuError::Io {
            what: format!("UDP {addr}"),
            source,
        })?;
        // Batched I/O (SFU-EDGE-15): what the kernel offers (GSO, GRO) is probed here.
        let state =
            quinn_udp::UdpSocketState::new((&socket).into()).map_err(|source| SfuError::Io {
                what: format!("UDP {addr}"),
                source,
            })?;
        let (gso, gro) = (state.max_gso_segments(), state.gro_segments());
        let metrics = Arc::new(Metrics::default());
        let (events, _) = broadcast::channel(1024);
        let (commands, rx) = mpsc::channel(1024);
        let now = Instant::now();
        let driver = Driver {
            rooms: EdgeRooms::new(local, config.clone(), metrics.clone(), now),
            config,
            room_events: events.clone(),
            people: HashMap::new(),
            by_identity: HashMap::new(),
            packetization: HashMap::new(),
            slow: Vec::new(),
            next_sweep: now + SWEEP_PERIOD,
        };
        std::thread::Builder::new()
            .name("veil-sfu-edge".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "the edge's runtime did not start");
                        return;
                    }
                };
                rt.block_on(async move {
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => run(driver, BatchIo::new(socket, state), rx).await,
                        Err(e) => warn!(error = %e, "the edge's socket did not register"),
                    }
                });
            })
            .map_err(|source| SfuError::Io {
                what: "cannot start the edge's thread".into(),
                source,
            })?;
        info!(
            %local,
            recv_buffer = granted.0,
            send_buffer = granted.1,
            gso_segments = gso,
            gro_segments = gro,
            "SFU edge listening"
        );
        Ok(Self {
            commands,
            metrics,
            events,
            local,
        })
    }

    /// The UDP address every participant connects to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Room events from now on.
    #[must_use]
    pub fn room_events(&self) -> broadcast::Receiver<ParticipantEvent> {
        self.events.subscribe()
    }

    /// Run `f` on the SFU's thread; its result, once the events it caused are delivered.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Driver, Instant) -> T + Send + 'static,
    ) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        let command: Command = Box::new(move |d, now| {
            let r = f(d, now);
            d.deliver(now);
            let _ = tx.send(r);
        });
        self.commands
            .send(command)
            .await
            .map_err(|_| SfuError::Closed)?;
        rx.await.map_err(|_| SfuError::Closed)
    }

    /// Run `f` on participant `identity` of `room`.
    async fn on<T: Send + 'static>(
        &self,
        room: &str,
        identity: &str,
        f: impl FnOnce(&mut Driver, Instant, ConnId) -> Result<T, SfuError> + Send + 'static,
    ) -> Result<T, SfuError> {
        let key = (room.to_owned(), identity.to_owned());
        self.call(move |d, now| {
            let c = *d.by_identity.get(&key).ok_or_else(|| SfuError::NotJoined {
                room: key.0.clone(),
                identity: key.1.clone(),
            })?;
            f(d, now, c)
        })
        .await?
    }

    /// The layer forwarded to `identity` on `track` (None: nothing forwarded yet).
    pub async fn layer(&self, room: &str, identity: &str, track: &str) -> Option<u8> {
        let t = parse_track_name(track)?;
        self.on(room, identity, move |d, _, c| Ok(d.rooms.layer(c, t)))
            .await
            .ok()
            .flatten()
    }

    /// Spoofed packets rejected in `room` (SFU-SEC-01).
    pub async fn spoofs(&self, room: &str) -> u64 {
        let room = room.to_owned();
        self.call(move |d, _| d.rooms.spoofs(&room))
            .await
            .unwrap_or(0)
    }

    /// Identities in `room`, sorted.
    pub async fn participants(&self, room: &str) -> Vec<String> {
        let room = room.to_owned();
        self.call(move |d, _| {
            let mut v: Vec<String> = d
                .by_identity
                .keys()
                .filter(|(r, _)| *r == room)
                .map(|(_, i)| i.clone())
                .collect();
            v.sort();
            v
        })
        .await
        .unwrap_or_default()
    }
}

/// The signalling calls, run on the SFU's thread; what they change in the rooms is delivered
/// as events before they return.
impl Backend for EdgeSfu {
    async fn join_with(
        &self,
        room: &str,
        identity: &str,
        offer: &str,
        permissions: Permissions,
    ) -> Result<Session, SfuError> {
        let (room, identity, offer) = (room.to_owned(), identity.to_owned(), offer.to_owned());
        self.call(move |d, now| d.join(now, room, identity, &offer, permissions))
            .await?
    }

    async fn settle_packetization(&self, room: &str, proposal: i32) -> i32 {
        let room = room.to_owned();
        self.call(move |d, _| {
            if d.rooms.len(&room) == 0 {
                return proposal;
            }
            let p = d.packetization.entry(room).or_insert(0);
            if *p == 0 {
                *p = proposal;
            }
            *p
        })
        .await
        .unwrap_or(proposal)
    }

    // The edge is ICE-lite and learns each participant's address from its checks
    // (SFU-EDGE-01), so a trickled candidate changes nothing; it is accepted once the
    // participant is known.
    async fn add_ice_candidate(
        &self,
        room: &str,
        identity: &str,
        _: IceCandidate,
    ) -> Result<(), SfuError> {
        self.on(room, identity, |_, _, _| Ok(())).await
    }

    async fn offer(&self, room: &str, identity: &str, sdp: &str) -> Result<String, SfuError> {
        let sdp = sdp.to_owned();
        self.on(room, identity, move |d, now, c| d.rooms.offer(now, c, &sdp))
            .await
    }

    async fn answer(&self, room: &str, identity: &str, sdp: &str) -> Result<(), SfuError> {
        let sdp = sdp.to_owned();
        self.on(room, identity, move |d, now, c| {
            d.rooms.answer(now, c, &sdp)
        })
        .await
    }

    async fn subscribe(&self, room: &str, identity: &str, track: &str) -> Result<(), SfuError> {
        let track = track.to_owned();
        self.on(room, identity, move |d, now, c| {
            if !d.people.get(&c).is_some_and(|p| p.permissions.subscribe) {
                return Err(SfuError::PermissionDenied(
                    "the token lacks the `subscribe` grant".into(),
                ));
            }
            let t = parse_track_name(&track).ok_or(SfuError::NoSuchTrack(track))?;
            d.rooms.subscribe(now, c, t)
        })
        .await
    }

    async fn unsubscribe(&self, room: &str, identity: &str, track: &str) -> Result<(), SfuError> {
        let track = track.to_owned();
        self.on(room, identity, move |d, now, c| {
            let t = parse_track_name(&track).ok_or(SfuError::NoSuchTrack(track))?;
            d.rooms.unsubscribe(now, c, t)
        })
        .await
    }

    async fn set_layer_preference(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        rid: Option<&str>,
    ) -> Result<(), SfuError> {
        let (track, rid) = (track.to_owned(), rid.map(str::to_owned));
        self.on(room, identity, move |d, now, c| {
            let t = parse_track_name(&track).ok_or(SfuError::NoSuchTrack(track))?;
            d.rooms.set_layer(now, c, t, rid.as_deref())
        })
        .await
    }

    async fn leave(&self, room: &str, identity: &str) -> Result<(), SfuError> {
        self.on(room, identity, |d, now, c| {
            d.remove(now, c, LeaveReason::Left);
            Ok(())
        })
        .await
    }
}

/// A participant, as the shell knows it.
struct Participant {
    room: String,
    identity: String,
    permissions: Permissions,
    events: mpsc::Sender<SignalEvent>,
    joined: Instant,
    connected: bool,
    /// Why it is being removed, when the shell removes it (else the transport decided).
    leaving: Option<LeaveReason>,
}

/// What the SFU's thread owns.
struct Driver {
    rooms: EdgeRooms,
    config: SfuConfig,
    room_events: broadcast::Sender<ParticipantEvent>,
    people: HashMap<ConnId, Participant>,
    by_identity: HashMap<(String, String), ConnId>,
    packetization: HashMap<String, i32>,
    /// Participants whose event queue overflowed (SFU-LIVE-05), to remove.
    slow: Vec<ConnId>,
    next_sweep: Instant,
}

impl Driver {
    fn join(
        &mut self,
        now: Instant,
        room: String,
        identity: String,
        offer: &str,
        permissions: Permissions,
    ) -> Result<Session, SfuError> {
        if self
            .by_identity
            .contains_key(&(room.clone(), identity.clone()))
        {
            return Err(SfuError::AlreadyJoined { room, identity });
        }
        if self.rooms.len(&room) >= self.config.max_participants {
            return Err(SfuError::Limit("participants per room"));
        }
        let (c, answer) = self
            .rooms
            .join(now, &room, &identity, offer, permissions.publish)?;
        let (tx, events) = mpsc::channel(queue_len(self.config.event_queue));
        let others: Vec<ConnId> = self.in_room(&room).collect();
        self.people.insert(
            c,
            Participant {
                room: room.clone(),
                identity: identity.clone(),
                permissions,
                events: tx,
                joined: now,
                connected: false,
                leaving: None,
            },
        );
        self.by_identity.insert((room.clone(), identity.clone()), c);
        let m = self.rooms.metrics();
        m.participants.inc();
        m.rooms.set(self.rooms.rooms() as i64);
        for ev in self.rooms.published(c) {
            if let Some(info) = self.track_info(&ev) {
                self.send(c, SignalEvent::TrackPublished(info));
            }
        }
        if let Some(identity) = self.rooms.active_speaker(c).and_then(|s| self.identity(s)) {
            self.send(c, SignalEvent::ActiveSpeaker { identity });
        }
        for o in others {
            self.send(
                o,
                SignalEvent::ParticipantJoined {
                    identity: identity.clone(),
                },
            );
            if let Some(other) = self.identity(o) {
                self.send(c, SignalEvent::ParticipantJoined { identity: other });
            }
        }
        info!(room, identity, c, "participant joined the edge");
        let _ = self
            .room_events
            .send(ParticipantEvent::ParticipantJoined { room, identity });
        Ok(Session { answer, events })
    }

    fn identity(&self, c: ConnId) -> Option<String> {
        self.people.get(&c).map(|p| p.identity.clone())
    }

    /// The connections in `room`.
    fn in_room<'a>(&'a self, room: &'a str) -> impl Iterator<Item = ConnId> + 'a {
        self.people
            .iter()
            .filter(move |(_, p)| p.room == room)
            .map(|(c, _)| *c)
    }

    /// The participants in `of`'s room, but `of`.
    fn others(&self, of: ConnId) -> Vec<ConnId> {
        let Some(room) = self.people.get(&of).map(|p| p.room.as_str()) else {
            return Vec::new();
        };
        self.in_room(room).filter(|&c| c != of).collect()
    }

    fn track_info(&self, ev: &Happened) -> Option<TrackInfo> {
        let Happened::Published {
            publisher,
            track,
            kind,
            publisher_track_id,
            rids,
        } = ev
        else {
            return None;
        };
        Some(TrackInfo {
            track: track_name(*track),
            publisher: self.identity(*publisher)?,
            kind: *kind,
            publisher_track_id: publisher_track_id.clone(),
            rids: rids.clone(),
        })
    }

    /// Queue `ev` for `c`. A full queue marks it for removal (SFU-LIVE-05).
    fn send(&mut self, c: ConnId, ev: SignalEvent) {
        let Some(p) = self.people.get(&c) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = p.events.try_send(ev)
            && p.leaving.is_none()
            && !self.slow.contains(&c)
        {
            warn!(identity = %p.identity, "signalling events not read: removing the participant");
            self.slow.push(c);
        }
    }

    /// Remove `c` for `reason`; the departure's events follow from the rooms.
    fn remove(&mut self, now: Instant, c: ConnId, reason: LeaveReason) {
        if let Some(p) = self.people.get_mut(&c) {
            p.leaving.get_or_insert(reason);
        }
        self.rooms.remove(now, c);
    }

    /// Turn what happened in the rooms into signalling events, until nothing is left.
    fn deliver(&mut self, now: Instant) {
        loop {
            while let Some(ev) = self.rooms.poll_event() {
                self.happened(ev);
            }
            let Some(c) = self.slow.pop() else {
                return;
            };
            self.remove(now, c, LeaveReason::SlowSignalling);
        }
    }

    fn happened(&mut self, ev: Happened) {
        match ev {
            Happened::Connected(c) => {
                if let Some(p) = self.people.get_mut(&c) {
                    p.connected = true;
                }
            }
            Happened::Published { publisher, .. } => {
                if let Some(info) = self.track_info(&ev) {
                    debug!(track = %info.track, publisher = %info.publisher, "track published");
                    for o in self.others(publisher) {
                        self.send(o, SignalEvent::TrackPublished(info.clone()));
                    }
                }
            }
            Happened::Subscribed {
                subscriber,
                track,
                ssrc,
            } => self.send(
                subscriber,
                SignalEvent::Subscribed {
                    track: track_name(track),
                    ssrc,
                },
            ),
            Happened::ActiveSpeaker(s) => {
                if let Some(identity) = self.identity(s) {
                    let mut all = self.others(s);
                    all.push(s);
                    for c in all {
                        self.send(
                            c,
                            SignalEvent::ActiveSpeaker {
                                identity: identity.clone(),
                            },
                        );
                    }
                }
            }
            Happened::Unpublished { publisher, track } => {
                for o in self.others(publisher) {
                    self.send(
                        o,
                        SignalEvent::TrackUnpublished {
                            track: track_name(track),
                        },
                    );
                }
            }
            Happened::Offer { to, sdp } => self.send(to, SignalEvent::Offer { sdp }),
            Happened::Left(c) => self.left(c),
        }
    }

    /// `c` is out of its room: tell it, the others and the key service why.
    fn left(&mut self, c: ConnId) {
        let others = self.others(c);
        let Some(p) = self.people.remove(&c) else {
            return;
        };
        let reason = p.leaving.unwrap_or(if p.connected {
            LeaveReason::Timeout
        } else {
            LeaveReason::NeverConnected
        });
        self.by_identity
            .remove(&(p.room.clone(), p.identity.clone()));
        let _ = p.events.try_send(SignalEvent::Closed { reason });
        for o in others {
            self.send(
                o,
                SignalEvent::ParticipantLeft {
                    identity: p.identity.clone(),
                    reason,
                },
            );
        }
        if self.rooms.len(&p.room) == 0 {
            self.packetization.remove(&p.room);
        }
        let m = self.rooms.metrics();
        m.participants.dec();
        m.rooms.set(self.rooms.rooms() as i64);
        m.left
            .get_or_create(&Reason {
                reason: reason.label(),
            })
            .inc();
        info!(room = %p.room, identity = %p.identity, reason = reason.label(), "participant left the edge");
        let _ = self.room_events.send(ParticipantEvent::ParticipantLeft {
            room: p.room,
            identity: p.identity,
            reason,
        });
    }

    /// One datagram. Every participant shares this thread, so a panic in webrtc-rs on one
    /// participant's input must not end the others' calls: it is caught, and the participant
    /// whose address sent the datagram is removed (SFU-EDGE-13).
    fn feed(&mut self, from: SocketAddr, datagram: &[u8]) {
        let now = Instant::now();
        if catch_unwind(AssertUnwindSafe(|| {
            self.rooms.handle_datagram(now, from, datagram);
        }))
        .is_ok()
        {
            return;
        }
        error!(%from, "webrtc-rs panicked on a datagram: removing its sender");
        if let Some(c) = self.rooms.conn_at(from)
            && catch_unwind(AssertUnwindSafe(|| {
                self.remove(now, c, LeaveReason::Closed)
            }))
            .is_err()
        {
            error!(%from, "webrtc-rs panicked again while closing that connection");
        }
    }

    /// Remove joiners whose connection never came up (SFU-LIVE-02).
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_PERIOD;
        let late: Vec<ConnId> = self
            .people
            .iter()
            .filter(|(_, p)| {
                !p.connected
                    && p.leaving.is_none()
                    && now.saturating_duration_since(p.joined) >= self.config.connect_timeout
            })
            .map(|(c, _)| *c)
            .collect();
        for c in late {
            self.remove(now, c, LeaveReason::NeverConnected);
        }
    }
}

/// The SFU's thread: datagrams, commands and timers, until every [`EdgeSfu`] is dropped.
///
/// One pass: what the last turn produced is sent (SFU-EDGE-15: grouped per destination, as GSO
/// segments where the kernel has them), then the thread waits for a command, datagrams or a
/// timer. Datagrams are drained in batches (`recvmmsg`, GRO) and every one read is handled
/// before anything is sent.
async fn run(mut d: Driver, mut io: BatchIo, mut commands: mpsc::Receiver<Command>) {
    loop {
        let now = Instant::now();
        d.deliver(now);
        while let Some((to, datagram)) = d.rooms.poll_transmit() {
            io.queue(to, datagram);
        }
        io.flush().await;
        let due = d
            .rooms
            .poll_timeout()
            .map_or(d.next_sweep, |t| t.min(d.next_sweep));
        tokio::select! {
            biased;
            c = commands.recv() => match c {
                Some(c) => c(&mut d, Instant::now()),
                None => return,
            },
            r = io.readable() => {
                if r.is_ok() {
                    io.drain(READ_BATCH, |from, datagram| d.feed(from, datagram));
                }
            }
            () = tokio::time::sleep_until(due.into()) => {}
        }
        // Timers run even while datagrams never stop coming.
        let now = Instant::now();
        if now >= due {
            if catch_unwind(AssertUnwindSafe(|| d.rooms.handle_timeout(now))).is_err() {
                error!("webrtc-rs panicked in a timer; the edge goes on");
            }
            d.sweep(now);
        }
    }
}
