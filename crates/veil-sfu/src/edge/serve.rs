//! [`EdgeSfu`]: the SFU's rooms on `workers` edges ([`EdgeRooms`]), each on its own UDP port
//! and driven by its own thread, behind the SFU's signalling API ([`Backend`]).
//!
//! A worker is one OS thread owning one socket and the rooms placed on it (a single-threaded
//! tokio runtime: the socket, the timers and the command queue). A room lives on one worker
//! ([`Placement`], SFU-WRK-01..03): its first joiner places it on the least-loaded worker, and
//! the SDP answer's one candidate is that worker's port. Signalling calls
//! ([`Backend::join_with`], [`Backend::subscribe`], …) look up the room's worker, are sent to
//! its thread as closures, run between datagrams, and are answered on a oneshot; what they
//! change in the rooms turns into each participant's [`SignalEvent`]s before the call
//! returns. The workers share nothing per packet: the placement's lock is taken per signalling
//! call and per join or departure; the metrics (atomic counters), which each worker adds its
//! rooms' counts to once per pass (SFU-OBS-01), and the room-event channel are the only other
//! things shared.
//!
//! The participant's lifetime (SFU-LIVE-01, 02, 05): a connection not up `connect_timeout`
//! after the join is removed (`never_connected`); a silent one is disconnected after
//! `silence_timeout` and removed after a further `departure_grace` (`timeout`); a participant
//! that leaves its `event_queue` full is removed (`slow_signalling`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::io::BatchIo;
use super::placement::Placement;
use super::room::{
    EdgeRoomEvent as Happened, EdgeRooms, LegId, RelayOut, parse_track_name, track_name,
};
use super::tcp::{self, TcpEvent, TcpShell};
use super::{ConnId, Via};
use crate::error::SfuError;
use crate::grpc::Backend;
use crate::routing::SvcLayer;
use crate::session::metrics::Reason;
use crate::session::{
    IceCandidate, LeaveReason, Metrics, ParticipantEvent, Permissions, Session, SfuConfig,
    SignalEvent, Tap, TrackInfo, queue_len,
};

mod legs;
pub use legs::RelayIn;

/// Datagrams read (and handled) in one turn before the thread looks at commands and timers again.
const READ_BATCH: usize = 64;
/// The socket buffers asked for: every participant's bursts (a key frame from each publisher
/// at once) land in one receive buffer. The kernel grants at most `net.core.rmem_max` /
/// `wmem_max`; what it granted is logged.
const SOCKET_BUFFER: usize = 4 << 20;
/// How often joiners that never connected are looked for.
const SWEEP_PERIOD: Duration = Duration::from_millis(250);

type Command = Box<dyn FnOnce(&mut Driver, Instant) + Send>;

/// The room → worker map, shared by the signalling calls and the workers.
type Shared = Arc<Mutex<Placement>>;

fn lock(p: &Mutex<Placement>) -> MutexGuard<'_, Placement> {
    // The map is consistent after every statement that holds the lock; a panic elsewhere
    // while it was held leaves nothing half done.
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker as the signalling side sees it: its thread's queue, its socket's address and
/// the candidate it offers (the same unless `SfuConfig::advertise` says otherwise).
struct Worker {
    commands: mpsc::Sender<Command>,
    local: SocketAddr,
    candidate: SocketAddr,
    /// Its ICE-TCP listener's address, with `SfuConfig::tcp` (SFU-TCP-01).
    tcp: Option<SocketAddr>,
}

/// A joiner's place in its room's worker, given back unless the join succeeds
/// ([`Seat::keep`]): a join refused, or abandoned before its worker ran it (the caller went
/// away, the worker is gone), leaves the placement as it was (SFU-WRK-03).
struct Seat {
    placement: Shared,
    room: String,
    kept: bool,
}

impl Seat {
    /// The participant joined: the seat is its until it leaves ([`Driver::left`]).
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.placement).release(&self.room);
        }
    }
}

/// The blind SFU: rooms spread over worker threads, each with its own UDP port
/// (`veil_sfu::edge`). Cheap to clone; all clones are the same SFU; the workers end when the
/// last clone is dropped.
#[derive(Clone)]
pub struct EdgeSfu {
    workers: Arc<[Worker]>,
    placement: Shared,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<ParticipantEvent>,
}

