//! The SFU's rooms on the edge: one routing core ([`Room`]) per room, every participant of
//! every room on the one [`Edge`], sans I/O.
//!
//! One socket and no tasks: a participant joins a room with an offer; the tracks it sends are
//! published to its room's core as their streams open (rids bound as the stream announces
//! them); every packet goes through [`Room::on_rtp`], and its copies are rewritten per
//! subscriber (`connection::packet::rewrite`) and written to their connections. Subscribing adds a track to the subscriber's connection and renegotiates; once the answer
//! is in, the core forwards with the payload type and extension ids that subscription negotiated.
//! Key-frame requests go both ways through the core's policy, each connection's GCC estimate feeds
//! the core's layer choice. What happens is counted into plain [`Counters`] and
//! [`Observation`]s that the shell exports (SFU-OBS-01): the rooms touch no shared metric.
//!
//! **Negotiation** (SFU-EDGE-11). The edge is the impolite peer: it has at most one offer out
//! per participant. A change while that offer waits (a second subscription, a departed
//! publisher) is remembered, and one new offer covering all of them follows the answer. A
//! participant's own offer while the edge's waits is refused ([`SfuError::Negotiation`]).
//! Every offer from the edge comes out as [`EdgeRoomEvent::Offer`].
//!
//! **Rooms over nodes** (SFU-CAS-02..05, `relay`). A room that a node-to-node leg wants hands
//! out its local publishers' tracks and accepted packets ([`EdgeRooms::poll_relay`]); tracks
//! and packets that come over a leg enter the room under remote publishers, participants of the
//! core without a connection, and are routed like local ones.
//!
//! [`crate::edge::EdgeSfu`] serves this over `veil.sfu.v1` (access tokens, signalling events).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use veil_rtc::rtx_ssrc;
use webrtc::peer_connection::RTCSessionDescription;

pub use relay::{LegId, RelayOut, RelayTrack};

use super::probe::Probing;
use super::stats::{Counters, Observation, RtxTally, kind_index, rtx_tally};
use super::{ConnId, Edge, EdgeEvent, Via};
use crate::connection::packet::{packet_meta, rewrite};
use crate::connection::peer;
use crate::connection::sdp::{FORWARDED_URIS, SdpInfo};
use crate::error::SfuError;
use crate::routing::{
    ExtMap, MediaKind, ParticipantId, ProbePolicy, ProbeStats, Publish, RateLimit, Room, Subscribe,
    SvcLayer, TrackId,
};
use crate::session::metrics::{Subscriber, SubscriberTrack};
use crate::session::{DropKind, SfuConfig, TappedPacket};

/// How often each connection's estimate is handed to the core. GCC changes its target at most
/// every 200 ms (rate-control interval) and on feedback, which comes about every 100 ms.
const ESTIMATE_PERIOD: Duration = Duration::from_millis(100);

mod relay;

/// What happened in the rooms. Connections are unique over all rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeRoomEvent {
    /// A participant's connection is up.
    Connected(ConnId),
    /// A track was published.
    Published {
        /// Its publisher.
        publisher: ConnId,
        /// The core's id for it (unique within the publisher's room).
        track: TrackId,
        /// Audio or video.
        kind: MediaKind,
        /// The publisher's own name for it (its msid track id).
        publisher_track_id: String,
        /// Its simulcast rids (empty: one layer).
        rids: Vec<String>,
    },
    /// A subscription is live: the subscriber answered, and `track` reaches it on `ssrc`.
    Subscribed {
        /// Who.
        subscriber: ConnId,
        /// What.
        track: TrackId,
        /// The SSRC on the subscriber's connection.
        ssrc: u32,
    },
    /// The room's active speaker changed (SFU-SPK-03).
    ActiveSpeaker(ConnId),
    /// A track is gone with its publisher.
    Unpublished {
        /// Its publisher.
        publisher: ConnId,
        /// The track.
        track: TrackId,
    },
    /// A participant's connection closed (it left, failed or vanished); it is out of its room.
    Left(ConnId),
    /// The edge offers a new session to a participant (after a subscription changed, or a
    /// track it received is gone): deliver it, and hand the answer to [`EdgeRooms::answer`].
    Offer {
        /// To whom.
        to: ConnId,
        /// The offer.
        sdp: String,
    },
}

struct Published {
    publisher: ConnId,
    /// Where key-frame requests for it go.
    origin: Origin,
    kind: MediaKind,
    /// Its simulcast rids, lowest first (empty: one layer).
    rids: Vec<String>,
}

/// Where a track's packets come from.
#[derive(Clone, Copy)]
enum Origin {
    /// A participant's connection on this edge, through this receiver.
    Local(RTCRtpReceiverId),
    /// Another node, over node-to-node leg `leg`, where the track is `track` (SFU-CAS-03).
    Remote { leg: LegId, track: u64 },
}

struct Subscription {
    sender: RTCRtpSenderId,
    out_ssrc: u32,
    /// The track's kind: its transceiver is parked for the next subscription of this kind.
    kind: MediaKind,
    /// The edge has offered it: the next answer settles it. A subscription added while an offer
    /// waits is not in that offer.
    offered: bool,
    /// Forwarding has started (the subscriber answered).
    live: bool,
}

