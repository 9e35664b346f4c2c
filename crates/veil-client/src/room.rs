//! [`Room`]: the SDK's one object for a call. It joins the room's MLS group through the key
//! service, opens the media session with the blind SFU, encrypts every published frame with the
//! member's current SFrame key before packetization, and decrypts every received frame: frames
//! in, [`RemoteFrame`]s out. When either link to the server is lost it says so
//! ([`RoomEvent::Reconnecting`], [`RoomStats::sfu`], [`GroupStatus::key_service`]) and comes
//! back by itself, on the same keys and epoch ([`RoomEvent::Reconnected`]).

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use veil_mls::{FrameKeys, Released};

use crate::error::ClientError;
use crate::group::{Group, GroupConfig, GroupStatus};
use crate::link::{Link, LinkEvent, LinkStatus};
use crate::media::{
    FrameCounter, MediaKind, Packetization, ReceiveStats, ReceivedFrame, SendStats, TrackReceiver,
    TrackSender, split_held_tag,
};
use crate::sfu::{RemoteMedia, SfuSession};
use crate::transport::LocalTrack;

/// How to join.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Membership settings (key-service URL, token, room, identity).
    pub group: GroupConfig,
    /// The SFU's URL; empty (the default): the node the key service places the room on,
    /// asked again at every reconnection (KDS-PLACE-02). Reached with the group's
    /// [`security`](GroupConfig::security).
    pub sfu_url: String,
    /// The frame packetization this participant proposes (browser-compatible by default). The
    /// room keeps the first one proposed, and every participant uses that one
    /// ([`Room::packetization`]).
    pub packetization: Packetization,
    /// Local UDP addresses for the WebRTC connection.
    pub udp_addrs: Vec<String>,
    /// Local addresses for ICE-TCP (RFC 6544), e.g. `["0.0.0.0:0"]`-like: the connection also
    /// reaches an SFU's TCP candidate, for networks that block UDP (specs/sfu.md SFU-TCP-05;
    /// the server's `--sfu-tcp`). An address's IP names the interface the active candidate
    /// connects from. Empty (the default): UDP only.
    pub tcp_addrs: Vec<String>,
    /// Publish video as these simulcast layers, lowest first (empty: one 640×360 stream).
    /// Each layer is encrypted on its own; the DD frame numbers run on one counter across
    /// layers, as Chromium's do (specs/sfu.md).
    pub simulcast: Vec<VideoLayer>,
}

/// One simulcast layer of the published video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLayer {
    /// The rid (`q`, `h`, `f` by convention).
    pub rid: String,
    /// Width in pixels (announced in the DD template structure).
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

impl VideoLayer {
    /// The three layers browsers send: quarter, half and full size of `width`×`height`.
    #[must_use]
    pub fn browser_defaults(width: u16, height: u16) -> Vec<Self> {
        [("q", 4), ("h", 2), ("f", 1)]
            .into_iter()
            .map(|(rid, div)| Self {
                rid: rid.to_owned(),
                width: width / div,
                height: height / div,
            })
            .collect()
    }
}

impl RoomConfig {
    /// Key service and SFU on one server at `url`.
    #[must_use]
    pub fn new(url: &str, token: &str, room: &str, identity: &str) -> Self {
        Self {
            group: GroupConfig::new(url, token, room, identity),
            // The first replica's SFU: a room's media is on one SFU (specs/sfu.md).
            sfu_url: String::new(),
            packetization: Packetization::Browser,
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            tcp_addrs: Vec::new(),
            simulcast: Vec::new(),
        }
    }
}

/// A decrypted frame from another participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFrame {
    /// Who published it (their identity).
    pub participant: String,
    /// The SFU's track name.
    pub track: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// RTP timestamp.
    pub timestamp: u32,
    /// The encoded frame, as the publisher's encoder produced it.
    pub frame: Vec<u8>,
}