impl core::fmt::Debug for EdgeSfu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EdgeSfu")
            .field("local", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

/// A bound, non-blocking socket with its buffers and batched-I/O state.
struct Bound {
    socket: std::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    local: SocketAddr,
    /// The worker's ICE-TCP listener and the candidate it offers, with `SfuConfig::tcp`.
    tcp: Option<(std::net::TcpListener, SocketAddr)>,
}

fn bind(addr: SocketAddr) -> Result<Bound, SfuError> {
    let io = |source| SfuError::Io {
        what: format!("UDP {addr}"),
        source,
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| SfuError::Io {
        what: format!("cannot bind UDP {addr}"),
        source,
    })?;
    socket.set_nonblocking(true).map_err(io)?;
    let buffers = socket2::SockRef::from(&socket);
    let _ = buffers.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = buffers.set_send_buffer_size(SOCKET_BUFFER);
    let granted = (
        buffers.recv_buffer_size().unwrap_or(0),
        buffers.send_buffer_size().unwrap_or(0),
    );
    let local = socket.local_addr().map_err(io)?;
    // Batched I/O (SFU-EDGE-15): what the kernel offers (GSO, GRO) is probed here.
    let state = quinn_udp::UdpSocketState::new((&socket).into()).map_err(io)?;
    info!(
        %local,
        recv_buffer = granted.0,
        send_buffer = granted.1,
        gso_segments = state.max_gso_segments(),
        gro_segments = state.gro_segments(),
        "SFU edge worker listening"
    );
    Ok(Bound {
        socket,
        state,
        local,
        tcp: None,
    })
}

/// The address worker `i` binds: `base`'s port plus `i`, or any port if `base`'s is 0.
fn worker_addr(base: SocketAddr, i: usize) -> Result<SocketAddr, SfuError> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = u16::try_from(usize::from(base.port()) + i).map_err(|_| {
        SfuError::Config(format!(
            "UDP {base}: worker {i} would need port {}, past 65535",
            usize::from(base.port()) + i
        ))
    })?;
    Ok(SocketAddr::new(base.ip(), port))
}

