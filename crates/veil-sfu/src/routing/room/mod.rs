//! One room's routing state: who publishes which track, who subscribes to it, and what happens
//! to each packet (SFU-ROOM-01..02).
//!
//! Sans-I/O like the rest of `routing`: the shell feeds packets (header fields and the raw
//! extension block, never the payload) and the caller's monotonic time in, and acts on what comes
//! back: packets to send with rewritten header fields, key-frame requests to send to publishers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::SfuError;
use crate::routing::{
    ActiveSpeaker, Continuation, Decision, DropReason, Dtx, ExtIds, ExtMap, KeyFrameRequests,
    KeyFrameStats, LayerChoice, LayerForwarder, LayerPolicy, PacketMeta, RateLimit, RateMeter,
    Rung, ScalableChoice, SilenceGate, SsrcOwners, StreamRegistry, SvcDecision, SvcDrop, SvcLayer,
    SvcRates, SvcSelector, TokenBucket,
};
use veil_wire::dd::DependencyDescriptor;

/// A participant, numbered by the shell.
pub type ParticipantId = u64;

/// A published track, numbered by the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio (Opus): no key frames, no layers.
    Audio,
    /// Video (VP8 under SFrame): key frames and simulcast layers, as the DD marks them.
    Video,
}

/// Most simulcast layers a track may have (browsers send up to 3).
pub const MAX_LAYERS: usize = 4;

/// Publishing a track.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Audio or video.
    pub kind: MediaKind,
    /// The codec's RTP clock rate (48 kHz Opus, 90 kHz video).
    pub clock_rate: u32,
    /// The simulcast rids in the publisher's SDP order (empty: one unnamed layer). Layer `i`
    /// of the track is `rids[i]`; rids first seen on packets are appended, up to [`MAX_LAYERS`].
    pub rids: Vec<Vec<u8>>,
}

/// One subscription to a track, as negotiated with the subscriber.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// The SSRC the subscriber receives this track on (one per subscriber and track).
    pub out_ssrc: u32,
    /// The payload type negotiated for the track's codec on the subscriber's connection.
    pub payload_type: u8,
    /// Header-extension ids from the publisher's connection to the subscriber's.
    pub ext: ExtMap,
    /// The layer wanted, by rid (None: the track's first layer).
    pub rid: Option<Vec<u8>>,
}

/// One packet to send to one subscriber: the publisher's packet with these header fields, and
/// its extension elements mapped through `ext`. The payload goes out as it came (SFU-BLIND-03).
#[derive(Debug, Clone)]
pub struct Forward {
    /// Who receives it.
    pub subscriber: ParticipantId,
    /// The subscriber-side SSRC.
    pub ssrc: u32,
    /// Rewritten sequence number.
    pub seq: u16,
    /// Rewritten timestamp.
    pub timestamp: u32,
    /// The payload type on the subscriber's connection.
    pub payload_type: u8,
    /// Publisher → subscriber extension ids.
    pub ext: Arc<ExtMap>,
    /// Whether this packet starts a new layer for the subscriber.
    pub switched: bool,
    /// The marker bit for the subscriber: the packet's own, or set where a thinned scalable
    /// stream's temporal unit ends for this subscriber (SFU-SVC-06).
    pub marker: bool,
    /// The subscriber's decode target of a scalable stream, on the first packet forwarded
    /// since it changed (SFU-SVC-10); None on every other packet.
    pub decode_target: Option<SvcLayer>,
}

/// What to do with one published packet.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// The packet's layer within its track.
    pub layer: u8,
    /// Whether it is an RTX (repair) packet: those are not forwarded (retransmission is per hop).
    pub repair: bool,
    /// Copies to send.
    pub forwards: Vec<Forward>,
    /// Subscribers that did not get it, and why.
    pub dropped: Vec<DropReason>,
    /// Publisher SSRCs to send a key-frame request (PLI) for, now (already throttled).
    pub key_frame_requests: Vec<u32>,
    /// The new active speaker, when this packet changed it.
    pub active_speaker: Option<ParticipantId>,
}

#[derive(Debug)]
struct Participant {
    streams: StreamRegistry,
    tracks: Vec<TrackId>,
    subscriptions: Vec<TrackId>,
    /// Its connection's bandwidth estimate, and each of its video subscriptions' share of it
    /// (SFU-BWE-03).
    estimate: Option<u64>,
    video_share: Option<u64>,
    /// Its packet-rate bucket (SFU-LIVE-04).
    bucket: TokenBucket,
}