/// One room: its core, and which of the edge's tracks and senders are its.
struct EdgeRoom {
    name: String,
    core: Room,
    /// (publisher, its track id) → the core's track.
    track_ids: HashMap<(ConnId, String), TrackId>,
    published: HashMap<TrackId, Published>,
    subscriptions: HashMap<(ConnId, TrackId), Subscription>,
    members: usize,
    /// A node-to-node leg wants this room: its local publishers' packets are relayed
    /// (SFU-CAS-02).
    relayed: bool,
    /// Publishers on other nodes, by their id here (SFU-CAS-03).
    remotes: HashMap<ConnId, relay::Remote>,
    /// (leg, the origin's track id) → the track here.
    remote_tracks: HashMap<(LegId, u64), TrackId>,
}

/// A participant.
struct Participant {
    room: usize,
    identity: String,
    /// Its offer, as parsed (extension ids, tracks, rids).
    sdp: SdpInfo,
    /// May publish (its token's `publish` grant).
    publish: bool,
    /// The edge's offer waits for its answer.
    offering: bool,
    /// Something changed while it waited: offer again after the answer.
    again: bool,
    /// Its `subscriber_estimate` labels, built once (the estimate is set every 100 ms).
    estimate_label: Subscriber,
    /// Transceivers whose subscription ended, parked `inactive` for the next subscription of
    /// their kind (SFU-EDGE-16).
    parked: Vec<Slot>,
    /// Transceivers the edge added to its connection for subscriptions: the next one's SSRC.
    slots: u32,
}

/// A transceiver that carried a subscription, with the SSRC it keeps for every track it
/// carries.
#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: MediaKind,
    sender: RTCRtpSenderId,
    ssrc: u32,
}

/// Every room of the SFU on one [`Edge`].
pub struct EdgeRooms {
    edge: Edge,
    config: SfuConfig,
    /// What happened since the shell last took it (SFU-OBS-01).
    counters: Counters,
    /// What the connections' RTX interceptors did, folded into `counters` when taken.
    rtx: Arc<RtxTally>,
    observations: VecDeque<Observation>,
    /// The shell's tap has listeners: record every packet (SFU-TAP-01).
    tapping: bool,
    epoch: Instant,
    /// Indexed by the members' `room`; an emptied room leaves `None` until its slot is reused.
    rooms: Vec<Option<EdgeRoom>>,
    by_name: HashMap<String, usize>,
    members: HashMap<ConnId, Participant>,
    events: VecDeque<EdgeRoomEvent>,
    next_estimate: Instant,
    /// Probe clusters towards subscribers whose estimate is below their need (SFU-BWE-06).
    probing: Probing,
    /// What the node-to-node legs are to carry (SFU-CAS-02..04).
    relay: VecDeque<RelayOut>,
    /// The next id of a publisher on another node.
    next_remote: ConnId,
    /// Publishers on other nodes → their room's index.
    remote_rooms: HashMap<ConnId, usize>,
}

fn pid(c: ConnId) -> ParticipantId {
    c as ParticipantId
}

fn conn(p: ParticipantId) -> ConnId {
    p as ConnId
}

/// The SSRC of the `n`th transceiver the edge adds to a connection for subscriptions: it keeps
/// it for every track it carries (SFU-EDGE-16). SSRCs need to be unique only within one
/// connection (each is its own RTP session): bit 30 keeps it from 0, and the top bit is clear
/// so that no primary SSRC is another's RTX SSRC ([`rtx_ssrc`] flips the top bit).
fn slot_ssrc(n: u32) -> u32 {
    0x4000_0000 | (n & 0x3FFF_FFFF)
}

/// The SFU's name of track `t`, in its room: the msid track id of the subscriber's m-section,
/// and the name `veil.sfu.v1` uses.
#[must_use]
pub fn track_name(t: TrackId) -> String {
    format!("t{}", t.0)
}

/// The track a [`track_name`] names.
#[must_use]
pub fn parse_track_name(name: &str) -> Option<TrackId> {
    name.strip_prefix('t')?.parse().ok().map(TrackId)
}

impl EdgeRooms {
    /// Rooms on a new edge at `local` (see [`Edge::new`]), with the SFU's interceptor chain
    /// on every connection. From `config` it takes the key-frame interval, DTX, the rate
    /// limit, the tap and the ICE timers (`silence_timeout`, `departure_grace`,
    /// `keepalive_interval`); its tap is the shell's ([`EdgeRooms::set_tapping`]). `now` starts
    /// its clock and `seed` its randomness (see [`Edge::new`]).
    #[must_use]
    pub fn new(local: SocketAddr, config: SfuConfig, now: Instant, seed: [u8; 32]) -> Self {
        let rtx = rtx_tally();
        let mut edge = Edge::new(local, now, seed)
            .with_congestion_control(rtx.clone())
            .with_ice_timers(peer::IceTimers {
                silence: config.silence_timeout,
                grace: config.departure_grace,
                keepalive: config.keepalive_interval,
            });
        // Datagrams, not only RTP, count at the door: RTCP, RTX and consent checks come too,
        // so twice the RTP limit (SFU-EDGE-13). The core still holds RTP to the limit itself.
        edge.set_datagram_limit(config.rate_limit.map(|l| RateLimit {
            packets_per_second: 2.0 * l.packets_per_second,
            burst: 2.0 * l.burst,
        }));
        let probing = Probing::new(config.probing.then(ProbePolicy::default));
        Self {
            edge,
            config,
            counters: Counters::default(),
            rtx,
            observations: VecDeque::new(),
            tapping: false,
            epoch: now,
            rooms: Vec::new(),
            by_name: HashMap::new(),
            members: HashMap::new(),
            events: VecDeque::new(),
            next_estimate: now,
            probing,
            relay: VecDeque::new(),
            next_remote: relay::FIRST_REMOTE,
            remote_rooms: HashMap::new(),
        }
    }

