//! Rooms that span SFU nodes, sans I/O (specs/sfu.md, "Cascading rooms over nodes",
//! SFU-CAS-02..05).
//!
//! What the node-to-node legs carry is decided here; the shell only moves it. A room that a leg
//! wants (`relayed`) hands out every packet its local publishers send that the core accepted,
//! unchanged, with the layer's rid ([`RelayOut::Packet`]), and its local tracks as they come and
//! go. What arrives from a leg enters the room as a *remote publisher*: a participant of the
//! routing core with no connection, whose tracks are announced to local participants like any
//! other (`EdgeRoomEvent::Published`) and whose packets go through the same core, so local
//! subscribers select layers, ask for key frames and are rewritten exactly as for a local
//! publisher. Key-frame requests for a remote track go back over its leg
//! ([`RelayOut::KeyFrame`]). Remote publishers are never relayed on: the nodes of a room form a
//! full mesh, so nothing loops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use rtc::shared::marshal::{Marshal, Unmarshal};

use super::{ConnId, EdgeRoom, EdgeRoomEvent, EdgeRooms, Origin, Published, TrackId, pid};
use crate::connection::peer;
use crate::connection::sdp::{AUDIO_LEVEL_URI, DD_URI, MID_URI, RID_URI, RRID_URI};
use crate::routing::{ExtIds, MediaKind, Publish};
use crate::session::DropKind;

/// A node-to-node leg, numbered by the shell.
pub type LegId = u64;

/// Ids of publishers on other nodes start here, far above any connection's id.
pub(super) const FIRST_REMOTE: ConnId = 1 << (usize::BITS - 2);

/// The header extensions a leg names for a publisher: the ones the core reads.
const LEG_URIS: [&str; 5] = [MID_URI, RID_URI, RRID_URI, DD_URI, AUDIO_LEVEL_URI];

/// A track announced over a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTrack {
    /// Its room.
    pub room: String,
    /// Its id on its origin node.
    pub track: u64,
    /// Its publisher's identity.
    pub publisher: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's own name for it.
    pub publisher_track_id: String,
    /// Its simulcast rids, lowest first (empty: one layer).
    pub rids: Vec<String>,
    /// The publisher's header-extension ids (URI, id) the packets carry.
    pub extmap: Vec<(String, u8)>,
}

/// What the legs are to carry (SFU-CAS-02..04).
#[derive(Debug, Clone)]
pub enum RelayOut {
    /// A local publisher's track, to every leg that wants its room.
    Track(RelayTrack),
    /// A local track ended, to every leg that wants its room.
    TrackEnd {
        /// Its room.
        room: String,
        /// Its id here.
        track: u64,
    },
    /// A local publisher's packet, unchanged, to every leg that wants its room.
    Packet {
        /// Its room.
        room: String,
        /// Its track's id here.
        track: u64,
        /// Its layer's rid (empty: one layer).
        rid: String,
        /// The RTP packet as the publisher sent it (after its SRTP hop).
        rtp: Bytes,
    },
    /// A key frame is wanted from a remote track's publisher: to that track's leg only.
    KeyFrame {
        /// The leg the track came over.
        leg: LegId,
        /// Its room.
        room: String,
        /// The track's id on its origin node.
        track: u64,
        /// The publisher's SSRC of the layer wanted.
        ssrc: u32,
    },
}

impl RelayOut {
    /// The room it concerns.
    #[must_use]
    pub fn room(&self) -> &str {
        match self {
            Self::Track(t) => &t.room,
            Self::TrackEnd { room, .. }
            | Self::Packet { room, .. }
            | Self::KeyFrame { room, .. } => room,
        }
    }

    /// The one leg it goes to; `None`: every leg that wants its room.
    #[must_use]
    pub fn leg(&self) -> Option<LegId> {
        match self {
            Self::KeyFrame { leg, .. } => Some(*leg),
            _ => None,
        }
    }
}

/// A publisher on another node, as a room here knows it.
pub(super) struct Remote {
    pub(super) leg: LegId,
    pub(super) identity: String,
    /// Its header-extension ids, by URI.
    pub(super) extmap: HashMap<String, u8>,
    /// SSRCs whose layer is bound already.
    bound: HashSet<u32>,
}

/// The ids a leg names for a publisher whose SDP said `extmap`.
pub(super) fn extmap(extmap: &HashMap<String, u8>) -> Vec<(String, u8)> {
    LEG_URIS
        .iter()
        .filter_map(|u| Some(((*u).to_owned(), *extmap.get(*u)?)))
        .collect()
}

