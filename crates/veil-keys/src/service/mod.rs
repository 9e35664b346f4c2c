//! The gRPC shell of the key service: authentication, size caps, per-room locking, fan-out over
//! server streams, presence and departure timers, and rooms leaving memory when idle. Decisions
//! live in [`crate::room`]; state in [`crate::store`]. Blocking work (openmls validation,
//! SQLite) runs on tokio's blocking pool.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use veil_auth::{Claims, Verifier};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::key_service_server::KeyService as KeyServiceApi;

use crate::error::KdsError;
use crate::metrics::{Metrics, reject};
use crate::room::{CIPHERSUITE, CommitOutcome, RoomState, SERVICE_IDENTITY, ServiceKey};
use crate::store::{Event, EventKind, KeyPackageRecord, Store};

mod replica;

/// Limits and timers of the key service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest MLS message in any request field (bytes).
    pub max_message_bytes: usize,
    /// Most KeyPackages in one upload.
    pub max_key_packages_per_request: usize,
    /// Most unclaimed KeyPackages kept per identity and room.
    pub key_package_cap: u32,
    /// How long a member may be without a Subscribe stream before the service proposes its
    /// removal (KDS-REM-01).
    pub departure_grace: Duration,
    /// Live events a room keeps for its slowest subscriber before that one is cut off as
    /// lagging (KDS-FAN-01).
    pub stream_buffer: usize,
    /// Largest `authenticated_data` in a commit, in bytes (KDS-LIM-02).
    pub max_authenticated_data_bytes: usize,
    /// Open Subscribe streams one identity may hold in one room (KDS-LIM-05).
    pub max_streams_per_identity: u32,
    /// Open Subscribe streams one room may hold (KDS-LIM-05).
    pub max_streams_per_room: u32,
    /// Log bytes a replay reads from the store at a time (KDS-LIM-04).
    pub replay_page_bytes: usize,
    /// How long a room with no open stream and no request stays in memory (KDS-GC-01).
    pub room_idle: Duration,
    /// On a shared store: how often every room in memory is compared with the store, so a
    /// lost notification delays another replica's events by at most this long (KDS-REP-02).
    pub replica_sync: Duration,
    /// On a shared store: how long a presence lease lasts; leases are renewed every third of
    /// it, so a replica that dies stops holding its members present after at most this long
    /// (KDS-REP-03).
    pub presence_lease: Duration,
    /// The URL at which participants reach the SFU signalling of this process, if it runs an
    /// SFU: what `GetPlacement` answers on a store nobody else writes, and what this node
    /// announces to its replicas on a shared one (KDS-PLACE-01).
    pub sfu_url: Option<String>,
    /// Requests per second per token holder (room and identity), for every RPC but
    /// `GetServiceInfo`; a `Subscribe` counts once, when it opens (LIM-RATE-01, specs/limits.md).
    /// [`veil_auth::RequestRate::OFF`] turns it off.
    pub request_rate: veil_auth::RequestRate,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_key_packages_per_request: 32,
            key_package_cap: 64,
            departure_grace: Duration::from_secs(10),
            stream_buffer: 1024,
            max_authenticated_data_bytes: 4096,
            max_streams_per_identity: 4,
            max_streams_per_room: 4096,
            replay_page_bytes: 256 * 1024,
            room_idle: Duration::from_secs(300),
            replica_sync: Duration::from_secs(1),
            presence_lease: Duration::from_secs(6),
            sfu_url: None,
            request_rate: veil_auth::RequestRate::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Presence {
    streams: u32,
    /// Bumped on every connect, so a departure timer started earlier can tell it is stale.
    generation: u64,
}

/// Open streams of a room, by identity and in all.
#[derive(Debug, Default)]
struct RoomPresence {
    by_identity: HashMap<String, Presence>,
    streams: u32,
}

/// Events a subscriber's queue holds before its forwarder waits for the client to read: the
/// room's broadcast ring is the buffer, so a stream that never reads holds at most this many
/// messages (KDS-LIM-04).
const STREAM_QUEUE: usize = 1;

struct RoomHandle {
    state: Mutex<RoomState>,
    events: broadcast::Sender<Arc<Event>>,
    presence: Mutex<RoomPresence>,
    /// Set once when the room is deleted: every open stream ends (KDS-GC-03).
    deleted: watch::Sender<bool>,
    /// When a request last looked the room up (KDS-GC-01).
    last_used: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Room state is only replaced after a successful write, so a panic mid-call leaves the
    // previous, consistent state behind: a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    store: Arc<dyn Store>,
    key: ServiceKey,
    verifier: Verifier,
    cfg: Config,
    rooms: Mutex<HashMap<String, Arc<RoomHandle>>>,
    metrics: Arc<Metrics>,
    /// This process's name among replicas of a shared store (KDS-REP-03).
    replica: String,
    /// Wakes the presence-lease renewal when a stream opens (KDS-REP-03).
    lease_now: Arc<tokio::sync::Notify>,
    /// Requests per token holder (LIM-RATE-01..03).
    rate: Mutex<veil_auth::RateLimiter>,
}

