//! One room on the edge: the routing core ([`Room`]) driven by the edge's events, sans I/O.
//!
//! This is what the SFU's async shell does per room (`shell::media`, `shell::participant`),
//! on one socket and without tasks: a participant joins with an offer; the tracks it sends are
//! published to the core as their streams open (rids bound as the stream announces them); every
//! packet goes through [`Room::on_rtp`], and its copies are rewritten per subscriber
//! (`shell::media::rewrite`, the same rules) and written to their connections. Subscribing adds
//! a track to the subscriber's connection and returns the edge's offer; once the answer is in,
//! the core starts forwarding with the payload type and extension ids that leg negotiated.
//! Key-frame requests go both ways through the core's policy, and each leg's GCC estimate feeds
//! the core's layer choice.
//!
//! Not yet here: access tokens, signalling events for other participants (published, left,
//! active speaker) and metrics. The gRPC shell still uses
//! the async edge; this is the slice that lets the two be measured against each other.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use veil_rtc::rtx::RtxObserver;
use veil_rtc::rtx_ssrc;
use webrtc::peer_connection::RTCSessionDescription;

use super::{ConnId, Edge, EdgeEvent};
use crate::error::SfuError;
use crate::routing::{ExtMap, MediaKind, ParticipantId, Publish, Room, Subscribe, TrackId};
use crate::shell::media::{packet_meta, rewrite};
use crate::shell::peer;
use crate::shell::sdp::{FORWARDED_URIS, SdpInfo};

/// How often each leg's estimate is handed to the core (as the async shell does).
const ESTIMATE_PERIOD: Duration = Duration::from_millis(100);

/// What happened in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A participant's connection is up.
    Connected(ConnId),
    /// A track was published.
    Published {
        /// Its publisher.
        publisher: ConnId,
        /// The core's id for it.
        track: TrackId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// A participant's connection closed (it left, failed or vanished).
    Left(ConnId),
    /// A track is gone with its publisher.
    Unpublished(TrackId),
    /// The edge renegotiates with a participant (a track it received is gone): deliver the
    /// offer, and hand the answer to [`EdgeRoom::answer`].
    Offer {
        /// To whom.
        to: ConnId,
        /// The offer.
        sdp: String,
    },
}

struct Published {
    publisher: ConnId,
    receiver: RTCRtpReceiverId,
    kind: MediaKind,
}

struct Leg {
    sender: RTCRtpSenderId,
    out_ssrc: u32,
    /// Forwarding has started (the subscriber answered).
    live: bool,
}

/// One room of the SFU on an [`Edge`].
pub struct EdgeRoom {
    edge: Edge,
    core: Room,
    epoch: Instant,
    /// Each participant's offer, as parsed (its extension ids, tracks and rids).
    sdp: HashMap<ConnId, SdpInfo>,
    /// (publisher, its track id) → the core's track.
    track_ids: HashMap<(ConnId, String), TrackId>,
    published: HashMap<TrackId, Published>,
    legs: HashMap<(ConnId, TrackId), Leg>,
    events: VecDeque<RoomEvent>,
    next_estimate: Instant,
}

fn pid(c: ConnId) -> ParticipantId {
    c as ParticipantId
}

fn conn(p: ParticipantId) -> ConnId {
    p as ConnId
}

/// The SSRC `t` goes out on. SSRCs need to be unique only within one connection (each is its
/// own RTP session), so the track alone decides it: bit 30 keeps it from 0, and the top bit is
/// clear so that no primary SSRC is another's RTX SSRC ([`rtx_ssrc`] flips the top bit).
fn out_ssrc(t: TrackId) -> u32 {
    0x4000_0000 | (t.0 as u32 & 0x3FFF_FFFF)
}

/// The name of the edge's track carrying `t` to a subscriber.
fn leg_name(t: TrackId) -> String {
    format!("t{}", t.0)
}

/// The track a [`leg_name`] names.
fn leg_track(name: &str) -> Option<TrackId> {
    name.strip_prefix('t')?.parse().ok().map(TrackId)
}

