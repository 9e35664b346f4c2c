//! One node-to-node leg: the `veil.sfu.v1.Cascade/Leg` stream, either end (SFU-CAS-02..06).
//!
//! Both ends run the same pump once the stream is up: every `ROOMS_PERIOD` (and at once) it
//! sends the rooms this node hosts, and attaches the leg to the rooms both nodes host (or
//! detaches it from those no longer shared); what the rooms relay is sent in batches of up to
//! `BATCH` messages; what arrives is handed to the room's worker, one batch per room. The leg
//! ends with its stream: every remote publisher that came over it leaves (SFU-CAS-05).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use veil_auth::Verifier;
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::cascade_client::CascadeClient;
use veil_proto::sfu::v1::cascade_server::{Cascade as CascadeRpc, CascadeServer};
use veil_proto::sfu::v1::leg_message::Message as M;

use super::{Legs, NODE_ROOM, now_secs};
use crate::edge::{LegId, RelayIn, RelayOut, RelayTrack};
use crate::routing::MediaKind;

/// Messages per frame at most.
const BATCH: usize = 256;
/// What the rooms relay that may wait for the leg's writer: beyond it messages are lost (and
/// the publishers' next key frames repair what a subscriber missed).
const QUEUE: usize = 8192;
/// How often each end tells the other its rooms and re-checks which rooms are shared.
const ROOMS_PERIOD: Duration = Duration::from_millis(500);
/// Frames each direction of the stream may buffer.
const FRAMES: usize = 64;

/// The `veil.sfu.v1.Cascade` service: other nodes dial it.
#[derive(Clone)]
pub struct CascadeService {
    legs: Arc<Legs>,
    verifier: Arc<Verifier>,
}

impl core::fmt::Debug for CascadeService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CascadeService").finish_non_exhaustive()
    }
}

impl CascadeService {
    pub(super) fn new(legs: Arc<Legs>, verifier: Verifier) -> Self {
        Self {
            legs,
            verifier: Arc::new(verifier),
        }
    }

