//! The webrtc-rs shell around the routing core: one `PeerConnection` per participant, the
//! signalling API, the tasks that move packets, and the metrics.
//!
//! Everything that decides is in [`crate::routing`]; this module only feeds it packets and
//! times and carries out its verdicts. Per participant:
//!
//! - **Join.** The participant offers (its published tracks in it); the SFU answers with its
//!   host candidates already gathered (it has no STUN or TURN, so gathering is immediate), and
//!   takes the participant's trickled candidates. Every connection negotiates Opus, VP8, audio
//!   level, DD, transport-cc, mid/rid/repaired-rid and `extmap-allow-mixed` (SFU-NEG-01).
//! - **Publish.** Each published track is read by one task. Its packets go through
//!   [`Room::on_rtp`](crate::routing::Room::on_rtp) and the copies are queued to subscribers
//!   (bounded queues; a full queue drops and counts, SFU-LIVE-03).
//! - **Subscribe.** The SFU adds a send-only transceiver with its own SSRC to the subscriber's
//!   connection and offers; the subscriber answers ([`Sfu::answer`]). Only then, with the
//!   payload type and extension ids that subscription negotiated, does forwarding start
//!   (SFU-ROOM-02).
//! - **Leave.** [`Sfu::leave`], or the transport goes silent (ICE disconnected, then failed),
//!   or it never connects: the participant is removed and a [`ParticipantEvent::ParticipantLeft`] is
//!   broadcast (SFU-LIVE-01..02).

mod api;
mod estimate;
pub(crate) mod media;
pub mod metrics;
mod participant;
pub mod peer;
pub mod sdp;
mod tap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};

use crate::error::SfuError;
use crate::routing::{ParticipantId, Room, TrackId};
pub(crate) use api::queue_len;
pub use api::{
    IceCandidate, LeaveReason, MAX_QUEUE, ParticipantEvent, Permissions, Session, SfuConfig,
    SignalEvent, TrackInfo,
};
pub use metrics::{DropKind, Metrics};
use participant::Participant;
pub use tap::{Tap, TappedPacket};

/// A published track in the shell.
struct Published {
    publisher: ParticipantId,
    info: TrackInfo,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    remote: Arc<dyn webrtc::media_stream::track_remote::TrackRemote>,
}

/// One room: the routing core and the shell's maps, under one lock that is never held across
/// an await.
struct RoomShellState {
    core: Room,
    participants: HashMap<ParticipantId, Arc<Participant>>,
    by_identity: HashMap<String, ParticipantId>,
    tracks: HashMap<TrackId, Published>,
    /// Send queues of live subscriptions.
    outputs: HashMap<(ParticipantId, TrackId), mpsc::Sender<rtc::rtp::Packet>>,
}

struct RoomShell {
    name: String,
    state: Mutex<RoomShellState>,
    /// The room's payload packetization, an opaque label (`veil.sfu.v1.Packetization`) set by
    /// the first participant that names one (SFU-ROOM-03). 0: none yet.
    packetization: std::sync::atomic::AtomicI32,
}

impl RoomShell {
    fn lock(&self) -> MutexGuard<'_, RoomShellState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Shared {
    config: SfuConfig,
    metrics: Metrics,
    rooms: Mutex<HashMap<String, Arc<RoomShell>>>,
    events: broadcast::Sender<ParticipantEvent>,
    epoch: Instant,
    next_id: AtomicU64,
}