impl EdgeSfu {
    /// Bind one UDP port per worker on the first of `config.udp_addrs` (its port plus the
    /// worker's index, or any free port for port 0) and start the workers' threads. The
    /// address must be the one participants reach (a room's worker port is the only candidate
    /// its participants are offered), so an unspecified address (`0.0.0.0`) is refused.
    ///
    /// # Errors
    /// [`SfuError::Config`] if there is no address, it is unspecified, `workers` is 0, or the
    /// ports run past 65535; [`SfuError::Io`] if a port cannot be bound or a thread started.
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
        if config.workers == 0 {
            return Err(SfuError::Config("workers must be at least 1".into()));
        }
        if let Some(a) = config.advertise
            && (a.ip().is_unspecified() || a.port() == 0)
        {
            return Err(SfuError::Config(format!(
                "advertised address {a} must name the IP and port participants reach (worker i \
                 is offered that port plus i)"
            )));
        }
        if let Some(t) = config.tcp
            && t.ip().is_unspecified()
        {
            return Err(SfuError::Config(format!(
                "ICE-TCP address {t} is unspecified: the edge offers it as a candidate, so bind \
                 the address participants reach"
            )));
        }
        let metrics = Arc::new(Metrics::default());
        let (events, _) = broadcast::channel(1024);
        let placement: Shared = Arc::new(Mutex::new(Placement::new(
            config.workers,
            metrics.placed_rooms.clone(),
        )));
        let mut workers = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let mut bound = bind(worker_addr(addr, i)?)?;
            // SFU-ADV-01: the candidate is the advertised address's port plus i, if any.
            let candidate = match config.advertise {
                Some(a) => worker_addr(a, i)?,
                None => bound.local,
            };
            // SFU-TCP-01: worker i's ICE-TCP listener, on the TCP port plus i; its candidate
            // is the advertised IP, if any, with the bound port.
            bound.tcp = match config.tcp {
                Some(t) => {
                    let listener = tcp::bind(worker_addr(t, i)?)?;
                    let bound = listener.local_addr().map_err(|source| SfuError::Io {
                        what: format!("TCP {t}"),
                        source,
                    })?;
                    let ip = config.advertise.map_or(bound.ip(), |a| a.ip());
                    Some((listener, SocketAddr::new(ip, bound.port())))
                }
                None => None,
            };
            workers.push(spawn(
                i,
                bound,
                candidate,
                config.clone(),
                metrics.clone(),
                events.clone(),
                placement.clone(),
            )?);
        }
        Ok(Self {
            workers: workers.into(),
            placement,
            metrics,
            events,
        })
    }

    /// The first worker's UDP address (the only one with `workers` = 1).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.workers[0].local
    }

    /// Every worker's UDP address, by worker index.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local).collect()
    }

    /// The candidate the worker serving `room` offers its participants (its UDP address, or
    /// the advertised one: SFU-ADV-01); `None` while nobody is in it or joining it
    /// (SFU-WRK-03).
    #[must_use]
    pub fn room_addr(&self, room: &str) -> Option<SocketAddr> {
        self.worker_of(room).map(|w| self.workers[w].candidate)
    }

    /// Every worker's candidate, by worker index: [`EdgeSfu::local_addrs`], or the advertised
    /// addresses (SFU-ADV-01).
    #[must_use]
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.candidate).collect()
    }

    /// Every worker's ICE-TCP listener address, by worker index (empty without
    /// `SfuConfig::tcp`, SFU-TCP-01).
    #[must_use]
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().filter_map(|w| w.tcp).collect()
    }

    /// Participants (and joins in flight) per worker, by worker index.
    #[must_use]
    pub fn worker_load(&self) -> Vec<usize> {
        lock(&self.placement).load().to_vec()
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

    fn worker_of(&self, room: &str) -> Option<usize> {
        lock(&self.placement).worker_of(room)
    }

    /// Run `f` on worker `w`'s thread; its result, once the events it caused are delivered.
    async fn call<T: Send + 'static>(
        &self,
        w: usize,
        f: impl FnOnce(&mut Driver, Instant) -> T + Send + 'static,
    ) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        let command: Command = Box::new(move |d, now| {
            let r = f(d, now);
            d.deliver(now);
            let _ = tx.send(r);
        });
        self.workers[w]
            .commands
            .send(command)
            .await
            .map_err(|_| SfuError::Closed)?;
        rx.await.map_err(|_| SfuError::Closed)
    }

    /// Run `f` on `room`'s worker, if the room is placed.
    async fn in_room<T: Send + 'static>(
        &self,
        room: &str,
        f: impl FnOnce(&mut Driver, Instant) -> T + Send + 'static,
    ) -> Option<T> {
        let w = self.worker_of(room)?;
        self.call(w, f).await.ok()
    }

    /// Run `f` on participant `identity` of `room`. The room is looked up, then the call
    /// queued on its worker: a room that empties in between (and is placed afresh) answers
    /// `NotJoined`, as a participant that left would.
    async fn on<T: Send + 'static>(
        &self,
        room: &str,
        identity: &str,
        f: impl FnOnce(&mut Driver, Instant, ConnId) -> Result<T, SfuError> + Send + 'static,
    ) -> Result<T, SfuError> {
        let key = (room.to_owned(), identity.to_owned());
        let not_joined =
            |(room, identity): (String, String)| SfuError::NotJoined { room, identity };
        let Some(w) = self.worker_of(room) else {
            return Err(not_joined(key));
        };
        self.call(w, move |d, now| {
            let c = *d
                .by_identity
                .get(&key)
                .ok_or_else(|| not_joined(key.clone()))?;
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
        let r = room.to_owned();
        self.in_room(room, move |d, _| d.rooms.spoofs(&r))
            .await
            .unwrap_or(0)
    }

    /// Identities in `room`, sorted.
    pub async fn participants(&self, room: &str) -> Vec<String> {
        let r = room.to_owned();
        self.in_room(room, move |d, _| {
            let mut v: Vec<String> = d
                .by_identity
                .keys()
                .filter(|(room, _)| *room == r)
                .map(|(_, i)| i.clone())
                .collect();
            v.sort();
            v
        })
        .await
        .unwrap_or_default()
    }
}

/// Start worker `index`: its thread owns `bound` and the rooms placed on it, which offer
/// `candidate`.
fn spawn(
    index: usize,
    bound: Bound,
    candidate: SocketAddr,
    config: SfuConfig,
    metrics: Arc<Metrics>,
    room_events: broadcast::Sender<ParticipantEvent>,
    placement: Shared,
) -> Result<Worker, SfuError> {
    let Bound {
        socket,
        state,
        local,
        tcp,
    } = bound;
    if candidate != local {
        info!(%local, %candidate, "SFU edge worker advertises another address (SFU-ADV-01)");
    }
    let (commands, rx) = mpsc::channel(1024);
    let now = Instant::now();
    let mut seed = [0u8; 32];
    StdRng::from_os_rng().fill_bytes(&mut seed);
    let mut rooms = EdgeRooms::new(candidate, config.clone(), now, seed);
    let tcp_local = match &tcp {
        Some((listener, tcp_candidate)) => {
            rooms.set_tcp(*tcp_candidate);
            listener.local_addr().ok()
        }
        None => None,
    };
    let tcp_metrics = metrics.clone();
    let driver = Driver {
        rooms,
        metrics,
        config,
        room_events,
        placement,
        people: HashMap::new(),
        by_identity: HashMap::new(),
        packetization: HashMap::new(),
        slow: Vec::new(),
        next_sweep: now + SWEEP_PERIOD,
        legs: HashMap::new(),
        rooms_legs: HashMap::new(),
    };
    // `sfu-edge-N`: short enough for the kernel's 15-byte thread names (`top -H`, `perf`).
    std::thread::Builder::new()
        .name(format!("sfu-edge-{index}"))
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
                let tcp = match tcp.map(|(l, _)| TcpShell::new(l, tcp_metrics)).transpose() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        warn!(error = %e, "the edge's ICE-TCP listener did not register");
                        return;
                    }
                };
                match UdpSocket::from_std(socket) {
                    Ok(socket) => run(driver, BatchIo::new(socket, state), tcp, rx).await,
                    Err(e) => warn!(error = %e, "the edge's socket did not register"),
                }
            });
        })
        .map_err(|source| SfuError::Io {
            what: "cannot start the edge's thread".into(),
            source,
        })?;
    Ok(Worker {
        commands,
        local,
        candidate,
        tcp: tcp_local,
    })
}