/// Relay one accepted packet of a local publisher's `track` on `layer` (SFU-CAS-02).
pub(super) fn packet(
    out: &mut VecDeque<RelayOut>,
    room: &EdgeRoom,
    track: TrackId,
    layer: u8,
    p: &rtc::rtp::Packet,
) {
    let Ok(rtp) = p.marshal() else {
        return;
    };
    let rid = room
        .published
        .get(&track)
        .and_then(|t| t.rids.get(usize::from(layer)))
        .cloned()
        .unwrap_or_default();
    out.push_back(RelayOut::Packet {
        room: room.name.clone(),
        track: track.0,
        rid,
        rtp: rtp.freeze(),
    });
}

impl EdgeRooms {
    /// What the legs are to carry next (SFU-CAS-02..04).
    pub fn poll_relay(&mut self) -> Option<RelayOut> {
        self.relay.pop_front()
    }

    /// Whether some leg wants `room`: while it does, its local publishers' packets and tracks
    /// come out of [`EdgeRooms::poll_relay`].
    pub fn set_relayed(&mut self, room: &str, on: bool) {
        if let Some(r) = self
            .by_name
            .get(room)
            .and_then(|&r| self.rooms.get_mut(r)?.as_mut())
        {
            r.relayed = on;
        }
    }

    /// The local tracks of `room`, as a leg that starts wanting it is told them.
    #[must_use]
    pub fn local_tracks(&self, room: &str) -> Vec<RelayTrack> {
        let Some(r) = self
            .by_name
            .get(room)
            .and_then(|&r| self.rooms.get(r)?.as_ref())
        else {
            return Vec::new();
        };
        let mut out: Vec<RelayTrack> = r
            .track_ids
            .iter()
            .filter_map(|((publisher, name), tid)| {
                let m = self.members.get(publisher)?;
                let p = r.published.get(tid)?;
                Some(RelayTrack {
                    room: room.to_owned(),
                    track: tid.0,
                    publisher: m.identity.clone(),
                    kind: p.kind,
                    publisher_track_id: name.clone(),
                    rids: p.rids.clone(),
                    extmap: extmap(&m.sdp.extmap),
                })
            })
            .collect();
        out.sort_by_key(|t| t.track);
        out
    }

    /// The room and identity of `c`, a publisher on another node.
    #[must_use]
    pub fn remote(&self, c: ConnId) -> Option<(&str, &str)> {
        let room = self.rooms.get(*self.remote_rooms.get(&c)?)?.as_ref()?;
        Some((&room.name, &room.remotes.get(&c)?.identity))
    }