impl Shared {
    /// The routing core's clock.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<RoomShell>>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The blind SFU. Cheap to clone; all clones are the same SFU.
#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sfu")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// An SFU with `config`. Needs a tokio runtime when used.
    #[must_use]
    pub fn new(config: SfuConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            shared: Arc::new(Shared {
                config,
                metrics: Metrics::default(),
                rooms: Mutex::new(HashMap::new()),
                events,
                epoch: Instant::now(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SfuConfig {
        &self.shared.config
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Room events from now on.
    #[must_use]
    pub fn room_events(&self) -> broadcast::Receiver<ParticipantEvent> {
        self.shared.events.subscribe()
    }

    /// The room's packetization label (SFU-ROOM-03): the first non-zero `proposal` made in
    /// `room` while it exists, which every later call returns. 0 when nobody proposed one.
    /// The SFU never interprets it (it reads no payload); it keeps the participants agreed.
    #[must_use]
    pub fn settle_packetization(&self, room: &str, proposal: i32) -> i32 {
        let Some(r) = self.shared.rooms().get(room).cloned() else {
            return proposal;
        };
        if proposal != 0 {
            let _ =
                r.packetization
                    .compare_exchange(0, proposal, Ordering::AcqRel, Ordering::Acquire);
        }
        r.packetization.load(Ordering::Acquire)
    }

    /// Spoofed packets rejected in `room` (SFU-SEC-01).
    #[must_use]
    pub fn spoofs(&self, room: &str) -> u64 {
        self.shared
            .rooms()
            .get(room)
            .map_or(0, |r| r.lock().core.spoofs())
    }

    /// Identities admitted to `room`, sorted. A join still connecting is not listed: its
    /// identity is only reserved, and signalling calls for it fail with
    /// [`SfuError::NotJoined`] until it is admitted.
    #[must_use]
    pub fn participants(&self, room: &str) -> Vec<String> {
        self.shared.rooms().get(room).map_or_else(Vec::new, |r| {
            let mut v: Vec<String> = r
                .lock()
                .participants
                .values()
                .map(|p| p.identity.clone())
                .collect();
            v.sort();
            v
        })
    }

    /// The tracks published in `room`.
    #[must_use]
    pub fn tracks(&self, room: &str) -> Vec<TrackInfo> {
        self.shared.rooms().get(room).map_or_else(Vec::new, |r| {
            let mut v: Vec<TrackInfo> = r.lock().tracks.values().map(|t| t.info.clone()).collect();
            v.sort_by(|a, b| a.track.cmp(&b.track));
            v
        })
    }

    /// The layer forwarded to `identity` on `track` (None: nothing forwarded yet).
    #[must_use]
    pub fn layer(&self, room: &str, identity: &str, track: &str) -> Option<u8> {
        let r = self.shared.rooms().get(room)?.clone();
        let st = r.lock();
        let id = *st.by_identity.get(identity)?;
        let tid = parse_track(track).ok()?;
        st.core.layers(id, tid)?.0
    }

    fn lookup(
        &self,
        room: &str,
        identity: &str,
    ) -> Result<(Arc<RoomShell>, Arc<Participant>), SfuError> {
        let not_joined = || SfuError::NotJoined {
            room: room.to_owned(),
            identity: identity.to_owned(),
        };
        let r = self
            .shared
            .rooms()
            .get(room)
            .cloned()
            .ok_or_else(not_joined)?;
        let p = {
            let st = r.lock();
            st.by_identity
                .get(identity)
                .and_then(|id| st.participants.get(id))
                .cloned()
                .ok_or_else(not_joined)?
        };
        Ok((r, p))
    }

    /// Admit `identity` to `room` with its SDP offer; returns the answer and the participant's
    /// event stream. The caller has checked the access token (the gRPC service does).
    ///
    /// # Errors
    /// [`SfuError::AlreadyJoined`], [`SfuError::Limit`], [`SfuError::Sdp`],
    /// [`SfuError::WebRtc`], [`SfuError::Timeout`].
    pub async fn join(&self, room: &str, identity: &str, offer: &str) -> Result<Session, SfuError> {
        self.join_with(room, identity, offer, Permissions::ALL)
            .await
    }

    /// [`Sfu::join`] with what the participant may do.
    ///
    /// # Errors
    /// As [`Sfu::join`].
    pub async fn join_with(
        &self,
        room: &str,
        identity: &str,
        offer: &str,
        permissions: Permissions,
    ) -> Result<Session, SfuError> {
        let desc =
            RTCSessionDescription::offer(offer.to_owned()).map_err(SfuError::sdp("offer"))?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let r = {
            let mut rooms = self.shared.rooms();
            let r = rooms
                .entry(room.to_owned())
                .or_insert_with(|| {
                    Arc::new(RoomShell {
                        name: room.to_owned(),
                        packetization: std::sync::atomic::AtomicI32::new(0),
                        state: Mutex::new(RoomShellState {
                            core: {
                                let mut core = Room::new(self.shared.config.key_frame_interval);
                                core.set_dtx(self.shared.config.dtx);
                                core.set_rate_limit(self.shared.config.rate_limit);
                                core
                            },
                            participants: HashMap::new(),
                            by_identity: HashMap::new(),
                            tracks: HashMap::new(),
                            outputs: HashMap::new(),
                        }),
                    })
                })
                .clone();
            self.shared.metrics.rooms.set(rooms.len() as i64);
            let mut st = r.lock();
            if st.by_identity.contains_key(identity) {
                return Err(SfuError::AlreadyJoined {
                    room: room.to_owned(),
                    identity: identity.to_owned(),
                });
            }
            if st.by_identity.len() >= self.shared.config.max_participants {
                return Err(SfuError::Limit("participants per room"));
            }
            // Reserve the identity while the connection is set up.
            st.by_identity.insert(identity.to_owned(), id);
            drop(st);
            r
        };
        match participant::connect(&self.shared, &r, id, identity, desc, permissions).await {
            Ok(session) => {
                self.shared.metrics.participants.inc();
                let _ = self
                    .shared
                    .events
                    .send(ParticipantEvent::ParticipantJoined {
                        room: room.to_owned(),
                        identity: identity.to_owned(),
                    });
                info!(room, identity, id, "participant joined");
                Ok(session)
            }
            Err(e) => {
                let mut st = r.lock();
                if st.by_identity.get(identity) == Some(&id) {
                    st.by_identity.remove(identity);
                }
                let empty = st.by_identity.is_empty();
                drop(st);
                if empty {
                    remove_room_if_empty(&self.shared, room);
                }
                Err(e)
            }
        }
    }

    /// A trickled ICE candidate from `identity`.
    ///
    /// # Errors
    /// [`SfuError::NotJoined`], [`SfuError::Sdp`] for a candidate webrtc-rs refuses.
    pub async fn add_ice_candidate(
        &self,
        room: &str,
        identity: &str,
        c: IceCandidate,
    ) -> Result<(), SfuError> {
        let (_, p) = self.lookup(room, identity)?;
        p.pc.add_ice_candidate(RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            ..Default::default()
        })
        .await
        .map_err(SfuError::sdp("candidate"))
    }

    /// A new offer from `identity` (e.g. to publish another track); returns the answer.
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] while the SFU's own offer waits for its answer (answer that
    /// first: the SFU is the impolite peer), [`SfuError::Sdp`], [`SfuError::WebRtc`].
    pub async fn offer(&self, room: &str, identity: &str, sdp: &str) -> Result<String, SfuError> {
        let (_, p) = self.lookup(room, identity)?;
        p.accept_offer(sdp).await
    }

    /// The answer to the SFU's last [`SignalEvent::Offer`]. Subscriptions it settles start.
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] if no offer waits, [`SfuError::Sdp`], [`SfuError::WebRtc`].
    pub async fn answer(&self, room: &str, identity: &str, sdp: &str) -> Result<(), SfuError> {
        let (r, p) = self.lookup(room, identity)?;
        p.accept_answer(&self.shared, &r, sdp).await
    }

    /// Receive `track` (a [`TrackInfo::track`] name). An [`SignalEvent::Offer`] follows; packets
    /// flow once it is answered, from the track's next key frame on.
    ///
    /// # Errors
    /// [`SfuError::NotJoined`], [`SfuError::NoSuchTrack`], [`SfuError::Protocol`] (one's own
    /// track), [`SfuError::WebRtc`].
    pub async fn subscribe(&self, room: &str, identity: &str, track: &str) -> Result<(), SfuError> {
        let (r, p) = self.lookup(room, identity)?;
        if !p.permissions.subscribe {
            return Err(SfuError::PermissionDenied(
                "the token lacks the `subscribe` grant".into(),
            ));
        }
        let tid = parse_track(track)?;
        let (codec, kind, publisher) = {
            let st = r.lock();
            let t = st
                .tracks
                .get(&tid)
                .ok_or_else(|| SfuError::NoSuchTrack(track.to_owned()))?;
            (t.codec.clone(), t.info.kind, t.publisher)
        };
        if publisher == p.id {
            return Err(SfuError::Protocol(
                "a participant cannot subscribe to its own track",
            ));
        }
        if p.add_subscription(tid, track, publisher, kind, codec)
            .await?
        {
            p.renegotiate().await?;
        }
        Ok(())
    }

    /// Stop receiving `track`. An [`SignalEvent::Offer`] follows.
    ///
    /// # Errors
    /// [`SfuError::NotJoined`], [`SfuError::NotSubscribed`], [`SfuError::WebRtc`].
    pub async fn unsubscribe(
        &self,
        room: &str,
        identity: &str,
        track: &str,
    ) -> Result<(), SfuError> {
        let (r, p) = self.lookup(room, identity)?;
        let tid = parse_track(track)?;
        {
            let mut st = r.lock();
            st.core.unsubscribe(p.id, tid);
            st.outputs.remove(&(p.id, tid));
        }
        if p.remove_subscription(&self.shared, &r.name, tid).await? {
            p.renegotiate().await?;
            Ok(())
        } else {
            Err(SfuError::NotSubscribed(tid.0))
        }
    }

    /// Which simulcast layer of `track` to receive, by rid (None: the first). The switch happens
    /// at that layer's next key frame, which the SFU asks the publisher for (SFU-KF-03).
    ///
    /// # Errors
    /// [`SfuError::NotJoined`], [`SfuError::NotSubscribed`].
    pub async fn set_layer_preference(
        &self,
        room: &str,
        identity: &str,
        track: &str,
        rid: Option<&str>,
    ) -> Result<(), SfuError> {
        let (r, p) = self.lookup(room, identity)?;
        let tid = parse_track(track)?;
        if !p.set_preferred_rid(tid, rid) {
            return Err(SfuError::NotSubscribed(tid.0));
        }
        let now = self.shared.now();
        let requests = {
            let mut st = r.lock();
            if !st.outputs.contains_key(&(p.id, tid)) {
                return Ok(()); // applied when the subscription starts
            }
            let ssrcs = st.core.set_layer(p.id, tid, rid.map(str::as_bytes), now)?;
            st.tracks.get(&tid).map(|t| (t.remote.clone(), ssrcs))
        };
        if let Some((remote, ssrcs)) = requests {
            media::send_plis(&self.shared, &remote, &ssrcs).await;
        }
        Ok(())
    }

    /// `identity` leaves `room`.
    ///
    /// # Errors
    /// [`SfuError::NotJoined`].
    pub async fn leave(&self, room: &str, identity: &str) -> Result<(), SfuError> {
        let (_, p) = self.lookup(room, identity)?;
        remove_participant(&self.shared, room, p.id, LeaveReason::Left).await;
        Ok(())
    }
}

/// `t<n>` → the track id.
fn parse_track(name: &str) -> Result<TrackId, SfuError> {
    name.strip_prefix('t')
        .and_then(|n| n.parse().ok())
        .map(TrackId)
        .ok_or_else(|| SfuError::NoSuchTrack(name.to_owned()))
}

fn track_name(t: TrackId) -> String {
    format!("t{}", t.0)
}

fn remove_room_if_empty(shared: &Shared, room: &str) {
    let mut rooms = shared.rooms();
    if rooms
        .get(room)
        .is_some_and(|r| r.lock().by_identity.is_empty())
    {
        rooms.remove(room);
        debug!(room, "room closed");
    }
    shared.metrics.rooms.set(rooms.len() as i64);
}

/// Remove participant `id` from `room` (idempotent): its tracks end for everyone, its
/// subscriptions end, its connection closes, and the room hears why (SFU-LIVE-01..02).
async fn remove_participant(
    shared: &Arc<Shared>,
    room: &str,
    id: ParticipantId,
    reason: LeaveReason,
) {
    let Some(r) = shared.rooms().get(room).cloned() else {
        return;
    };
    let (p, ended, others) = {
        let mut st = r.lock();
        let Some(p) = st.participants.remove(&id) else {
            return;
        };
        if st.by_identity.get(&p.identity) == Some(&id) {
            st.by_identity.remove(&p.identity);
        }
        let removed = st.core.remove_participant(id);
        let mut ended = Vec::new();
        for (tid, subscribers) in removed {
            st.tracks.remove(&tid);
            ended.push((tid, subscribers));
        }
        st.outputs
            .retain(|(s, t), _| *s != id && !ended.iter().any(|(e, _)| e == t));
        let others: Vec<Arc<Participant>> = st.participants.values().cloned().collect();
        (p, ended, others)
    };
    let m = &shared.metrics;
    m.participants.dec();
    m.tracks.dec_by(ended.len() as i64);
    m.left
        .get_or_create(&metrics::Reason {
            reason: reason.label(),
        })
        .inc();
    p.close(shared, room, reason).await;
    for o in &others {
        let mut renegotiate = false;
        for (tid, subscribers) in &ended {
            o.send(SignalEvent::TrackUnpublished {
                track: track_name(*tid),
            });
            if subscribers.contains(&o.id) {
                renegotiate |= o
                    .remove_subscription(shared, room, *tid)
                    .await
                    .unwrap_or(false);
            }
        }
        o.send(SignalEvent::ParticipantLeft {
            identity: p.identity.clone(),
            reason,
        });
        if renegotiate && let Err(e) = o.renegotiate().await {
            debug!(room, identity = %o.identity, error = %e, "renegotiation after a departure failed");
        }
    }
    info!(room, identity = %p.identity, id, reason = reason.label(), "participant left");
    // Clean up first, announce last: whoever hears the event sees the SFU without it.
    remove_room_if_empty(shared, room);
    let _ = shared.events.send(ParticipantEvent::ParticipantLeft {
        room: room.to_owned(),
        identity: p.identity.clone(),
        reason,
    });
}