/// The key-distribution service (implements the generated `KeyService` trait).
#[derive(Clone)]
pub struct KeyService {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyService")
            .field("key", &self.inner.key)
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KdsError> + Send + 'static,
) -> Result<T, KdsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KdsError::internal_by("blocking task", e))?
}

/// The wire form of a log event (moved, not copied: a replay page is sent once).
fn into_proto(e: Event) -> pb::RoomEvent {
    use pb::room_event::Event as E;
    let event = match e.kind {
        EventKind::Commit => E::Commit(pb::Commit {
            epoch: e.epoch,
            message: e.message,
            committer: e.actor,
        }),
        EventKind::Proposal => E::Proposal(pb::Proposal {
            epoch: e.epoch,
            message: e.message,
            removes: e.actor,
        }),
        EventKind::Welcome => E::Welcome(pb::Welcome {
            epoch: e.epoch,
            message: e.message,
        }),
    };
    pb::RoomEvent {
        seq: e.seq,
        event: Some(event),
    }
}

impl KeyService {
    /// A service over `store`, loading every stored room. Members of loaded rooms get one
    /// departure grace to reconnect before the service proposes their removal.
    ///
    /// # Errors
    /// Storage errors; a stored room that does not load.
    pub fn new(
        store: Arc<dyn Store>,
        verifier: Verifier,
        cfg: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KdsError> {
        let key = ServiceKey::load_or_create(store.as_ref())?;
        metrics.rooms.set(0);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                key,
                verifier,
                rooms: Mutex::new(HashMap::new()),
                metrics,
                replica: replica::name(),
                lease_now: Arc::new(tokio::sync::Notify::new()),
                rate: Mutex::new(veil_auth::RateLimiter::new(cfg.request_rate)),
                cfg,
            }),
        })
    }

    /// Start the background work: idle rooms leave memory (KDS-GC-01/02). Call from inside
    /// the runtime. Rooms load from the store when a request first names them; at that moment
    /// every member without a stream gets one departure grace to (re)connect (KDS-REM-01), so
    /// after a restart the members of a room that is used again are treated as before it.
    pub fn start(&self) {
        let weak = Arc::downgrade(&self.inner);
        let period = (self.inner.cfg.room_idle / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                // LIM-RATE-03: buckets of callers that went quiet hold nothing; drop them.
                lock(&inner.rate).evict_full(Instant::now());
                Self::sweep(&inner).await;
            }
        });
        if self.inner.store.shared() {
            self.start_replica();
        }
    }

    /// Unload every room that nobody holds (no stream, request or timer) and that nobody looked
    /// up for `room_idle`; delete the data of those whose members have all departed (KDS-GC-02).
    async fn sweep(inner: &Arc<Inner>) {
        let idle = inner.cfg.room_idle;
        let unloaded: Vec<(String, Arc<RoomHandle>)> = {
            let mut rooms = lock(&inner.rooms);
            // Every clone of a handle is taken from this map under this lock, or from another
            // clone: a count of one here means nobody else holds the room or can get it.
            let names: Vec<String> = rooms
                .iter()
                .filter(|(_, h)| Arc::strong_count(h) == 1 && lock(&h.last_used).elapsed() >= idle)
                .map(|(k, _)| k.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| rooms.remove(&n).map(|h| (n, h)))
                .collect()
        };
        for (name, h) in unloaded {
            if inner.store.shared() {
                // Another replica may have moved the room on (KDS-REP-01): decide on the
                // stored room, never on a stale copy.
                let (i, h2) = (inner.clone(), h.clone());
                let fresh = blocking(move || Self::catch_up(&i, &h2, &mut lock(&h2.state))).await;
                if let Err(e) = fresh {
                    tracing::debug!(room = name, error = %e, "unloading a room that could not be read again");
                    inner.metrics.rooms.dec();
                    inner
                        .metrics
                        .members
                        .dec_by(lock(&h.state).members().len() as i64);
                    continue;
                }
            }
            let (members, empty) = {
                let st = lock(&h.state);
                (st.members().len() as i64, st.all_departed())
            };
            inner.metrics.rooms.dec();
            inner.metrics.members.dec_by(members);
            if !empty {
                tracing::debug!(room = name, "idle room unloaded");
                continue;
            }
            let store = inner.store.clone();
            let n = name.clone();
            match blocking(move || store.delete_room(&n)).await {
                Ok(_) => {
                    inner.metrics.rooms_deleted.inc();
                    tracing::info!(room = name, "every member departed: room deleted");
                }
                Err(e) => tracing::warn!(room = name, error = %e, "could not delete an empty room"),
            }
        }
    }

    fn handle(state: RoomState, cfg: &Config) -> RoomHandle {
        RoomHandle {
            state: Mutex::new(state),
            events: broadcast::channel(cfg.stream_buffer.max(16)).0,
            presence: Mutex::new(RoomPresence::default()),
            deleted: watch::channel(false).0,
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// A participant left the media session for good (e.g. the SFU timed it out): propose its
    /// removal now, as for `Leave` (KDS-REM-01). Unknown rooms and non-members are ignored.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn depart(&self, room: &str, identity: &str) -> Result<(), KdsError> {
        // A room not in memory has nobody connected to it.
        let Some(h) = self.loaded(room) else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let identity = identity.to_owned();
        blocking(move || Self::depart_now(&inner, &h, &identity)).await
    }

    /// Authenticate the call and check that its token is for `room` with the `join` grant
    /// (KDS-AUTH-01..03).
    fn authorize<T>(&self, req: &Request<T>, room: &str) -> Result<Claims, KdsError> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                KdsError::Unauthenticated(
                    "no access token: send `authorization: Bearer <token>`".into(),
                )
            })?
            .to_str()
            .map_err(|_| KdsError::Unauthenticated("authorization is not ASCII".into()))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            KdsError::Unauthenticated("authorization must be `Bearer <token>`".into())
        })?;
        let claims = self
            .inner
            .verifier
            .verify(token, now_secs())
            .map_err(KdsError::Token)?
            .into_claims();
        // KDS-LIM-03: the token's names follow AUTH-10 (the verifier checked them); the
        // request's room follows the same rule before it is compared or echoed.
        crate::names::check("the request's room name", room)?;
        if claims.room != room {
            return Err(KdsError::PermissionDenied(format!(
                "the token is for room {:?}, the request names room {room:?}",
                claims.room
            )));
        }
        if !claims.grants.join {
            return Err(KdsError::PermissionDenied(
                "the token lacks the `join` grant".into(),
            ));
        }
        // LIM-RATE-01: per token holder, after the token verified (an unverified caller names
        // no key, so it cannot use up another's requests).
        let key = format!("{}\n{}", claims.room, claims.identity);
        lock(&self.inner.rate)
            .check(&key, Instant::now())
            .map_err(KdsError::RateLimited)?;
        Ok(claims)
    }

    fn cap(&self, what: &'static str, bytes: &[u8]) -> Result<(), KdsError> {
        let cap = self.inner.cfg.max_message_bytes;
        if bytes.len() > cap {
            return Err(KdsError::TooLarge {
                what,
                len: bytes.len(),
                cap,
            });
        }
        Ok(())
    }

    /// The room if it is in memory.
    fn loaded(&self, room: &str) -> Option<Arc<RoomHandle>> {
        lock(&self.inner.rooms).get(room).cloned()
    }

    /// The room, loaded from the store if it is not in memory (KDS-GC-01). A freshly loaded
    /// room gives each member without a stream one departure grace (KDS-REM-01).
    async fn room(&self, room: &str) -> Result<Arc<RoomHandle>, KdsError> {
        if let Some(h) = self.loaded(room) {
            *lock(&h.last_used) = Instant::now();
            return Ok(h);
        }
        let inner = self.inner.clone();
        let name = room.to_owned();
        let state = blocking(move || match inner.store.room(&name)? {
            Some(rec) => RoomState::restore(&rec, &inner.key).map(Some),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| KdsError::NoSuchRoom(room.to_owned()))?;
        let members = state.members();
        let h = match lock(&self.inner.rooms).entry(room.to_owned()) {
            // Another request loaded it meanwhile: use that one.
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(v) => {
                self.inner.metrics.rooms.inc();
                self.inner.metrics.members.inc_by(members.len() as i64);
                v.insert(Arc::new(Self::handle(state, &self.inner.cfg)))
                    .clone()
            }
        };
        tracing::debug!(room, members = members.len(), "room loaded");
        for (_, id) in members {
            self.schedule_departure(room, &h, &id);
        }
        Ok(h)
    }

    fn fail(&self, rpc: &'static str, e: KdsError) -> Status {
        reject(&self.inner.metrics, rpc, e.reason());
        // Clipped: a refused request's names never fill the log (KDS-LIM-03).
        let msg = e.clipped();
        match e.code() {
            tonic::Code::Internal => tracing::error!(rpc, error = %msg, "request failed"),
            _ => tracing::debug!(rpc, error = %msg, "request refused"),
        }
        e.into()
    }

    /// Persist `events` with the room's new state and broadcast them; on a failed write the
    /// room is reloaded from the store, so memory never runs ahead of disk (KDS-DUR-01).
    fn persist_and_publish(
        inner: &Inner,
        h: &RoomHandle,
        st: &mut RoomState,
        events: Vec<Event>,
        consumed: &[Vec<u8>],
    ) -> Result<(), KdsError> {
        if events.is_empty() {
            return Ok(());
        }
        let res = st
            .record()
            .and_then(|rec| inner.store.append(&rec, &events, consumed));
        if let Err(e) = res {
            Self::after_failed_write(inner, h, st);
            return Err(e);
        }
        Self::publish(inner, h, events);
        Ok(())
    }

    /// After a write the store refused, memory goes back to what the store holds: a replica
    /// whose write lost to another's catches up and broadcasts the winner's events
    /// (KDS-REP-01); otherwise the room is reloaded (KDS-DUR-01).
    fn after_failed_write(inner: &Inner, h: &RoomHandle, st: &mut RoomState) {
        if inner.store.shared() {
            if let Err(e) = Self::catch_up(inner, h, st) {
                tracing::warn!(room = st.name(), error = %e, "could not catch up after a refused write");
            }
        } else if let Ok(Some(rec)) = inner.store.room(st.name())
            && let Ok(fresh) = RoomState::restore(&rec, &inner.key)
        {
            *st = fresh;
        }
    }

    /// Count and broadcast events this replica wrote.
    fn publish(inner: &Inner, h: &RoomHandle, events: Vec<Event>) {
        for e in &events {
            match e.kind {
                EventKind::Proposal => inner.metrics.proposals.inc(),
                EventKind::Welcome => inner.metrics.welcomes.inc(),
                EventKind::Commit => inner.metrics.commits.inc(),
            };
        }
        Self::broadcast(h, events);
    }

    /// Broadcast events that are in the store to the room's streams.
    fn broadcast(h: &RoomHandle, events: Vec<Event>) {
        for e in events {
            // No receiver is fine: nobody is subscribed.
            let _ = h.events.send(Arc::new(e));
        }
    }

    /// Propose `identity`'s removal now (it left, or its grace ran out).
    fn depart_now(inner: &Inner, h: &RoomHandle, identity: &str) -> Result<(), KdsError> {
        let mut st = lock(&h.state);
        // The proposal is bound to the room's current epoch: the stored one (KDS-REP-01).
        Self::catch_up(inner, h, &mut st)?;
        let events = st.depart(&inner.key, identity)?;
        if !events.is_empty() {
            tracing::info!(
                room = st.name(),
                identity,
                "proposing removal of departed member"
            );
        }
        Self::persist_and_publish(inner, h, &mut st, events, &[])
    }

    /// Start the departure timer of `identity` if it has no open stream (KDS-REM-01).
    fn schedule_departure(&self, room: &str, h: &Arc<RoomHandle>, identity: &str) {
        let generation = {
            let p = lock(&h.presence);
            match p.by_identity.get(identity) {
                Some(pr) if pr.streams > 0 => return,
                Some(pr) => pr.generation,
                None => 0,
            }
        };
        let inner = self.inner.clone();
        let h = h.clone();
        let (room, identity) = (room.to_owned(), identity.to_owned());
        let grace = self.inner.cfg.departure_grace;
        // A guard dropped while the runtime shuts down has nothing left to schedule on.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut wait = grace;
            loop {
                tokio::time::sleep(wait).await;
                let still_gone = lock(&h.presence)
                    .by_identity
                    .get(&identity)
                    .is_none_or(|p| p.streams == 0 && p.generation == generation);
                if !still_gone {
                    return;
                }
                // KDS-REP-03: a stream on another replica keeps the member; check again when
                // that replica's lease would run out.
                match Self::leased_elsewhere(&inner, &room, &identity).await {
                    Some(left) => wait = left + Duration::from_millis(100),
                    None => break,
                }
            }
            let res =
                tokio::task::spawn_blocking(move || Self::depart_now(&inner, &h, &identity)).await;
            if let Ok(Err(e)) = res {
                tracing::warn!(room, error = %e, "could not propose a departed member's removal");
            }
        });
    }
}