#[derive(Debug)]
struct Track {
    publisher: ParticipantId,
    kind: MediaKind,
    clock_rate: u32,
    rids: Vec<Vec<u8>>,
    /// SSRC of each layer, once a packet showed it.
    layer_ssrc: [Option<u32>; MAX_LAYERS],
    /// Layer of each SSRC (from a latched rid, or from the shell's own rid latch).
    ssrc_layer: HashMap<u32, u8>,
    /// A key frame is wanted on this layer but its SSRC is not known yet.
    key_frame_pending: [bool; MAX_LAYERS],
    subscribers: Vec<ParticipantId>,
    /// Each layer's bitrate (SFU-BWE-02).
    meters: [RateMeter; MAX_LAYERS],
    /// Each layer's decode targets' bitrates, once it showed more than one (SFU-SVC-08).
    svc_rates: [SvcRates; MAX_LAYERS],
}

#[derive(Debug)]
struct Subscription {
    forwarder: LayerForwarder,
    choice: LayerChoice,
    payload_type: u8,
    ext: Arc<ExtMap>,
    /// Thins the forwarded simulcast layer to one decode target (SFU-SVC-09), once the stream
    /// showed a structure with more than one.
    svc: SvcSelector,
    svc_active: bool,
    /// The subscriber's cap on the spatial and temporal layer (`Room::set_svc_layer`).
    svc_cap: SvcLayer,
    /// The decode target last told with a forwarded packet ([`Forward::decode_target`]).
    svc_told: Option<SvcLayer>,
    /// The rung of a scalable track's ladder the estimate allows (SFU-SVC-08).
    rung: ScalableChoice,
}

impl Subscription {
    /// Thin what the layer forwarder forwards (SFU-SVC-09): `seq` is the forwarder's output
    /// number, `switched` whether it just started a simulcast layer. A stream that never showed
    /// more than one decode target passes unchanged; once one has, every packet goes through
    /// the selector, so its numbering stays one sequence.
    fn thin(
        &mut self,
        dd: Option<&DependencyDescriptor>,
        seq: u16,
        marker: bool,
        switched: bool,
    ) -> Result<(u16, bool, Option<SvcLayer>), SvcDrop> {
        if !self.svc_active {
            let scalable = dd
                .and_then(DependencyDescriptor::structure)
                .is_some_and(|s| s.decode_target_count > 1);
            if !scalable {
                return Ok((seq, marker, None));
            }
            self.svc_active = true;
        }
        if switched {
            // Another simulcast layer: another stream, starting at its key frame.
            self.svc.reset_stream();
        }
        let verdict = match dd {
            Some(d) => self.svc.on_packet(seq, marker, d),
            None => self.svc.skip(seq),
        };
        match verdict {
            SvcDecision::Forward { seq, marker, .. } => {
                // A change of decode target is told with the first packet forwarded after it:
                // the frame it happened at may be one the new target leaves out (SFU-SVC-10).
                let current = self.svc.current();
                let told = (current != self.svc_told).then_some(current).flatten();
                self.svc_told = current;
                Ok((seq, marker, told))
            }
            SvcDecision::Drop(r) => Err(r),
        }
    }

    /// Whether the selector waits for a key frame: nothing decodable, or a spatial switch that
    /// only a key frame allows (SFU-SVC-04, SFU-SVC-09).
    fn svc_wants_key_frame(&self) -> bool {
        if !self.svc_active {
            return false;
        }
        let current = self.svc.current();
        self.svc.needs_key_frame()
            || self
                .svc
                .switch_pending()
                .is_some_and(|p| current.is_none_or(|c| c.spatial != p.spatial))
    }
}

/// The rungs of `t`'s ladder (SFU-SVC-08): each simulcast layer's decode targets, or the layer
/// as one rung where it showed none; empty unless some layer is scalable.
fn svc_ladder(t: &Track, now: Duration) -> Vec<Rung> {
    let layers = t.rids.len().clamp(1, MAX_LAYERS);
    let per_layer: Vec<Vec<Rung>> = (0..layers)
        .map(|l| t.svc_rates[l].rungs(l as u8, now))
        .collect();
    if per_layer.iter().all(Vec::is_empty) {
        return Vec::new();
    }
    per_layer
        .into_iter()
        .enumerate()
        .flat_map(|(l, rungs)| {
            if rungs.is_empty() {
                vec![Rung {
                    simulcast: l as u8,
                    layer: SvcLayer::ALL,
                    bits_per_second: t.meters[l].bits_per_second(now),
                }]
            } else {
                rungs
            }
        })
        .collect()
}

