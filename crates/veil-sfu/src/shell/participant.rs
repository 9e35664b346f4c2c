//! One participant's connection: its webrtc-rs peer connection, its event handler, the
//! offer/answer state and its subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng as _};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use veil_rtc::rtx_ssrc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceConnectionState, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

use super::metrics::RtxCount;
use super::sdp::{FORWARDED_URIS, SdpInfo};
use super::{
    LeaveReason, Permissions, RoomShell, Session, Shared, SignalEvent, media, peer, queue_len,
    remove_participant, track_name,
};
use crate::error::SfuError;
use crate::routing::{ExtMap, MediaKind, ParticipantId, Subscribe, TrackId};

/// One subscription on this participant's connection.
pub(super) struct Subscription {
    pub(super) local: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    out_ssrc: u32,
    publisher: ParticipantId,
    codec: RTCRtpCodec,
    rid: Option<String>,
    /// Writer and RTCP tasks, once live.
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Negotiation {
    /// The SFU's offer waits for the participant's answer.
    offer_pending: bool,
    /// Renegotiate again once it is answered.
    again: bool,
}

pub(super) struct Participant {
    pub(super) id: ParticipantId,
    pub(super) identity: String,
    pub(super) pc: Arc<dyn PeerConnection>,
    events: mpsc::Sender<SignalEvent>,
    /// Its event queue filled up; its removal is under way (SFU-LIVE-05).
    overflowed: AtomicBool,
    shared: Weak<Shared>,
    room: Weak<RoomShell>,
    negotiation: tokio::sync::Mutex<Negotiation>,
    subs: Mutex<HashMap<TrackId, Subscription>>,
    /// The participant's last SDP (its track ids, rids and extension ids).
    pub(super) remote: Mutex<SdpInfo>,
    pub(super) permissions: Permissions,
    closed: AtomicBool,
}

impl Participant {
    /// Queue a signalling event. A participant whose queue is full is not reading: it is
    /// removed rather than queued for without bound (SFU-LIVE-05).
    pub(super) fn send(&self, ev: SignalEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(ev)
            && !self.overflowed.swap(true, Ordering::AcqRel)
        {
            warn!(identity = %self.identity, "signalling events not read: removing the participant");
            if let (Some(shared), Some(room)) = (self.shared.upgrade(), self.room.upgrade()) {
                let id = self.id;
                tokio::spawn(async move {
                    remove_participant(&shared, &room.name, id, LeaveReason::SlowSignalling).await;
                });
            }
        }
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<TrackId, Subscription>> {
        self.subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn remote_sdp(&self) -> MutexGuard<'_, SdpInfo> {
        self.remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The SFU offers (SFU-NEG-02): now, or once the pending offer is answered.
    pub(super) async fn renegotiate(&self) -> Result<(), SfuError> {
        let mut n = self.negotiation.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        if n.offer_pending {
            n.again = true;
            return Ok(());
        }
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(SfuError::webrtc("create offer"))?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(SfuError::webrtc("set local offer"))?;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or(SfuError::WebRtcState("no local description"))?
            .sdp;
        n.offer_pending = true;
        self.send(SignalEvent::Offer { sdp });
        Ok(())
    }

    pub(super) async fn accept_offer(&self, sdp: &str) -> Result<String, SfuError> {
        let n = self.negotiation.lock().await;
        if n.offer_pending {
            return Err(SfuError::Negotiation(
                "the SFU's offer waits for an answer: answer it first (the SFU is the impolite peer)",
            ));
        }
        let desc = RTCSessionDescription::offer(sdp.to_owned()).map_err(SfuError::sdp("offer"))?;
        let info = SdpInfo::parse(&desc)?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(SfuError::sdp("offer"))?;
        *self.remote_sdp() = info;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(SfuError::webrtc("create answer"))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(SfuError::webrtc("set local answer"))?;
        drop(n);
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or(SfuError::WebRtcState("no local description"))?
            .sdp)
    }

    pub(super) async fn accept_answer(
        &self,
        shared: &Arc<Shared>,
        room: &Arc<RoomShell>,
        sdp: &str,
    ) -> Result<(), SfuError> {
        let mut n = self.negotiation.lock().await;
        if !n.offer_pending {
            return Err(SfuError::Negotiation(
                "no offer of the SFU waits for an answer",
            ));
        }
        let desc =
            RTCSessionDescription::answer(sdp.to_owned()).map_err(SfuError::sdp("answer"))?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(SfuError::sdp("answer"))?;
        n.offer_pending = false;
        let again = std::mem::take(&mut n.again);
        drop(n);
        self.start_subscriptions(shared, room).await;
        if again {
            self.renegotiate().await?;
        }
        Ok(())
    }

    /// Add a send-only transceiver for `track`. Returns whether a renegotiation is needed
    /// (false: already subscribed).
    pub(super) async fn add_subscription(
        &self,
        tid: TrackId,
        track: &str,
        publisher: ParticipantId,
        kind: MediaKind,
        codec: RTCRtpCodec,
    ) -> Result<bool, SfuError> {
        if self.subs().contains_key(&tid) {
            return Ok(false);
        }
        // Distinct from every other outgoing stream's SSRC and RTX SSRC on this connection.
        let out_ssrc = loop {
            let s = StdRng::from_os_rng().next_u32();
            // `rtx_ssrc` is its own inverse: one comparison covers both directions.
            let taken = |x: u32| x == s || x == rtx_ssrc(s);
            if s != 0 && !self.subs().values().any(|x| taken(x.out_ssrc)) {
                break s;
            }
        };
        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("p{publisher}"),
            track.to_owned(),
            track.to_owned(),
            match kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            },
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    // Retransmissions towards the subscriber go as RTX (SFU-RTX-01).
                    rtx: (kind == MediaKind::Video).then(|| RTCRtpRtxParameters {
                        ssrc: rtx_ssrc(out_ssrc),
                    }),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        )));
        let transceiver = self
            .pc
            .add_transceiver_from_track(
                local.clone(),
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(SfuError::webrtc("add transceiver"))?;
        let sender = transceiver
            .sender()
            .await
            .map_err(SfuError::webrtc("sender"))?
            .ok_or(SfuError::WebRtcState("transceiver without sender"))?;
        let mut subs = self.subs();
        let rid = None;
        subs.insert(
            tid,
            Subscription {
                local,
                sender,
                out_ssrc,
                publisher,
                codec,
                rid,
                tasks: Vec::new(),
            },
        );
        Ok(true)
    }

    pub(super) fn set_preferred_rid(&self, tid: TrackId, rid: Option<&str>) -> bool {
        match self.subs().get_mut(&tid) {
            Some(s) => {
                s.rid = rid.map(str::to_owned);
                true
            }
            None => false,
        }
    }

    /// Drop the subscription to `tid`. Returns whether there was one (then the caller
    /// renegotiates).
    pub(super) async fn remove_subscription(
        &self,
        shared: &Shared,
        room: &str,
        tid: TrackId,
    ) -> Result<bool, SfuError> {
        let Some(sub) = self.subs().remove(&tid) else {
            return Ok(false);
        };
        let live = !sub.tasks.is_empty();
        for t in &sub.tasks {
            t.abort();
        }
        if live {
            self.forget_subscription(shared, room, tid);
        }
        if !self.closed.load(Ordering::Acquire) {
            self.pc
                .remove_track(&sub.sender)
                .await
                .map_err(SfuError::webrtc("remove track"))?;
        }
        Ok(true)
    }

    /// After an answer: start every subscription that is not live yet, with the payload type
    /// and extension ids the answer settled (SFU-ROOM-02, SFU-EXT-01).
    async fn start_subscriptions(&self, shared: &Arc<Shared>, room: &Arc<RoomShell>) {
        let pending: Vec<(TrackId, Arc<dyn RtpSender>, RTCRtpCodec, ParticipantId)> = self
            .subs()
            .iter()
            .filter(|(_, s)| s.tasks.is_empty())
            .map(|(t, s)| (*t, s.sender.clone(), s.codec.clone(), s.publisher))
            .collect();
        for (tid, sender, codec, publisher) in pending {
            let params = match sender.get_parameters().await {
                Ok(p) => p.rtp_parameters,
                Err(e) => {
                    warn!(identity = %self.identity, error = %e, "no sender parameters");
                    continue;
                }
            };
            let Some(pt) = params
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
                .map(|c| c.payload_type)
            else {
                warn!(identity = %self.identity, track = tid.0, "the subscriber did not accept the codec");
                continue;
            };
            let sub_ids: HashMap<&str, u8> = params
                .header_extensions
                .iter()
                .filter_map(|h| Some((h.uri.as_str(), u8::try_from(h.id).ok()?)))
                .collect();
            let (tx, rx) = mpsc::channel(queue_len(shared.config.subscriber_queue));
            let now = shared.now();
            let (local, out_ssrc, rid) = {
                let subs = self.subs();
                let Some(s) = subs.get(&tid) else { continue };
                (s.local.clone(), s.out_ssrc, s.rid.clone())
            };
            let started = {
                let mut st = room.lock();
                let pub_ids = st
                    .participants
                    .get(&publisher)
                    .map(|p| p.remote_sdp().extmap.clone())
                    .unwrap_or_default();
                let pairs: Vec<(u8, u8)> = FORWARDED_URIS
                    .iter()
                    .filter_map(|u| Some((*pub_ids.get(*u)?, *sub_ids.get(*u)?)))
                    .collect();
                let s = Subscribe {
                    out_ssrc,
                    payload_type: pt,
                    ext: ExtMap::new(&pairs),
                    rid: rid.map(String::into_bytes),
                };
                match st.core.subscribe(self.id, tid, s, now) {
                    Ok(ssrcs) => {
                        st.outputs.insert((self.id, tid), tx);
                        st.tracks.get(&tid).map(|t| (t.remote.clone(), ssrcs))
                    }
                    Err(e) => {
                        debug!(identity = %self.identity, error = %e, "subscription not started");
                        None
                    }
                }
            };
            let Some((remote, ssrcs)) = started else {
                continue;
            };
            let tasks = vec![
                tokio::spawn(media::write_subscription(
                    Arc::downgrade(shared),
                    local.clone(),
                    rx,
                )),
                tokio::spawn(media::read_subscriber_rtcp(
                    Arc::downgrade(shared),
                    Arc::downgrade(room),
                    self.id,
                    tid,
                    local,
                )),
            ];
            if let Some(s) = self.subs().get_mut(&tid) {
                s.tasks = tasks;
            } else {
                // Unsubscribed (or the track ended) while this was being set up: undo.
                tasks.iter().for_each(JoinHandle::abort);
                let mut st = room.lock();
                st.core.unsubscribe(self.id, tid);
                st.outputs.remove(&(self.id, tid));
                continue;
            }
            shared.metrics.subscriptions.inc();
            media::send_plis(shared, &remote, &ssrcs).await;
            self.send(SignalEvent::Subscribed {
                track: track_name(tid),
                ssrc: out_ssrc,
            });
        }
    }

    /// A live subscription to `tid` ended: count it, and drop its layer gauge.
    fn forget_subscription(&self, shared: &Shared, room: &str, tid: TrackId) {
        shared.metrics.subscriptions.dec();
        shared
            .metrics
            .subscriber_layer
            .remove(&super::metrics::SubscriberTrack {
                room: room.to_owned(),
                subscriber: self.identity.clone(),
                track: track_name(tid),
            });
    }

    /// Close the connection and end the event stream.
    pub(super) async fn close(&self, shared: &Shared, room: &str, reason: LeaveReason) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let subs: Vec<(TrackId, Subscription)> = self.subs().drain().collect();
        for (tid, s) in subs {
            if !s.tasks.is_empty() {
                self.forget_subscription(shared, room, tid);
            }
            s.tasks.iter().for_each(JoinHandle::abort);
        }
        self.send(SignalEvent::Closed { reason });
        if let Err(e) = self.pc.close().await {
            debug!(identity = %self.identity, error = %e, "close");
        }
    }
}