/// Counts a subscriber as present while alive; on drop, starts its departure timer.
struct PresenceGuard {
    svc: KeyService,
    room: String,
    handle: Arc<RoomHandle>,
    identity: String,
}

impl PresenceGuard {
    /// Count one more stream of `identity`, within the caps (KDS-LIM-05).
    fn new(
        svc: &KeyService,
        room: &str,
        handle: &Arc<RoomHandle>,
        identity: &str,
    ) -> Result<Self, KdsError> {
        {
            let cfg = &svc.inner.cfg;
            let mut p = lock(&handle.presence);
            if p.streams >= cfg.max_streams_per_room {
                return Err(KdsError::TooManyStreams {
                    scope: "this room",
                    cap: cfg.max_streams_per_room,
                });
            }
            let e = p.by_identity.entry(identity.to_owned()).or_default();
            if e.streams >= cfg.max_streams_per_identity {
                return Err(KdsError::TooManyStreams {
                    scope: "this identity in this room",
                    cap: cfg.max_streams_per_identity,
                });
            }
            e.streams += 1;
            e.generation += 1;
            p.streams += 1;
        }
        svc.inner.metrics.streams.inc();
        if svc.inner.store.shared() {
            // Lease the member's presence now, before another replica's timer looks.
            svc.inner.lease_now.notify_one();
        }
        Ok(Self {
            svc: svc.clone(),
            room: room.to_owned(),
            handle: handle.clone(),
            identity: identity.to_owned(),
        })
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.svc.inner.metrics.streams.dec();
        let gone = {
            let mut p = lock(&self.handle.presence);
            p.streams = p.streams.saturating_sub(1);
            let e = p.by_identity.entry(self.identity.clone()).or_default();
            e.streams = e.streams.saturating_sub(1);
            let gone = e.streams == 0;
            if gone && !lock(&self.handle.state).is_member(&self.identity) {
                // A non-member's entry would only grow the map.
                p.by_identity.remove(&self.identity);
                return;
            }
            gone
        };
        if gone && lock(&self.handle.state).is_member(&self.identity) {
            self.svc
                .schedule_departure(&self.room, &self.handle, &self.identity);
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RoomEvent, Status>> + Send>>;

#[tonic::async_trait]
impl KeyServiceApi for KeyService {
    async fn get_service_info(
        &self,
        _req: Request<pb::GetServiceInfoRequest>,
    ) -> Result<Response<pb::ServiceInfo>, Status> {
        Ok(Response::new(pb::ServiceInfo {
            external_sender_key: self.inner.key.public().to_vec(),
            external_sender_identity: SERVICE_IDENTITY.to_vec(),
            ciphersuite: u32::from(u16::from(CIPHERSUITE)),
            max_message_bytes: u32::try_from(self.inner.cfg.max_message_bytes).unwrap_or(u32::MAX),
            departure_grace_ms: u32::try_from(self.inner.cfg.departure_grace.as_millis())
                .unwrap_or(u32::MAX),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn publish_key_packages(
        &self,
        req: Request<pb::PublishKeyPackagesRequest>,
    ) -> Result<Response<pb::PublishKeyPackagesResponse>, Status> {
        const RPC: &str = "PublishKeyPackages";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            let r = req.into_inner();
            let max = self.inner.cfg.max_key_packages_per_request;
            if r.key_packages.is_empty() || r.key_packages.len() > max {
                return Err(KdsError::Malformed {
                    what: "key_packages",
                    why: format!("send 1 to {max} KeyPackages, not {}", r.key_packages.len()),
                    source: None,
                });
            }
            for kp in &r.key_packages {
                self.cap("key_package", kp)?;
            }
            let inner = self.inner.clone();
            let n = r.key_packages.len();
            let available = blocking(move || {
                // KDS-KP-01: every KeyPackage verifies and is the caller's, or none is stored.
                let records = r
                    .key_packages
                    .into_iter()
                    .map(|message| {
                        let (hash_ref, last_resort) =
                            crate::room::check_key_package(&message, &claims.identity)?;
                        Ok(KeyPackageRecord {
                            hash_ref,
                            last_resort,
                            message,
                        })
                    })
                    .collect::<Result<Vec<_>, KdsError>>()?;
                inner.store.add_key_packages(
                    &r.room,
                    &claims.identity,
                    &records,
                    inner.cfg.key_package_cap,
                )
            })
            .await?;
            self.inner.metrics.key_packages_published.inc_by(n as u64);
            Ok(pb::PublishKeyPackagesResponse { available })
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn claim_key_package(
        &self,
        req: Request<pb::ClaimKeyPackageRequest>,
    ) -> Result<Response<pb::ClaimKeyPackageResponse>, Status> {
        const RPC: &str = "ClaimKeyPackage";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            let r = req.into_inner();
            crate::names::check("the identity to claim", &r.identity)?;
            let h = self.room(&r.room).await?;
            // KDS-KP-02: only members add, so only members take KeyPackages.
            if !lock(&h.state).is_member(&claims.identity) {
                return Err(KdsError::PermissionDenied(
                    "only members of the room can claim KeyPackages".into(),
                ));
            }
            let inner = self.inner.clone();
            let kp = blocking(move || {
                inner
                    .store
                    .claim_key_package(&r.room, &r.identity, &claims.identity)?
                    .ok_or(KdsError::NoKeyPackage(r.identity))
            })
            .await?;
            self.inner.metrics.key_packages_claimed.inc();
            Ok(pb::ClaimKeyPackageResponse { key_package: kp })
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn create_room(
        &self,
        req: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        const RPC: &str = "CreateRoom";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            if !claims.grants.create {
                return Err(KdsError::PermissionDenied(
                    "the token lacks the `create` grant".into(),
                ));
            }
            let r = req.into_inner();
            self.cap("group_info", &r.group_info)?;
            if self.loaded(&r.room).is_some() {
                return Err(KdsError::RoomExists(r.room));
            }
            let inner = self.inner.clone();
            let name = r.room.clone();
            let creator = claims.identity.clone();
            let state = blocking(move || {
                let state = RoomState::create(&r.room, &r.group_info, &creator, &inner.key)?;
                inner.store.create_room(&state.record()?)?;
                Ok(state)
            })
            .await?;
            let epoch = state.epoch();
            let members = state.members().len() as i64;
            let mut rooms = lock(&self.inner.rooms);
            if rooms.contains_key(&name) {
                // Lost a race with a concurrent create; the store refused one of the two.
                return Err(KdsError::RoomExists(name));
            }
            let h = Arc::new(Self::handle(state, &self.inner.cfg));
            rooms.insert(name.clone(), h.clone());
            drop(rooms);
            self.inner.metrics.rooms.inc();
            self.inner.metrics.members.inc_by(members);
            tracing::info!(room = name, "room created");
            // The creator, like every new member, gets one grace to open its stream
            // (KDS-REM-01); a room whose creator never comes is over (KDS-GC-02).
            self.schedule_departure(&name, &h, &claims.identity);
            Ok(pb::CreateRoomResponse { epoch })
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn get_group_info(
        &self,
        req: Request<pb::GetGroupInfoRequest>,
    ) -> Result<Response<pb::GetGroupInfoResponse>, Status> {
        const RPC: &str = "GetGroupInfo";
        let run = async {
            self.authorize(&req, &req.get_ref().room)?;
            let h = self.room(&req.get_ref().room).await?;
            let inner = self.inner.clone();
            blocking(move || {
                let mut st = lock(&h.state);
                Self::catch_up(&inner, &h, &mut st)?;
                Ok(pb::GetGroupInfoResponse {
                    epoch: st.epoch(),
                    group_info: st.group_info().to_vec(),
                })
            })
            .await
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn send_commit(
        &self,
        req: Request<pb::SendCommitRequest>,
    ) -> Result<Response<pb::SendCommitResponse>, Status> {
        const RPC: &str = "SendCommit";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            let r = req.into_inner();
            self.cap("commit", &r.commit)?;
            self.cap("welcome", &r.welcome)?;
            self.cap("group_info", &r.group_info)?;
            let h = self.room(&r.room).await?;
            let inner = self.inner.clone();
            let svc = self.clone();
            blocking(move || {
                // KDS-ORD-01: the room lock serialises commits; the store's unique
                // (room, epoch) constraint backs it (KDS-ORD-02).
                let mut st = lock(&h.state);
                // Decide on the stored room: another replica may have moved it (KDS-REP-01).
                let joined = Self::catch_up(&inner, &h, &mut st)?;
                let sent = crate::room::SentCommit {
                    identity: &claims.identity,
                    commit: &r.commit,
                    welcome: &r.welcome,
                    group_info: &r.group_info,
                };
                match st.check_commit(
                    inner.store.as_ref(),
                    &inner.key,
                    &sent,
                    inner.cfg.max_authenticated_data_bytes,
                )? {
                    CommitOutcome::Duplicate { epoch } => {
                        inner.metrics.duplicate_commits.inc();
                        Ok(pb::SendCommitResponse {
                            epoch,
                            duplicate: true,
                        })
                    }
                    CommitOutcome::Accept(a) => {
                        let crate::room::Accepted {
                            next,
                            events,
                            consumed,
                        } = *a;
                        // Nothing changes in memory unless the write succeeded (KDS-DUR-01).
                        let written = next
                            .record()
                            .and_then(|rec| inner.store.append(&rec, &events, &consumed));
                        if let Err(e) = written {
                            Self::after_failed_write(&inner, &h, &mut st);
                            return Err(e);
                        }
                        let before: std::collections::BTreeSet<String> =
                            st.members().into_iter().map(|(_, id)| id).collect();
                        *st = next;
                        let epoch = st.epoch();
                        let after: std::collections::BTreeSet<String> =
                            st.members().into_iter().map(|(_, id)| id).collect();
                        inner
                            .metrics
                            .members
                            .inc_by(after.len() as i64 - before.len() as i64);
                        tracing::info!(
                            room = st.name(),
                            epoch,
                            committer = claims.identity,
                            members = after.len(),
                            "commit accepted"
                        );
                        Self::publish(&inner, &h, events);
                        drop(st);
                        // A new member without a stream gets the usual grace to connect.
                        for id in after.difference(&before).chain(&joined) {
                            svc.schedule_departure(&r.room, &h, id);
                        }
                        Ok(pb::SendCommitResponse {
                            epoch,
                            duplicate: false,
                        })
                    }
                }
            })
            .await
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        const RPC: &str = "Leave";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            let h = self.room(&req.get_ref().room).await?;
            let inner = self.inner.clone();
            blocking(move || Self::depart_now(&inner, &h, &claims.identity)).await?;
            Ok(pb::LeaveResponse {})
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn delete_room(
        &self,
        req: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomResponse>, Status> {
        const RPC: &str = "DeleteRoom";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            // KDS-GC-03: whoever may create a room may end it.
            if !claims.grants.create {
                return Err(KdsError::PermissionDenied(
                    "deleting a room needs the `create` grant".into(),
                ));
            }
            let name = req.into_inner().room;
            let inner = self.inner.clone();
            let n = name.clone();
            // Under the room lock nothing is appended while the rows go.
            let h = self.loaded(&name);
            let existed = blocking(move || {
                let _st = h.as_ref().map(|h| lock(&h.state));
                inner.store.delete_room(&n)
            })
            .await?;
            if let Some(h) = lock(&self.inner.rooms).remove(&name) {
                h.deleted.send_replace(true);
                self.inner.metrics.rooms.dec();
                let members = lock(&h.state).members().len() as i64;
                self.inner.metrics.members.dec_by(members);
            }
            if !existed {
                return Err(KdsError::NoSuchRoom(name));
            }
            self.inner.metrics.rooms_deleted.inc();
            tracing::info!(room = name, by = claims.identity, "room deleted");
            Ok(pb::DeleteRoomResponse {})
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    async fn get_placement(
        &self,
        req: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::GetPlacementResponse>, Status> {
        const RPC: &str = "GetPlacement";
        let run = async {
            self.authorize(&req, &req.get_ref().room)?;
            let sfu_url = self.placement(req.into_inner().room).await?;
            Ok(pb::GetPlacementResponse { sfu_url })
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        const RPC: &str = "Subscribe";
        let run = async {
            let claims = self.authorize(&req, &req.get_ref().room)?;
            let r = req.into_inner();
            let h = self.room(&r.room).await?;
            let inner = self.inner.clone();
            let (h2, identity) = (h.clone(), claims.identity.clone());
            // Under the room lock nothing is appended: the replay ends exactly where the live
            // subscription begins (KDS-FAN-02). Only the plan is made here; the replay itself
            // is read page by page as the client reads (KDS-LIM-04).
            let (rx, plan) = blocking(move || {
                let mut st = lock(&h2.state);
                // Replay up to what the store holds (KDS-REP-01); catching up broadcasts only
                // to streams opened before this one.
                Self::catch_up(&inner, &h2, &mut st)?;
                let rx = h2.events.subscribe();
                let start = st.replay_start(inner.store.as_ref(), &identity, r.from_epoch)?;
                let plan = Replay {
                    room: r.room,
                    welcome: start.welcome,
                    from: start.from,
                    up_to: start.up_to,
                    epoch: start.epoch,
                };
                Ok((rx, plan))
            })
            .await?;
            let guard = PresenceGuard::new(self, &plan.room, &h, &claims.identity)?;
            let (tx, out) = mpsc::channel(STREAM_QUEUE);
            let feed = Feed {
                _guard: guard,
                store: self.inner.store.clone(),
                page_bytes: self.inner.cfg.replay_page_bytes,
                deleted: h.deleted.subscribe(),
                room: plan.room.clone(),
                identity: claims.identity,
                tx,
            };
            tokio::spawn(feed.run(rx, plan));
            Ok(Box::pin(ReceiverStream::new(out)) as EventStream)
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }
}

fn visible(e: &Event, identity: &str) -> bool {
    e.kind != EventKind::Welcome || e.recipient.as_deref() == Some(identity)
}

/// What a new subscriber is owed before the live events (KDS-FAN-02/03).
struct Replay {
    room: String,
    /// The member's newest Welcome, first.
    welcome: Option<Event>,
    /// Then the log from this epoch on, up to `up_to`.
    from: Option<u64>,
    up_to: u64,
    /// The room's epoch when the stream opened (`Synced`).
    epoch: u64,
}

/// One subscriber's forwarder.
struct Feed {
    _guard: PresenceGuard,
    store: Arc<dyn Store>,
    page_bytes: usize,
    deleted: watch::Receiver<bool>,
    room: String,
    identity: String,
    tx: mpsc::Sender<Result<pb::RoomEvent, Status>>,
}

impl Feed {
    /// The replay, a `Synced` marker, then live events (KDS-FAN-01..03). The replay is read
    /// from the store a page at a time, and the next page only once the client took the last
    /// one: a stream that never reads holds one page and [`STREAM_QUEUE`] messages, whatever
    /// the log's size (KDS-LIM-04).
    async fn run(mut self, mut rx: broadcast::Receiver<Arc<Event>>, plan: Replay) {
        if let Some(w) = plan.welcome
            && !self.send(Ok(into_proto(w))).await
        {
            return;
        }
        if let Some(from) = plan.from {
            let (mut page, mut after) = (std::collections::VecDeque::new(), 0);
            loop {
                // Room in the queue first, then the read: while the client does not read,
                // this task holds no event (KDS-LIM-04).
                let Some(permit) = self.reserve().await else {
                    return;
                };
                if page.is_empty() {
                    let (store, room, page_bytes) =
                        (self.store.clone(), plan.room.clone(), self.page_bytes);
                    match blocking(move || {
                        store.log_page(&room, from, after, plan.up_to, page_bytes)
                    })
                    .await
                    {
                        Ok(p) => page.extend(p),
                        Err(e) => {
                            tracing::warn!(room = plan.room, error = %e, "replay failed");
                            permit.send(Err(e.into()));
                            return;
                        }
                    }
                    after = page.back().map_or(after, |e: &Event| e.seq);
                }
                let Some(e) = page.pop_front() else {
                    break;
                };
                permit.send(Ok(into_proto(e)));
            }
        }
        let synced = pb::RoomEvent {
            seq: plan.up_to,
            event: Some(pb::room_event::Event::Synced(pb::Synced {
                epoch: plan.epoch,
            })),
        };
        if !self.send(Ok(synced)).await {
            return;
        }
        loop {
            let next = tokio::select! {
                () = self.tx.closed() => return,
                _ = self.deleted.wait_for(|d| *d) => None,
                r = rx.recv() => Some(r),
            };
            match next {
                None => {
                    self.end_deleted();
                    return;
                }
                Some(Ok(e)) => {
                    if e.seq > plan.up_to
                        && visible(&e, &self.identity)
                        && !self.send(Ok(into_proto(Event::clone(&e)))).await
                    {
                        return;
                    }
                }
                Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                    self.send(Err(KdsError::Lagged.into())).await;
                    return;
                }
                Some(Err(broadcast::error::RecvError::Closed)) => return,
            }
        }
    }

    /// A place in the client's queue, once there is one; `None` once the client is gone or the
    /// room was deleted (then the stream ends with `NOT_FOUND`).
    async fn reserve(&mut self) -> Option<mpsc::OwnedPermit<Result<pb::RoomEvent, Status>>> {
        let reserved = tokio::select! {
            r = self.tx.clone().reserve_owned() => Some(r.ok()),
            _ = self.deleted.wait_for(|d| *d) => None,
        };
        reserved.unwrap_or_else(|| {
            self.end_deleted();
            None
        })
    }

    /// Queue one item, waiting while the client's queue is full; false once the client is
    /// gone or the room was deleted (then the stream ends with `NOT_FOUND`).
    async fn send(&mut self, item: Result<pb::RoomEvent, Status>) -> bool {
        let Some(permit) = self.reserve().await else {
            return false;
        };
        permit.send(item);
        true
    }

    /// End the stream with `NOT_FOUND`: the room was deleted (KDS-GC-03). A full queue drops
    /// the status; the stream ends all the same.
    fn end_deleted(&self) {
        let _ = self
            .tx
            .try_send(Err(KdsError::RoomDeleted(self.room.clone()).into()));
    }
}