    /// Probe clusters sent to participant `id`'s connection, and how they ended (SFU-BWE-06).
    #[must_use]
    pub fn probe_stats(&self, id: ConnId) -> Option<ProbeStats> {
        self.probing.stats(id)
    }

    /// What the rooms counted since the last call (SFU-OBS-01): the shell adds it to its
    /// metrics ([`crate::Metrics::export`]).
    pub fn take_counters(&mut self) -> Counters {
        let mut c = std::mem::take(&mut self.counters);
        c.rtx = self.rtx.take();
        c
    }

    /// The next labelled or recorded observation (SFU-OBS-01), for
    /// [`crate::Metrics::observe`].
    pub fn poll_observation(&mut self) -> Option<Observation> {
        self.observations.pop_front()
    }

    /// Record every packet as [`Observation::Tapped`] while `on` (the shell's tap has
    /// listeners; SFU-TAP-01).
    pub fn set_tapping(&mut self, on: bool) {
        self.tapping = on;
    }

    /// Live subscriptions over all rooms.
    #[must_use]
    pub fn subscriptions(&self) -> usize {
        self.rooms
            .iter()
            .flatten()
            .map(|r| r.subscriptions.values().filter(|s| s.live).count())
            .sum()
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    fn member(&self, id: ConnId) -> Result<&Participant, SfuError> {
        self.members.get(&id).ok_or(SfuError::Closed)
    }

    fn room_of(&mut self, id: ConnId) -> Result<&mut EdgeRoom, SfuError> {
        let r = self.member(id)?.room;
        self.rooms
            .get_mut(r)
            .and_then(Option::as_mut)
            .ok_or(SfuError::Closed)
    }

    /// Participants in `room`.
    #[must_use]
    pub fn len(&self, room: &str) -> usize {
        self.by_name
            .get(room)
            .and_then(|&r| self.rooms.get(r)?.as_ref())
            .map_or(0, |r| r.members)
    }

    /// Rooms with at least one participant.
    #[must_use]
    pub fn rooms(&self) -> usize {
        self.by_name.len()
    }

    /// A participant joins `room` with its offer; returns its connection and the answer.
    /// Without `publish` its tracks are not published, and what it sends is dropped
    /// (`not_permitted`).
    ///
    /// # Errors
    /// [`SfuError::Sdp`] for an unreadable offer; what [`Edge::accept`] returns.
    pub fn join(
        &mut self,
        now: Instant,
        room: &str,
        identity: &str,
        offer: &str,
        publish: bool,
    ) -> Result<(ConnId, String), SfuError> {
        let sdp = SdpInfo::parse(
            &RTCSessionDescription::offer(offer.to_owned()).map_err(SfuError::sdp("offer"))?,
        )?;
        let (id, answer) = self.edge.accept(now, offer)?;
        let r = match self.by_name.get(room) {
            Some(&r) => r,
            None => {
                let mut core = Room::new(self.config.key_frame_interval);
                core.set_dtx(self.config.dtx);
                core.set_rate_limit(self.config.rate_limit);
                let state = EdgeRoom {
                    name: room.to_owned(),
                    core,
                    track_ids: HashMap::new(),
                    published: HashMap::new(),
                    subscriptions: HashMap::new(),
                    members: 0,
                    relayed: false,
                    remotes: HashMap::new(),
                    remote_tracks: HashMap::new(),
                };
                let r = match self.rooms.iter().position(Option::is_none) {
                    Some(free) => {
                        self.rooms[free] = Some(state);
                        free
                    }
                    None => {
                        self.rooms.push(Some(state));
                        self.rooms.len() - 1
                    }
                };
                self.by_name.insert(room.to_owned(), r);
                r
            }
        };
        let state = self.rooms[r].as_mut().ok_or(SfuError::Closed)?;
        state.core.add_participant(pid(id), sdp.ext_ids());
        state.members += 1;
        self.members.insert(
            id,
            Participant {
                room: r,
                identity: identity.to_owned(),
                sdp,
                publish,
                offering: false,
                again: false,
                estimate_label: Subscriber {
                    room: room.to_owned(),
                    subscriber: identity.to_owned(),
                },
                parked: Vec::new(),
                slots: 0,
            },
        );
        Ok((id, answer))
    }

    /// The active speaker of `id`'s room, if there is one yet (a joiner is told).
    #[must_use]
    pub fn active_speaker(&mut self, id: ConnId) -> Option<ConnId> {
        self.room_of(id).ok()?.core.active_speaker().map(conn)
    }

    /// The tracks published in `id`'s room, as [`EdgeRoomEvent::Published`] would have told them
    /// (a joiner is told).
    #[must_use]
    pub fn published(&mut self, id: ConnId) -> Vec<EdgeRoomEvent> {
        let Ok(r) = self.member(id).map(|m| m.room) else {
            return Vec::new();
        };
        let Some(room) = self.rooms.get(r).and_then(Option::as_ref) else {
            return Vec::new();
        };
        let mut out: Vec<EdgeRoomEvent> = room
            .track_ids
            .iter()
            .filter_map(|((publisher, name), &track)| {
                let p = room.published.get(&track)?;
                Some(EdgeRoomEvent::Published {
                    publisher: *publisher,
                    track,
                    kind: p.kind,
                    publisher_track_id: name.clone(),
                    rids: p.rids.clone(),
                })
            })
            .collect();
        out.sort_by_key(|e| match e {
            EdgeRoomEvent::Published { track, .. } => track.0,
            _ => 0,
        });
        out
    }

    /// Start sending `track` to `subscriber`. The edge offers ([`EdgeRoomEvent::Offer`]) now, or
    /// after the answer to the offer that waits; [`EdgeRoomEvent::Subscribed`] follows the answer.
    ///
    /// # Errors
    /// [`SfuError::Closed`] for a connection that is gone; [`SfuError::NoSuchTrack`] for a
    /// track not published in the subscriber's room; [`SfuError::Protocol`] for one's own track
    /// or a track subscribed already; [`SfuError::WebRtc`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
    ) -> Result<(), SfuError> {
        let room = self.room_of(subscriber)?;
        let p = room
            .published
            .get(&track)
            .ok_or_else(|| SfuError::NoSuchTrack(track_name(track)))?;
        if p.publisher == subscriber {
            return Err(SfuError::Protocol(
                "a participant cannot subscribe to its own track",
            ));
        }
        if room.subscriptions.contains_key(&(subscriber, track)) {
            return Err(SfuError::Protocol("already subscribed to this track"));
        }
        let kind = p.kind;
        let m = self.members.get_mut(&subscriber).ok_or(SfuError::Closed)?;
        let (sender, out_ssrc) = match m.parked.iter().position(|s| s.kind == kind) {
            Some(i) => {
                let slot = m.parked.swap_remove(i);
                self.edge
                    .reuse_track(subscriber, slot.sender, &track_name(track))?;
                (slot.sender, slot.ssrc)
            }
            None => {
                let out_ssrc = slot_ssrc(m.slots);
                m.slots += 1;
                let rtx = (kind == MediaKind::Video).then(|| rtx_ssrc(out_ssrc));
                let sender = self.edge.add_track(
                    subscriber,
                    &track_name(track),
                    kind,
                    out_ssrc,
                    rtx,
                    peer::codec(kind),
                )?;
                (sender, out_ssrc)
            }
        };
        self.room_of(subscriber)?.subscriptions.insert(
            (subscriber, track),
            Subscription {
                sender,
                out_ssrc,
                kind,
                offered: false,
                live: false,
            },
        );
        self.renegotiate(now, subscriber)
    }