/// How a thinned packet's drop is counted, with the reasons the shells already count.
fn svc_drop_reason(r: SvcDrop) -> DropReason {
    match r {
        SvcDrop::NotInTarget | SvcDrop::Undecodable => DropReason::NotSelected,
        SvcDrop::WaitingForSwitch => DropReason::WaitingForKeyFrame,
        SvcDrop::TooOld => DropReason::LateAfterSkip,
        SvcDrop::NoStructure => DropReason::NoDependencyDescriptor,
    }
}

/// The routing state of one room (SFU-ROOM-01..02).
#[derive(Debug)]
pub struct Room {
    participants: HashMap<ParticipantId, Participant>,
    tracks: HashMap<TrackId, Track>,
    subs: HashMap<(ParticipantId, TrackId), Subscription>,
    /// Where each ended subscription's output stopped, by subscriber and output SSRC: the next
    /// subscription on that SSRC continues it (SFU-FWD-07).
    ended: HashMap<(ParticipantId, u32), Continuation>,
    owners: SsrcOwners,
    key_frames: KeyFrameRequests,
    speaker: ActiveSpeaker,
    /// Silent audio is dropped when set (SFU-DTX-01).
    dtx: Option<SilenceGate>,
    /// Each participant's packet-rate limit, when set (SFU-LIVE-04).
    rate_limit: Option<RateLimit>,
    next_track: u64,
    layer_policy: LayerPolicy,
}

impl Room {
    /// An empty room whose key-frame requests to a publisher stream are at least
    /// `key_frame_interval` apart (SFU-KF-01).
    #[must_use]
    pub fn new(key_frame_interval: Duration) -> Self {
        Self {
            participants: HashMap::new(),
            tracks: HashMap::new(),
            subs: HashMap::new(),
            ended: HashMap::new(),
            owners: SsrcOwners::default(),
            key_frames: KeyFrameRequests::new(key_frame_interval),
            speaker: ActiveSpeaker::new(
                Duration::from_millis(500),
                5.0,
                Duration::from_millis(300),
            ),
            dtx: Some(SilenceGate::new(Dtx::default())),
            rate_limit: Some(RateLimit::default()),
            next_track: 1,
            layer_policy: LayerPolicy::default(),
        }
    }

    /// Drop silent audio with these thresholds (SFU-DTX-01), or forward all of it (`None`).
    /// On by default, with [`Dtx::default`].
    pub fn set_dtx(&mut self, dtx: Option<Dtx>) {
        self.dtx = dtx.map(SilenceGate::new);
    }

