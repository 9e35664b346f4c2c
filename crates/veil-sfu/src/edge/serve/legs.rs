//! The shell's side of node-to-node legs (SFU-CAS-02..05): what a leg hands to the rooms of
//! this node runs as commands on the room's worker; what the rooms relay leaves through each
//! leg's queue. The leg itself (gRPC, authentication, discovery) is `crate::cascade`.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

use super::{Driver, EdgeSfu, lock};
use crate::edge::room::{LegId, RelayOut, RelayTrack};

/// What arrives over a leg for one room.
#[derive(Debug, Clone)]
pub enum RelayIn {
    /// A track of the other node's publisher.
    Track(RelayTrack),
    /// That track ended.
    TrackEnd {
        /// Its id on the other node.
        track: u64,
    },
    /// One of its packets.
    Packet {
        /// Its id on the other node.
        track: u64,
        /// The layer's rid (empty: one layer).
        rid: String,
        /// The RTP packet as the publisher sent it.
        rtp: Bytes,
    },
    /// The other node asks for a key frame of a local track.
    KeyFrame {
        /// The track's id here.
        track: u64,
        /// The publisher's SSRC of the layer wanted.
        ssrc: u32,
    },
}

impl Driver {
    /// Hand what the rooms relay to the legs that want it (SFU-CAS-02). A leg whose queue is
    /// full loses the message (a slow leg never stalls the worker); it is logged.
    pub(super) fn relay(&mut self) {
        while let Some(out) = self.rooms.poll_relay() {
            let Some(wanting) = self.rooms_legs.get(out.room()) else {
                continue;
            };
            match out.leg() {
                Some(leg) => {
                    if let Some(tx) = self.legs.get(&leg)
                        && tx.try_send(out).is_err()
                    {
                        self.metrics.leg_dropped.inc();
                        debug!(leg, "a leg's queue is full: a key-frame request is lost");
                    }
                }
                None => {
                    for leg in wanting {
                        if let Some(tx) = self.legs.get(leg)
                            && tx.try_send(out.clone()).is_err()
                        {
                            self.metrics.leg_dropped.inc();
                            debug!(leg, "a leg's queue is full: a message is lost");
                        }
                    }
                }
            }
        }
    }

    fn leg_in(&mut self, now: Instant, leg: LegId, room: &str, messages: Vec<RelayIn>) {
        for m in messages {
            match m {
                RelayIn::Track(t) => self.rooms.remote_track(leg, t),
                RelayIn::TrackEnd { track } => self.rooms.remote_track_end(now, leg, room, track),
                RelayIn::Packet { track, rid, rtp } => {
                    self.rooms.remote_packet(now, leg, room, track, &rid, rtp);
                }
                RelayIn::KeyFrame { track, ssrc } => {
                    self.rooms.remote_key_frame(now, room, track, ssrc);
                }
            }
        }
    }
}

impl EdgeSfu {
    /// The rooms someone is in (or joining) on this node, sorted: what the node records as
    /// hosted (SFU-CAS-01).
    #[must_use]
    pub fn hosted_rooms(&self) -> Vec<String> {
        lock(&self.placement).names()
    }

    /// Run `f` on worker `w` without waiting for it; what it changed is delivered after it.
    async fn post(&self, w: usize, f: impl FnOnce(&mut Driver, Instant) + Send + 'static) {
        let command: super::Command = Box::new(move |d, now| {
            f(d, now);
            d.deliver(now);
        });
        let _ = self.workers[w].commands.send(command).await;
    }

    /// A leg is up: what the rooms relay to it goes into `tx`.
    pub async fn open_leg(&self, leg: LegId, tx: mpsc::Sender<RelayOut>) {
        self.metrics.legs.inc();
        for w in 0..self.workers.len() {
            let tx = tx.clone();
            let _ = self
                .call(w, move |d, _| {
                    d.legs.insert(leg, tx);
                })
                .await;
        }
    }

    /// A leg is gone: every remote publisher that came over it leaves (SFU-CAS-05).
    pub async fn close_leg(&self, leg: LegId) {
        self.metrics.legs.dec();
        for w in 0..self.workers.len() {
            let _ = self
                .call(w, move |d, now| {
                    d.legs.remove(&leg);
                    let mut emptied = Vec::new();
                    for (room, legs) in &mut d.rooms_legs {
                        legs.retain(|l| *l != leg);
                        if legs.is_empty() {
                            emptied.push(room.clone());
                        }
                    }
                    for room in emptied {
                        d.rooms_legs.remove(&room);
                        d.rooms.set_relayed(&room, false);
                    }
                    d.rooms.drop_remotes(now, leg, None);
                })
                .await;
        }
    }

    /// `leg` wants `room` (the node at its other end hosts it too): the room's local tracks
    /// are announced to it, and its publishers' packets relayed to it from now on. Once per
    /// leg and room: a leg that wants the room already changes nothing. False when the room
    /// is not on this node.
    pub async fn attach_leg(&self, room: &str, leg: LegId) -> bool {
        let r = room.to_owned();
        self.in_room(room, move |d, _| {
            let legs = d.rooms_legs.entry(r.clone()).or_default();
            if legs.contains(&leg) {
                return true;
            }
            legs.push(leg);
            d.rooms.set_relayed(&r, true);
            if let Some(tx) = d.legs.get(&leg) {
                for t in d.rooms.local_tracks(&r) {
                    let _ = tx.try_send(RelayOut::Track(t));
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// `leg` no longer wants `room`: nothing more is relayed to it, and the publishers that came
    /// over it leave the room here.
    pub async fn detach_leg(&self, room: &str, leg: LegId) {
        let r = room.to_owned();
        self.in_room(room, move |d, now| {
            if let Some(legs) = d.rooms_legs.get_mut(&r) {
                legs.retain(|l| *l != leg);
                if legs.is_empty() {
                    d.rooms_legs.remove(&r);
                    d.rooms.set_relayed(&r, false);
                }
            }
            d.rooms.drop_remotes(now, leg, Some(&r));
        })
        .await;
    }

    /// What `leg` carried for `room`, in order; dropped if the room is not on this node.
    pub async fn leg_in(&self, leg: LegId, room: &str, messages: Vec<RelayIn>) {
        let Some(w) = self.worker_of(room) else {
            return;
        };
        let r = room.to_owned();
        self.post(w, move |d, now| d.leg_in(now, leg, &r, messages))
            .await;
    }
}