    /// Offer `id` a new session now, or after the answer to the offer that waits.
    fn renegotiate(&mut self, now: Instant, id: ConnId) -> Result<(), SfuError> {
        let m = self.members.get_mut(&id).ok_or(SfuError::Closed)?;
        if m.offering {
            m.again = true;
            return Ok(());
        }
        let sdp = self.edge.offer(now, id)?;
        if let Some(m) = self.members.get_mut(&id) {
            m.offering = true;
            if let Some(room) = self.rooms.get_mut(m.room).and_then(Option::as_mut) {
                for ((s, _), subscription) in &mut room.subscriptions {
                    subscription.offered |= *s == id;
                }
            }
        }
        self.events.push_back(EdgeRoomEvent::Offer { to: id, sdp });
        Ok(())
    }

    /// A new offer from participant `id` (e.g. to publish another track): returns the answer.
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] while the edge's own offer waits for its answer (answer that
    /// first: the edge is the impolite peer); [`SfuError::Sdp`]; what [`Edge::accept_offer`]
    /// returns.
    pub fn offer(&mut self, now: Instant, id: ConnId, sdp: &str) -> Result<String, SfuError> {
        if self.member(id)?.offering {
            return Err(SfuError::Negotiation(
                "the SFU's offer waits for its answer: answer it first",
            ));
        }
        let info = SdpInfo::parse(
            &RTCSessionDescription::offer(sdp.to_owned()).map_err(SfuError::sdp("offer"))?,
        )?;
        let answer = self.edge.accept_offer(now, id, sdp)?;
        if let Some(m) = self.members.get_mut(&id) {
            m.sdp = info;
        }
        Ok(answer)
    }

    /// Participant `id`'s answer to the edge's last [`EdgeRoomEvent::Offer`]: forwarding starts on
    /// every subscription it negotiated ([`EdgeRoomEvent::Subscribed`]).
    ///
    /// # Errors
    /// [`SfuError::Negotiation`] if no offer waits; what [`Edge::answer`] returns.
    pub fn answer(&mut self, now: Instant, id: ConnId, sdp: &str) -> Result<(), SfuError> {
        if !self.member(id)?.offering {
            return Err(SfuError::Negotiation(
                "no offer from the SFU waits for an answer",
            ));
        }
        self.edge.answer(now, id, sdp)?;
        let again = match self.members.get_mut(&id) {
            Some(m) => {
                m.offering = false;
                std::mem::take(&mut m.again)
            }
            None => false,
        };
        self.start_subscriptions(now, id)?;
        if again {
            self.renegotiate(now, id)?;
        }
        Ok(())
    }

    /// Start forwarding on `subscriber`'s subscriptions that its answer settled.
    fn start_subscriptions(&mut self, now: Instant, subscriber: ConnId) -> Result<(), SfuError> {
        let since = self.since(now);
        let r = self.member(subscriber)?.room;
        let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return Ok(());
        };
        let pending: Vec<TrackId> = room
            .subscriptions
            .iter()
            .filter(|((s, _), l)| *s == subscriber && l.offered && !l.live)
            .map(|((_, t), _)| *t)
            .collect();
        for track in pending {
            let Some(p) = room.published.get(&track) else {
                continue;
            };
            let publisher = p.publisher;
            let mime = peer::codec(p.kind).mime_type;
            let Some(subscription) = room.subscriptions.get_mut(&(subscriber, track)) else {
                continue;
            };
            let Some((payload_type, sub_ids)) =
                self.edge.negotiated(subscriber, subscription.sender, &mime)
            else {
                continue;
            };
            let pub_ids = match self.members.get(&publisher) {
                Some(m) => Some(&m.sdp.extmap),
                None => room.remotes.get(&publisher).map(|r| &r.extmap),
            };
            let pairs: Vec<(u8, u8)> = FORWARDED_URIS
                .iter()
                .filter_map(|u| {
                    let from = *pub_ids?.get(*u)?;
                    let to = sub_ids.iter().find(|(uri, _)| uri == u)?.1;
                    Some((from, to))
                })
                .collect();
            let s = Subscribe {
                out_ssrc: subscription.out_ssrc,
                payload_type,
                ext: ExtMap::new(&pairs),
                rid: None,
            };
            let ssrcs = room.core.subscribe(pid(subscriber), track, s, since)?;
            subscription.live = true;
            self.counters.subscriptions += 1;
            self.events.push_back(EdgeRoomEvent::Subscribed {
                subscriber,
                track,
                ssrc: subscription.out_ssrc,
            });
            ask_key_frames(
                &mut self.edge,
                &mut self.counters,
                &mut self.relay,
                now,
                room,
                track,
                ssrcs,
            );
        }
        Ok(())
    }

    /// Stop sending `track` to `subscriber`, parking its transceiver for the next subscription
    /// of its kind (SFU-EDGE-16). The edge offers a session without it
    /// ([`EdgeRoomEvent::Offer`]).
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::NotSubscribed`]; what [`Edge::park_track`] and
    /// [`Edge::offer`] return.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
    ) -> Result<(), SfuError> {
        let room = self.room_of(subscriber)?;
        let subscription = room
            .subscriptions
            .remove(&(subscriber, track))
            .ok_or(SfuError::NotSubscribed(track.0))?;
        room.core.unsubscribe(pid(subscriber), track);
        let name = room.name.clone();
        if let Some(m) = self.members.get(&subscriber) {
            forget_subscription(
                &mut self.counters,
                &mut self.observations,
                &name,
                &m.identity,
                track,
                subscription.live,
            );
        }
        park(&mut self.edge, &mut self.members, subscriber, &subscription)?;
        self.renegotiate(now, subscriber)
    }

    /// Ask for `rid` (None: the first layer) of `track` for `subscriber`. The switch happens
    /// at the layer's next key frame, which the room asks the publisher for (SFU-KF-03); the
    /// connection's estimate may hold a lower layer (SFU-BWE-03).
    ///
    /// # Errors
    /// [`SfuError::Closed`], [`SfuError::UnknownTrack`], [`SfuError::NotSubscribed`].
    pub fn set_layer(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
        rid: Option<&str>,
    ) -> Result<(), SfuError> {
        let since = self.since(now);
        let room = self.room_of(subscriber)?;
        let ssrcs = room
            .core
            .set_layer(pid(subscriber), track, rid.map(str::as_bytes), since)?;
        let r = self.member(subscriber)?.room;
        if let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) {
            ask_key_frames(
                &mut self.edge,
                &mut self.counters,
                &mut self.relay,
                now,
                room,
                track,
                ssrcs,
            );
        }
        Ok(())
    }

    /// Cap the spatial and temporal layer `subscriber` gets of a scalable `track`
    /// ([`Room::set_svc_layer`], SFU-SVC-10).
    ///
    /// # Errors
    /// [`SfuError::Closed`], [`SfuError::NotSubscribed`].
    pub fn set_svc_layer(
        &mut self,
        subscriber: ConnId,
        track: TrackId,
        cap: SvcLayer,
    ) -> Result<(), SfuError> {
        self.room_of(subscriber)?
            .core
            .set_svc_layer(pid(subscriber), track, cap)
    }

    /// The layer forwarded to `subscriber` on `track` (None: nothing forwarded yet).
    #[must_use]
    pub fn layer(&mut self, subscriber: ConnId, track: TrackId) -> Option<u8> {
        self.room_of(subscriber)
            .ok()?
            .core
            .layers(pid(subscriber), track)?
            .0
    }

    /// Spoofed packets rejected in `room` (SFU-SEC-01).
    #[must_use]
    pub fn spoofs(&self, room: &str) -> u64 {
        self.by_name
            .get(room)
            .and_then(|&r| self.rooms.get(r)?.as_ref())
            .map_or(0, |r| r.core.spoofs())
    }

    /// Datagrams no connection claimed ([`Edge::unrouted`], SFU-EDGE-01).
    #[must_use]
    pub fn unrouted(&self) -> u64 {
        self.edge.unrouted()
    }

    /// Remove participant `id` (it leaves, or the shell gives up on it): its connection
    /// closes, and [`EdgeRoomEvent::Left`] follows with everything a departure brings.
    pub fn remove(&mut self, now: Instant, id: ConnId) {
        self.edge.close(id);
        self.route(now);
    }

    /// The participant whose connection claimed address `addr` ([`Edge::conn_at`]).
    #[must_use]
    pub fn conn_at(&self, addr: SocketAddr) -> Option<ConnId> {
        self.edge.conn_at(addr)
    }

    /// One datagram from `from` (see [`Edge::handle_datagram`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.handle_packet(now, Via::Udp, from, datagram);
    }

    /// One packet from the ICE-TCP stream of `from` (see [`Edge::handle_tcp_frame`]).
    pub fn handle_tcp_frame(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) {
        self.handle_packet(now, Via::Tcp, from, packet);
    }

    fn handle_packet(&mut self, now: Instant, via: Via, from: SocketAddr, packet: &[u8]) {
        let flooded = self.edge.flooded();
        match via {
            Via::Udp => self.edge.handle_datagram(now, from, packet),
            Via::Tcp => self.edge.handle_tcp_frame(now, from, packet),
        }
        if self.edge.flooded() != flooded {
            self.counters.drop(DropKind::Flooded);
        }
        self.route(now);
    }

    /// Offer a passive ICE-TCP candidate at `addr` to every participant who joins from now on
    /// (see [`Edge::set_tcp`], SFU-TCP-01).
    pub fn set_tcp(&mut self, addr: SocketAddr) {
        self.edge.set_tcp(addr);
    }

    /// The connection that claimed the ICE-TCP stream from `addr` (see [`Edge::tcp_conn_at`]).
    #[must_use]
    pub fn tcp_conn_at(&self, addr: SocketAddr) -> Option<ConnId> {
        self.edge.tcp_conn_at(addr)
    }

    /// The next packet for an ICE-TCP stream (see [`Edge::poll_tcp_transmit`]).
    pub fn poll_tcp_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.edge.poll_tcp_transmit()
    }

    /// Run the timers that are due, and hand each connection's estimate to the core.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.edge.handle_timeout(now);
        if now >= self.next_estimate {
            self.next_estimate = now + ESTIMATE_PERIOD;
            let since = self.since(now);
            for (&c, m) in &self.members {
                let Some(room) = self.rooms.get_mut(m.room).and_then(Option::as_mut) else {
                    continue;
                };
                let estimate = self.edge.estimate(c);
                room.core.set_estimate(pid(c), estimate, since);
                if let Some(signals) = self.edge.signals(c) {
                    let need = room.core.need(pid(c), since);
                    let (sent, carried) = self.probing.update(since, c, &signals, need);
                    self.counters.probe_clusters += sent;
                    self.counters.probe_successes += carried;
                }
                if estimate.is_some() {
                    self.observations.push_back(Observation::Estimate {
                        labels: m.estimate_label.clone(),
                        bps: estimate,
                    });
                }
            }
        }
        let since = self.since(now);
        self.probing.send_due(&mut self.edge, now, since);
        self.route(now);
    }

    /// When [`EdgeRooms::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let t = self.edge.poll_timeout();
        let mut due = t.map_or(self.next_estimate, |t| t.min(self.next_estimate));
        if let Some(pulse) = self.probing.poll_timeout() {
            due = due.min(self.epoch + pulse);
        }
        Some(due)
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.edge.poll_transmit()
    }

    /// The next thing that happened in the rooms.
    pub fn poll_event(&mut self) -> Option<EdgeRoomEvent> {
        self.events.pop_front()
    }

    /// Carry out what the edge's connections did.
    fn route(&mut self, now: Instant) {
        while let Some((id, ev)) = self.edge.poll_event() {
            match ev {
                EdgeEvent::Connected => self.events.push_back(EdgeRoomEvent::Connected(id)),
                EdgeEvent::Closed => self.leave(now, id),
                EdgeEvent::TrackOpen {
                    track,
                    receiver,
                    ssrc,
                    rid,
                } => self.open(id, track, receiver, ssrc, rid.as_deref()),
                EdgeEvent::Rtp { track, packet } => self.forward(now, id, track, &packet),
                EdgeEvent::KeyFrameRequest { track } => {
                    self.counters.subscriber_key_frame_requests += 1;
                    let Some(tid) = parse_track_name(&track) else {
                        continue;
                    };
                    let since = self.since(now);
                    let Ok(room) = self.room_of(id) else {
                        continue;
                    };
                    let ssrc = room.core.subscriber_key_frame_request(pid(id), tid, since);
                    let r = self.members.get(&id).map_or(usize::MAX, |m| m.room);
                    if let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) {
                        ask_key_frames(
                            &mut self.edge,
                            &mut self.counters,
                            &mut self.relay,
                            now,
                            room,
                            tid,
                            ssrc,
                        );
                    }
                }
            }
        }
    }

    /// A stream of `track` opened on `publisher`'s connection: publish the track on its first
    /// stream (if the publisher may), and bind each stream's rid.
    fn open(
        &mut self,
        publisher: ConnId,
        track: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<&str>,
    ) {
        let Some(m) = self.members.get(&publisher) else {
            return;
        };
        if !m.publish {
            return;
        }
        let section = m.sdp.section_of_track(&track);
        let kind = match section.map(|s| s.kind.as_str()) {
            Some("video") => MediaKind::Video,
            _ => MediaKind::Audio,
        };
        let rids: Vec<String> = section.map(|s| s.send_rids.clone()).unwrap_or_default();
        let r = m.room;
        let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let tid = match room.track_ids.get(&(publisher, track.clone())) {
            Some(t) => *t,
            None => {
                let publish = Publish {
                    kind,
                    clock_rate: peer::codec(kind).clock_rate,
                    rids: rids.iter().map(|r| r.clone().into_bytes()).collect(),
                };
                let Ok(tid) = room.core.publish(pid(publisher), publish) else {
                    return;
                };
                room.track_ids.insert((publisher, track.clone()), tid);
                room.published.insert(
                    tid,
                    Published {
                        publisher,
                        origin: Origin::Local(receiver),
                        kind,
                        rids: rids.clone(),
                    },
                );
                self.counters.tracks += 1;
                if room.relayed {
                    self.relay.push_back(RelayOut::Track(RelayTrack {
                        room: room.name.clone(),
                        track: tid.0,
                        publisher: m.identity.clone(),
                        kind,
                        publisher_track_id: track.clone(),
                        rids: rids.clone(),
                        extmap: relay::extmap(&m.sdp.extmap),
                    }));
                }
                self.events.push_back(EdgeRoomEvent::Published {
                    publisher,
                    track: tid,
                    kind,
                    publisher_track_id: track,
                    rids,
                });
                tid
            }
        };
        if let Some(rid) = rid {
            let _ = room.core.bind_layer(tid, ssrc, rid.as_bytes());
        }
    }

    /// Route one packet of a local publisher.
    fn forward(&mut self, now: Instant, publisher: ConnId, track: String, p: &rtc::rtp::Packet) {
        let Some(m) = self.members.get(&publisher) else {
            return;
        };
        let r = m.room;
        let Some(room) = self.rooms.get(r).and_then(Option::as_ref) else {
            return;
        };
        let Some(&tid) = room.track_ids.get(&(publisher, track)) else {
            self.counters.drop(if m.publish {
                DropKind::UnknownTrack
            } else {
                DropKind::NotPermitted
            });
            return;
        };
        self.route_packet(now, r, publisher, tid, p);
    }

    /// Route one packet of `tid`, whose publisher is on this edge or on another node (SFU-CAS-03),
    /// through room `r`'s core and write its copies. A local publisher's packet that the core
    /// accepted also goes to the node-to-node legs that want the room, unchanged (SFU-CAS-02).
    fn route_packet(
        &mut self,
        now: Instant,
        r: usize,
        publisher: ConnId,
        tid: TrackId,
        p: &rtc::rtp::Packet,
    ) {
        let since = self.since(now);
        let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let counters = &mut self.counters;
        let kind = room
            .published
            .get(&tid)
            .map_or(MediaKind::Audio, |t| t.kind);
        let k = kind_index(kind);
        counters.received[k] += 1;
        if p.payload.is_empty() {
            counters.drop(DropKind::Padding);
            return;
        }
        if self.tapping {
            let identity = match self.members.get(&publisher) {
                Some(m) => m.identity.as_str(),
                None => room
                    .remotes
                    .get(&publisher)
                    .map_or("", |x| x.identity.as_str()),
            };
            self.observations
                .push_back(Observation::Tapped(TappedPacket::of(
                    &room.name,
                    identity,
                    track_name(tid),
                    kind,
                    p,
                )));
        }
        let mut block = [0u8; 1500];
        let Some(meta) = packet_meta(p, &mut block) else {
            counters.drop(DropKind::Metadata);
            return;
        };
        let routed = match room.core.on_rtp(pid(publisher), tid, &meta, since) {
            Ok(r) => r,
            Err(e) => {
                counters.drop(DropKind::of_error(&e));
                return;
            }
        };
        if routed.repair {
            counters.drop(DropKind::Repair);
        } else if room.relayed && !room.remotes.contains_key(&publisher) {
            relay::packet(&mut self.relay, room, tid, routed.layer, p);
            counters.relayed[0] += 1;
        }
        for d in &routed.dropped {
            counters.drop(DropKind::from(*d));
        }
        for f in &routed.forwards {
            let sub = conn(f.subscriber);
            let Some(subscription) = room.subscriptions.get(&(sub, tid)) else {
                continue;
            };
            match self
                .edge
                .write_rtp(now, sub, subscription.sender, rewrite(p, f))
            {
                Ok(()) => {
                    counters.forwarded[k] += 1;
                    counters.forwarded_bytes[k] += p.payload.len() as u64;
                }
                Err(_) => counters.drop(DropKind::WriteFailed),
            }
            if (f.switched || f.decode_target.is_some())
                && let Some(s) = self.members.get(&sub)
            {
                let labels = SubscriberTrack {
                    room: room.name.clone(),
                    subscriber: s.identity.clone(),
                    track: track_name(tid),
                };
                if let Some(layer) = f.decode_target {
                    self.observations.push_back(Observation::DecodeTarget {
                        labels: labels.clone(),
                        layer: Some(layer),
                    });
                }
                if f.switched {
                    self.observations.push_back(Observation::Layer {
                        labels,
                        layer: Some(routed.layer),
                    });
                }
            }
        }
        if let Some(speaker) = routed.active_speaker {
            self.events
                .push_back(EdgeRoomEvent::ActiveSpeaker(conn(speaker)));
        }
        ask_key_frames(
            &mut self.edge,
            counters,
            &mut self.relay,
            now,
            room,
            tid,
            routed.key_frame_requests,
        );
    }

    /// A participant is gone: its tracks end, every subscriber of one is offered a session
    /// without it, and its room closes when it was the last.
    fn leave(&mut self, now: Instant, id: ConnId) {
        let Some(m) = self.members.remove(&id) else {
            return;
        };
        self.probing.remove(id);
        let Some(room) = self.rooms.get_mut(m.room).and_then(Option::as_mut) else {
            return;
        };
        room.members -= 1;
        room.core.remove_participant(pid(id));
        let gone: Vec<TrackId> = room
            .published
            .iter()
            .filter(|(_, p)| p.publisher == id)
            .map(|(t, _)| *t)
            .collect();
        let (counters, observations) = (&mut self.counters, &mut self.observations);
        room.subscriptions.retain(|(s, t), subscription| {
            let own = *s == id;
            if own {
                forget_subscription(
                    counters,
                    observations,
                    &room.name,
                    &m.identity,
                    *t,
                    subscription.live,
                );
            }
            !own
        });
        observations.push_back(Observation::Estimate {
            labels: m.estimate_label,
            bps: None,
        });
        self.end_tracks(now, m.room, id, &gone);
        if let Some(room) = self.rooms.get_mut(m.room).and_then(Option::as_mut)
            && room.members == 0
        {
            // Publishers on other nodes leave with the room (SFU-CAS-05).
            self.counters.tracks -= room.published.len() as i64;
            for c in room.remotes.keys() {
                self.remote_rooms.remove(c);
            }
            self.by_name.remove(&room.name);
            self.rooms[m.room] = None;
        }
        self.events.push_back(EdgeRoomEvent::Left(id));
    }

    /// `gone`, tracks of `publisher` in room `r`, end: every subscriber of one is offered a
    /// session without it, and the legs that want the room are told (SFU-CAS-02).
    fn end_tracks(&mut self, now: Instant, r: usize, publisher: ConnId, gone: &[TrackId]) {
        let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        room.track_ids
            .retain(|(p, _), t| *p != publisher || !gone.contains(t));
        room.published.retain(|t, _| !gone.contains(t));
        let local = !room.remotes.contains_key(&publisher);
        let (counters, observations) = (&mut self.counters, &mut self.observations);
        counters.tracks -= gone.len() as i64;
        let mut renegotiate = Vec::new();
        for t in gone {
            let subs: Vec<ConnId> = room
                .subscriptions
                .keys()
                .filter(|(_, lt)| lt == t)
                .map(|(s, _)| *s)
                .collect();
            for s in subs {
                let Some(l) = room.subscriptions.remove(&(s, *t)) else {
                    continue;
                };
                let identity = self.members.get(&s).map_or("", |sub| sub.identity.as_str());
                forget_subscription(counters, observations, &room.name, identity, *t, l.live);
                if park(&mut self.edge, &mut self.members, s, &l).is_ok()
                    && !renegotiate.contains(&s)
                {
                    renegotiate.push(s);
                }
            }
            if local && room.relayed {
                self.relay.push_back(RelayOut::TrackEnd {
                    room: room.name.clone(),
                    track: t.0,
                });
            }
            self.events.push_back(EdgeRoomEvent::Unpublished {
                publisher,
                track: *t,
            });
        }
        for s in renegotiate {
            let _ = self.renegotiate(now, s);
        }
    }
}