    /// A track of another node's publisher, announced over `leg`: it is published in its room
    /// here (if the room is here), under a remote publisher of that identity (SFU-CAS-03). A
    /// track announced again is ignored.
    pub fn remote_track(&mut self, leg: LegId, t: RelayTrack) {
        let Some(&r) = self.by_name.get(&t.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        if room.remote_tracks.contains_key(&(leg, t.track)) {
            return;
        }
        let existing = room
            .remotes
            .iter()
            .find(|(_, x)| x.leg == leg && x.identity == t.publisher)
            .map(|(c, _)| *c);
        let c = if let Some(c) = existing {
            c
        } else {
            let c = self.next_remote;
            self.next_remote += 1;
            let extmap: HashMap<String, u8> = t.extmap.iter().cloned().collect();
            let id = |u: &str| extmap.get(u).copied();
            let ids = ExtIds {
                mid: id(MID_URI),
                rid: id(RID_URI),
                rrid: id(RRID_URI),
                dd: id(DD_URI),
                audio_level: id(AUDIO_LEVEL_URI),
            };
            room.core.add_participant(pid(c), ids);
            room.remotes.insert(
                c,
                Remote {
                    leg,
                    identity: t.publisher.clone(),
                    extmap,
                    bound: HashSet::new(),
                },
            );
            self.remote_rooms.insert(c, r);
            c
        };
        let publish = Publish {
            kind: t.kind,
            clock_rate: peer::codec(t.kind).clock_rate,
            rids: t.rids.iter().map(|r| r.clone().into_bytes()).collect(),
        };
        let Ok(tid) = room.core.publish(pid(c), publish) else {
            return;
        };
        room.track_ids
            .insert((c, t.publisher_track_id.clone()), tid);
        room.remote_tracks.insert((leg, t.track), tid);
        room.published.insert(
            tid,
            Published {
                publisher: c,
                origin: Origin::Remote {
                    leg,
                    track: t.track,
                },
                kind: t.kind,
                rids: t.rids.clone(),
            },
        );
        self.counters.tracks += 1;
        self.events.push_back(EdgeRoomEvent::Published {
            publisher: c,
            track: tid,
            kind: t.kind,
            publisher_track_id: t.publisher_track_id,
            rids: t.rids,
        });
    }

    /// A track announced over `leg` ended: it ends here as a local one would; a remote
    /// publisher left with no track leaves the room (SFU-CAS-05).
    pub fn remote_track_end(&mut self, now: Instant, leg: LegId, room: &str, track: u64) {
        let Some(&r) = self.by_name.get(room) else {
            return;
        };
        let Some(state) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let Some(tid) = state.remote_tracks.remove(&(leg, track)) else {
            return;
        };
        let Some(publisher) = state.published.get(&tid).map(|p| p.publisher) else {
            return;
        };
        state.core.unpublish(tid);
        let last = !state.remote_tracks.values().any(|t| {
            state
                .published
                .get(t)
                .is_some_and(|p| p.publisher == publisher)
        });
        self.end_tracks(now, r, publisher, &[tid]);
        if last {
            self.forget_remote(r, publisher);
        }
    }

    /// Every remote publisher that came over `leg` leaves, in `room` or in every room (the leg
    /// no longer wants the room, or it is gone): their tracks end here (SFU-CAS-05).
    pub fn drop_remotes(&mut self, now: Instant, leg: LegId, room: Option<&str>) {
        let rooms: Vec<usize> = match room {
            Some(name) => self.by_name.get(name).copied().into_iter().collect(),
            None => self.by_name.values().copied().collect(),
        };
        for r in rooms {
            let Some(state) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
                continue;
            };
            let gone: Vec<ConnId> = state
                .remotes
                .iter()
                .filter(|(_, x)| x.leg == leg)
                .map(|(c, _)| *c)
                .collect();
            state.remote_tracks.retain(|(l, _), _| *l != leg);
            for c in gone {
                let Some(state) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
                    break;
                };
                let tracks: Vec<TrackId> = state
                    .published
                    .iter()
                    .filter(|(_, p)| p.publisher == c)
                    .map(|(t, _)| *t)
                    .collect();
                for t in &tracks {
                    state.core.unpublish(*t);
                }
                self.end_tracks(now, r, c, &tracks);
                self.forget_remote(r, c);
            }
        }
    }

    /// Remote publisher `c` leaves room `r`'s core.
    fn forget_remote(&mut self, r: usize, c: ConnId) {
        if let Some(state) = self.rooms.get_mut(r).and_then(Option::as_mut) {
            state.core.remove_participant(pid(c));
            state.remotes.remove(&c);
        }
        self.remote_rooms.remove(&c);
    }

    /// One packet of a track announced over `leg`, as its origin node received it: it goes
    /// through the room's core like a local publisher's (SFU-CAS-03). Its layer is bound from
    /// the rid the leg names, the first time its SSRC is seen (the publisher stops sending
    /// rid early, SFU-STR-01).
    pub fn remote_packet(
        &mut self,
        now: Instant,
        leg: LegId,
        room: &str,
        track: u64,
        rid: &str,
        rtp: Bytes,
    ) {
        let Some(&r) = self.by_name.get(room) else {
            self.counters.drop(DropKind::UnknownTrack);
            return;
        };
        let Some(state) = self.rooms.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let Some(&tid) = state.remote_tracks.get(&(leg, track)) else {
            self.counters.drop(DropKind::UnknownTrack);
            return;
        };
        let Some(publisher) = state.published.get(&tid).map(|p| p.publisher) else {
            return;
        };
        let Ok(p) = rtc::rtp::Packet::unmarshal(&mut rtp.clone()) else {
            self.counters.drop(DropKind::Metadata);
            return;
        };
        self.counters.relayed[1] += 1;
        if !rid.is_empty()
            && let Some(remote) = state.remotes.get_mut(&publisher)
            && remote.bound.insert(p.header.ssrc)
        {
            let _ = state.core.bind_layer(tid, p.header.ssrc, rid.as_bytes());
        }
        self.route_packet(now, r, publisher, tid, &p);
    }

    /// Another node asks for a key frame of local `track` on `ssrc` (SFU-CAS-04): the
    /// publisher is asked with a PLI. The asking node's core throttled it already.
    pub fn remote_key_frame(&mut self, now: Instant, room: &str, track: u64, ssrc: u32) {
        let Some(state) = self
            .by_name
            .get(room)
            .and_then(|&r| self.rooms.get(r)?.as_ref())
        else {
            return;
        };
        let Some(p) = state.published.get(&TrackId(track)) else {
            return;
        };
        if let Origin::Local(receiver) = p.origin
            && self
                .edge
                .request_key_frame(now, p.publisher, receiver, ssrc)
                .is_ok()
        {
            self.counters.publisher_key_frame_requests += 1;
        }
    }
}
