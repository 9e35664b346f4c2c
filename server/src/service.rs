//! The gRPC shell of the key service: authentication, size caps, per-room locking, fan-out over
//! server streams, presence and departure timers. Decisions live in [`crate::room`]; state in
//! [`crate::store`]. Blocking work (openmls validation, SQLite) runs on tokio's blocking pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
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
    /// Events buffered per subscriber before it is cut off as lagging.
    pub stream_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_key_packages_per_request: 32,
            key_package_cap: 64,
            departure_grace: Duration::from_secs(10),
            stream_buffer: 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Presence {
    streams: u32,
    /// Bumped on every connect, so a departure timer started earlier can tell it is stale.
    generation: u64,
}

struct RoomHandle {
    state: Mutex<RoomState>,
    events: broadcast::Sender<Arc<Event>>,
    presence: Mutex<HashMap<String, Presence>>,
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
        .map_err(|e| KdsError::Internal(format!("task failed: {e}")))?
}

fn to_proto(e: &Event) -> pb::RoomEvent {
    use pb::room_event::Event as E;
    let event = match e.kind {
        EventKind::Commit => E::Commit(pb::Commit {
            epoch: e.epoch,
            message: e.message.clone(),
            committer: e.actor.clone(),
        }),
        EventKind::Proposal => E::Proposal(pb::Proposal {
            epoch: e.epoch,
            message: e.message.clone(),
            removes: e.actor.clone(),
        }),
        EventKind::Welcome => E::Welcome(pb::Welcome {
            epoch: e.epoch,
            message: e.message.clone(),
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
        let mut rooms = HashMap::new();
        for rec in store.rooms()? {
            let state = RoomState::restore(&rec, &key)?;
            metrics.members.inc_by(state.members().len() as i64);
            rooms.insert(rec.room.clone(), Arc::new(Self::handle(state, &cfg)));
        }
        metrics.rooms.set(rooms.len() as i64);
        let svc = Self {
            inner: Arc::new(Inner {
                store,
                key,
                verifier,
                cfg,
                rooms: Mutex::new(rooms),
                metrics,
            }),
        };
        Ok(svc)
    }

    /// After a restart: every member of every room must reconnect within the departure grace.
    /// Call from inside the runtime.
    pub fn start_departure_timers(&self) {
        let rooms: Vec<(String, Arc<RoomHandle>)> = lock(&self.inner.rooms)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, h) in rooms {
            let members = lock(&h.state).members();
            for (_, id) in members {
                self.schedule_departure(&name, &h, &id);
            }
        }
    }

    fn handle(state: RoomState, cfg: &Config) -> RoomHandle {
        RoomHandle {
            state: Mutex::new(state),
            events: broadcast::channel(cfg.stream_buffer.max(16)).0,
            presence: Mutex::new(HashMap::new()),
        }
    }

    /// A participant left the media session for good (e.g. the SFU timed it out): propose its
    /// removal now, as for `Leave` (KDS-REM-01). Unknown rooms and non-members are ignored.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn depart(&self, room: &str, identity: &str) -> Result<(), KdsError> {
        let Ok(h) = self.room(room) else {
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
            .map_err(|e| KdsError::Unauthenticated(e.to_string()))?
            .into_claims();
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

    fn room(&self, room: &str) -> Result<Arc<RoomHandle>, KdsError> {
        lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| KdsError::NoSuchRoom(room.to_owned()))
    }

    fn fail(&self, rpc: &'static str, e: KdsError) -> Status {
        reject(&self.inner.metrics, rpc, e.reason());
        match e.code() {
            tonic::Code::Internal => tracing::error!(rpc, error = %e, "request failed"),
            _ => tracing::debug!(rpc, error = %e, "request refused"),
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
            if let Ok(Some(rec)) = inner.store.room(st.name())
                && let Ok(fresh) = RoomState::restore(&rec, &inner.key)
            {
                *st = fresh;
            }
            return Err(e);
        }
        Self::publish(inner, h, events);
        Ok(())
    }

    /// Count and broadcast events that are on disk.
    fn publish(inner: &Inner, h: &RoomHandle, events: Vec<Event>) {
        for e in events {
            match e.kind {
                EventKind::Proposal => inner.metrics.proposals.inc(),
                EventKind::Welcome => inner.metrics.welcomes.inc(),
                EventKind::Commit => inner.metrics.commits.inc(),
            };
            // No receiver is fine: nobody is subscribed.
            let _ = h.events.send(Arc::new(e));
        }
    }

    /// Propose `identity`'s removal now (it left, or its grace ran out).
    fn depart_now(inner: &Inner, h: &RoomHandle, identity: &str) -> Result<(), KdsError> {
        let mut st = lock(&h.state);
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
            match p.get(identity) {
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
            tokio::time::sleep(grace).await;
            let still_gone = lock(&h.presence)
                .get(&identity)
                .is_none_or(|p| p.streams == 0 && p.generation == generation);
            if !still_gone {
                return;
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
    fn new(svc: &KeyService, room: &str, handle: &Arc<RoomHandle>, identity: &str) -> Self {
        {
            let mut p = lock(&handle.presence);
            let e = p.entry(identity.to_owned()).or_default();
            e.streams += 1;
            e.generation += 1;
        }
        svc.inner.metrics.streams.inc();
        Self {
            svc: svc.clone(),
            room: room.to_owned(),
            handle: handle.clone(),
            identity: identity.to_owned(),
        }
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.svc.inner.metrics.streams.dec();
        let gone = {
            let mut p = lock(&self.handle.presence);
            let e = p.entry(self.identity.clone()).or_default();
            e.streams = e.streams.saturating_sub(1);
            e.streams == 0
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
            let h = self.room(&r.room)?;
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
            if lock(&self.inner.rooms).contains_key(&r.room) {
                return Err(KdsError::RoomExists(r.room));
            }
            let inner = self.inner.clone();
            let name = r.room.clone();
            let state = blocking(move || {
                let state =
                    RoomState::create(&r.room, &r.group_info, &claims.identity, &inner.key)?;
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
            rooms.insert(name.clone(), Arc::new(Self::handle(state, &self.inner.cfg)));
            self.inner.metrics.rooms.inc();
            self.inner.metrics.members.inc_by(members);
            tracing::info!(room = name, "room created");
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
            let h = self.room(&req.get_ref().room)?;
            let st = lock(&h.state);
            Ok(pb::GetGroupInfoResponse {
                epoch: st.epoch(),
                group_info: st.group_info().to_vec(),
            })
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
            let h = self.room(&r.room)?;
            let inner = self.inner.clone();
            let svc = self.clone();
            blocking(move || {
                // KDS-ORD-01: the room lock serialises commits; the store's unique
                // (room, epoch) constraint backs it (KDS-ORD-02).
                let mut st = lock(&h.state);
                match st.check_commit(
                    inner.store.as_ref(),
                    &inner.key,
                    &claims.identity,
                    &r.commit,
                    &r.welcome,
                    &r.group_info,
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
                        inner.store.append(&next.record()?, &events, &consumed)?;
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
                        for id in after.difference(&before) {
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
            let h = self.room(&req.get_ref().room)?;
            let inner = self.inner.clone();
            blocking(move || Self::depart_now(&inner, &h, &claims.identity)).await?;
            Ok(pb::LeaveResponse {})
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
            let h = self.room(&r.room)?;
            let room = r.room.clone();
            let inner = self.inner.clone();
            let (h2, identity) = (h.clone(), claims.identity.clone());
            // Under the room lock nothing is appended: the replay ends exactly where the live
            // subscription begins (KDS-FAN-02).
            let (rx, replay, up_to, epoch) = blocking(move || {
                let st = lock(&h2.state);
                let rx = h2.events.subscribe();
                let up_to = st.last_seq();
                let replay = match r.from_epoch {
                    Some(e) if e > st.epoch() => {
                        return Err(KdsError::Invalid(format!(
                            "from_epoch {e} is ahead of the room's epoch {}",
                            st.epoch()
                        )));
                    }
                    Some(e) => inner.store.log_from_epoch(&r.room, e, up_to)?,
                    None if st.is_member(&identity) => {
                        match inner.store.latest_welcome(&r.room, &identity, up_to)? {
                            Some(w) => {
                                let from = w.epoch;
                                let mut v = vec![w];
                                v.extend(inner.store.log_from_epoch(&r.room, from, up_to)?);
                                v
                            }
                            None => Vec::new(),
                        }
                    }
                    None => Vec::new(),
                };
                Ok((rx, replay, up_to, st.epoch()))
            })
            .await?;
            let guard = PresenceGuard::new(self, &room, &h, &claims.identity);
            let (tx, out) = mpsc::channel(self.inner.cfg.stream_buffer.max(16));
            let identity = claims.identity;
            tokio::spawn(forward(guard, rx, tx, replay, up_to, epoch, identity));
            Ok(Box::pin(ReceiverStream::new(out)) as EventStream)
        };
        run.await.map(Response::new).map_err(|e| self.fail(RPC, e))
    }
}

fn visible(e: &Event, identity: &str) -> bool {
    e.kind != EventKind::Welcome || e.recipient.as_deref() == Some(identity)
}

/// Feed one subscriber: the replay, a `Synced` marker, then live events (KDS-FAN-01..03).
async fn forward(
    _guard: PresenceGuard,
    mut rx: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<pb::RoomEvent, Status>>,
    replay: Vec<Event>,
    up_to: u64,
    epoch: u64,
    identity: String,
) {
    for e in replay.iter().filter(|e| visible(e, &identity)) {
        if tx.send(Ok(to_proto(e))).await.is_err() {
            return;
        }
    }
    let synced = pb::RoomEvent {
        seq: up_to,
        event: Some(pb::room_event::Event::Synced(pb::Synced { epoch })),
    };
    if tx.send(Ok(synced)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = tx.closed() => return,
            r = rx.recv() => match r {
                Ok(e) => {
                    if e.seq > up_to && visible(&e, &identity)
                        && tx.send(Ok(to_proto(&e))).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Err(KdsError::Lagged.into())).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