/// `subscriber`'s subscription `s` ended: park its transceiver for the next subscription of
/// its kind (SFU-EDGE-16).
fn park(
    edge: &mut Edge,
    members: &mut HashMap<ConnId, Participant>,
    subscriber: ConnId,
    s: &Subscription,
) -> Result<(), SfuError> {
    edge.park_track(subscriber, s.sender)?;
    if let Some(m) = members.get_mut(&subscriber) {
        m.parked.push(Slot {
            kind: s.kind,
            sender: s.sender,
            ssrc: s.out_ssrc,
        });
    }
    Ok(())
}

/// A subscription is gone: count it if it was live, and drop its layer gauge.
fn forget_subscription(
    counters: &mut Counters,
    observations: &mut VecDeque<Observation>,
    room: &str,
    subscriber: &str,
    track: TrackId,
    live: bool,
) {
    if live {
        counters.subscriptions -= 1;
    }
    let labels = SubscriberTrack {
        room: room.to_owned(),
        subscriber: subscriber.to_owned(),
        track: track_name(track),
    };
    observations.push_back(Observation::DecodeTarget {
        labels: labels.clone(),
        layer: None,
    });
    observations.push_back(Observation::Layer {
        labels,
        layer: None,
    });
}

/// Ask `track`'s publisher for key frames of `ssrcs`: what the core decided, already
/// throttled (SFU-KF-01). A publisher on another node is asked over its leg (SFU-CAS-04).
#[allow(clippy::too_many_arguments)]
fn ask_key_frames(
    edge: &mut Edge,
    counters: &mut Counters,
    relay: &mut VecDeque<RelayOut>,
    now: Instant,
    room: &EdgeRoom,
    track: TrackId,
    ssrcs: impl IntoIterator<Item = u32>,
) {
    let Some(p) = room.published.get(&track) else {
        return;
    };
    for ssrc in ssrcs {
        match p.origin {
            Origin::Local(receiver) => {
                if edge
                    .request_key_frame(now, p.publisher, receiver, ssrc)
                    .is_ok()
                {
                    counters.publisher_key_frame_requests += 1;
                }
            }
            Origin::Remote { leg, track } => {
                counters.publisher_key_frame_requests += 1;
                relay.push_back(RelayOut::KeyFrame {
                    leg,
                    room: room.name.clone(),
                    track,
                    ssrc,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracks_name_gives_back_its_track() {
        for t in [0, 7, u64::MAX] {
            assert_eq!(parse_track_name(&track_name(TrackId(t))), Some(TrackId(t)));
        }
        assert_eq!(parse_track_name("mic"), None);
        assert_eq!(parse_track_name("t"), None);
    }

    #[test]
    fn outgoing_ssrcs_are_distinct_nonzero_and_never_another_tracks_rtx() {
        let primaries: Vec<u32> = (0..5000).map(slot_ssrc).collect();
        let mut all: Vec<u32> = primaries.iter().flat_map(|&s| [s, rtx_ssrc(s)]).collect();
        assert!(all.iter().all(|&s| s != 0));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * primaries.len());
    }
}