impl EdgeRoom {
    /// A room on a new edge at `local` (see [`Edge::new`]), with the SFU's interceptor chain
    /// on every connection, RTX reported to `rtx`.
    #[must_use]
    pub fn new(local: SocketAddr, rtx: Arc<dyn RtxObserver>, now: Instant) -> Self {
        Self {
            edge: Edge::new(local).with_congestion_control(rtx),
            core: Room::new(Duration::from_millis(500)),
            epoch: now,
            sdp: HashMap::new(),
            track_ids: HashMap::new(),
            published: HashMap::new(),
            legs: HashMap::new(),
            events: VecDeque::new(),
            next_estimate: now,
        }
    }

    /// The same room with these ICE timers on every connection from now on: how long a
    /// silent participant stays before it counts as gone ([`Edge::with_ice_timers`]).
    #[must_use]
    pub fn with_ice_timers(mut self, timers: peer::IceTimers) -> Self {
        self.edge.set_ice_timers(timers);
        self
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// A participant joins with its offer; returns its connection and the answer.
    ///
    /// # Errors
    /// [`SfuError::Sdp`] for an unreadable offer; what [`Edge::accept`] returns.
    pub fn join(&mut self, now: Instant, offer: &str) -> Result<(ConnId, String), SfuError> {
        let info = SdpInfo::parse(
            &RTCSessionDescription::offer(offer.to_owned())
                .map_err(|e| SfuError::Sdp(e.to_string()))?,
        )?;
        let (id, answer) = self.edge.accept(now, offer)?;
        self.core.add_participant(pid(id), info.ext_ids());
        self.sdp.insert(id, info);
        Ok((id, answer))
    }

    /// Start sending `track` to `subscriber`: returns the edge's offer for the subscriber, to
    /// be answered with [`EdgeRoom::answer`].
    ///
    /// # Errors
    /// [`SfuError::UnknownTrack`]; [`SfuError::Protocol`] if it is subscribed already;
    /// [`SfuError::Closed`]; [`SfuError::WebRtc`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
    ) -> Result<String, SfuError> {
        let kind = self
            .published
            .get(&track)
            .ok_or(SfuError::UnknownTrack(track.0))?
            .kind;
        if self.legs.contains_key(&(subscriber, track)) {
            return Err(SfuError::Protocol(format!(
                "already subscribed to track {}",
                track.0
            )));
        }
        let out_ssrc = out_ssrc(track);
        let rtx = (kind == MediaKind::Video).then(|| rtx_ssrc(out_ssrc));
        let sender = self.edge.add_track(
            subscriber,
            &leg_name(track),
            kind,
            out_ssrc,
            rtx,
            peer::codec(kind),
        )?;
        self.legs.insert(
            (subscriber, track),
            Leg {
                sender,
                out_ssrc,
                live: false,
            },
        );
        self.edge.offer(now, subscriber)
    }

    /// The subscriber's answer to [`EdgeRoom::subscribe`]'s offer: forwarding starts on every
    /// leg it negotiated.
    ///
    /// # Errors
    /// What [`Edge::answer`] returns.
    pub fn answer(&mut self, now: Instant, subscriber: ConnId, sdp: &str) -> Result<(), SfuError> {
        self.edge.answer(now, subscriber, sdp)?;
        let pending: Vec<TrackId> = self
            .legs
            .iter()
            .filter(|((s, _), l)| *s == subscriber && !l.live)
            .map(|((_, t), _)| *t)
            .collect();
        for track in pending {
            let Some(p) = self.published.get(&track) else {
                continue;
            };
            let publisher = p.publisher;
            let mime = peer::codec(p.kind).mime_type;
            let Some(leg) = self.legs.get_mut(&(subscriber, track)) else {
                continue;
            };
            let Some((payload_type, sub_ids)) = self.edge.negotiated(subscriber, leg.sender, &mime)
            else {
                continue;
            };
            let pub_ids = &self.sdp.get(&publisher).map(|i| &i.extmap);
            let pairs: Vec<(u8, u8)> = FORWARDED_URIS
                .iter()
                .filter_map(|u| {
                    let from = *pub_ids.as_ref()?.get(*u)?;
                    let to = sub_ids.iter().find(|(uri, _)| uri == u)?.1;
                    Some((from, to))
                })
                .collect();
            let s = Subscribe {
                out_ssrc: leg.out_ssrc,
                payload_type,
                ext: ExtMap::new(&pairs),
                rid: None,
            };
            let since = now.saturating_duration_since(self.epoch);
            let ssrcs = self.core.subscribe(pid(subscriber), track, s, since)?;
            leg.live = true;
            self.ask_key_frames(now, track, ssrcs);
        }
        Ok(())
    }