    pub(super) fn into_server(self) -> CascadeServer<Self> {
        CascadeServer::new(self)
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::LegFrame, Status>> + Send>>;

#[tonic::async_trait]
impl CascadeRpc for CascadeService {
    type LegStream = FrameStream;

    /// SFU-CAS-06: only a node token (room [`NODE_ROOM`], signed by a key of this deployment)
    /// opens a leg.
    async fn leg(
        &self,
        req: Request<Streaming<pb::LegFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("no node token: send `authorization: Bearer <token>`")
            })?;
        let claims = self
            .verifier
            .verify(token, now_secs())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if claims.claims().room != NODE_ROOM {
            return Err(Status::permission_denied(format!(
                "a node-to-node leg needs a node token (room `{NODE_ROOM}`), not a participant's"
            )));
        }
        let peer = claims.claims().identity.clone();
        let Some(id) = self.legs.begin(&peer) else {
            return Err(Status::already_exists("a leg from this node is up already"));
        };
        info!(peer, id, "node-to-node leg accepted");
        let (tx, rx) = mpsc::channel(FRAMES);
        tokio::spawn(pump(self.legs.clone(), id, peer, req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// How to reach the node at `peer` (SFU-CAS-08): TLS verified against the configured CA or
/// the system's roots for `https://`; `http://` only to loopback unless the operator opted out,
/// since the leg's first message carries this node's token.
pub(super) fn endpoint(
    peer: &str,
    config: &super::CascadeConfig,
) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let e = Endpoint::from_shared(peer.to_owned())
        .map_err(|e| format!("a node URL that cannot be dialed: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    let uri = e.uri().clone();
    match uri.scheme_str() {
        Some("https") => {
            let tls = ClientTlsConfig::new();
            let tls = match &config.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            e.tls_config(tls)
                .map_err(|e| format!("the TLS configuration for node legs: {e}"))
        }
        Some("http") => {
            if veil_auth::is_loopback_host(uri.host().unwrap_or_default())
                || config.insecure_plaintext
            {
                Ok(e)
            } else {
                Err(format!(
                    "{peer} is plaintext and not on loopback: the node token would cross the \
                     network in the clear; give the nodes TLS (--tls-cert) or pass \
                     --insecure-plaintext"
                ))
            }
        }
        _ => Err(format!("{peer} is neither http:// nor https://")),
    }
}

/// Dial the node at `peer` through `endpoint` with `token` and run the leg until it ends.
pub(super) async fn dial(
    legs: Arc<Legs>,
    peer: String,
    endpoint: tonic::transport::Endpoint,
    token: String,
) {
    let Some(id) = legs.begin(&peer) else {
        return;
    };
    let channel = endpoint.connect().await;
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            warn!(peer, error = %e, "could not reach the node");
            legs.end(&peer, id);
            return;
        }
    };
    let (tx, rx) = mpsc::channel(FRAMES);
    let mut req = Request::new(ReceiverStream::new(rx));
    match format!("Bearer {token}").parse() {
        Ok(v) => {
            req.metadata_mut().insert("authorization", v);
        }
        Err(_) => {
            legs.end(&peer, id);
            return;
        }
    }
    match CascadeClient::new(channel).leg(req).await {
        Ok(inbound) => {
            info!(peer, id, "node-to-node leg dialed");
            pump(legs, id, peer, inbound.into_inner(), tx).await;
        }
        Err(e) => {
            warn!(peer, error = %e, "the node refused the leg");
            legs.end(&peer, id);
        }
    }
}

/// Run leg `id` to `peer`: `inbound` from it, frames to it into `out`.
async fn pump(
    legs: Arc<Legs>,
    id: LegId,
    peer: String,
    inbound: Streaming<pb::LegFrame>,
    out: mpsc::Sender<pb::LegFrame>,
) {
    let (relay_tx, relay_rx) = mpsc::channel(QUEUE);
    legs.sfu.open_leg(id, relay_tx).await;
    let (peer_rooms_tx, peer_rooms) = watch::channel(Vec::<String>::new());
    let reader = read(legs.clone(), id, inbound, peer_rooms_tx);
    let writer = write(legs.clone(), id, relay_rx, peer_rooms, out);
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    legs.sfu.close_leg(id).await;
    legs.end(&peer, id);
    info!(peer, id, "node-to-node leg ended");
}

/// The writer: rooms, attachments and relayed messages, until the stream is gone.
async fn write(
    legs: Arc<Legs>,
    id: LegId,
    mut relay: mpsc::Receiver<RelayOut>,
    mut peer_rooms: watch::Receiver<Vec<String>>,
    out: mpsc::Sender<pb::LegFrame>,
) {
    let mut tick = tokio::time::interval(ROOMS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut attached: HashSet<String> = HashSet::new();
    loop {
        let frame = tokio::select! {
            first = relay.recv() => {
                let Some(first) = first else { return };
                let mut messages = vec![to_pb(first)];
                while messages.len() < BATCH {
                    match relay.try_recv() {
                        Ok(m) => messages.push(to_pb(m)),
                        Err(_) => break,
                    }
                }
                pb::LegFrame { messages }
            }
            _ = tick.tick() => {
                let rooms = peer_rooms.borrow().clone();
                reconcile(&legs, id, &rooms, &mut attached).await;
                rooms_frame(&legs)
            }
            r = peer_rooms.changed() => {
                if r.is_err() {
                    return;
                }
                let rooms = peer_rooms.borrow_and_update().clone();
                reconcile(&legs, id, &rooms, &mut attached).await;
                continue;
            }
        };
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

fn rooms_frame(legs: &Legs) -> pb::LegFrame {
    pb::LegFrame {
        messages: vec![pb::LegMessage {
            message: Some(M::Rooms(pb::LegRooms {
                rooms: legs.sfu.hosted_rooms(),
            })),
        }],
    }
}

/// Attach the leg to every room both nodes host; detach it from the others (SFU-CAS-02).
async fn reconcile(legs: &Legs, id: LegId, peer_rooms: &[String], attached: &mut HashSet<String>) {
    let here: HashSet<String> = legs.sfu.hosted_rooms().into_iter().collect();
    let shared: HashSet<String> = peer_rooms
        .iter()
        .filter(|r| here.contains(*r))
        .cloned()
        .collect();
    for room in attached.difference(&shared).cloned().collect::<Vec<_>>() {
        legs.sfu.detach_leg(&room, id).await;
        attached.remove(&room);
    }
    for room in &shared {
        // Idempotent: a room that closed and opened again here is attached afresh.
        if legs.sfu.attach_leg(room, id).await {
            attached.insert(room.clone());
        }
    }
}

/// The reader: hand each frame's messages to their rooms' workers, until the stream ends.
async fn read(
    legs: Arc<Legs>,
    id: LegId,
    mut inbound: Streaming<pb::LegFrame>,
    peer_rooms: watch::Sender<Vec<String>>,
) {
    loop {
        let frame = match inbound.message().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                warn!(id, error = %e, "node-to-node leg failed");
                return;
            }
        };
        let mut by_room: HashMap<String, Vec<RelayIn>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for m in frame.messages {
            let (room, input) = match m.message {
                Some(M::Rooms(r)) => {
                    let _ = peer_rooms.send(r.rooms);
                    continue;
                }
                Some(M::Track(t)) => {
                    let kind = if t.kind == pb::MediaKind::Video as i32 {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    let track = RelayTrack {
                        room: t.room.clone(),
                        track: t.track,
                        publisher: t.publisher,
                        kind,
                        publisher_track_id: t.publisher_track_id,
                        rids: t.rids,
                        extmap: t
                            .extensions
                            .into_iter()
                            .filter_map(|e| Some((e.uri, u8::try_from(e.id).ok()?)))
                            .collect(),
                    };
                    (t.room, RelayIn::Track(track))
                }
                Some(M::TrackEnd(e)) => (e.room, RelayIn::TrackEnd { track: e.track }),
                Some(M::Packet(p)) => (
                    p.room,
                    RelayIn::Packet {
                        track: p.track,
                        rid: p.rid,
                        rtp: bytes::Bytes::from(p.rtp),
                    },
                ),
                Some(M::KeyFrame(k)) => (
                    k.room,
                    RelayIn::KeyFrame {
                        track: k.track,
                        ssrc: k.ssrc,
                    },
                ),
                None => continue,
            };
            let batch = by_room.entry(room.clone()).or_insert_with(|| {
                order.push(room);
                Vec::new()
            });
            batch.push(input);
        }
        for room in order {
            if let Some(batch) = by_room.remove(&room) {
                legs.sfu.leg_in(id, &room, batch).await;
            }
        }
    }
}

fn to_pb(o: RelayOut) -> pb::LegMessage {
    let message = match o {
        RelayOut::Track(t) => M::Track(pb::LegTrack {
            room: t.room,
            track: t.track,
            publisher: t.publisher,
            kind: match t.kind {
                MediaKind::Audio => pb::MediaKind::Audio,
                MediaKind::Video => pb::MediaKind::Video,
            } as i32,
            publisher_track_id: t.publisher_track_id,
            rids: t.rids,
            extensions: t
                .extmap
                .into_iter()
                .map(|(uri, id)| pb::LegExtension {
                    uri,
                    id: u32::from(id),
                })
                .collect(),
        }),
        RelayOut::TrackEnd { room, track } => M::TrackEnd(pb::LegTrackEnd { room, track }),
        RelayOut::Packet {
            room,
            track,
            rid,
            rtp,
        } => M::Packet(pb::LegPacket {
            room,
            track,
            rid,
            rtp: rtp.to_vec(),
        }),
        RelayOut::KeyFrame {
            room, track, ssrc, ..
        } => M::KeyFrame(pb::LegKeyFrame { room, track, ssrc }),
    };
    pb::LegMessage {
        message: Some(message),
    }
}