/// Something that happened in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A participant joined the call (its media connection to the SFU is up).
    ParticipantJoined {
        /// Its identity.
        identity: String,
    },
    /// A participant left the call (said so, or its connection went silent).
    ParticipantLeft {
        /// Its identity.
        identity: String,
    },
    /// The loudest participant changed.
    ActiveSpeaker {
        /// Its identity.
        identity: String,
    },
    /// The group moved to a new epoch: frames are encrypted under its keys from now on.
    EpochChanged {
        /// The epoch.
        epoch: u64,
        /// The epoch authenticator: equal at every member of the epoch. Applications can show
        /// a short hash of it to compare out of band (a split view would differ).
        authenticator: Vec<u8>,
        /// The members' identities, by leaf index.
        members: Vec<String>,
    },
    /// This participant was removed from the group: it can no longer send or decrypt.
    Removed,
    /// The SFU asks for a key frame of this participant's video, on simulcast layer `layer`
    /// (0 without simulcast): a new subscriber, a layer switch, or a receiver that lost one.
    /// Answer with `key_frame = true` on the next frame of that layer.
    KeyFrameRequested {
        /// The simulcast layer (index into [`RoomConfig::simulcast`]).
        layer: usize,
    },
    /// A link to the server was lost (a server restart, a network change): media stops for
    /// the SFU, membership changes wait for the key service. The SDK reconnects by itself,
    /// without a new epoch: [`Reconnected`](Self::Reconnected) follows.
    Reconnecting {
        /// Which link.
        link: Link,
        /// What was seen.
        reason: String,
    },
    /// The link is back: for the SFU, this participant's tracks are published again and the
    /// others' are being subscribed to again; for the key service, the room's events resume
    /// from this member's epoch.
    Reconnected {
        /// Which link.
        link: Link,
        /// Reconnection attempts it took.
        attempts: u32,
        /// How long it was down.
        down_for: std::time::Duration,
    },
}

impl RoomEvent {
    fn from_link(link: Link, e: LinkEvent) -> Self {
        match e {
            LinkEvent::Lost { reason } => Self::Reconnecting { link, reason },
            LinkEvent::Restored { attempts, down_for } => Self::Reconnected {
                link,
                attempts,
                down_for,
            },
        }
    }
}

/// Per-participant statistics, like WebRTC's getStats plus SFrame outcomes.
#[derive(Debug, Clone, Default)]
pub struct RoomStats {
    /// The MLS status (epoch, members).
    pub group: GroupStatus,
    /// Audio sent.
    pub audio_sent: SendStats,
    /// Video sent (all layers).
    pub video_sent: SendStats,
    /// Video sent per simulcast layer (one entry without simulcast).
    pub video_layers_sent: Vec<SendStats>,
    /// Per received track of the current connection to the SFU (track names are per
    /// connection: a reconnection starts them afresh).
    pub received: HashMap<String, ReceiveStats>,
    /// The media session with the SFU: up, or lost and reconnecting. The key service's is in
    /// [`GroupStatus::key_service`].
    pub sfu: LinkStatus,
}

/// One participant in a call.
pub struct Room {
    group: Group,
    sfu: Option<SfuSession>,
    /// The member's SFrame keys for the publish path: never the MLS session's lock, so a
    /// commit being created does not delay a frame (MLS-KEY-07).
    keys: FrameKeys,
    audio: (LocalTrack, StdMutex<TrackSender>),
    /// One sender per simulcast layer (one without simulcast).
    video: (LocalTrack, Vec<StdMutex<TrackSender>>),
    frames: mpsc::Receiver<RemoteFrame>,
    packetization: Packetization,
    events: tokio::sync::broadcast::Sender<RoomEvent>,
    events_task: tokio::task::JoinHandle<()>,
    received: std::sync::Arc<StdMutex<HashMap<String, ReceiveStats>>>,
    /// The SFU's SSRC of each received track, for the network statistics.
    ssrc_tracks: std::sync::Arc<StdMutex<HashMap<u32, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl core::fmt::Debug for Room {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Room")
            .field("status", &self.group.status())
            .finish_non_exhaustive()
    }
}

fn ssrc_for(identity: &str, kind: MediaKind) -> u32 {
    // Any value the participant does not use twice; the SFU rewrites SSRCs per subscriber.
    let h = identity.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h ^ u32::from(kind == MediaKind::Video)
}

