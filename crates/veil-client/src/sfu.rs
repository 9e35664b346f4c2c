//! A participant's media session with the blind SFU: the `veil.sfu.v1` signalling stream and
//! one WebRTC peer connection. It publishes [`LocalTrack`]s, subscribes to every other
//! participant's tracks as they are published (answering the SFU's renegotiation offers), and
//! hands incoming RTP to the caller as [`RemoteMedia`], tagged with the SFU's track name and
//! publisher. It never sees a key: frames stay SFrame-encrypted end to end.
//!
//! A lost session (the signalling stream ends or fails, or the connection goes `Disconnected`,
//! `Failed` or `Closed`) is reported ([`SfuEvent::Link`], [`SfuSession::link`]) and opened
//! again with the same token and tracks, on a capped exponential
//! [`Backoff`](crate::link::Backoff), for as long as the session is not left (specs/sfu.md,
//! "Reconnecting").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
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

use crate::endpoint::Security;
use crate::error::ClientError;
use crate::link::{LinkEvent, LinkStatus};
use crate::media::{ExtIds, MediaKind, Packetization};
use crate::transport::{
    LocalTrack, RemotePacket, negotiated_ext_ids, passive_tcp_candidates, peer_connection_with,
    read_track,
};

use pb::signal_event::Event as E;
use pb::signal_request::Request as R;

mod reconnect;

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
    /// Which connection to the SFU carried it: 0 for the first, higher after each reconnect.
    /// Track names and the SFU's SSRCs and sequence numbers belong to one connection; a packet
    /// of a newer one starts every track afresh.
    pub connection: u32,
}

#[derive(Debug, Clone)]
struct TrackMeta {
    publisher: String,
    kind: MediaKind,
    /// The task reading the track once it is open. webrtc-rs 0.21 never ends a remote track
    /// whose transceiver the SFU stopped (rtc 0.21.1 emits no `OnClose` for tracks), so the
    /// task is aborted when the SFU says the track is unpublished (SFU-CLI-05); its forwarder
    /// ends with it.
    reader: Option<tokio::task::AbortHandle>,
}

type Tracks = Arc<Mutex<HashMap<String, TrackMeta>>>;

struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: Tracks,
    media: mpsc::Sender<RemoteMedia>,
    connection: u32,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
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
        let reader = tokio::spawn(read_track(track, tx)).abort_handle();
        {
            let mut tracks = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
            match tracks.get_mut(&name) {
                Some(m) => {
                    if let Some(old) = m.reader.replace(reader) {
                        old.abort();
                    }
                }
                // Unpublished meanwhile (SFU-CLI-05).
                None => reader.abort(),
            }
        }
        let out = self.media.clone();
        let connection = self.connection;
        tokio::spawn(async move {
            while let Some(packet) = rx.recv().await {
                let m = RemoteMedia {
                    track: name.clone(),
                    publisher: meta.publisher.clone(),
                    kind: meta.kind,
                    packet,
                    connection,
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
    /// The session was lost ([`LinkEvent::Lost`]) or is back ([`LinkEvent::Restored`]: the
    /// tracks are published again and the others' are being subscribed to again).
    Link(LinkEvent),
}

/// One connection to the SFU: a signalling stream and a peer connection.
struct Conn {
    pc: Arc<dyn PeerConnection>,
    requests: mpsc::Sender<pb::SignalRequest>,
    senders: Vec<Arc<dyn RtpSender>>,
}

/// The connection in use; `None` while reconnecting.
type Current = Arc<Mutex<Option<Arc<Conn>>>>;

/// A connection just opened, with what tells that it is lost.
struct Opened {
    conn: Arc<Conn>,
    state: watch::Receiver<RTCPeerConnectionState>,
    signalling: JoinHandle<Result<(), ClientError>>,
    identity: String,
    packetization: Packetization,
}

/// Where the session goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// These SFU nodes, in order (SFU-CAS-07): the first connection goes to the first, and
    /// every later attempt (after a loss, or after a failed attempt) to the next, round the
    /// list. One URL: that SFU every time.
    Urls {
        urls: Vec<String>,
        next: Arc<std::sync::atomic::AtomicUsize>,
    },
    /// The SFU node the key service places the room on, asked again before every connection
    /// (KDS-PLACE-02): after a node dies, the room's participants meet on the next one.
    Placed(crate::keys::KeyClient),
}

impl Target {
    /// A comma-separated list of SFU URLs, each one `security` accepts.
    ///
    /// # Errors
    /// [`ClientError::Config`] for an empty list or a URL `security` refuses.
    pub(crate) fn list(urls: &str, security: &Security) -> Result<Self, ClientError> {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(ClientError::config("the SFU URL is empty"));
        }
        for u in &urls {
            crate::endpoint::endpoint(u, security)?;
        }
        Ok(Self::Urls {
            urls,
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    async fn url(&self) -> Result<String, ClientError> {
        match self {
            Self::Urls { urls, next } => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(urls[i % urls.len()].clone())
            }
            Self::Placed(k) => k.clone().placement().await,
        }
    }
}

/// The local addresses a session's connection binds.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalAddrs {
    /// UDP (e.g. `127.0.0.1:0`).
    pub(crate) udp: Vec<String>,
    /// ICE-TCP (RFC 6544), to an SFU that offers it: for networks that block UDP (specs/sfu.md
    /// SFU-TCP-05). Empty: UDP only.
    pub(crate) tcp: Vec<String>,
}

/// Everything needed to open the session again.
struct Params {
    target: Target,
    security: Security,
    token: String,
    room: String,
    tracks: Vec<LocalTrack>,
    addrs: LocalAddrs,
    media: mpsc::Sender<RemoteMedia>,
    events: broadcast::Sender<SfuEvent>,
}

/// A media session, reconnected by a background task whenever it is lost.
pub struct SfuSession {
    current: Current,
    identity: String,
    packetization: Packetization,
    events: broadcast::Sender<SfuEvent>,
    link: watch::Receiver<LinkStatus>,
    task: JoinHandle<()>,
}

impl core::fmt::Debug for SfuSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SfuSession")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// How long the first connection may take at each step (gathering, `Joined`, connected).
const WAIT: Duration = Duration::from_secs(15);
/// The same for a reconnection attempt: a server that answers at all answers quickly, and a
/// stuck attempt must not hold up the next one.
const RECONNECT_WAIT: Duration = Duration::from_secs(5);

fn transport(what: &str) -> impl FnOnce(webrtc::error::Error) -> ClientError + '_ {
    move |e| ClientError::transport_by(what, e)
}

async fn wait_true(
    rx: &mut watch::Receiver<bool>,
    wait: Duration,
    what: &str,
) -> Result<(), ClientError> {
    tokio::time::timeout(wait, rx.wait_for(|v| *v))
        .await
        .map_err(|_| ClientError::Timeout(what.to_owned()))?
        .map_err(|_| ClientError::Stopped)?;
    Ok(())
}

/// Whether a connection in `state` is lost (or never came up).
fn is_lost(state: RTCPeerConnectionState) -> bool {
    matches!(
        state,
        RTCPeerConnectionState::Disconnected
            | RTCPeerConnectionState::Failed
            | RTCPeerConnectionState::Closed
    )
}

impl SfuSession {
    /// Join `room` at the SFU at `url` with `token`, publishing `tracks`, and subscribe to every
    /// other participant's tracks, proposing `packetization` for the room (the room keeps the
    /// first one named: [`packetization`](Self::packetization)). Returns the session and the
    /// incoming media. A session lost later is opened again in the background ([`link`](Self::link)).
    ///
    /// # Errors
    /// [`ClientError::SfuRefused`] (e.g. a token without the needed grants),
    /// [`ClientError::SfuUnavailable`], [`ClientError::Transport`], [`ClientError::Timeout`].
    pub async fn connect(
        url: &str,
        token: &str,
        room: &str,
        tracks: &[LocalTrack],
        udp_addrs: Vec<String>,
        packetization: Packetization,
    ) -> Result<(Self, mpsc::Receiver<RemoteMedia>), ClientError> {
        let security = Security::default();
        Self::connect_with(
            url,
            token,
            room,
            tracks,
            udp_addrs,
            packetization,
            &security,
        )
        .await
    }

    /// [`connect`](Self::connect) with `security`: a private CA for an `https://` URL, or
    /// plaintext beyond loopback opted into ([`crate::endpoint`]).
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`ClientError::Config`] for a URL `security` refuses.
    pub async fn connect_with(
        url: &str,
        token: &str,
        room: &str,
        tracks: &[LocalTrack],
        udp_addrs: Vec<String>,
        packetization: Packetization,
        security: &Security,
    ) -> Result<(Self, mpsc::Receiver<RemoteMedia>), ClientError> {
        // Refuse a URL before anything is set up for it.
        Self::connect_to(
            Target::list(url, security)?,
            token,
            room,
            tracks,
            LocalAddrs {
                udp: udp_addrs,
                tcp: Vec::new(),
            },
            packetization,
            security,
        )
        .await
    }

    /// [`connect_with`](Self::connect_with) to `target`: a fixed URL, or the node the key
    /// service places the room on.
    pub(crate) async fn connect_to(
        target: Target,
        token: &str,
        room: &str,
        tracks: &[LocalTrack],
        addrs: LocalAddrs,
        packetization: Packetization,
        security: &Security,
    ) -> Result<(Self, mpsc::Receiver<RemoteMedia>), ClientError> {
        let (media_tx, media_rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(256);
        let params = Params {
            target,
            security: security.clone(),
            token: token.to_owned(),
            room: room.to_owned(),
            tracks: tracks.to_vec(),
            addrs,
            media: media_tx,
            events: events.clone(),
        };
        let opened = open(&params, packetization, 0, WAIT).await?;
        let current: Current = Arc::new(Mutex::new(Some(opened.conn.clone())));
        let (link_tx, link) = watch::channel(LinkStatus::default());
        let identity = opened.identity.clone();
        let packetization = opened.packetization;
        let task = tokio::spawn(reconnect::supervise(
            params,
            opened,
            current.clone(),
            link_tx,
        ));
        Ok((
            Self {
                current,
                identity,
                packetization,
                events,
                link,
                task,
            },
            media_rx,
        ))
    }

    fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(ClientError::Reconnecting(crate::link::Link::Sfu))
    }

    /// The session's link: up, or lost and being reconnected.
    #[must_use]
    pub fn link(&self) -> LinkStatus {
        self.link.borrow().clone()
    }

    /// The identity the SFU knows this participant by (the token's).
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The extension ids negotiated for the `i`-th published track. They are the same on
    /// every connection (the SFU answers with the offerer's ids, SFU-NEG-01).
    ///
    /// # Errors
    /// [`ClientError::Transport`]; [`ClientError::Config`] for a bad index;
    /// [`ClientError::Reconnecting`] while reconnecting.
    pub async fn ext_ids(&self, i: usize) -> Result<ExtIds, ClientError> {
        self.conn()?.ext_ids(i).await
    }

    /// The room's packetization, which this participant must use (the first participant to
    /// name one chose it; SFU-ROOM-03).
    #[must_use]
    pub fn packetization(&self) -> Packetization {
        self.packetization
    }

    /// Room events from now on, and the session's losses and reconnections
    /// ([`SfuEvent::Link`]).
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<SfuEvent> {
        self.events.subscribe()
    }

    /// The connection's statistics (getStats); empty while reconnecting.
    pub async fn network_stats(&self) -> crate::transport::NetworkStats {
        match self.conn() {
            Ok(c) => crate::transport::network_stats(&c.pc).await,
            Err(_) => crate::transport::NetworkStats::default(),
        }
    }

    /// The mid of the `i`-th published track's transceiver (once negotiated). The same on
    /// every connection: the transceivers are added in the same order.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad index or a track without a mid yet;
    /// [`ClientError::Reconnecting`] while reconnecting.
    pub async fn mid(&self, i: usize) -> Result<String, ClientError> {
        self.conn()?.mid(i).await
    }

    /// Ask the SFU for simulcast layer `rid` of `track` (a [`RemoteMedia::track`]); it switches
    /// at that layer's next key frame. An empty `rid`: the track's first layer. Not carried
    /// over a reconnection (track names are per connection).
    ///
    /// # Errors
    /// [`ClientError::Stopped`] when the session has ended; [`ClientError::Reconnecting`]
    /// while reconnecting.
    pub async fn set_layer(&self, track: &str, rid: &str) -> Result<(), ClientError> {
        self.conn()?
            .requests
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

    /// Leave the SFU and close the connection (reconnecting stops).
    pub async fn leave(mut self) {
        self.task.abort();
        // The task may be between connections; wait until it has let go of them.
        let _ = (&mut self.task).await;
        let conn = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(c) = conn {
            c.close(true).await;
        }
    }
}

impl Drop for SfuSession {
    /// A session dropped without [`leave`](Self::leave) stops reconnecting; its connection
    /// closes with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    fn sender(&self, i: usize) -> Result<&Arc<dyn RtpSender>, ClientError> {
        self.senders
            .get(i)
            .ok_or_else(|| ClientError::config(format!("no published track {i}")))
    }

    async fn ext_ids(&self, i: usize) -> Result<ExtIds, ClientError> {
        negotiated_ext_ids(self.sender(i)?).await
    }

    async fn mid(&self, i: usize) -> Result<String, ClientError> {
        let sender = self.sender(i)?;
        for t in self.pc.get_transceivers().await {
            if let Ok(Some(s)) = t.sender().await
                && Arc::ptr_eq(&s, sender)
                && let Ok(Some(mid)) = t.mid().await
            {
                return Ok(mid);
            }
        }
        Err(ClientError::config(format!(
            "published track {i} has no mid"
        )))
    }

    /// Close the connection, saying `Leave` first if `leave`. The peer connection is closed
    /// before anything else binds the tracks: a track is bound to one connection at a time,
    /// and closing ends the old binding's feedback stream (`LocalTrack::key_frame_request`).
    async fn close(&self, leave: bool) {
        // Best effort: a stream that is gone no longer drains its queue.
        if leave {
            let _ = self.requests.try_send(pb::SignalRequest {
                id: u32::MAX,
                request: Some(R::Leave(pb::Leave {})),
            });
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing the peer connection");
        }
    }
}

