//! The gRPC service `veil.sfu.v1.Sfu`: one bidirectional `Signal` stream per participant
//! session, behind the same access tokens as the key service (SFU-AUTH-01..03). Browsers,
//! whose gRPC-Web cannot stream requests, run the same session as an `Open` stream plus one
//! `Send` call per further request (SFU-WEB-01, specs/browser.md §3).
//!
//! ```no_run
//! # async fn serve(sfu: veil_sfu::EdgeSfu, verifier: veil_auth::Verifier) -> Result<(), Box<dyn std::error::Error>> {
//! use veil_sfu::grpc::SfuService;
//! tonic::transport::Server::builder()
//!     .add_service(SfuService::new(sfu, verifier).into_server())
//!     .serve("127.0.0.1:7401".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::debug;
use veil_auth::{GrantKind, RateLimiter, RequestRate, Verifier};
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_server::{Sfu as SfuRpc, SfuServer};

use crate::edge::EdgeSfu;
use crate::error::SfuError;
use crate::routing::{MediaKind, SvcLayer};
use crate::session::{IceCandidate, LeaveReason, Permissions, Session, SignalEvent};

/// What the gRPC service asks of an SFU: the signalling calls of one participant.
/// [`EdgeSfu`] (every participant on one socket) serves it; the trait is the seam the service
/// and the tests drive it through. Every call but `join_with` names a participant that joined,
/// or fails with [`SfuError::NotJoined`]; a stopped SFU fails with [`SfuError::Closed`].
pub trait Backend: Clone + Send + Sync + 'static {
    /// Admit `identity` to `room` with its offer: the answer and the participant's events. The
    /// caller has checked the access token.
    ///
    /// # Errors
    /// [`SfuError::AlreadyJoined`], [`SfuError::Limit`], [`SfuError::Sdp`],
    /// [`SfuError::WebRtc`].
    fn join_with(
        &self,
        room: &str,
        identity: &str,
        offer: &str,
        permissions: Permissions,
    ) -> impl Future<Output = Result<Session, SfuError>> + Send;
    /// The room's packetization label (SFU-ROOM-03).
    fn settle_packetization(&self, room: &str, proposal: i32) -> impl Future<Output = i32> + Send;
    /// A new offer from the participant (to publish another track): the answer.
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] while the SFU's own offer waits for its answer (the SFU is
    /// the impolite peer), [`SfuError::Sdp`], [`SfuError::WebRtc`].
    fn offer(
        &self,
        room: &str,
        identity: &str,
        sdp: &str,
    ) -> impl Future<Output = Result<String, SfuError>> + Send;
    /// The participant's answer to the SFU's last [`SignalEvent::Offer`]; the subscriptions
    /// it settles start.
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] if no offer waits, [`SfuError::Sdp`], [`SfuError::WebRtc`].
    fn answer(
        &self,
        room: &str,
        identity: &str,
        sdp: &str,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// A trickled candidate.
    ///
    /// # Errors
    /// [`SfuError::Sdp`] for one webrtc-rs refuses.
    fn add_ice_candidate(
        &self,
        room: &str,
        identity: &str,
        c: IceCandidate,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// Receive `track` (a [`crate::TrackInfo::track`] name): an offer follows, and packets
    /// from the track's next key frame once it is answered.
    ///
    /// # Errors
    /// [`SfuError::PermissionDenied`] without the `subscribe` grant, [`SfuError::NoSuchTrack`],
    /// [`SfuError::Protocol`] for one's own track, [`SfuError::WebRtc`].
    fn subscribe(
        &self,
        room: &str,
        identity: &str,
        track: &str,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// Stop receiving `track`: an offer follows.
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`], [`SfuError::WebRtc`].
    fn unsubscribe(
        &self,
        room: &str,
        identity: &str,
        track: &str,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// Which simulcast layer of `track` to receive, by rid (None: the first); the switch
    /// comes at that layer's next key frame (SFU-KF-03).
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`].
    fn set_layer_preference(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        rid: Option<&str>,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// Cap the spatial and temporal layer of a scalable `track` (SFU-SVC-10): the decode
    /// target follows where the dependency descriptor allows (SFU-SVC-03);
    /// [`SvcLayer::ALL`] lifts the cap.
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`].
    fn set_svc_layer(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        cap: SvcLayer,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
    /// Leave the room.
    ///
    /// # Errors
    /// [`SfuError::NotJoined`].
    fn leave(
        &self,
        room: &str,
        identity: &str,
    ) -> impl Future<Output = Result<(), SfuError>> + Send;
}

/// Limits of the signalling service (specs/limits.md). Over any of them a request fails with
/// `RESOURCE_EXHAUSTED` (a `Join`: the stream ends with it; a request in a session:
/// `RequestFailed`), and the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalLimits {
    /// Requests per second per token holder (room and identity): each `Signal` or `Open` call
    /// and each request in a session counts one (LIM-RATE-01). By default 50 per second, bursts
    /// of 100.
    pub request_rate: RequestRate,
    /// Tracks one session may subscribe to at once (LIM-SUB-01); an unsubscribed or
    /// unpublished track frees its place. By default 128: every track of a full room (64
    /// participants, audio and video each).
    pub max_subscriptions: usize,
    /// Longest SDP (in `Join`, `Offer`, `Answer`) and ICE candidate line, in bytes
    /// (LIM-SDP-01). By default 64 KiB; a browser's offer with three simulcast layers is
    /// about 10 KiB.
    pub max_sdp_bytes: usize,
}

impl Default for SignalLimits {
    fn default() -> Self {
        Self {
            request_rate: RequestRate::default(),
            max_subscriptions: 128,
            max_sdp_bytes: 64 * 1024,
        }
    }
}

/// The gRPC face of an SFU ([`EdgeSfu`]).
#[derive(Clone)]
pub struct SfuService<B = EdgeSfu> {
    sfu: B,
    verifier: Arc<Verifier>,
    limits: SignalLimits,
    /// Requests per token holder (LIM-RATE-01).
    rate: Arc<Mutex<RateLimiter>>,
    /// The sessions of `Open` streams, by session name (SFU-WEB-01).
    open: Arc<Mutex<HashMap<String, OpenSession>>>,
}

/// The request side of an `Open` session, fed by `Send`.
struct OpenSession {
    identity: String,
    requests: mpsc::Sender<Result<pb::SignalRequest, Status>>,
}

/// Requests of an `Open` session that may wait unread; beyond it `Send` fails with
/// RESOURCE_EXHAUSTED (SFU-WEB-01).
const OPEN_QUEUE: usize = 64;

impl<B> core::fmt::Debug for SfuService<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SfuService").finish_non_exhaustive()
    }
}

impl<B: Backend> SfuService<B> {
    /// Serve `sfu`, admitting tokens that `verifier` accepts.
    #[must_use]
    pub fn new(sfu: B, verifier: Verifier) -> Self {
        let limits = SignalLimits::default();
        Self {
            sfu,
            verifier: Arc::new(verifier),
            rate: Arc::new(Mutex::new(RateLimiter::new(limits.request_rate))),
            limits,
            open: Arc::default(),
        }
    }

    /// The same service under `limits` instead of the defaults.
    #[must_use]
    pub fn with_limits(self, limits: SignalLimits) -> Self {
        Self {
            rate: Arc::new(Mutex::new(RateLimiter::new(limits.request_rate))),
            limits,
            ..self
        }
    }

    /// The token's claims (SFU-AUTH-01): it must verify before anything else happens.
    fn claims<T>(&self, req: &Request<T>) -> Result<veil_auth::VerifiedClaims, Status> {
        let token = token(req).map_err(|e| status(&e))?;
        self.verifier
            .verify(&token, now_secs())
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The claims of a call that opens a session, counted against its holder's rate
    /// (LIM-RATE-01).
    fn admit<T>(&self, req: &Request<T>) -> Result<veil_auth::VerifiedClaims, Status> {
        let claims = self.claims(req)?;
        let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        rate.evict_full(now);
        rate.check(&rate_key(&claims), now)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(claims)
    }

    fn guard(&self, claims: &veil_auth::Claims) -> Guard {
        Guard {
            limits: self.limits,
            rate: self.rate.clone(),
            key: rate_key(claims),
            subscribed: HashSet::new(),
        }
    }

    /// The tonic service, to add to a `tonic::transport::Server` router.
    #[must_use]
    pub fn into_server(self) -> SfuServer<Self> {
        SfuServer::new(self)
    }
}

/// The rate limiter's key of a token holder: its room and identity (names follow AUTH-10, so no
/// newline is in either).
fn rate_key(claims: &veil_auth::Claims) -> String {
    format!("{}\n{}", claims.room, claims.identity)
}

/// Per-session limits, checked before a request reaches the SFU (specs/limits.md).
struct Guard {
    limits: SignalLimits,
    rate: Arc<Mutex<RateLimiter>>,
    key: String,
    /// Tracks this session subscribes to (LIM-SUB-01).
    subscribed: HashSet<String>,
}

impl Guard {
    /// Whether `m` may go to the SFU: the status that refuses it, if not.
    fn check(&self, m: &pb::SignalRequest) -> Result<(), Status> {
        use pb::signal_request::Request as R;
        self.rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(&self.key, Instant::now())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let sdp = match &m.request {
            Some(R::Offer(d) | R::Answer(d)) => d.sdp.len(),
            Some(R::Join(j)) => j.offer_sdp.len(),
            Some(R::Candidate(c)) => c.candidate.len(),
            _ => 0,
        };
        sdp_cap(sdp, self.limits.max_sdp_bytes)?;
        if let Some(R::Subscribe(s)) = &m.request {
            let cap = self.limits.max_subscriptions;
            if !self.subscribed.contains(&s.track) && self.subscribed.len() >= cap {
                return Err(Status::resource_exhausted(format!(
                    "this session already subscribes to {cap} tracks, the limit: unsubscribe from one first"
                )));
            }
        }
        Ok(())
    }

    /// The subscription `m` adds (true) or ends (false), if any.
    fn change(m: &pb::SignalRequest) -> Option<(bool, String)> {
        use pb::signal_request::Request as R;
        match &m.request {
            Some(R::Subscribe(s)) => Some((true, s.track.clone())),
            Some(R::Unsubscribe(s)) => Some((false, s.track.clone())),
            _ => None,
        }
    }

    /// Note a subscription change the SFU carried out.
    fn done(&mut self, (add, track): (bool, String)) {
        if add {
            self.subscribed.insert(track);
        } else {
            self.subscribed.remove(&track);
        }
    }
}

/// LIM-SDP-01: an SDP or candidate line over the cap.
fn sdp_cap(len: usize, cap: usize) -> Result<(), Status> {
    if len > cap {
        return Err(Status::resource_exhausted(format!(
            "the SDP is {len} bytes; the limit is {cap} bytes: offer fewer media sections"
        )));
    }
    Ok(())
}

/// The gRPC status of an error (specs/sfu.md, "Errors").
#[must_use]
pub fn code(e: &SfuError) -> Code {
    match e {
        SfuError::Metadata(_)
        | SfuError::UnknownSsrc(_)
        | SfuError::SpoofedSsrc { .. }
        | SfuError::TooManyLayers(_)
        | SfuError::UnknownLayer(_)
        | SfuError::Sdp { .. }
        | SfuError::TcpFrame { .. }
        | SfuError::Protocol(_) => Code::InvalidArgument,
        SfuError::Unauthenticated(_) => Code::Unauthenticated,
        SfuError::PermissionDenied(_) => Code::PermissionDenied,
        SfuError::UnknownParticipant(_)
        | SfuError::UnknownTrack(_)
        | SfuError::NoSuchTrack(_)
        | SfuError::NotJoined { .. } => Code::NotFound,
        SfuError::NotSubscribed(_) | SfuError::Negotiation(_) => Code::FailedPrecondition,
        SfuError::AlreadyJoined { .. } => Code::AlreadyExists,
        SfuError::Limit(_) | SfuError::RateLimited(_) => Code::ResourceExhausted,
        SfuError::Closed => Code::Unavailable,
        SfuError::Config(_)
        | SfuError::BadAddress { .. }
        | SfuError::Io { .. }
        | SfuError::WebRtc { .. }
        | SfuError::WebRtcState(_) => Code::Internal,
    }
}

/// The status of an error, its message clipped as the key service's are: track ids and other
/// client-chosen strings cannot make it unreadable to a client with default gRPC limits
/// (specs/sfu.md "Errors", SFU-ERR-01; the key service's KDS-LIM-03).
fn status(e: &SfuError) -> Status {
    Status::new(code(e), veil_proto::status::clip(&e.to_string()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of the call (SFU-AUTH-01).
fn token<T>(req: &Request<T>) -> Result<String, SfuError> {
    let header = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| {
            SfuError::Unauthenticated(
                "no access token: send `authorization: Bearer <token>`".into(),
            )
        })?
        .to_str()
        .map_err(|_| SfuError::Unauthenticated("authorization is not ASCII".into()))?;
    header
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .ok_or_else(|| SfuError::Unauthenticated("authorization must be `Bearer <token>`".into()))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SignalEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> SfuRpc for SfuService<B> {
    type SignalStream = EventStream;

    async fn signal(
        &self,
        req: Request<Streaming<pb::SignalRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let claims = self.admit(&req)?;
        let (tx, rx) = mpsc::channel(256);
        let guard = self.guard(&claims);
        tokio::spawn(session(
            self.sfu.clone(),
            claims,
            guard,
            req.into_inner(),
            tx,
            None,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type OpenStream = EventStream;

    /// SFU-WEB-01: the session of a client that cannot stream requests. Its further requests
    /// come through `send`, under a name of 128 random bits that only this identity may use.
    async fn open(&self, req: Request<pb::SignalRequest>) -> Result<Response<EventStream>, Status> {
        let claims = self.admit(&req)?;
        let guard = self.guard(&claims);
        let name = {
            use rand::{RngCore as _, SeedableRng as _};
            let mut rng = rand::rngs::StdRng::from_os_rng();
            format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
        };
        let (requests, queued) = mpsc::channel(OPEN_QUEUE);
        let first = tokio_stream::once(Ok(req.into_inner()));
        let inbound = first.chain(ReceiverStream::new(queued));
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.clone(),
                OpenSession {
                    identity: claims.identity.clone(),
                    requests,
                },
            );
        let (tx, rx) = mpsc::channel(256);
        let (sfu, open) = (self.sfu.clone(), self.open.clone());
        tokio::spawn(async move {
            session(sfu, claims, guard, inbound, tx, Some(name.clone())).await;
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let claims = self.claims(&req)?;
        let pb::SendRequest { session, request } = req.into_inner();
        let request = request.ok_or_else(|| Status::invalid_argument("`request` is missing"))?;
        // Another identity's session is as unknown as a made-up name: no oracle.
        let unknown = || {
            Status::not_found(format!(
                "no open signalling session {session:?} for this token"
            ))
        };
        let requests = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&session)
            .filter(|s| s.identity == claims.identity)
            .map(|s| s.requests.clone())
            .ok_or_else(unknown)?;
        match requests.try_send(Ok(request)) {
            Ok(()) => Ok(Response::new(pb::SendResponse {})),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Status::resource_exhausted(format!(
                "the session's {OPEN_QUEUE} queued requests are not read yet: wait for their replies"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(unknown()),
        }
    }
}

type Tx = mpsc::Sender<Result<pb::SignalEvent, Status>>;

fn ev(event: pb::signal_event::Event) -> Result<pb::SignalEvent, Status> {
    Ok(pb::SignalEvent { event: Some(event) })
}

/// One participant session: `Join` first, then requests and events until either side ends it.
/// `inbound` is a `Signal` stream's requests, or an `Open` call's `Join` followed by what
/// `Send` delivers; `name` is the latter's session name, told in `Joined`.
async fn session<B: Backend>(
    sfu: B,
    claims: veil_auth::VerifiedClaims,
    mut guard: Guard,
    mut inbound: impl Stream<Item = Result<pb::SignalRequest, Status>> + Unpin + Send,
    tx: Tx,
    name: Option<String>,
) {
    use pb::signal_request::Request as R;
    let first = match inbound.next().await {
        Some(Ok(m)) => m,
        // PROTO-DEC-01: a request that does not decode ends the stream with the decoder's
        // INVALID_ARGUMENT, not with OK.
        Some(Err(s)) => {
            let _ = tx.send(Err(s)).await;
            return;
        }
        None => return,
    };
    let Some(R::Join(join)) = first.request else {
        let _ = tx
            .send(Err(Status::invalid_argument(
                "the first request must be `join`",
            )))
            .await;
        return;
    };
    // SFU-AUTH-02: the token's room, and at least one media grant; the identity is the
    // token's, never the request's.
    let permissions = Permissions {
        publish: claims.require(&join.room, GrantKind::Publish).is_ok(),
        subscribe: claims.require(&join.room, GrantKind::Subscribe).is_ok(),
    };
    if !permissions.publish && !permissions.subscribe {
        let why = claims
            .require(&join.room, GrantKind::Subscribe)
            .err()
            .map_or_else(String::new, |e| e.to_string());
        let _ = tx.send(Err(Status::permission_denied(why))).await;
        return;
    }
    // LIM-SDP-01: the join's offer too (its call was counted by `admit`).
    if let Err(s) = sdp_cap(join.offer_sdp.len(), guard.limits.max_sdp_bytes) {
        let _ = tx.send(Err(s)).await;
        return;
    }
    let (room, identity) = (join.room, claims.identity.clone());
    let mut s = match sfu
        .join_with(&room, &identity, &join.offer_sdp, permissions)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(status(&e))).await;
            return;
        }
    };
    let joined = pb::Joined {
        answer_sdp: std::mem::take(&mut s.answer),
        identity: identity.clone(),
        packetization: sfu.settle_packetization(&room, join.packetization).await,
        session: name.unwrap_or_default(),
    };
    if tx
        .send(ev(pb::signal_event::Event::Joined(joined)))
        .await
        .is_err()
    {
        let _ = sfu.leave(&room, &identity).await;
        return;
    }
    loop {
        tokio::select! {
            // The client stopped reading (an `Open` stream has no request side that ends).
            () = tx.closed() => break,
            e = s.events.recv() => match e {
                Some(SignalEvent::Closed { .. }) | None => {
                    let reason = match e { Some(SignalEvent::Closed { reason }) => reason, _ => LeaveReason::Closed };
                    if reason != LeaveReason::Left {
                        let _ = tx.send(Err(Status::aborted(format!("removed: {}", reason.label())))).await;
                    }
                    return;
                }
                Some(e) => {
                    if let SignalEvent::TrackUnpublished { track } = &e {
                        guard.subscribed.remove(track);
                    }
                    if tx.send(Ok(to_proto(e))).await.is_err() {
                        break;
                    }
                }
            },
            m = inbound.next() => match m {
                Some(Ok(m)) => {
                    let id = m.id;
                    if let Err(s) = guard.check(&m) {
                        let failed = pb::RequestFailed { id, code: s.code() as i32, message: s.message().to_owned() };
                        if tx.send(ev(pb::signal_event::Event::RequestFailed(failed))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let change = Guard::change(&m);
                    let result = handle(&sfu, &room, &identity, m).await;
                    if let (Ok(_), Some(c)) = (&result, change) {
                        guard.done(c);
                    }
                    match result {
                        Ok(Some(reply)) => {
                            if tx.send(ev(reply)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let failed = pb::RequestFailed { id, code: code(&e) as i32, message: e.to_string() };
                            if tx.send(ev(pb::signal_event::Event::RequestFailed(failed))).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // SFU-AUTH-03: the session ends with its stream.
                None => break,
                // PROTO-DEC-01: an undecodable request ends it with INVALID_ARGUMENT; a broken
                // transport, with its own status (nobody reads it).
                Some(Err(s)) => {
                    let _ = tx.send(Err(s)).await;
                    break;
                }
            },
        }
    }
    debug!(room, identity, "signalling stream closed");
    let _ = sfu.leave(&room, &identity).await;
}

async fn handle<B: Backend>(
    sfu: &B,
    room: &str,
    identity: &str,
    m: pb::SignalRequest,
) -> Result<Option<pb::signal_event::Event>, SfuError> {
    use pb::signal_event::Event as E;
    use pb::signal_request::Request as R;
    match m.request {
        None => Err(SfuError::Protocol("empty request")),
        Some(R::Join(_)) => Err(SfuError::Protocol("already joined")),
        Some(R::Offer(d)) => {
            let sdp = sfu.offer(room, identity, &d.sdp).await?;
            Ok(Some(E::Answer(pb::SessionDescription { sdp })))
        }
        Some(R::Answer(d)) => sfu.answer(room, identity, &d.sdp).await.map(|()| None),
        Some(R::Candidate(c)) => {
            let c = IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index.and_then(|i| u16::try_from(i).ok()),
            };
            sfu.add_ice_candidate(room, identity, c)
                .await
                .map(|()| None)
        }
        Some(R::Subscribe(s)) => sfu.subscribe(room, identity, &s.track).await.map(|()| None),
        Some(R::Unsubscribe(s)) => sfu
            .unsubscribe(room, identity, &s.track)
            .await
            .map(|()| None),
        Some(R::SetLayer(l)) => {
            let rid = (!l.rid.is_empty()).then_some(l.rid.as_str());
            sfu.set_layer_preference(room, identity, &l.track, rid)
                .await
                .map(|()| None)
        }
        Some(R::SetSvcLayer(l)) => sfu
            .set_svc_layer(room, identity, &l.track, svc_cap(&l))
            .await
            .map(|()| None),
        Some(R::Leave(_)) => sfu.leave(room, identity).await.map(|()| None),
    }
}

/// The cap a `SetSvcLayer` asks for (SFU-SVC-10): an unset dimension, or one beyond any
/// stream's (above 254), is no cap.
fn svc_cap(l: &pb::SetSvcLayer) -> SvcLayer {
    let dim = |v: Option<u32>| v.and_then(|v| u8::try_from(v).ok()).unwrap_or(u8::MAX);
    SvcLayer::new(dim(l.max_spatial), dim(l.max_temporal))
}

fn reason(r: LeaveReason) -> pb::LeaveReason {
    match r {
        LeaveReason::Left => pb::LeaveReason::Left,
        LeaveReason::Timeout => pb::LeaveReason::Timeout,
        LeaveReason::NeverConnected => pb::LeaveReason::NeverConnected,
        LeaveReason::Closed => pb::LeaveReason::Closed,
        LeaveReason::SlowSignalling => pb::LeaveReason::SlowSignalling,
    }
}

fn to_proto(e: SignalEvent) -> pb::SignalEvent {
    use pb::signal_event::Event as E;
    let event = match e {
        SignalEvent::Offer { sdp } => E::Offer(pb::SessionDescription { sdp }),
        SignalEvent::TrackPublished(t) => E::TrackPublished(pb::TrackPublished {
            track: t.track,
            publisher: t.publisher,
            kind: match t.kind {
                MediaKind::Audio => pb::MediaKind::Audio,
                MediaKind::Video => pb::MediaKind::Video,
            } as i32,
            publisher_track_id: t.publisher_track_id,
            rids: t.rids,
        }),
        SignalEvent::TrackUnpublished { track } => {
            E::TrackUnpublished(pb::TrackUnpublished { track })
        }
        SignalEvent::Subscribed { track, ssrc } => E::Subscribed(pb::Subscribed { track, ssrc }),
        SignalEvent::ParticipantJoined { identity } => {
            E::ParticipantJoined(pb::ParticipantJoined { identity })
        }
        SignalEvent::ParticipantLeft {
            identity,
            reason: r,
        } => E::ParticipantLeft(pb::ParticipantLeft {
            identity,
            reason: reason(r) as i32,
        }),
        SignalEvent::ActiveSpeaker { identity } => E::ActiveSpeaker(pb::ActiveSpeaker { identity }),
        SignalEvent::Closed { reason: r } => E::ParticipantLeft(pb::ParticipantLeft {
            identity: String::new(),
            reason: reason(r) as i32,
        }),
    };
    pb::SignalEvent { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_clipped_on_a_char_boundary() {
        let s = status(&SfuError::NoSuchTrack("é".repeat(10_000)));
        assert_eq!(s.code(), Code::NotFound);
        assert!(
            s.message().len() <= veil_proto::status::MAX_MESSAGE_BYTES,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("bytes clipped)"), "{}", s.message());
        let short = status(&SfuError::NoSuchTrack("cam".into()));
        assert!(short.message().contains("\"cam\""), "{}", short.message());
    }
}