/// The peer connection's event handler. It holds weak references only, so a removed
/// participant's connection does not keep the room alive.
struct Handler {
    shared: Weak<Shared>,
    room: Weak<RoomShell>,
    id: ParticipantId,
    gathered: watch::Sender<bool>,
    connected: Arc<AtomicBool>,
}

impl Handler {
    fn remove(&self, reason: LeaveReason) {
        let (Some(shared), Some(room)) = (self.shared.upgrade(), self.room.upgrade()) else {
            return;
        };
        let id = self.id;
        // Not on the driver's task: closing waits for the driver.
        tokio::spawn(async move { remove_participant(&shared, &room.name, id, reason).await });
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        debug!(id = self.id, %state, "ICE state");
        if state == RTCIceConnectionState::Failed {
            // Silent for `silence_timeout`, then not back within `departure_grace`
            // (SFU-LIVE-01).
            self.remove(LeaveReason::Timeout);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(id = self.id, %state, "connection state");
        match state {
            RTCPeerConnectionState::Connected => self.connected.store(true, Ordering::Release),
            RTCPeerConnectionState::Failed => self.remove(LeaveReason::Timeout),
            RTCPeerConnectionState::Closed => self.remove(LeaveReason::Closed),
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (Some(shared), Some(room)) = (self.shared.upgrade(), self.room.upgrade()) else {
            return;
        };
        tokio::spawn(media::read_published(shared, room, self.id, track));
    }
}

/// Build the participant's connection, answer its offer, and enter it in the room.
pub(super) async fn connect(
    shared: &Arc<Shared>,
    room: &Arc<RoomShell>,
    id: ParticipantId,
    identity: &str,
    offer: RTCSessionDescription,
    permissions: Permissions,
) -> Result<Session, SfuError> {
    let info = SdpInfo::parse(&offer)?;
    let (gathered_tx, mut gathered) = watch::channel(false);
    let connected = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(Handler {
        shared: Arc::downgrade(shared),
        room: Arc::downgrade(room),
        id,
        gathered: gathered_tx,
        connected: connected.clone(),
    });
    let cfg = &shared.config;
    let (pc, estimate) = peer::peer_connection(
        handler,
        cfg.udp_addrs.clone(),
        peer::IceTimers {
            silence: cfg.silence_timeout,
            grace: cfg.departure_grace,
            keepalive: cfg.keepalive_interval,
        },
        Arc::new(RtxCount(shared.metrics.rtx.clone())),
    )
    .await?;
    let answer = async {
        pc.set_remote_description(offer)
            .await
            .map_err(SfuError::sdp("offer"))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(SfuError::webrtc("create answer"))?;
        pc.set_local_description(answer)
            .await
            .map_err(SfuError::webrtc("set local answer"))?;
        tokio::time::timeout(cfg.gather_timeout, gathered.wait_for(|g| *g))
            .await
            .map_err(|_| SfuError::Timeout("gathering the SFU's candidates"))?
            .map_err(|_| SfuError::Closed)?;
        Ok::<_, SfuError>(
            pc.local_description()
                .await
                .ok_or(SfuError::WebRtcState("no local description"))?
                .sdp,
        )
    }
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };
    let (events, rx) = mpsc::channel(queue_len(cfg.event_queue));
    let ext_ids = info.ext_ids();
    let p = Arc::new(Participant {
        id,
        identity: identity.to_owned(),
        pc,
        events,
        overflowed: AtomicBool::new(false),
        shared: Arc::downgrade(shared),
        room: Arc::downgrade(room),
        negotiation: tokio::sync::Mutex::new(Negotiation::default()),
        subs: Mutex::new(HashMap::new()),
        remote: Mutex::new(info),
        permissions,
        closed: AtomicBool::new(false),
    });
    {
        let mut st = room.lock();
        st.core.add_participant(id, ext_ids);
        for t in st.tracks.values() {
            p.send(SignalEvent::TrackPublished(t.info.clone()));
        }
        if let Some(s) = st
            .core
            .active_speaker()
            .and_then(|id| st.participants.get(&id))
        {
            p.send(SignalEvent::ActiveSpeaker {
                identity: s.identity.clone(),
            });
        }
        for o in st.participants.values() {
            o.send(SignalEvent::ParticipantJoined {
                identity: identity.to_owned(),
            });
            p.send(SignalEvent::ParticipantJoined {
                identity: o.identity.clone(),
            });
        }
        st.participants.insert(id, p);
    }
    // The connection's bandwidth estimate drives its layer choice (SFU-BWE-01, SFU-BWE-03).
    tokio::spawn(super::estimate::follow(
        Arc::downgrade(shared),
        Arc::downgrade(room),
        id,
        identity.to_owned(),
        estimate,
    ));
    // SFU-LIVE-02: a participant whose connection never comes up is removed.
    let (w_shared, w_room, timeout) = (
        Arc::downgrade(shared),
        room.name.clone(),
        cfg.connect_timeout,
    );
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if !connected.load(Ordering::Acquire)
            && let Some(shared) = w_shared.upgrade()
        {
            remove_participant(&shared, &w_room, id, LeaveReason::NeverConnected).await;
        }
    });
    Ok(Session { answer, events: rx })
}