impl Room {
    /// Join the call: the MLS group (creating the room if it does not exist), then the SFU.
    ///
    /// # Errors
    /// Key-service, SFU, WebRTC or MLS errors.
    pub async fn join(cfg: RoomConfig) -> Result<Self, ClientError> {
        let group = Group::join_or_create(cfg.group.clone()).await?;
        // The frame path's clock (key retention, held frames, jitter): the member's, on which
        // its keys' retention deadlines are set (specs/key-schedule.md §9).
        let start = Instant::now()
            .checked_sub(group.now())
            .unwrap_or_else(Instant::now);
        let keys = group.frame_keys();
        let id = cfg.group.identity.clone();
        let audio = LocalTrack::new(
            MediaKind::Audio,
            &id,
            "audio",
            ssrc_for(&id, MediaKind::Audio),
        );
        let video_ssrc = ssrc_for(&id, MediaKind::Video);
        let video = if cfg.simulcast.is_empty() {
            LocalTrack::new(MediaKind::Video, &id, "video", video_ssrc)
        } else {
            let layers: Vec<(&str, u32)> = cfg
                .simulcast
                .iter()
                .zip(0u32..)
                .map(|(l, i)| (l.rid.as_str(), video_ssrc.wrapping_add(2 * i)))
                .collect();
            LocalTrack::simulcast(&id, "video", &layers)
        };
        let target = if cfg.sfu_url.is_empty() {
            // The member's own client: the same connections, and the replica it moved to.
            crate::sfu::Target::Placed(group.keys())
        } else {
            crate::endpoint::endpoint(&cfg.sfu_url, &cfg.group.security)?;
            crate::sfu::Target::Url(cfg.sfu_url.clone())
        };
        let (sfu, mut media) = SfuSession::connect_to(
            target,
            &cfg.group.token,
            &cfg.group.room,
            &[audio.clone(), video.clone()],
            crate::sfu::LocalAddrs {
                udp: cfg.udp_addrs.clone(),
                tcp: cfg.tcp_addrs.clone(),
            },
            cfg.packetization,
            &cfg.group.security,
        )
        .await?;
        let counter = FrameCounter::default();
        // The room's packetization, which may not be this participant's preference.
        let p = sfu.packetization();
        let audio_tx = TrackSender::new(
            MediaKind::Audio,
            p,
            sfu.ext_ids(0).await?,
            1,
            counter.clone(),
        )?;
        let video_ext = sfu.ext_ids(1).await?;
        let video_tx = if cfg.simulcast.is_empty() {
            vec![StdMutex::new(TrackSender::new(
                MediaKind::Video,
                p,
                video_ext,
                1,
                counter,
            )?)]
        } else {
            let mid = sfu.mid(1).await?;
            // Each capture instant goes out on every layer in turn, on one frame counter: a
            // layer's previous frame is `layers` numbers back.
            let layers = u16::try_from(cfg.simulcast.len()).unwrap_or(u16::MAX);
            cfg.simulcast
                .iter()
                .map(|l| {
                    Ok(StdMutex::new(
                        TrackSender::new(MediaKind::Video, p, video_ext, 1, counter.clone())?
                            .with_structure(crate::media::simulcast_layer_structure(
                                u32::from(l.width),
                                u32::from(l.height),
                                layers,
                            ))
                            .with_layer(&mid, &l.rid),
                    ))
                })
                .collect::<Result<Vec<_>, ClientError>>()?
        };

        let (events, _) = tokio::sync::broadcast::channel(256);
        let events_task = tokio::spawn(forward_events(
            sfu.events(),
            group.link_events(),
            group.watch_status(),
            events.clone(),
            video.clone(),
        ));
        let (frames_tx, frames) = mpsc::channel(4096);
        let received = std::sync::Arc::new(StdMutex::new(HashMap::new()));
        let stats = received.clone();
        let ssrc_tracks = std::sync::Arc::new(StdMutex::new(HashMap::new()));
        let ssrcs = ssrc_tracks.clone();
        // One decryptor for every received track: the replay windows and derived keys of this
        // receiver, and the frames it holds for an epoch not published yet.
        let mut decryptor = keys.decryptor();
        let mut key_changes = group.watch_status();
        let task = tokio::spawn(async move {
            let now = || start.elapsed();
            // The current connection's receivers, by the SFU's track name.
            let mut receivers: HashMap<String, (u32, TrackReceiver, String, MediaKind)> =
                HashMap::new();
            // Every receiver's track, publisher and kind by tag, for frames released when
            // their epoch is published (even after a reconnection replaced the receiver).
            let mut by_tag: HashMap<u32, (String, String, MediaKind)> = HashMap::new();
            let mut next_tag = 0u32;
            let mut connection = 0u32;
            // Closed when the membership task ends (e.g. this member was removed); media keeps
            // flowing (and failing to decrypt) regardless.
            let mut keys_open = true;
            // Retired epochs' keys and frames held too long expire even when nothing arrives.
            let mut expiry = tokio::time::interval(REFRESH_INTERVAL);
            expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    m = media.recv() => {
                        let Some(RemoteMedia { track, publisher, kind, packet, connection: c }) = m else { return };
                        if c < connection {
                            continue; // a straggler of a connection that was replaced
                        }
                        if c > connection {
                            // Track names, SSRCs and sequence numbers are the new
                            // connection's: start every track afresh.
                            connection = c;
                            receivers.clear();
                            stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                            ssrcs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                        }
                        let (_, rx, who, kind) = receivers.entry(track.clone()).or_insert_with(|| {
                            let tag = next_tag;
                            next_tag = next_tag.wrapping_add(1);
                            by_tag.insert(tag, (track.clone(), publisher.clone(), kind));
                            (tag, TrackReceiver::new(kind, p).with_track_tag(tag), publisher, kind)
                        });
                        rx.push_at(
                            packet.seq,
                            packet.timestamp,
                            packet.marker,
                            &packet.payload,
                            Some(now()),
                        );
                        ssrcs
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .entry(packet.ssrc)
                            .or_insert_with(|| track.clone());
                        let out = rx.drain(&mut decryptor, now());
                        stats
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(track.clone(), rx.stats().clone());
                        // Frames held earlier and released by this drain's catching up with
                        // the keys come first: they were received before this one.
                        let (who, kind) = (who.clone(), *kind);
                        if deliver_released(decryptor.take_released(), &by_tag, &frames_tx)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        for f in out {
                            if let ReceivedFrame::Frame { timestamp, data, .. } = f {
                                let rf = RemoteFrame {
                                    participant: who.clone(),
                                    track: track.clone(),
                                    kind,
                                    timestamp,
                                    frame: data,
                                };
                                if frames_tx.send(rf).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    changed = key_changes.changed(), if keys_open => {
                        if changed.is_err() {
                            keys_open = false;
                            continue;
                        }
                        // A new epoch was published: frames held for it come out now, without
                        // waiting for the next packet.
                        decryptor.refresh(now());
                        if deliver_released(decryptor.take_released(), &by_tag, &frames_tx)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    _ = expiry.tick() => {
                        decryptor.refresh(now());
                        if deliver_released(decryptor.take_released(), &by_tag, &frames_tx)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            group,
            sfu: Some(sfu),
            keys,
            audio: (audio, StdMutex::new(audio_tx)),
            video: (video, video_tx),
            frames,
            packetization: p,
            events,
            events_task,
            received,
            ssrc_tracks,
            task,
        })
    }

    /// Publish one encoded audio frame (Opus), with its audio level (`voice`, 0..=127 -dBov).
    ///
    /// # Errors
    /// [`ClientError::Mls`] (`NotSending` before this member's first epoch, or after removal);
    /// [`ClientError::Transport`]; [`ClientError::Reconnecting`] while the SFU session is
    /// being reconnected (the frame is lost, as on a broken network).
    pub async fn publish_audio(
        &self,
        frame: &[u8],
        timestamp: u32,
        level: (bool, u8),
    ) -> Result<(), ClientError> {
        let pkts = {
            let mut tx = self
                .audio
                .1
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tx.send(&self.keys, frame, timestamp, false, Some(level))?
        };
        let r = self.audio.0.send(&pkts).await;
        self.sent(r)
    }

    /// Publish one encoded video frame (VP8).
    ///
    /// # Errors
    /// As [`publish_audio`](Self::publish_audio).
    pub async fn publish_video(
        &self,
        frame: &[u8],
        timestamp: u32,
        key_frame: bool,
    ) -> Result<(), ClientError> {
        if self.video.1.len() != 1 {
            return Err(ClientError::config(format!(
                "this room publishes {} simulcast layers: use publish_video_layers",
                self.video.1.len()
            )));
        }
        self.publish_video_layer(0, frame, timestamp, key_frame)
            .await
    }

    /// Publish one encoded frame per simulcast layer (lowest first, as configured in
    /// [`RoomConfig::simulcast`]), all of one capture instant `timestamp`. Each layer's frame
    /// is encrypted on its own.
    ///
    /// # Errors
    /// As [`publish_audio`](Self::publish_audio); [`ClientError::Config`] when the number of
    /// frames is not the number of layers.
    pub async fn publish_video_layers(
        &self,
        frames: &[&[u8]],
        timestamp: u32,
        key_frame: bool,
    ) -> Result<(), ClientError> {
        if frames.len() != self.video.1.len() {
            return Err(ClientError::config(format!(
                "{} frames for {} simulcast layers",
                frames.len(),
                self.video.1.len()
            )));
        }
        for (layer, frame) in frames.iter().enumerate() {
            self.publish_video_layer(layer, frame, timestamp, key_frame)
                .await?;
        }
        Ok(())
    }

    async fn publish_video_layer(
        &self,
        layer: usize,
        frame: &[u8],
        timestamp: u32,
        key_frame: bool,
    ) -> Result<(), ClientError> {
        let pkts = {
            let mut tx = self.video.1[layer]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tx.send(&self.keys, frame, timestamp, key_frame, None)?
        };
        let r = self.video.0.send_layer(layer, &pkts).await;
        self.sent(r)
    }

    /// A send that failed because the SFU session is being reconnected says so.
    fn sent(&self, r: Result<(), ClientError>) -> Result<(), ClientError> {
        match r {
            Err(ClientError::Transport { .. })
                if self.sfu.as_ref().is_some_and(|s| !s.link().is_up()) =>
            {
                Err(ClientError::Reconnecting(Link::Sfu))
            }
            r => r,
        }
    }

    /// Ask the SFU for simulcast layer `rid` of another participant's `track` (a
    /// [`RemoteFrame::track`]); the switch happens at that layer's next key frame. An empty
    /// `rid`: the track's first layer.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] after leaving.
    pub async fn set_video_layer(&self, track: &str, rid: &str) -> Result<(), ClientError> {
        match &self.sfu {
            Some(s) => s.set_layer(track, rid).await,
            None => Err(ClientError::Stopped),
        }
    }

    /// The next decrypted frame from another participant.
    pub async fn next_frame(&mut self) -> Option<RemoteFrame> {
        self.frames.recv().await
    }

    /// The room's packetization, which this participant uses (the first participant to
    /// propose one chose it for the room).
    #[must_use]
    pub fn packetization(&self) -> Packetization {
        self.packetization
    }

    /// Room events from now on: participants joining and leaving, the active speaker, epoch
    /// changes with their authenticator, removal. A receiver that falls 256 events behind
    /// loses the oldest (`Lagged`).
    #[must_use]
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    /// The membership handle (epoch, members, add/remove/self-update).
    #[must_use]
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Statistics.
    #[must_use]
    pub fn stats(&self) -> RoomStats {
        let lock = |m: &StdMutex<TrackSender>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .stats()
        };
        let video_layers_sent: Vec<SendStats> = self.video.1.iter().map(lock).collect();
        let video_sent = video_layers_sent
            .iter()
            .fold(SendStats::default(), |a, l| SendStats {
                frames: a.frames + l.frames,
                packets: a.packets + l.packets,
                bytes: a.bytes + l.bytes,
                refused: a.refused + l.refused,
            });
        RoomStats {
            sfu: self.sfu.as_ref().map(SfuSession::link).unwrap_or_default(),
            group: self.group.status(),
            audio_sent: lock(&self.audio.1),
            video_sent,
            video_layers_sent,
            received: self
                .received
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Network statistics of the WebRTC connection (getStats): per received track packets
    /// lost, jitter and NACKs; per sent stream packets, retransmissions and the round-trip time
    /// from the SFU's receiver reports; the ICE round-trip time.
    pub async fn network_stats(&self) -> crate::transport::NetworkStats {
        let Some(sfu) = &self.sfu else {
            return crate::transport::NetworkStats::default();
        };
        let mut s = sfu.network_stats().await;
        let names = self
            .ssrc_tracks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for i in &mut s.inbound {
            i.track = names.get(&i.ssrc).cloned();
        }
        s
    }

    /// Leave: the SFU session ends and the key service proposes this member's removal.
    ///
    /// # Errors
    /// Key-service errors.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        if let Some(s) = self.sfu.take() {
            s.leave().await;
        }
        self.task.abort();
        self.events_task.abort();
        self.group.leave().await
    }
}

/// How often the receive task catches up with the keys when nothing else woke it: retired
/// epochs' keys and frames held too long expire on time.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Hand frames that were held for an epoch not published yet, and decrypted once it was, to
/// the application, on the track their tag names ([`split_held_tag`]). `Err` when the
/// application dropped the room.
async fn deliver_released(
    released: Vec<Released>,
    by_tag: &HashMap<u32, (String, String, MediaKind)>,
    out: &mpsc::Sender<RemoteFrame>,
) -> Result<(), ()> {
    for r in released {
        let (tag, timestamp) = split_held_tag(r.tag);
        let Some((track, who, kind)) = by_tag.get(&tag) else {
            continue;
        };
        let rf = RemoteFrame {
            participant: who.clone(),
            track: track.clone(),
            kind: *kind,
            timestamp,
            frame: r.plaintext,
        };
        out.send(rf).await.map_err(|_| ())?;
    }
    Ok(())
}

/// The SFU's room events, the group's epoch changes and both links' losses and returns, as
/// [`RoomEvent`]s.
async fn forward_events(
    mut sfu: tokio::sync::broadcast::Receiver<crate::sfu::SfuEvent>,
    mut keys: tokio::sync::broadcast::Receiver<LinkEvent>,
    mut status: tokio::sync::watch::Receiver<GroupStatus>,
    out: tokio::sync::broadcast::Sender<RoomEvent>,
    video: LocalTrack,
) {
    use crate::sfu::SfuEvent;
    use tokio::sync::broadcast::error::RecvError;
    let mut epoch = status.borrow_and_update().epoch;
    let mut sfu_open = true;
    let mut keys_open = true;
    // The video track's key-frame requests end with each connection (its binding); a new
    // connection binds it again.
    let mut video_open = true;
    loop {
        tokio::select! {
            layer = video.key_frame_request(), if video_open => {
                match layer {
                    Some(layer) => {
                        let _ = out.send(RoomEvent::KeyFrameRequested { layer });
                    }
                    None => video_open = false,
                }
            }
            e = sfu.recv(), if sfu_open => {
                let ev = match e {
                    Ok(SfuEvent::ParticipantJoined { identity }) => RoomEvent::ParticipantJoined { identity },
                    Ok(SfuEvent::ParticipantLeft { identity }) => RoomEvent::ParticipantLeft { identity },
                    Ok(SfuEvent::ActiveSpeaker { identity }) => RoomEvent::ActiveSpeaker { identity },
                    Ok(SfuEvent::Link(e)) => {
                        if matches!(e, LinkEvent::Restored { .. }) {
                            video_open = true;
                        }
                        RoomEvent::from_link(Link::Sfu, e)
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => {
                        sfu_open = false;
                        continue;
                    }
                };
                let _ = out.send(ev);
            }
            e = keys.recv(), if keys_open => {
                match e {
                    Ok(e) => {
                        let _ = out.send(RoomEvent::from_link(Link::KeyService, e));
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => keys_open = false,
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                let s = status.borrow_and_update().clone();
                if s.removed {
                    let _ = out.send(RoomEvent::Removed);
                    return;
                }
                if s.epoch != epoch
                    && let (Some(e), Some(auth)) = (s.epoch, s.epoch_authenticator.clone())
                {
                    epoch = s.epoch;
                    let _ = out.send(RoomEvent::EpochChanged {
                        epoch: e,
                        authenticator: auth,
                        members: s.members,
                    });
                }
            }
        }
    }
}