/// The signalling calls, run on the thread of the room's worker; what they change in the rooms
/// is delivered as events before they return.
impl Backend for EdgeSfu {
    async fn join_with(
        &self,
        room: &str,
        identity: &str,
        offer: &str,
        permissions: Permissions,
    ) -> Result<Session, SfuError> {
        // The room's worker, or the least-loaded one for a new room (SFU-WRK-01, 02); the
        // seat goes back unless the join succeeds.
        let (w, seat) = {
            let mut placement = lock(&self.placement);
            let w = placement.reserve(room);
            let seat = Seat {
                placement: self.placement.clone(),
                room: room.to_owned(),
                kept: false,
            };
            (w, seat)
        };
        let (room, identity, offer) = (room.to_owned(), identity.to_owned(), offer.to_owned());
        self.call(w, move |d, now| {
            let joined = d.join(now, room, identity, &offer, permissions);
            if joined.is_ok() {
                seat.keep();
            }
            joined
        })
        .await?
    }

    async fn settle_packetization(&self, room: &str, proposal: i32) -> i32 {
        let r = room.to_owned();
        self.in_room(room, move |d, _| {
            if d.rooms.len(&r) == 0 {
                return proposal;
            }
            let p = d.packetization.entry(r).or_insert(0);
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

    async fn set_svc_layer(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        cap: SvcLayer,
    ) -> Result<(), SfuError> {
        let track = track.to_owned();
        self.on(room, identity, move |d, _, c| {
            let t = parse_track_name(&track).ok_or(SfuError::NoSuchTrack(track))?;
            d.rooms.set_svc_layer(c, t, cap)
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

/// What a worker's thread owns.
struct Driver {
    rooms: EdgeRooms,
    /// Where the rooms' counts go, once per pass (SFU-OBS-01).
    metrics: Arc<Metrics>,
    config: SfuConfig,
    room_events: broadcast::Sender<ParticipantEvent>,
    /// Where a departed participant's place is given back (SFU-WRK-03).
    placement: Shared,
    people: HashMap<ConnId, Participant>,
    by_identity: HashMap<(String, String), ConnId>,
    packetization: HashMap<String, i32>,
    /// Participants whose event queue overflowed (SFU-LIVE-05), to remove.
    slow: Vec<ConnId>,
    next_sweep: Instant,
    /// The node-to-node legs' queues (SFU-CAS-02).
    legs: HashMap<LegId, mpsc::Sender<RelayOut>>,
    /// The legs that want each room on this worker.
    rooms_legs: HashMap<String, Vec<LegId>>,
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
        // Each worker counts its own rooms into the shared gauge: a room is on one worker.
        let m = &self.metrics;
        m.participants.inc();
        if self.rooms.len(&room) == 1 {
            m.rooms.inc();
        }
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
        match self.people.get(&c) {
            Some(p) => Some(p.identity.clone()),
            // A publisher on another node (SFU-CAS-03).
            None => self.rooms.remote(c).map(|(_, i)| i.to_owned()),
        }
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
        let Some(room) = self
            .people
            .get(&of)
            .map(|p| p.room.as_str())
            .or_else(|| self.rooms.remote(of).map(|(r, _)| r))
        else {
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

    /// Turn what happened in the rooms into signalling events, until nothing is left; then
    /// export what they counted and observed (SFU-OBS-01).
    fn deliver(&mut self, now: Instant) {
        loop {
            while let Some(ev) = self.rooms.poll_event() {
                self.happened(ev);
            }
            let Some(c) = self.slow.pop() else {
                break;
            };
            self.remove(now, c, LeaveReason::SlowSignalling);
        }
        self.relay();
        self.metrics.export(&self.rooms.take_counters());
        let tap = self.config.tap.as_ref();
        while let Some(o) = self.rooms.poll_observation() {
            self.metrics.observe(o, tap);
        }
        self.rooms.set_tapping(tap.is_some_and(Tap::listening));
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
        let m = &self.metrics;
        if self.rooms.len(&p.room) == 0 {
            self.packetization.remove(&p.room);
            self.rooms_legs.remove(&p.room);
            m.rooms.dec();
        }
        lock(&self.placement).release(&p.room);
        m.participants.dec();
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
    fn feed(&mut self, now: Instant, via: Via, from: SocketAddr, datagram: &[u8]) {
        if catch_unwind(AssertUnwindSafe(|| match via {
            Via::Udp => self.rooms.handle_datagram(now, from, datagram),
            Via::Tcp => self.rooms.handle_tcp_frame(now, from, datagram),
        }))
        .is_ok()
        {
            return;
        }
        error!(%from, "webrtc-rs panicked on a datagram: removing its sender");
        let sender = match via {
            Via::Udp => self.rooms.conn_at(from),
            Via::Tcp => self.rooms.tcp_conn_at(from),
        };
        if let Some(c) = sender
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

/// A worker's thread: datagrams, commands and timers, until every [`EdgeSfu`] is dropped.
///
/// One pass: what the last turn produced is sent (SFU-EDGE-15: grouped per destination, as GSO
/// segments where the kernel has them), then the thread waits for a command, datagrams or a
/// timer. Datagrams are drained in batches (`recvmmsg`, GRO) and every one read is handled
/// before anything is sent.
async fn run(
    mut d: Driver,
    mut io: BatchIo,
    mut tcp: Option<TcpShell>,
    mut commands: mpsc::Receiver<Command>,
) {
    loop {
        let now = Instant::now();
        d.deliver(now);
        while let Some((to, datagram)) = d.rooms.poll_transmit() {
            io.queue(to, datagram);
        }
        // SFU-TCP-02: what goes out on ICE-TCP streams (nothing without a listener).
        while let Some((to, packet)) = d.rooms.poll_tcp_transmit() {
            if let Some(t) = tcp.as_mut() {
                t.send(to, &packet);
            }
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
                    // One clock reading per batch: the batch arrived together. Whether the tap
                    // has listeners is read per batch too, so a tap taken while the thread
                    // waited records the first datagrams that follow (SFU-TAP-01).
                    let now = Instant::now();
                    d.rooms.set_tapping(d.config.tap.as_ref().is_some_and(Tap::listening));
                    io.drain(READ_BATCH, |from, datagram| d.feed(now, Via::Udp, from, datagram));
                }
            }
            ev = next_tcp(tcp.as_mut()) => {
                if let TcpEvent::Packet(from, packet) = ev {
                    d.feed(Instant::now(), Via::Tcp, from, &packet);
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
            if let Some(t) = tcp.as_mut() {
                t.sweep(now, |peer| d.rooms.tcp_conn_at(peer).is_some());
            }
        }
    }
}

/// The next ICE-TCP event, or never without a listener.
async fn next_tcp(tcp: Option<&mut TcpShell>) -> TcpEvent {
    match tcp {
        Some(t) => t.next(Instant::now).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ports_follow_the_base_port_or_are_any() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(worker_addr(any, 3).unwrap(), any);
        let base: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        assert_eq!(worker_addr(base, 0).unwrap(), base);
        assert_eq!(
            worker_addr(base, 15).unwrap(),
            "10.0.0.1:7015".parse::<SocketAddr>().unwrap()
        );
        let top: SocketAddr = "10.0.0.1:65535".parse().unwrap();
        assert!(worker_addr(top, 0).is_ok());
        assert!(matches!(worker_addr(top, 1), Err(SfuError::Config(_))));
    }

    /// SFU-TCP-01: with `tcp`, each worker has its own ICE-TCP listener (any free port for
    /// port 0); an unspecified TCP address is refused.
    #[test]
    fn workers_listen_for_ice_tcp_each_on_its_own_port() {
        let sfu = EdgeSfu::new(SfuConfig {
            workers: 2,
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            ..SfuConfig::default()
        })
        .unwrap();
        let tcp = sfu.tcp_addrs();
        assert_eq!(tcp.len(), 2);
        assert_ne!(tcp[0], tcp[1]);
        assert!(tcp.iter().all(|a| a.ip().is_loopback() && a.port() != 0));
        for a in &tcp {
            std::net::TcpStream::connect(a).unwrap();
        }
        let plain = EdgeSfu::new(SfuConfig {
            workers: 1,
            ..SfuConfig::default()
        })
        .unwrap();
        assert!(plain.tcp_addrs().is_empty());
        let e = EdgeSfu::new(SfuConfig {
            workers: 1,
            tcp: Some("0.0.0.0:0".parse().unwrap()),
            ..SfuConfig::default()
        });
        assert!(matches!(e, Err(SfuError::Config(_))), "{e:?}");
    }

    /// SFU-ADV-01: each worker binds as `udp_addrs` says and offers the advertised port plus
    /// its index; an advertised address without an IP or a port is refused.
    #[test]
    fn workers_offer_the_advertised_address_and_bind_their_own() {
        let sfu = EdgeSfu::new(SfuConfig {
            workers: 2,
            advertise: Some("192.0.2.7:40000".parse().unwrap()),
            ..SfuConfig::default()
        })
        .unwrap();
        let bound = sfu.local_addrs();
        assert!(bound.iter().all(|a| a.ip().is_loopback() && a.port() != 0));
        assert_eq!(
            sfu.candidates(),
            ["192.0.2.7:40000", "192.0.2.7:40001"].map(|a| a.parse::<SocketAddr>().unwrap())
        );
        for bad in ["0.0.0.0:40000", "192.0.2.7:0"] {
            let e = EdgeSfu::new(SfuConfig {
                workers: 1,
                advertise: Some(bad.parse().unwrap()),
                ..SfuConfig::default()
            });
            assert!(matches!(e, Err(SfuError::Config(_))), "{bad}: {e:?}");
        }
    }
}
