//! A participant's media session with the blind SFU: the `veil.sfu.v1` signalling stream and
//! one WebRTC peer connection. It publishes [`LocalTrack`]s, subscribes to every other
//! participant's tracks as they are published (answering the SFU's renegotiation offers), and
//! hands incoming RTP to the caller as [`RemoteMedia`], tagged with the SFU's track name and
//! publisher. It never sees a key: frames stay SFrame-encrypted end to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_client::SfuClient;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::error::ClientError;
use crate::keys::from_status;
use crate::media::{ExtIds, MediaKind, Packetization};
use crate::transport::{LocalTrack, RemotePacket, negotiated_ext_ids, peer_connection, read_track};

use pb::signal_event::Event as E;
use pb::signal_request::Request as R;

/// A remote track's packet, with who sent it.
#[derive(Debug, Clone)]
pub struct RemoteMedia {
    /// The SFU's track name.
    pub track: String,
    /// The publisher's identity.
    pub publisher: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The packet.
    pub packet: RemotePacket,
}

#[derive(Debug, Clone)]
struct TrackMeta {
    publisher: String,
    kind: MediaKind,
}

type Tracks = Arc<Mutex<HashMap<String, TrackMeta>>>;

struct Handler {
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    tracks: Tracks,
    media: mpsc::Sender<RemoteMedia>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.connected
            .send_replace(state == RTCPeerConnectionState::Connected);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let name = track.track_id().await;
        let meta = self
            .tracks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned();
        let Some(meta) = meta else {
            tracing::warn!(track = name, "a track the SFU never announced; ignored");
            return;
        };
        let (tx, mut rx) = mpsc::channel(1024);
        tokio::spawn(read_track(track, tx));
        let out = self.media.clone();
        tokio::spawn(async move {
            while let Some(packet) = rx.recv().await {
                let m = RemoteMedia {
                    track: name.clone(),
                    publisher: meta.publisher.clone(),
                    kind: meta.kind,
                    packet,
                };
                if out.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What the SFU says about the room (from its signalling stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// A participant joined the SFU room.
    ParticipantJoined {
        /// Its identity.
        identity: String,
    },
    /// A participant left the SFU room (said so, went silent, or never connected).
    ParticipantLeft {
        /// Its identity.
        identity: String,
    },
    /// The loudest participant changed (RFC 6464 audio levels, read by the SFU).
    ActiveSpeaker {
        /// Its identity.
        identity: String,
    },
}

/// A connected media session.
pub struct SfuSession {
    pc: Arc<dyn PeerConnection>,
    requests: mpsc::Sender<pb::SignalRequest>,
    senders: Vec<Arc<dyn RtpSender>>,
    identity: String,
    packetization: Packetization,
    events: tokio::sync::broadcast::Sender<SfuEvent>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
}

impl core::fmt::Debug for SfuSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SfuSession")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

const WAIT: Duration = Duration::from_secs(15);

fn transport(what: &str) -> impl FnOnce(webrtc::error::Error) -> ClientError + '_ {
    move |e| ClientError::Transport(format!("{what}: {e}"))
}

async fn wait_true(rx: &mut watch::Receiver<bool>, what: &str) -> Result<(), ClientError> {
    tokio::time::timeout(WAIT, rx.wait_for(|v| *v))
        .await
        .map_err(|_| ClientError::Timeout(what.to_owned()))?
        .map_err(|_| ClientError::Stopped)?;
    Ok(())
}

impl SfuSession {
    /// Join `room` at the SFU at `url` with `token`, publishing `tracks`, and subscribe to every
    /// other participant's tracks, proposing `packetization` for the room (the room keeps the
    /// first one named: [`packetization`](Self::packetization)). Returns the session and the
    /// incoming media.
    ///
    /// # Errors
    /// [`ClientError::Refused`] (e.g. a token without the needed grants),
    /// [`ClientError::Transport`], [`ClientError::Timeout`].
    pub async fn connect(
        url: &str,
        token: &str,
        room: &str,
        tracks: &[LocalTrack],
        udp_addrs: Vec<String>,
        packetization: Packetization,
    ) -> Result<(Self, mpsc::Receiver<RemoteMedia>), ClientError> {
        let (g_tx, mut gathered) = watch::channel(false);
        let (c_tx, mut connected) = watch::channel(false);
        let (media_tx, media_rx) = mpsc::channel(4096);
        let known: Tracks = Arc::default();
        let handler = Arc::new(Handler {
            gathered: g_tx,
            connected: c_tx,
            tracks: known.clone(),
            media: media_tx,
        });
        let pc = peer_connection(handler, udp_addrs).await?;
        let mut senders = Vec::new();
        for t in tracks {
            senders.push(
                pc.add_track(t.track())
                    .await
                    .map_err(transport("add track"))?,
            );
        }
        let offer = pc.create_offer(None).await.map_err(transport("offer"))?;
        pc.set_local_description(offer)
            .await
            .map_err(transport("local offer"))?;
        wait_true(&mut gathered, "ICE gathering").await?;
        let offer_sdp = pc
            .local_description()
            .await
            .ok_or_else(|| ClientError::Transport("no local offer".into()))?
            .sdp;

        let mut client = SfuClient::connect(url.to_owned())
            .await
            .map_err(|e| ClientError::Unavailable(format!("connect {url}: {e}")))?;
        let (requests, rx) = mpsc::channel(64);
        let mut req = Request::new(ReceiverStream::new(rx));
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Config("the token is not ASCII".into()))?;
        req.metadata_mut().insert("authorization", auth);
        let mut events = client.signal(req).await.map_err(from_status)?.into_inner();
        let send = |id: u32, r: R| pb::SignalRequest {
            id,
            request: Some(r),
        };
        requests
            .send(send(
                1,
                R::Join(pb::Join {
                    room: room.to_owned(),
                    offer_sdp,
                    packetization: match packetization {
                        Packetization::Browser => pb::Packetization::Browser,
                        Packetization::Ietf => pb::Packetization::Ietf,
                    } as i32,
                }),
            ))
            .await
            .map_err(|_| ClientError::Stopped)?;
        // Events before `Joined` (none are expected) are handled by the loop below.
        let mut early = Vec::new();
        let joined = loop {
            let ev = tokio::time::timeout(WAIT, events.next())
                .await
                .map_err(|_| ClientError::Timeout("Joined from the SFU".into()))?
                .ok_or(ClientError::Stopped)?
                .map_err(from_status)?;
            match ev.event {
                Some(E::Joined(j)) => break j,
                Some(E::RequestFailed(f)) => {
                    return Err(ClientError::Refused {
                        code: tonic::Code::from(f.code),
                        message: f.message,
                    });
                }
                Some(e) => early.push(e),
                None => {}
            }
        };
        let answer =
            RTCSessionDescription::answer(joined.answer_sdp).map_err(transport("SFU answer"))?;
        pc.set_remote_description(answer)
            .await
            .map_err(transport("remote answer"))?;
        wait_true(&mut connected, "connection to the SFU").await?;

        let identity = joined.identity.clone();
        // SFU-ROOM-03: the room's packetization wins over this participant's preference.
        let packetization = match pb::Packetization::try_from(joined.packetization) {
            Ok(pb::Packetization::Ietf) => Packetization::Ietf,
            Ok(pb::Packetization::Browser) => Packetization::Browser,
            _ => packetization,
        };
        let (room_events, _) = tokio::sync::broadcast::channel(256);
        let task = tokio::spawn(signalling(
            pc.clone(),
            requests.clone(),
            events,
            early,
            known,
            identity.clone(),
            room_events.clone(),
        ));
        Ok((
            Self {
                pc,
                requests,
                senders,
                identity,
                packetization,
                events: room_events,
                task,
            },
            media_rx,
        ))
    }

    /// The identity the SFU knows this participant by (the token's).
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The extension ids negotiated for the `i`-th published track.
    ///
    /// # Errors
    /// [`ClientError::Transport`]; [`ClientError::Config`] for a bad index.
    pub async fn ext_ids(&self, i: usize) -> Result<ExtIds, ClientError> {
        let s = self
            .senders
            .get(i)
            .ok_or_else(|| ClientError::Config(format!("no published track {i}")))?;
        negotiated_ext_ids(s).await
    }

    /// The room's packetization, which this participant must use (the first participant to
    /// name one chose it; SFU-ROOM-03).
    #[must_use]
    pub fn packetization(&self) -> Packetization {
        self.packetization
    }

    /// Room events from now on.
    #[must_use]
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SfuEvent> {
        self.events.subscribe()
    }

    /// The connection's statistics (getStats).
    pub async fn network_stats(&self) -> crate::transport::NetworkStats {
        crate::transport::network_stats(&self.pc).await
    }

    /// The mid of the `i`-th published track's transceiver (once negotiated).
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad index or a track without a mid yet.
    pub async fn mid(&self, i: usize) -> Result<String, ClientError> {
        let sender = self
            .senders
            .get(i)
            .ok_or_else(|| ClientError::Config(format!("no published track {i}")))?;
        for t in self.pc.get_transceivers().await {
            if let Ok(Some(s)) = t.sender().await
                && Arc::ptr_eq(&s, sender)
                && let Ok(Some(mid)) = t.mid().await
            {
                return Ok(mid);
            }
        }
        Err(ClientError::Config(format!(
            "published track {i} has no mid"
        )))
    }

    /// Ask the SFU for simulcast layer `rid` of `track` (a [`RemoteMedia::track`]); it switches
    /// at that layer's next key frame. An empty `rid`: the track's first layer.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] when the session has ended.
    pub async fn set_layer(&self, track: &str, rid: &str) -> Result<(), ClientError> {
        self.requests
            .send(pb::SignalRequest {
                id: 0,
                request: Some(R::SetLayer(pb::SetLayer {
                    track: track.to_owned(),
                    rid: rid.to_owned(),
                })),
            })
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Leave the SFU and close the connection.
    pub async fn leave(self) {
        let _ = self
            .requests
            .send(pb::SignalRequest {
                id: u32::MAX,
                request: Some(R::Leave(pb::Leave {})),
            })
            .await;
        self.task.abort();
        let _ = self.pc.close().await;
    }
}

/// The rest of the session: subscribe to every new track, answer the SFU's offers.
async fn signalling(
    pc: Arc<dyn PeerConnection>,
    requests: mpsc::Sender<pb::SignalRequest>,
    mut events: tonic::Streaming<pb::SignalEvent>,
    early: Vec<E>,
    known: Tracks,
    me: String,
    room_events: tokio::sync::broadcast::Sender<SfuEvent>,
) -> Result<(), ClientError> {
    let mut next_id = 2u32;
    let mut pending: std::collections::VecDeque<E> = early.into();
    loop {
        let ev = match pending.pop_front() {
            Some(e) => e,
            None => match events.next().await {
                Some(Ok(pb::SignalEvent { event: Some(e) })) => e,
                Some(Ok(_)) => continue,
                Some(Err(s)) => return Err(from_status(s)),
                None => return Ok(()),
            },
        };
        match ev {
            E::TrackPublished(t) if t.publisher != me => {
                let kind = if t.kind == pb::MediaKind::Audio as i32 {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                };
                known.lock().unwrap_or_else(PoisonError::into_inner).insert(
                    t.track.clone(),
                    TrackMeta {
                        publisher: t.publisher.clone(),
                        kind,
                    },
                );
                next_id += 1;
                let r = pb::SignalRequest {
                    id: next_id,
                    request: Some(R::Subscribe(pb::Subscribe { track: t.track })),
                };
                if requests.send(r).await.is_err() {
                    return Ok(());
                }
            }
            E::Offer(d) => {
                let offer = RTCSessionDescription::offer(d.sdp).map_err(transport("SFU offer"))?;
                pc.set_remote_description(offer)
                    .await
                    .map_err(transport("remote offer"))?;
                let answer = pc.create_answer(None).await.map_err(transport("answer"))?;
                pc.set_local_description(answer)
                    .await
                    .map_err(transport("local answer"))?;
                let sdp = pc
                    .local_description()
                    .await
                    .ok_or_else(|| ClientError::Transport("no local answer".into()))?
                    .sdp;
                next_id += 1;
                let r = pb::SignalRequest {
                    id: next_id,
                    request: Some(R::Answer(pb::SessionDescription { sdp })),
                };
                if requests.send(r).await.is_err() {
                    return Ok(());
                }
            }
            // Nobody listening is fine.
            E::ParticipantJoined(p) => {
                let _ = room_events.send(SfuEvent::ParticipantJoined {
                    identity: p.identity,
                });
            }
            E::ParticipantLeft(p) => {
                let _ = room_events.send(SfuEvent::ParticipantLeft {
                    identity: p.identity,
                });
            }
            E::ActiveSpeaker(p) => {
                let _ = room_events.send(SfuEvent::ActiveSpeaker {
                    identity: p.identity,
                });
            }
            E::RequestFailed(f) => {
                tracing::warn!(
                    id = f.id,
                    code = f.code,
                    message = f.message,
                    "SFU refused a request"
                );
            }
            _ => {}
        }
    }
}