    /// Limit each participant's packet rate (SFU-LIVE-04), or not (`None`). On by default, with
    /// [`RateLimit::default`].
    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.rate_limit = limit;
    }

    /// Admit a participant whose connection negotiated these extension ids.
    pub fn add_participant(&mut self, id: ParticipantId, ids: ExtIds) {
        self.participants.insert(
            id,
            Participant {
                streams: StreamRegistry::new(ids),
                tracks: Vec::new(),
                subscriptions: Vec::new(),
                estimate: None,
                video_share: None,
                bucket: TokenBucket::default(),
            },
        );
    }

    /// Participants in the room.
    #[must_use]
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// A participant starts publishing a track.
    ///
    /// # Errors
    /// [`SfuError::UnknownParticipant`].
    pub fn publish(&mut self, publisher: ParticipantId, p: Publish) -> Result<TrackId, SfuError> {
        let part = self
            .participants
            .get_mut(&publisher)
            .ok_or(SfuError::UnknownParticipant(publisher))?;
        let id = TrackId(self.next_track);
        self.next_track += 1;
        part.tracks.push(id);
        let mut rids = p.rids;
        rids.truncate(MAX_LAYERS);
        self.tracks.insert(
            id,
            Track {
                publisher,
                kind: p.kind,
                clock_rate: p.clock_rate,
                rids,
                layer_ssrc: [None; MAX_LAYERS],
                ssrc_layer: HashMap::new(),
                key_frame_pending: [false; MAX_LAYERS],
                subscribers: Vec::new(),
                meters: Default::default(),
                svc_rates: Default::default(),
            },
        );
        Ok(id)
    }

    /// The shell's stack latched `rid` for `ssrc` of `track` (webrtc-rs reports it when a
    /// stream opens): packets of `ssrc` without a rid of their own belong to that layer
    /// (SFU-STR-04).
    ///
    /// # Errors
    /// [`SfuError::UnknownTrack`], [`SfuError::TooManyLayers`].
    pub fn bind_layer(&mut self, track: TrackId, ssrc: u32, rid: &[u8]) -> Result<u8, SfuError> {
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track.0))?;
        let layer = layer_index(t, rid).ok_or(SfuError::TooManyLayers(ssrc))?;
        t.ssrc_layer.insert(ssrc, layer as u8);
        t.layer_ssrc[layer] = Some(ssrc);
        Ok(layer as u8)
    }

    /// The track's publisher and kind.
    #[must_use]
    pub fn track(&self, track: TrackId) -> Option<(ParticipantId, MediaKind)> {
        self.tracks.get(&track).map(|t| (t.publisher, t.kind))
    }

    /// A track ended: forget it and its subscriptions. Returns who was subscribed.
    pub fn unpublish(&mut self, track: TrackId) -> Vec<ParticipantId> {
        let Some(t) = self.tracks.remove(&track) else {
            return Vec::new();
        };
        for ssrc in t.layer_ssrc.iter().flatten() {
            self.key_frames.remove(*ssrc);
            if let Some(g) = self.dtx.as_mut() {
                g.remove(*ssrc);
            }
        }
        if let Some(p) = self.participants.get_mut(&t.publisher) {
            p.tracks.retain(|x| *x != track);
        }
        for s in &t.subscribers {
            self.end_subscription(*s, track);
            if let Some(p) = self.participants.get_mut(s) {
                p.subscriptions.retain(|x| *x != track);
            }
        }
        t.subscribers
    }

    /// A participant left (or was removed): forget it, its tracks, its subscriptions and its
    /// SSRCs. Returns its tracks with the subscribers each had.
    pub fn remove_participant(&mut self, id: ParticipantId) -> Vec<(TrackId, Vec<ParticipantId>)> {
        let Some(p) = self.participants.get(&id) else {
            return Vec::new();
        };
        let (tracks, subscriptions) = (p.tracks.clone(), p.subscriptions.clone());
        for t in subscriptions {
            self.unsubscribe(id, t);
        }
        let removed = tracks.into_iter().map(|t| (t, self.unpublish(t))).collect();
        self.participants.remove(&id);
        self.ended.retain(|(p, _), _| *p != id);
        self.owners.release(id);
        self.speaker.remove(id);
        removed
    }

    /// Start forwarding `track` to `subscriber` (SFU-ROOM-02). Returns publisher SSRCs to send
    /// a key-frame request for now: a new subscriber needs a key frame (SFU-KF-03).
    ///
    /// # Errors
    /// [`SfuError::UnknownParticipant`], [`SfuError::UnknownTrack`].
    pub fn subscribe(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        s: Subscribe,
        now: Duration,
    ) -> Result<Vec<u32>, SfuError> {
        if !self.participants.contains_key(&subscriber) {
            return Err(SfuError::UnknownParticipant(subscriber));
        }
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track.0))?;
        let mut forwarder = match self.ended.remove(&(subscriber, s.out_ssrc)) {
            Some(from) => LayerForwarder::continuing(s.out_ssrc, t.clock_rate, from),
            None => LayerForwarder::new(s.out_ssrc, t.clock_rate),
        };
        let layer = layer_of_rid(t, s.rid.as_deref());
        forwarder.set_target(Some(layer));
        self.subs.insert(
            (subscriber, track),
            Subscription {
                forwarder,
                choice: LayerChoice::new(layer, self.layer_policy),
                payload_type: s.payload_type,
                ext: Arc::new(s.ext),
                svc: SvcSelector::new(SvcLayer::ALL),
                svc_active: false,
                svc_cap: SvcLayer::ALL,
                svc_told: None,
                rung: ScalableChoice::new(self.layer_policy),
            },
        );
        if !t.subscribers.contains(&subscriber) {
            t.subscribers.push(subscriber);
        }
        if let Some(p) = self.participants.get_mut(&subscriber)
            && !p.subscriptions.contains(&track)
        {
            p.subscriptions.push(track);
        }
        Ok(self.want_key_frame(track, layer, now).into_iter().collect())
    }

    /// Stop forwarding `track` to `subscriber`. Returns whether it was subscribed.
    pub fn unsubscribe(&mut self, subscriber: ParticipantId, track: TrackId) -> bool {
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers.retain(|s| *s != subscriber);
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscriptions.retain(|t| *t != track);
        }
        self.end_subscription(subscriber, track)
    }

    /// Forget a subscription, keeping where its output stopped (SFU-FWD-07). Returns whether it
    /// was there.
    fn end_subscription(&mut self, subscriber: ParticipantId, track: TrackId) -> bool {
        let Some(sub) = self.subs.remove(&(subscriber, track)) else {
            return false;
        };
        if let Some(c) = sub.forwarder.continuation() {
            self.ended.insert((subscriber, sub.forwarder.out_ssrc()), c);
        }
        true
    }

    /// The subscriber wants the layer named `rid` (None: the first layer). The switch happens at
    /// that layer's next key frame (SFU-FWD-02); returns publisher SSRCs to ask for one now
    /// (SFU-KF-03).
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`].
    pub fn set_layer(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        rid: Option<&[u8]>,
        now: Duration,
    ) -> Result<Vec<u32>, SfuError> {
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track.0))?;
        let layer = layer_of_rid(t, rid);
        let sub = self
            .subs
            .get_mut(&(subscriber, track))
            .ok_or(SfuError::NotSubscribed(track.0))?;
        // The choice keeps a lower layer while the estimate says so (SFU-BWE-03).
        let layer = sub.choice.request(layer);
        sub.forwarder.set_target(Some(layer));
        if sub.forwarder.current() == Some(layer) {
            return Ok(Vec::new());
        }
        Ok(self.want_key_frame(track, layer, now).into_iter().collect())
    }

    /// Cap the spatial and temporal layer `subscriber` gets of a scalable `track` (AV1/VP9
    /// SVC, VP8 temporal layers), within the simulcast layer it gets (SFU-SVC-09). The decode
    /// target follows where the dependency descriptor allows; a spatial switch that needs a key
    /// frame asks the publisher for one with the track's next packet (throttled, SFU-KF-01).
    /// [`SvcLayer::ALL`] (the default) forwards everything.
    ///
    /// # Errors
    /// [`SfuError::NotSubscribed`].
    pub fn set_svc_layer(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        cap: SvcLayer,
    ) -> Result<(), SfuError> {
        let sub = self
            .subs
            .get_mut(&(subscriber, track))
            .ok_or(SfuError::NotSubscribed(track.0))?;
        sub.svc_cap = cap;
        sub.svc.set_target(cap);
        Ok(())
    }

    /// The spatial and temporal layer forwarded to `subscriber` of a scalable `track` (None:
    /// not thinned, or waiting for a switch point) and its cap (SFU-SVC-09).
    #[must_use]
    pub fn svc_layers(
        &self,
        subscriber: ParticipantId,
        track: TrackId,
    ) -> Option<(Option<SvcLayer>, SvcLayer)> {
        let s = self.subs.get(&(subscriber, track))?;
        Some((s.svc.current(), s.svc_cap))
    }

    /// The rungs of a scalable `track`'s quality ladder with their measured bitrates, lowest
    /// first: per simulcast layer, per spatial layer, per temporal layer (SFU-SVC-08). Empty
    /// for a track that never showed more than one decode target.
    #[must_use]
    pub fn svc_rungs(&self, track: TrackId, now: Duration) -> Vec<Rung> {
        self.tracks
            .get(&track)
            .map_or_else(Vec::new, |t| svc_ladder(t, now))
    }

    /// The layer forwarded to `subscriber` and the layer it asked for.
    #[must_use]
    pub fn layers(&self, subscriber: ParticipantId, track: TrackId) -> Option<(Option<u8>, u8)> {
        let s = self.subs.get(&(subscriber, track))?;
        Some((s.forwarder.current(), s.forwarder.target()?))
    }

    /// A subscriber sent PLI or FIR for `track`. The request ends here (SFU-KF-03); returns the
    /// publisher SSRC to send the SFU's own request for, if the throttle lets one go now
    /// (SFU-KF-01).
    pub fn subscriber_key_frame_request(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        now: Duration,
    ) -> Option<u32> {
        let s = self.subs.get(&(subscriber, track))?;
        let layer = s.forwarder.current().or(s.forwarder.target())?;
        self.want_key_frame(track, layer, now)
    }

    fn want_key_frame(&mut self, track: TrackId, layer: u8, now: Duration) -> Option<u32> {
        let t = self.tracks.get_mut(&track)?;
        if t.kind == MediaKind::Audio {
            return None;
        }
        let l = usize::from(layer).min(MAX_LAYERS - 1);
        match t.layer_ssrc[l] {
            Some(ssrc) => self.key_frames.request(ssrc, now).then_some(ssrc),
            None => {
                t.key_frame_pending[l] = true;
                None
            }
        }
    }

    /// Follow a layer-choice policy from now on, for new subscriptions (SFU-BWE-03).
    pub fn set_layer_policy(&mut self, policy: LayerPolicy) {
        self.layer_policy = policy;
    }

    /// The send-side bandwidth estimate of `subscriber`'s connection, in bits per second (None:
    /// none yet, e.g. no transport-cc feedback). Each of its video subscriptions gets an equal
    /// share of what its audio subscriptions leave; the layer choice acts on it with the next
    /// packet of each track (SFU-BWE-03). Call it periodically: the shares follow the measured
    /// rates.
    pub fn set_estimate(
        &mut self,
        subscriber: ParticipantId,
        estimate: Option<u64>,
        now: Duration,
    ) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let (mut audio, mut videos) = (0u64, 0u64);
        for t in p.subscriptions.iter().filter_map(|t| self.tracks.get(t)) {
            match t.kind {
                MediaKind::Audio => audio += t.meters[0].bits_per_second(now),
                MediaKind::Video => videos += 1,
            }
        }
        p.estimate = estimate;
        p.video_share = estimate.map(|e| e.saturating_sub(audio) / videos.max(1));
    }

    /// What `subscriber`'s connection needs for everything it asked for, in bits per second
    /// (SFU-BWE-06): each audio subscription's measured rate, and each video subscription's
    /// requested layer (or the highest below it that sends) with the layer choice's up headroom,
    /// so that an estimate of this much lets every choice go up. Zero without subscriptions.
    #[must_use]
    pub fn need(&self, subscriber: ParticipantId, now: Duration) -> u64 {
        let Some(p) = self.participants.get(&subscriber) else {
            return 0;
        };
        let mut need = 0.0;
        for tid in &p.subscriptions {
            let (Some(t), Some(sub)) = (self.tracks.get(tid), self.subs.get(&(subscriber, *tid)))
            else {
                continue;
            };
            let layers = t.rids.len().clamp(1, MAX_LAYERS);
            let requested = usize::from(sub.choice.requested()).min(layers - 1);
            let rate = (0..=requested)
                .rev()
                .map(|l| t.meters[l].bits_per_second(now))
                .find(|r| *r > 0)
                .unwrap_or(0) as f64;
            need += match t.kind {
                MediaKind::Audio => rate,
                MediaKind::Video => rate * self.layer_policy.up_headroom,
            };
        }
        need as u64
    }

    /// The estimate last given for `subscriber`'s connection.
    #[must_use]
    pub fn estimate(&self, subscriber: ParticipantId) -> Option<u64> {
        self.participants.get(&subscriber)?.estimate
    }

    /// Each layer's measured bitrate for `track`, in bits per second (SFU-BWE-02).
    #[must_use]
    pub fn layer_rates(&self, track: TrackId, now: Duration) -> Vec<u64> {
        self.tracks.get(&track).map_or_else(Vec::new, |t| {
            let n = t.rids.len().clamp(1, MAX_LAYERS);
            t.meters[..n]
                .iter()
                .map(|m| m.bits_per_second(now))
                .collect()
        })
    }

    /// Route one packet that `publisher` sent on `track` (SFU-ROOM-01, SFU-SEC-01).
    ///
    /// # Errors
    /// [`SfuError::SpoofedSsrc`] (drop and count), [`SfuError::Metadata`],
    /// [`SfuError::UnknownTrack`], [`SfuError::TooManyLayers`], [`SfuError::UnknownLayer`]: all
    /// peer input; the packet is dropped.
    pub fn on_rtp(
        &mut self,
        publisher: ParticipantId,
        track: TrackId,
        meta: &PacketMeta<'_>,
        now: Duration,
    ) -> Result<Routed, SfuError> {
        let t = self
            .tracks
            .get_mut(&track)
            .filter(|t| t.publisher == publisher)
            .ok_or(SfuError::UnknownTrack(track.0))?;
        self.owners.check(publisher, meta.ssrc)?;
        let part = self
            .participants
            .get_mut(&publisher)
            .ok_or(SfuError::UnknownParticipant(publisher))?;
        // SFU-LIVE-04: a flood is cut at the door, before it costs any routing.
        if let Some(limit) = self.rate_limit
            && !part.bucket.take(limit, now)
        {
            return Err(SfuError::RateLimited(publisher));
        }
        let ing = match part.streams.ingest(meta) {
            Ok(ing) => ing,
            // SFU-KF-05: the descriptor refers to a template structure the SFU has not seen
            // (the publisher's key frame was lost, or came before the SFU read the stream).
            // Nothing of the stream can be routed until a key frame brings one: ask the
            // publisher (throttled, SFU-KF-01) and drop the packet as waiting for it.
            Err(SfuError::Metadata(veil_wire::WireError::MissingStructure { .. })) => {
                let mut out = Routed::default();
                if self.key_frames.request(meta.ssrc, now) {
                    out.key_frame_requests.push(meta.ssrc);
                }
                out.dropped.push(DropReason::WaitingForKeyFrame);
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let mut out = Routed::default();
        if ing.repair {
            out.repair = true;
            return Ok(out);
        }
        let layer = match (ing.rid.as_deref(), t.ssrc_layer.get(&meta.ssrc)) {
            (Some(rid), _) => layer_index(t, rid).ok_or(SfuError::TooManyLayers(meta.ssrc))?,
            (None, Some(l)) => usize::from(*l),
            // A simulcast track's stream that never showed its rid cannot be placed.
            (None, None) if t.rids.len() > 1 => return Err(SfuError::UnknownLayer(meta.ssrc)),
            (None, None) => 0,
        };
        out.layer = layer as u8;
        t.layer_ssrc[layer] = Some(meta.ssrc);
        t.ssrc_layer.insert(meta.ssrc, layer as u8);
        t.meters[layer].add(now, meta.len);
        if let Some(dd) = ing.dd.as_ref()
            && dd.structure().is_some_and(|s| s.decode_target_count > 1)
        {
            t.svc_rates[layer].add(dd, now, meta.len);
        }
        if ing.dd.as_ref().is_some_and(|d| d.is_key_frame_start()) {
            self.key_frames.key_frame_seen(meta.ssrc);
        }
        if std::mem::take(&mut t.key_frame_pending[layer])
            && self.key_frames.request(meta.ssrc, now)
        {
            out.key_frame_requests.push(meta.ssrc);
        }
        if let Some(level) = ing.audio_level {
            self.speaker.on_audio(publisher, level, now);
            out.active_speaker = self.speaker.update(now);
        }
        // Silent audio past the hangover is skipped, not forwarded (SFU-DTX-01).
        let silent = t.kind == MediaKind::Audio
            && self.dtx.as_mut().is_some_and(|g| {
                g.drop_packet(
                    meta.ssrc,
                    ing.audio_level,
                    meta.seq,
                    meta.timestamp,
                    t.clock_rate,
                )
            });
        // Each layer's bitrate, for the subscribers' layer choice (SFU-BWE-02..03).
        let layers = t.rids.len().min(MAX_LAYERS);
        let mut rates = [0u64; MAX_LAYERS];
        if t.kind == MediaKind::Video && layers > 1 {
            for (r, m) in rates.iter_mut().zip(&t.meters).take(layers) {
                *r = m.bits_per_second(now);
            }
        }
        // A scalable track's ladder: temporal layers go before spatial ones, and both before a
        // simulcast layer (SFU-SVC-08).
        let ladder = if t.kind == MediaKind::Video && !t.subscribers.is_empty() {
            svc_ladder(t, now)
        } else {
            Vec::new()
        };
        let mut chosen_layers: Vec<u8> = Vec::new();
        for s in &t.subscribers {
            let Some(sub) = self.subs.get_mut(&(*s, track)) else {
                continue;
            };
            if !ladder.is_empty() {
                let share = self.participants.get(s).and_then(|p| p.video_share);
                let cap = (sub.choice.requested(), sub.svc_cap);
                if let Some(rung) = sub.rung.update(now, share, &ladder, cap).map(|i| ladder[i]) {
                    sub.svc.set_target(rung.layer);
                    if sub.forwarder.target() != Some(rung.simulcast) {
                        sub.forwarder.set_target(Some(rung.simulcast));
                        chosen_layers.push(rung.simulcast);
                    }
                }
            } else if t.kind == MediaKind::Video && layers > 1 {
                let share = self.participants.get(s).and_then(|p| p.video_share);
                let chosen = sub.choice.update(now, share, &rates[..layers]);
                if sub.forwarder.target() != Some(chosen) {
                    sub.forwarder.set_target(Some(chosen));
                    chosen_layers.push(chosen);
                }
            }
            let decision = if silent {
                sub.forwarder.skip(out.layer, meta.seq)
            } else {
                sub.forwarder
                    .on_packet(out.layer, meta.seq, meta.timestamp, ing.dd.as_ref(), now)
            };
            // A scalable stream is thinned to the subscriber's decode target (SFU-SVC-09).
            let decision = match decision {
                Decision::Forward {
                    ssrc,
                    seq,
                    timestamp,
                    switched,
                } if t.kind == MediaKind::Video => {
                    let thinned = sub.thin(ing.dd.as_ref(), seq, meta.marker, switched);
                    if sub.svc_wants_key_frame()
                        && !out.key_frame_requests.contains(&meta.ssrc)
                        && self.key_frames.request(meta.ssrc, now)
                    {
                        out.key_frame_requests.push(meta.ssrc);
                    }
                    match thinned {
                        Ok((seq, marker, target)) => {
                            Ok((ssrc, seq, timestamp, switched, marker, target))
                        }
                        Err(r) => Err(svc_drop_reason(r)),
                    }
                }
                Decision::Forward {
                    ssrc,
                    seq,
                    timestamp,
                    switched,
                } => Ok((ssrc, seq, timestamp, switched, meta.marker, None)),
                Decision::Drop(reason) => Err(reason),
            };
            match decision {
                Ok((ssrc, seq, timestamp, switched, marker, decode_target)) => {
                    out.forwards.push(Forward {
                        subscriber: *s,
                        ssrc,
                        seq,
                        timestamp,
                        payload_type: sub.payload_type,
                        ext: sub.ext.clone(),
                        switched,
                        marker,
                        decode_target,
                    })
                }
                Err(reason) => {
                    // A subscriber waits for a key frame on this layer: keep asking, throttled
                    // (SFU-KF-01, SFU-KF-03).
                    if reason == DropReason::WaitingForKeyFrame
                        && !out.key_frame_requests.contains(&meta.ssrc)
                        && self.key_frames.request(meta.ssrc, now)
                    {
                        out.key_frame_requests.push(meta.ssrc);
                    }
                    out.dropped.push(reason);
                }
            }
        }
        // A new choice asks for a key frame of its layer, as any switch does (SFU-KF-03).
        for l in chosen_layers {
            let l = usize::from(l).min(MAX_LAYERS - 1);
            match t.layer_ssrc[l] {
                Some(ssrc) => {
                    if !out.key_frame_requests.contains(&ssrc) && self.key_frames.request(ssrc, now)
                    {
                        out.key_frame_requests.push(ssrc);
                    }
                }
                None => t.key_frame_pending[l] = true,
            }
        }
        Ok(out)
    }

    /// The key-frame request counters.
    #[must_use]
    pub fn key_frame_stats(&self) -> KeyFrameStats {
        self.key_frames.stats()
    }

    /// Spoofed packets rejected so far.
    #[must_use]
    pub fn spoofs(&self) -> u64 {
        self.owners.spoofs()
    }

    /// The active speaker.
    #[must_use]
    pub fn active_speaker(&self) -> Option<ParticipantId> {
        self.speaker.current()
    }
}

/// The layer index of `rid` in `t`, adding it if there is room.
fn layer_index(t: &mut Track, rid: &[u8]) -> Option<usize> {
    match t.rids.iter().position(|r| r == rid) {
        Some(i) => Some(i),
        None if t.rids.len() < MAX_LAYERS => {
            t.rids.push(rid.to_vec());
            Some(t.rids.len() - 1)
        }
        None => None,
    }
}

fn layer_of_rid(t: &mut Track, rid: Option<&[u8]>) -> u8 {
    rid.and_then(|r| layer_index(t, r)).unwrap_or(0) as u8
}

#[cfg(test)]
mod tests;