    /// Stop sending `track` to `subscriber`: returns the edge's offer that removes it, to be
    /// answered with [`EdgeRoom::answer`].
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`]; what [`Edge::remove_track`] and [`Edge::offer`] return.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
    ) -> Result<String, SfuError> {
        let leg = self
            .legs
            .remove(&(subscriber, track))
            .ok_or(SfuError::NotSubscribed(track.0))?;
        self.core.unsubscribe(pid(subscriber), track);
        self.edge.remove_track(subscriber, leg.sender)?;
        self.edge.offer(now, subscriber)
    }

    /// Ask for `rid` (None: the first layer) of `track` for `subscriber`. The switch happens
    /// at the layer's next key frame, which the room asks the publisher for (SFU-KF-03); the
    /// leg's estimate may hold a lower layer (SFU-BWE-03).
    ///
    /// # Errors
    /// [`SfuError::UnknownTrack`], [`SfuError::NotSubscribed`].
    pub fn set_layer(
        &mut self,
        now: Instant,
        subscriber: ConnId,
        track: TrackId,
        rid: Option<&str>,
    ) -> Result<(), SfuError> {
        let since = self.since(now);
        let ssrcs = self
            .core
            .set_layer(pid(subscriber), track, rid.map(str::as_bytes), since)?;
        self.ask_key_frames(now, track, ssrcs);
        Ok(())
    }

    /// One datagram from `from` (see [`Edge::handle_datagram`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.edge.handle_datagram(now, from, datagram);
        self.route(now);
    }

    /// Run the timers that are due, and hand each leg's estimate to the core.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.edge.handle_timeout(now);
        if now >= self.next_estimate {
            self.next_estimate = now + ESTIMATE_PERIOD;
            let since = self.since(now);
            for &c in self.sdp.keys() {
                self.core.set_estimate(pid(c), self.edge.estimate(c), since);
            }
        }
        self.route(now);
    }

    /// When [`EdgeRoom::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let t = self.edge.poll_timeout();
        Some(t.map_or(self.next_estimate, |t| t.min(self.next_estimate)))
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.edge.poll_transmit()
    }

    /// The next thing that happened in the room.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    /// Carry out what the edge's connections did.
    fn route(&mut self, now: Instant) {
        while let Some((id, ev)) = self.edge.poll_event() {
            match ev {
                EdgeEvent::Connected => self.events.push_back(RoomEvent::Connected(id)),
                EdgeEvent::Closed => self.leave(now, id),
                EdgeEvent::TrackOpen {
                    track,
                    receiver,
                    ssrc,
                    rid,
                } => self.open(id, track, receiver, ssrc, rid.as_deref()),
                EdgeEvent::Rtp { track, packet } => {
                    let Some(&tid) = self.track_ids.get(&(id, track)) else {
                        continue;
                    };
                    self.forward(now, id, tid, &packet);
                }
                EdgeEvent::KeyFrameRequest { track } => {
                    let Some(tid) = leg_track(&track) else {
                        continue;
                    };
                    let since = self.since(now);
                    let ssrc = self.core.subscriber_key_frame_request(pid(id), tid, since);
                    self.ask_key_frames(now, tid, ssrc);
                }
            }
        }
    }

    /// A stream of `track` opened on `publisher`'s connection: publish the track on its first
    /// stream, and bind each stream's rid.
    fn open(
        &mut self,
        publisher: ConnId,
        track: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<&str>,
    ) {
        let tid = match self.track_ids.get(&(publisher, track.clone())) {
            Some(t) => *t,
            None => {
                let section = self
                    .sdp
                    .get(&publisher)
                    .and_then(|i| i.section_of_track(&track));
                let kind = match section.map(|s| s.kind.as_str()) {
                    Some("video") => MediaKind::Video,
                    _ => MediaKind::Audio,
                };
                let rids = section
                    .map(|s| s.send_rids.iter().map(|r| r.clone().into_bytes()).collect())
                    .unwrap_or_default();
                let publish = Publish {
                    kind,
                    clock_rate: peer::codec(kind).clock_rate,
                    rids,
                };
                let Ok(tid) = self.core.publish(pid(publisher), publish) else {
                    return;
                };
                self.track_ids.insert((publisher, track), tid);
                self.published.insert(
                    tid,
                    Published {
                        publisher,
                        receiver,
                        kind,
                    },
                );
                self.events.push_back(RoomEvent::Published {
                    publisher,
                    track: tid,
                    kind,
                });
                tid
            }
        };
        if let Some(rid) = rid {
            let _ = self.core.bind_layer(tid, ssrc, rid.as_bytes());
        }
    }

    /// Route one packet through the core and write its copies.
    fn forward(&mut self, now: Instant, publisher: ConnId, tid: TrackId, p: &rtc::rtp::Packet) {
        if p.payload.is_empty() {
            return;
        }
        let mut block = [0u8; 1500];
        let Some(meta) = packet_meta(p, &mut block) else {
            return;
        };
        let since = self.since(now);
        let Ok(routed) = self.core.on_rtp(pid(publisher), tid, &meta, since) else {
            return;
        };
        for f in &routed.forwards {
            let sub = conn(f.subscriber);
            if let Some(leg) = self.legs.get(&(sub, tid)) {
                let _ = self.edge.write_rtp(now, sub, leg.sender, rewrite(p, f));
            }
        }
        self.ask_key_frames(now, tid, routed.key_frame_requests);
    }

    /// Ask `track`'s publisher for key frames of `ssrcs`: what the core decided, already
    /// throttled (SFU-KF-01).
    fn ask_key_frames(
        &mut self,
        now: Instant,
        track: TrackId,
        ssrcs: impl IntoIterator<Item = u32>,
    ) {
        let Some(p) = self.published.get(&track) else {
            return;
        };
        let (publisher, receiver) = (p.publisher, p.receiver);
        for ssrc in ssrcs {
            let _ = self.edge.request_key_frame(now, publisher, receiver, ssrc);
        }
    }

    /// A participant is gone: its tracks end, and every subscriber of one gets an offer
    /// without it.
    fn leave(&mut self, now: Instant, id: ConnId) {
        self.core.remove_participant(pid(id));
        self.sdp.remove(&id);
        self.track_ids.retain(|(p, _), _| *p != id);
        let gone: Vec<TrackId> = self
            .published
            .iter()
            .filter(|(_, p)| p.publisher == id)
            .map(|(t, _)| *t)
            .collect();
        self.published.retain(|_, p| p.publisher != id);
        self.legs.retain(|(s, _), _| *s != id);
        let mut renegotiate = Vec::new();
        for t in &gone {
            let subs: Vec<(ConnId, RTCRtpSenderId)> = self
                .legs
                .iter()
                .filter(|((_, lt), _)| lt == t)
                .map(|((s, _), l)| (*s, l.sender))
                .collect();
            for (s, sender) in subs {
                self.legs.remove(&(s, *t));
                if self.edge.remove_track(s, sender).is_ok() && !renegotiate.contains(&s) {
                    renegotiate.push(s);
                }
            }
            self.events.push_back(RoomEvent::Unpublished(*t));
        }
        for s in renegotiate {
            if let Ok(sdp) = self.edge.offer(now, s) {
                self.events.push_back(RoomEvent::Offer { to: s, sdp });
            }
        }
        self.events.push_back(RoomEvent::Left(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legs_name_gives_back_its_track() {
        for t in [0, 7, u64::MAX] {
            assert_eq!(leg_track(&leg_name(TrackId(t))), Some(TrackId(t)));
        }
        assert_eq!(leg_track("mic"), None);
        assert_eq!(leg_track("t"), None);
    }

    #[test]
    fn outgoing_ssrcs_are_distinct_nonzero_and_never_another_tracks_rtx() {
        let primaries: Vec<u32> = (0..5000).map(|t| out_ssrc(TrackId(t))).collect();
        let mut all: Vec<u32> = primaries.iter().flat_map(|&s| [s, rtx_ssrc(s)]).collect();
        assert!(all.iter().all(|&s| s != 0));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * primaries.len());
    }
}