/// Open one connection: a peer connection with `p.tracks`, the `Join` and its answer, and the
/// signalling task. Media arrives on `p.media` tagged with `connection`. A failed attempt
/// closes what it opened.
async fn open(
    p: &Params,
    packetization: Packetization,
    connection: u32,
    wait: Duration,
) -> Result<Opened, ClientError> {
    let (g_tx, gathered) = watch::channel(false);
    let (s_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let known: Tracks = Arc::default();
    let handler = Arc::new(Handler {
        gathered: g_tx,
        state: s_tx,
        tracks: known.clone(),
        media: p.media.clone(),
        connection,
    });
    let pc = peer_connection_with(handler, p.addrs.udp.clone(), p.addrs.tcp.clone()).await?;
    let r = negotiate(p, &pc, gathered, state, known, packetization, wait).await;
    if r.is_err()
        && let Err(e) = pc.close().await
    {
        tracing::debug!(error = %e, "closing a failed connection");
    }
    r
}

async fn negotiate(
    p: &Params,
    pc: &Arc<dyn PeerConnection>,
    mut gathered: watch::Receiver<bool>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    known: Tracks,
    packetization: Packetization,
    wait: Duration,
) -> Result<Opened, ClientError> {
    let mut senders = Vec::new();
    for t in &p.tracks {
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
    wait_true(&mut gathered, wait, "ICE gathering").await?;
    let offer_sdp = pc
        .local_description()
        .await
        .ok_or_else(|| ClientError::transport("no local offer"))?
        .sdp;

    let url = &p.target.url().await?;
    let endpoint = crate::endpoint::endpoint(url, &p.security)?;
    let mut client = tokio::time::timeout(wait, endpoint.connect())
        .await
        .map_err(|_| ClientError::Timeout(format!("connect {url}")))?
        .map(SfuClient::new)
        .map_err(|e| ClientError::SfuUnavailable {
            what: format!("connect {url}"),
            source: Box::new(e),
        })?;
    let (requests, rx) = mpsc::channel(64);
    let mut req = Request::new(ReceiverStream::new(rx));
    let auth = format!("Bearer {}", p.token)
        .parse()
        .map_err(|_| ClientError::config("the token is not ASCII"))?;
    req.metadata_mut().insert("authorization", auth);
    let mut events = tokio::time::timeout(wait, client.signal(req))
        .await
        .map_err(|_| ClientError::Timeout("the SFU's signalling stream".into()))?
        .map_err(|s| ClientError::from_sfu_status("open the signalling stream", s))?
        .into_inner();
    let send = |id: u32, r: R| pb::SignalRequest {
        id,
        request: Some(r),
    };
    requests
        .send(send(
            1,
            R::Join(pb::Join {
                room: p.room.clone(),
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
        let ev = tokio::time::timeout(wait, events.next())
            .await
            .map_err(|_| ClientError::Timeout("Joined from the SFU".into()))?
            .ok_or(ClientError::Stopped)?
            .map_err(|s| ClientError::from_sfu_status("join", s))?;
        match ev.event {
            Some(E::Joined(j)) => break j,
            Some(E::RequestFailed(f)) => {
                return Err(ClientError::SfuRefused {
                    code: tonic::Code::from(f.code),
                    message: f.message,
                });
            }
            Some(e) => early.push(e),
            None => {}
        }
    };
    let tcp = if p.addrs.tcp.is_empty() {
        Vec::new()
    } else {
        passive_tcp_candidates(&joined.answer_sdp)
    };
    let answer =
        RTCSessionDescription::answer(joined.answer_sdp).map_err(transport("SFU answer"))?;
    pc.set_remote_description(answer)
        .await
        .map_err(transport("remote answer"))?;
    // SFU-TCP-05: webrtc-rs 0.21.1 opens an ICE-TCP stream only to a passive candidate handed
    // to `add_ice_candidate`, not to one in the remote description.
    for candidate in tcp {
        pc.add_ice_candidate(candidate)
            .await
            .map_err(transport("the SFU's ICE-TCP candidate"))?;
    }
    let up = tokio::time::timeout(
        wait,
        state.wait_for(|s| *s == RTCPeerConnectionState::Connected || is_lost(*s)),
    )
    .await
    .map_err(|_| ClientError::Timeout("connection to the SFU".into()))?
    .map(|s| *s)
    .map_err(|_| ClientError::Stopped)?;
    if up != RTCPeerConnectionState::Connected {
        return Err(ClientError::transport(format!(
            "the connection to the SFU went {up} while connecting"
        )));
    }

    let identity = joined.identity.clone();
    // SFU-ROOM-03: the room's packetization wins over this participant's preference.
    let packetization = match pb::Packetization::try_from(joined.packetization) {
        Ok(pb::Packetization::Ietf) => Packetization::Ietf,
        Ok(pb::Packetization::Browser) => Packetization::Browser,
        _ => packetization,
    };
    let signalling = tokio::spawn(signalling(
        pc.clone(),
        requests.clone(),
        events,
        early,
        known,
        identity.clone(),
        p.events.clone(),
    ));
    Ok(Opened {
        conn: Arc::new(Conn {
            pc: pc.clone(),
            requests,
            senders,
        }),
        state,
        signalling,
        identity,
        packetization,
    })
}

/// The rest of the session: subscribe to every new track, answer the SFU's offers.
async fn signalling(
    pc: Arc<dyn PeerConnection>,
    requests: mpsc::Sender<pb::SignalRequest>,
    mut events: tonic::Streaming<pb::SignalEvent>,
    early: Vec<E>,
    known: Tracks,
    me: String,
    room_events: broadcast::Sender<SfuEvent>,
) -> Result<(), ClientError> {
    let mut next_id = 2u32;
    let mut pending: std::collections::VecDeque<E> = early.into();
    loop {
        let ev = match pending.pop_front() {
            Some(e) => e,
            None => match events.next().await {
                Some(Ok(pb::SignalEvent { event: Some(e) })) => e,
                Some(Ok(_)) => continue,
                Some(Err(s)) => return Err(ClientError::from_sfu_status("signalling", s)),
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
                known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(t.track.clone())
                    .and_modify(|m| {
                        m.publisher.clone_from(&t.publisher);
                        m.kind = kind;
                    })
                    .or_insert(TrackMeta {
                        publisher: t.publisher.clone(),
                        kind,
                        reader: None,
                    });
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
                    .ok_or_else(|| ClientError::transport("no local answer"))?
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
            // SFU-CLI-05: the track's reader and forwarder end, and its entry goes.
            E::TrackUnpublished(t) => {
                let gone = known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&t.track);
                if let Some(reader) = gone.and_then(|m| m.reader) {
                    reader.abort();
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
