//! One UDP port for every participant: webrtc-rs's sans-I/O `rtc` peer connections driven
//! directly, ICE-lite, demultiplexed by the SFU itself (specs/sfu-edge-research.md).
//!
//! Three layers, each usable alone:
//!
//! - [`Edge`] connects participants (webrtc-rs peers and Chromium) on one socket, hands out
//!   what they send, sends RTP on tracks it adds (renegotiating with an offer of its own) and
//!   carries key-frame requests both ways;
//! - [`EdgeRooms`] runs every room's routing core on one edge, sans I/O;
//! - [`EdgeSfu`] runs `workers` of them, each on its own port and thread, a room on one
//!   (SFU-WRK-01..03), behind the SFU's signalling API ([`crate::grpc::Backend`]);
//!   `veil-server` serves it.
//!
//! `benches/edge_fanout.rs` measures the edge's fan-out in one process; `veil-server`'s
//! `sfu_load` measures the server.
//!
//! Writes are batched: [`Edge::write_rtp`] only queues into the connection; the next
//! [`Edge::poll_transmit`] (or [`Edge::poll_event`]) drains each touched connection once.
//!
//! Sans I/O like the routing core: the caller owns the socket and the clock. Feed each datagram
//! to [`Edge::handle_datagram`], send what [`Edge::poll_transmit`] returns, act on
//! [`Edge::poll_event`], and call [`Edge::handle_timeout`] at [`Edge::poll_timeout`].
//!
//! Demultiplexing (SFU-EDGE-01): a STUN binding request names its connection in USERNAME
//! (`"<our ufrag>:<their ufrag>"`, RFC 8445 §7.2.2); the edge looks the local ufrag up and
//! remembers the sender's address for that connection. Everything else (DTLS, SRTP, SRTCP, STUN
//! responses) is routed by the address alone; a datagram from an address no request has named
//! is dropped before any connection sees it. An address stays with the connection that first
//! claimed it until that connection closes (SFU-EDGE-03): a request naming another connection
//! from it, even one with valid credentials (a participant forging its source address), is
//! dropped, so nobody can pull another participant's packets into their own connection.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{BINDING_REQUEST, Message, is_stun_message};
use rtc::stun::textattrs::Username;
use veil_rtc::rtx::RtxObserver;
use webrtc::peer_connection::SettingEngineBuilder;

use crate::connection::peer;
use crate::connection::rid_latch::RidLatch;
use crate::error::SfuError;
use crate::routing::{MediaKind, Pulse, RateLimit, TokenBucket};

mod io;
mod placement;
mod probe;
mod room;
mod serve;
mod stats;
pub mod tcp;
pub use room::{
    EdgeRoomEvent, EdgeRooms, LegId, RelayOut, RelayTrack, parse_track_name, track_name,
};
pub use serve::EdgeSfu;
pub use serve::RelayIn;
pub use stats::{Counters, Observation};

/// The local description `pc` has just set, as SDP.
fn local_sdp(pc: &RTCPeerConnection) -> Result<String, SfuError> {
    pc.local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| SfuError::WebRtcState("no local description"))
}

/// The track the edge sends as `name` (the msid's track id; its stream is `{name}-stream`).
fn outgoing_track(
    name: &str,
    kind: RtpCodecKind,
    codings: Vec<RTCRtpEncodingParameters>,
) -> MediaStreamTrack {
    MediaStreamTrack::new(
        format!("{name}-stream"),
        name.to_owned(),
        name.to_owned(),
        kind,
        codings,
    )
}

fn rtc_error(what: &'static str) -> impl Fn(rtc::shared::error::Error) -> SfuError + Copy {
    move |e| SfuError::WebRtc {
        what,
        source: Box::new(e),
    }
}

/// A connection of the edge.
pub type ConnId = usize;

/// How a participant's packets reach the edge: UDP datagrams, or RFC 4571 frames on an ICE-TCP
/// stream the participant opened to the edge's passive TCP candidate (SFU-TCP-01). A
/// participant's address is claimed per transport: a UDP source and a TCP peer with the same
/// IP and port are two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A UDP datagram.
    Udp,
    /// A frame of an ICE-TCP stream.
    Tcp,
}

/// What an I/O loop does with [`Edge`] or [`EdgeRooms`]: feed datagrams and timeouts, drain
/// datagrams to send and events. One loop can drive either (the tests and
/// `benches/edge_fanout.rs` do).
pub trait SansIo {
    /// What [`SansIo::poll_event`] hands out.
    type Event;
    /// One datagram from `from`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);
    /// Run the timers that are due.
    fn handle_timeout(&mut self, now: Instant);
    /// When [`SansIo::handle_timeout`] is next due.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// The next datagram to send, and where.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// [`SansIo`] for a type whose own methods of those names do the work.
macro_rules! sans_io {
    ($t:ty, $ev:ty) => {
        impl SansIo for $t {
            type Event = $ev;
            fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
                <$t>::handle_datagram(self, now, from, datagram);
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now);
            }
            fn poll_timeout(&mut self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
            fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
                <$t>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<$ev> {
                <$t>::poll_event(self)
            }
        }
    };
}
sans_io!(Edge, (ConnId, EdgeEvent));
sans_io!(EdgeRooms, room::EdgeRoomEvent);

/// What a connection did.
#[derive(Debug)]
pub enum EdgeEvent {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// The connection failed or closed; it is gone from the edge.
    Closed,
    /// A remote track's stream started: its SSRC and, for simulcast, its rid.
    TrackOpen {
        /// The track, as the connection names it.
        track: String,
        /// Its receiver, to ask the participant for a key frame
        /// ([`Edge::request_key_frame`]).
        receiver: RTCRtpReceiverId,
        /// The stream's SSRC.
        ssrc: u32,
        /// The stream's rid, if it has one.
        rid: Option<String>,
    },
    /// The participant asks for a key frame (PLI or FIR) on one of the edge's tracks to it.
    KeyFrameRequest {
        /// The edge's track the request is about (as named in [`Edge::add_track`]).
        track: String,
    },
    /// An RTP packet from the participant, after SRTP and the interceptors.
    Rtp {
        /// The track it belongs to.
        track: String,
        /// The packet.
        packet: rtp::Packet,
    },
}

struct Conn {
    pc: RTCPeerConnection,
    ufrag: String,
    /// GCC's estimate of what the edge can send to this participant (with
    /// [`Edge::with_congestion_control`]).
    estimate: Option<peer::Estimate>,
    /// Its datagrams against [`Edge::set_datagram_limit`].
    bucket: TokenBucket,
    /// `pc.poll_timeout()` as of its last drain. Asking rtc walks all of its handlers, so the
    /// edge asks once per drain, not once per connection per loop turn.
    deadline: Option<Instant>,
    /// What rtc is handed of the participant's descriptions, so that its simulcast layers stay
    /// bound across renegotiation (SFU-NEG-03).
    rids: RidLatch,
}

/// Every participant's peer connection on one local address.
pub struct Edge {
    local: SocketAddr,
    /// Indexed by [`ConnId`]; a closed connection leaves `None`.
    /// Boxed: a closed connection's slot stays for good (ids are never reused), and costs a
    /// pointer.
    conns: Vec<Option<Box<Conn>>>,
    /// The open connections' ids, ascending: what the timers walk, so that their cost follows
    /// the participants present, not every one since the edge started.
    live: Vec<ConnId>,
    by_ufrag: HashMap<String, ConnId>,
    by_addr: HashMap<(Via, SocketAddr), ConnId>,
    /// Connections that took input since they were last drained.
    dirty: Vec<ConnId>,
    transmit: VecDeque<(SocketAddr, BytesMut)>,
    /// The passive ICE-TCP candidate every connection offers besides its UDP one
    /// ([`Edge::set_tcp`], SFU-TCP-01), and what goes out on ICE-TCP streams.
    tcp: Option<SocketAddr>,
    tcp_transmit: VecDeque<(SocketAddr, BytesMut)>,
    events: VecDeque<(ConnId, EdgeEvent)>,
    /// Datagrams no connection claimed.
    unrouted: u64,
    /// ICE credentials: the password authenticates every STUN request, so it must not be
    /// guessable.
    rng: StdRng,
    /// When a silent participant counts as gone (SFU-EDGE-06); webrtc-rs's defaults if unset.
    timers: Option<peer::IceTimers>,
    /// The SFU's own chain (congestion control, RTX counted here) instead of the plain one.
    congestion_control: Option<Arc<dyn RtxObserver>>,
    /// Each connection's datagram rate (SFU-EDGE-13); `None`: unlimited.
    datagram_limit: Option<RateLimit>,
    /// Datagrams dropped over that limit.
    flooded: u64,
    /// The clock the token buckets count from.
    epoch: Instant,
}

impl Edge {
    /// An edge whose one host candidate is `local`: the address the socket is bound to, as
    /// peers reach it (SFU-EDGE-02: rtc matches every STUN packet against this exact address).
    ///
    /// The edge reads no clock and no OS randomness of its own (SFU-OBS-02): `now` starts the
    /// clock of its rate limits, and `seed` its generator of ICE credentials. A shell seeds it
    /// from the OS (the ICE password authenticates every STUN request, so it must not be
    /// guessable); a test may fix it.
    #[must_use]
    pub fn new(local: SocketAddr, now: Instant, seed: [u8; 32]) -> Self {
        Self {
            local,
            conns: Vec::new(),
            live: Vec::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            dirty: Vec::new(),
            transmit: VecDeque::new(),
            tcp: None,
            tcp_transmit: VecDeque::new(),
            events: VecDeque::new(),
            unrouted: 0,
            rng: StdRng::from_seed(seed),
            timers: None,
            congestion_control: None,
            datagram_limit: None,
            flooded: 0,
            epoch: now,
        }
    }

    /// The same edge with the SFU's interceptor chain on every connection it accepts from now
    /// on ([`peer::sfu_interceptors`]): transport-cc numbering and GCC on what the edge sends,
    /// whose estimate [`Edge::estimate`] reads (SFU-BWE-01), and RTX reported to `rtx`.
    #[must_use]
    pub fn with_congestion_control(mut self, rtx: Arc<dyn RtxObserver>) -> Self {
        self.congestion_control = Some(rtx);
        self
    }

    /// GCC's estimate of what the edge can send to participant `id`, in bits per second: None
    /// without congestion control, or before the participant's first transport-cc feedback.
    #[must_use]
    pub fn estimate(&self, id: ConnId) -> Option<u64> {
        self.conns
            .get(id)?
            .as_ref()?
            .estimate
            .as_ref()?
            .bits_per_second()
    }

    /// What the estimator of connection `id` last published (its estimate, loss and delay
    /// signals, the last probe cluster's outcome; SFU-BWE-07): None without congestion control.
    #[must_use]
    pub fn signals(&self, id: ConnId) -> Option<peer::Signals> {
        Some(self.conns.get(id)?.as_ref()?.estimate.as_ref()?.signals())
    }

    /// Send `pulse` (its bytes of probe packets for its cluster) on connection `id`, departing
    /// `now`: redundant retransmissions from its send history, through its RTX interceptor
    /// (SFU-BWE-06). They leave with the connection's next drain. Nothing without congestion
    /// control.
    pub fn send_probe(&mut self, now: Instant, id: ConnId, pulse: Pulse) {
        let Some(e) = self
            .conns
            .get(id)
            .and_then(|c| c.as_ref()?.estimate.as_ref())
        else {
            return;
        };
        e.probes().request(veil_rtc::rtx::ProbeRequest {
            cluster: pulse.cluster,
            bytes: pulse.bytes,
            now,
            last: pulse.last,
        });
        self.dirty.push(id);
    }

    /// The same edge with these ICE timers on every connection it accepts from now on: a
    /// participant that sends nothing for `silence` (a live one's consent checks keep coming)
    /// is disconnected, and after a further `grace` its connection fails and closes
    /// (SFU-EDGE-06).
    #[must_use]
    pub fn with_ice_timers(mut self, timers: peer::IceTimers) -> Self {
        self.set_ice_timers(timers);
        self
    }

    /// [`Edge::with_ice_timers`] on an existing edge.
    pub fn set_ice_timers(&mut self, timers: peer::IceTimers) {
        self.timers = Some(timers);
    }

    /// Offer `addr` as a passive ICE-TCP candidate (RFC 6544) on every connection accepted
    /// from now on, besides the UDP one (SFU-TCP-01): the participant connects to it, and the
    /// shell hands each frame of that stream to [`Edge::handle_tcp_frame`] and sends what
    /// [`Edge::poll_tcp_transmit`] returns on it.
    pub fn set_tcp(&mut self, addr: SocketAddr) {
        self.tcp = Some(addr);
    }

    /// The connection that claimed UDP address `addr`, if one did (SFU-EDGE-01).
    #[must_use]
    pub fn conn_at(&self, addr: SocketAddr) -> Option<ConnId> {
        self.by_addr.get(&(Via::Udp, addr)).copied()
    }

    /// The connection that claimed the ICE-TCP stream from `addr`, if one did (SFU-TCP-02).
    #[must_use]
    pub fn tcp_conn_at(&self, addr: SocketAddr) -> Option<ConnId> {
        self.by_addr.get(&(Via::Tcp, addr)).copied()
    }

    /// Cut each connection's datagrams to `limit` (None: no limit) before webrtc-rs sees them
    /// (SFU-EDGE-13). Every participant shares the edge's socket and thread, so a participant
    /// that floods must cost as little as possible per datagram: past its limit a datagram is
    /// dropped after the address lookup, before SRTP.
    pub fn set_datagram_limit(&mut self, limit: Option<RateLimit>) {
        self.datagram_limit = limit;
    }

    /// Datagrams dropped over [`Edge::set_datagram_limit`].
    #[must_use]
    pub fn flooded(&self) -> u64 {
        self.flooded
    }

    /// Datagrams dropped because no connection claimed them.
    #[must_use]
    pub fn unrouted(&self) -> u64 {
        self.unrouted
    }

    /// Live connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there is no connection.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answer a participant's offer: a new connection, ICE-lite, DTLS server, with this edge's
    /// address as its only candidate. Returns the connection and the answer SDP.
    ///
    /// # Errors
    /// [`SfuError::Sdp`] if webrtc-rs refuses the offer or cannot answer it;
    /// [`SfuError::WebRtc`] if the connection cannot be made.
    pub fn accept(&mut self, now: Instant, offer: &str) -> Result<(ConnId, String), SfuError> {
        let id = self.conns.len();
        // Ours to choose: unique per connection, and the key STUN requests are routed by.
        let ufrag = format!("veil{id:08x}{:08x}", self.rng.next_u32());
        let pwd = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
        let se = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd)
            // The browser (full ICE, controlling) picks the pair; DTLS waits for its hello.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled);
        let se = match self.timers {
            Some(t) => se.with_ice_timeouts(Some(t.silence), Some(t.grace), Some(t.keepalive)),
            None => se,
        };
        let mut me = peer::media_engine()?;
        let (registry, estimate) = match &self.congestion_control {
            Some(rtx) => {
                let estimate = peer::Estimate::default();
                let r = peer::sfu_interceptors(&mut me, &estimate, rtx.clone())?;
                (r, Some(estimate))
            }
            None => (peer::interceptors(&mut me)?, None),
        };
        let w = rtc_error("accept");
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_setting_engine(veil_rtc::setting_engine(se))
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(w)?;
        let mut rids = RidLatch::default();
        let remote = rids.remote(offer);
        // A description webrtc-rs refuses is the participant's fault (INVALID_ARGUMENT).
        let peer = SfuError::sdp::<rtc::shared::error::Error>;
        pc.set_remote_description(
            now,
            RTCSessionDescription::offer(remote.sdp.to_string()).map_err(peer("offer"))?,
        )
        .map_err(peer("offer"))?;
        rids.taken(remote);
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.local.ip().to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(w)?;
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json().map_err(w)?)
            .map_err(w)?;
        if let Some(tcp) = self.tcp {
            // SFU-TCP-01: passive, the participant connects; RFC 6544 gives it a lower
            // priority than the UDP candidate, so a participant that can use UDP does.
            let passive = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "tcp".to_owned(),
                    address: tcp.ip().to_string(),
                    port: tcp.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type: TcpType::Passive,
            }
            .new_candidate_host()
            .map_err(w)?;
            pc.add_local_candidate(RTCIceCandidate::from(&passive).to_json().map_err(w)?)
                .map_err(w)?;
        }
        // Answering depends on nothing but the offer (webrtc-rs starts the offered receivers
        // here): a failure is the offer's, e.g. two send streams without an SSRC or a rid.
        let answer = pc.create_answer(None).map_err(peer("offer"))?;
        pc.set_local_description(now, answer)
            .map_err(peer("offer"))?;
        let sdp = local_sdp(&pc)?;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.conns.push(Some(Box::new(Conn {
            pc,
            ufrag,
            estimate,
            bucket: TokenBucket::default(),
            deadline: None,
            rids,
        })));
        self.live.push(id);
        self.dirty.push(id);
        Ok((id, sdp))
    }

    fn conn(&mut self, id: ConnId) -> Result<&mut RTCPeerConnection, SfuError> {
        self.conn_mut(id).map(|c| &mut c.pc)
    }

    fn conn_mut(&mut self, id: ConnId) -> Result<&mut Conn, SfuError> {
        self.conns
            .get_mut(id)
            .and_then(Option::as_mut)
            .map(|c| &mut **c)
            .ok_or(SfuError::Closed)
    }

    /// Add a send-only track to connection `id`: one stream with `ssrc` (and, for video, its
    /// RTX SSRC) and `codec`. It is negotiated by the next [`Edge::offer`].
    ///
    /// # Errors
    /// [`SfuError::Closed`] for a connection that is gone; [`SfuError::WebRtc`].
    pub fn add_track(
        &mut self,
        id: ConnId,
        track: &str,
        kind: MediaKind,
        ssrc: u32,
        rtx_ssrc: Option<u32>,
        codec: RTCRtpCodec,
    ) -> Result<RTCRtpSenderId, SfuError> {
        let track = outgoing_track(
            track,
            peer::rtp_kind(kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        let t = self
            .conn(id)?
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    ..Default::default()
                }),
            )
            .map_err(rtc_error("add track"))?;
        Ok(RTCRtpSenderId::from(t))
    }

    /// Stop sending on `sender` of connection `id` and keep its transceiver for a later
    /// [`Edge::reuse_track`] (SFU-EDGE-16): the next [`Edge::offer`] makes its m-section
    /// `inactive`. rtc 0.21.1 never removes a transceiver (a stopped one keeps its m-section
    /// for the connection's life), so a connection that removed a track for every departure
    /// grew by one m-section, one RTX history and one stats record each time.
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::WebRtcState`] for a sender the connection does not
    /// have.
    pub fn park_track(&mut self, id: ConnId, sender: RTCRtpSenderId) -> Result<(), SfuError> {
        self.conn(id)?
            .rtp_transceiver(sender.into())
            .ok_or(SfuError::WebRtcState("no such sender"))?
            .set_direction(RTCRtpTransceiverDirection::Inactive);
        self.dirty.push(id);
        Ok(())
    }

    /// Send `track` on `sender` of connection `id`, a transceiver [`Edge::park_track`] parked:
    /// the same SSRCs and codec, a new msid. The next [`Edge::offer`] makes it `sendonly`
    /// again (SFU-EDGE-16).
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::WebRtcState`] for a sender the connection does not
    /// have; [`SfuError::WebRtc`] if rtc refuses the track.
    pub fn reuse_track(
        &mut self,
        id: ConnId,
        sender: RTCRtpSenderId,
        track: &str,
    ) -> Result<(), SfuError> {
        let pc = self.conn(id)?;
        // rtc hands out a sender only while its transceiver's direction sends.
        pc.rtp_transceiver(sender.into())
            .ok_or(SfuError::WebRtcState("no such sender"))?
            .set_direction(RTCRtpTransceiverDirection::Sendonly);
        let mut s = pc
            .rtp_sender(sender)
            .ok_or(SfuError::WebRtcState("no such sender"))?;
        let (kind, codings) = (s.track().kind(), s.track().codings().to_vec());
        s.replace_track(outgoing_track(track, kind, codings))
            .map_err(rtc_error("reuse track"))?;
        self.dirty.push(id);
        Ok(())
    }

    /// An offer from the edge to connection `id` (e.g. after [`Edge::add_track`]).
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::WebRtc`] if the connection cannot offer now.
    pub fn offer(&mut self, now: Instant, id: ConnId) -> Result<String, SfuError> {
        let w = rtc_error("offer");
        let pc = self.conn(id)?;
        let offer = pc.create_offer(None).map_err(&w)?;
        pc.set_local_description(now, offer).map_err(&w)?;
        let sdp = local_sdp(pc)?;
        self.dirty.push(id);
        Ok(sdp)
    }

    /// A new offer from participant `id` (e.g. to publish another track): returns the answer.
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::Sdp`] if webrtc-rs refuses the offer or cannot answer
    /// it (for one, while the edge's own offer to `id` waits for its answer).
    pub fn accept_offer(
        &mut self,
        now: Instant,
        id: ConnId,
        offer: &str,
    ) -> Result<String, SfuError> {
        let c = self.conn_mut(id)?;
        let remote = c.rids.remote(offer);
        let peer = SfuError::sdp::<rtc::shared::error::Error>;
        let desc = RTCSessionDescription::offer(remote.sdp.to_string()).map_err(peer("offer"))?;
        c.pc.set_remote_description(now, desc)
            .map_err(peer("offer"))?;
        c.rids.taken(remote);
        let pc = &mut c.pc;
        // As in `accept`: answering fails only for what the offer holds.
        let answer = pc.create_answer(None).map_err(peer("offer"))?;
        pc.set_local_description(now, answer)
            .map_err(peer("offer"))?;
        let sdp = local_sdp(pc)?;
        self.dirty.push(id);
        Ok(sdp)
    }

    /// The participant's answer to [`Edge::offer`].
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::Sdp`] if webrtc-rs refuses the answer.
    pub fn answer(&mut self, now: Instant, id: ConnId, sdp: &str) -> Result<(), SfuError> {
        let c = self.conn_mut(id)?;
        let remote = c.rids.remote(sdp);
        let peer = SfuError::sdp::<rtc::shared::error::Error>;
        let desc = RTCSessionDescription::answer(remote.sdp.to_string()).map_err(peer("answer"))?;
        c.pc.set_remote_description(now, desc)
            .map_err(peer("answer"))?;
        c.rids.taken(remote);
        self.dirty.push(id);
        Ok(())
    }

    /// What connection `id` negotiated for `sender`: the payload type of the codec `mime` and
    /// every header extension (URI, id). None before the participant's answer.
    #[must_use]
    pub fn negotiated(
        &mut self,
        id: ConnId,
        sender: RTCRtpSenderId,
        mime: &str,
    ) -> Option<(u8, Vec<(String, u8)>)> {
        let c = self.conns.get_mut(id)?.as_mut()?;
        let mut s = c.pc.rtp_sender(sender)?;
        let p = &s.get_parameters().rtp_parameters;
        let pt = p
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))?
            .payload_type;
        let ext = p
            .header_extensions
            .iter()
            .filter_map(|h| Some((h.uri.clone(), u8::try_from(h.id).ok()?)))
            .collect();
        Some((pt, ext))
    }

    /// Ask participant `id` for a key frame of `media_ssrc` on `receiver` (a PLI).
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::WebRtc`].
    pub fn request_key_frame(
        &mut self,
        now: Instant,
        id: ConnId,
        receiver: RTCRtpReceiverId,
        media_ssrc: u32,
    ) -> Result<(), SfuError> {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        self.conn(id)?
            .rtp_receiver(receiver)
            .ok_or(SfuError::Closed)?
            .write_rtcp(now, vec![Box::new(pli)])
            .map_err(rtc_error("key frame request"))?;
        self.dirty.push(id);
        Ok(())
    }

    /// Queue `packet` on connection `id`'s `sender`. Its SSRC, payload type and extension ids
    /// must be the ones negotiated on that connection (webrtc-rs checks). It leaves with the
    /// connection's next drain.
    ///
    /// # Errors
    /// [`SfuError::Closed`]; [`SfuError::WebRtc`] if webrtc-rs refuses the packet.
    pub fn write_rtp(
        &mut self,
        now: Instant,
        id: ConnId,
        sender: RTCRtpSenderId,
        packet: rtp::Packet,
    ) -> Result<(), SfuError> {
        let w = rtc_error("write");
        self.conn(id)?
            .rtp_sender(sender)
            .ok_or(SfuError::Closed)?
            .write_rtp(now, packet)
            .map_err(w)?;
        self.dirty.push(id);
        Ok(())
    }

    /// Which connection `datagram` from `from` belongs to (SFU-EDGE-01; SFU-TCP-02 for `via`
    /// TCP).
    fn route(&mut self, via: Via, from: SocketAddr, datagram: &[u8]) -> Option<ConnId> {
        if is_stun_message(datagram) {
            let mut m = Message::new();
            if m.unmarshal_binary(datagram).is_ok() && m.typ == BINDING_REQUEST {
                let user = Username::get_from_as(&m, ATTR_USERNAME).ok()?;
                let ours = user.text.split(':').next()?;
                let id = *self.by_ufrag.get(ours)?;
                // rtc checks the request's integrity before it answers or selects a pair;
                // this only decides which connection gets to check it.
                let owner = *self.by_addr.entry((via, from)).or_insert(id);
                return (owner == id).then_some(id);
            }
        }
        self.by_addr.get(&(via, from)).copied()
    }

    /// One datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.handle_packet(now, Via::Udp, from, datagram);
    }

    /// One packet (an RFC 4571 frame's body) from the ICE-TCP stream of peer `from`
    /// (SFU-TCP-02): routed like a datagram, by the STUN USERNAME first and the stream's peer
    /// address after, and handed to webrtc-rs as TCP on the edge's TCP candidate. Dropped
    /// (`unrouted`) if the edge offers no TCP candidate.
    pub fn handle_tcp_frame(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) {
        self.handle_packet(now, Via::Tcp, from, packet);
    }

    fn handle_packet(&mut self, now: Instant, via: Via, from: SocketAddr, datagram: &[u8]) {
        let (local_addr, transport_protocol) = match (via, self.tcp) {
            (Via::Udp, _) => (self.local, TransportProtocol::UDP),
            (Via::Tcp, Some(tcp)) => (tcp, TransportProtocol::TCP),
            (Via::Tcp, None) => {
                self.unrouted += 1;
                return;
            }
        };
        let Some(id) = self.route(via, from, datagram) else {
            self.unrouted += 1;
            return;
        };
        let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            self.by_addr.remove(&(via, from));
            self.unrouted += 1;
            return;
        };
        // SFU-EDGE-13: a flood is cut here, before SRTP and the interceptors cost anything.
        if let Some(limit) = self.datagram_limit
            && !c
                .bucket
                .take(limit, now.saturating_duration_since(self.epoch))
        {
            self.flooded += 1;
            return;
        }
        // rtc reports nothing back: a packet it cannot use is logged and dropped inside.
        let _ = c.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol,
            },
            message: BytesMut::from(datagram),
        });
        self.dirty.push(id);
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.drain();
        self.transmit.pop_front()
    }

    /// The next packet to send on an ICE-TCP stream, and the stream's peer (SFU-TCP-02). The
    /// shell frames it ([`tcp::framing::encode`]); call after [`Edge::poll_transmit`], which
    /// drains the connections.
    pub fn poll_tcp_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.drain();
        self.tcp_transmit.pop_front()
    }

    /// The next thing a connection did.
    pub fn poll_event(&mut self) -> Option<(ConnId, EdgeEvent)> {
        self.drain();
        self.events.pop_front()
    }

    /// When [`Edge::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.drain();
        self.live
            .iter()
            .filter_map(|&id| self.conns[id].as_ref()?.deadline)
            .min()
    }

    /// Run the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drain();
        let due: Vec<ConnId> = self
            .live
            .iter()
            .copied()
            .filter(|&id| {
                self.conns[id]
                    .as_ref()
                    .and_then(|c| c.deadline)
                    .is_some_and(|t| t <= now)
            })
            .collect();
        for id in due {
            let failed = self.conns[id]
                .as_mut()
                .is_some_and(|c| c.pc.handle_timeout(now).is_err());
            if failed {
                self.close(id);
            } else {
                self.dirty.push(id);
            }
        }
    }

    /// Collect what the touched connections have to send, say and hand over, in the order
    /// webrtc-rs's own driver uses: writes, events (a stream's `OnOpen` before its packets),
    /// reads.
    fn drain(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty {
            let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            while let Some(out) = c.pc.poll_write() {
                let queue = match out.transport.transport_protocol {
                    TransportProtocol::TCP => &mut self.tcp_transmit,
                    _ => &mut self.transmit,
                };
                queue.push_back((out.transport.peer_addr, out.message));
            }
            let mut closed = false;
            while let Some(ev) = c.pc.poll_event() {
                match ev {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                        RTCPeerConnectionState::Connected => {
                            self.events.push_back((id, EdgeEvent::Connected));
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            closed = true;
                        }
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        self.events.push_back((
                            id,
                            EdgeEvent::TrackOpen {
                                track: init.track_id,
                                receiver: init.receiver_id,
                                ssrc: init.ssrc,
                                rid: init.rid,
                            },
                        ));
                    }
                    _ => {}
                }
            }
            while let Some(m) = c.pc.poll_read() {
                match m.message {
                    RTCMessage::RtpPacket(track, packet) => {
                        self.events
                            .push_back((id, EdgeEvent::Rtp { track, packet }));
                    }
                    // Only key-frame requests reach here (veil_rtc::KeyFrameRequestTap).
                    RTCMessage::RtcpPacket(track, packets) => {
                        for _ in packets
                            .iter()
                            .filter(|p| veil_rtc::is_key_frame_request(p.as_ref()))
                        {
                            let track = track.clone();
                            self.events
                                .push_back((id, EdgeEvent::KeyFrameRequest { track }));
                        }
                    }
                    _ => {}
                }
            }
            c.deadline = c.pc.poll_timeout();
            if closed {
                self.close(id);
            }
        }
    }

    /// Close connection `id` (a participant leaves, or is removed): it says goodbye (DTLS
    /// `close_notify`), its address and ufrag are free, and [`EdgeEvent::Closed`] follows. A
    /// connection that is gone already is left alone.
    pub fn close(&mut self, id: ConnId) {
        if let Some(mut c) = self.conns.get_mut(id).and_then(Option::take) {
            if let Ok(at) = self.live.binary_search(&id) {
                self.live.remove(at);
            }
            let _ = c.pc.close();
            while let Some(out) = c.pc.poll_write() {
                let queue = match out.transport.transport_protocol {
                    TransportProtocol::TCP => &mut self.tcp_transmit,
                    _ => &mut self.transmit,
                };
                queue.push_back((out.transport.peer_addr, out.message));
            }
            self.by_ufrag.remove(&c.ufrag);
            self.by_addr.retain(|_, v| *v != id);
            self.events.push_back((id, EdgeEvent::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    use rtc::stun::message::{Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    use std::time::Duration;

    /// An offer from a plain rtc peer with one audio transceiver.
    fn offer(now: Instant) -> String {
        let mut me = MediaEngine::default();
        me.register_default_codecs().unwrap();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(me)
            .build(now)
            .unwrap();
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, None)
            .unwrap();
        let o = pc.create_offer(None).unwrap();
        pc.set_local_description(now, o).unwrap();
        pc.local_description().unwrap().sdp
    }

    fn ufrag(sdp: &str) -> &str {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .trim()
    }

    fn binding_request(username: &str) -> Vec<u8> {
        let mut m = Message::new();
        let setters: [Box<dyn Setter>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        ];
        m.build(&setters).unwrap();
        m.marshal_binary().unwrap()
    }

    /// Closed connections leave the timers' walk: after 50 participants came and went, the one
    /// left is all the edge's timers look at, and with it gone nothing is due.
    #[test]
    fn timers_walk_only_the_open_connections() {
        let now = Instant::now();
        let mut edge = Edge::new("127.0.0.1:5000".parse().unwrap(), now, [7; 32]);
        let mut ids: Vec<ConnId> = (0..50)
            .map(|_| edge.accept(now, &offer(now)).unwrap().0)
            .collect();
        let last = ids.pop().unwrap();
        for id in ids {
            edge.close(id);
        }
        assert_eq!(edge.live, [last]);
        assert_eq!(edge.len(), 1);
        assert!(edge.poll_timeout().is_some(), "ICE timers of the open one");
        edge.handle_timeout(now + Duration::from_secs(1));
        edge.close(last);
        assert!(edge.is_empty());
        assert_eq!(edge.poll_timeout(), None);
    }

    /// SFU-EDGE-01, SFU-EDGE-03: requests are routed by the ufrag they name, later datagrams by
    /// address; an address stays with its first connection; strangers reach nobody.
    #[test]
    fn requests_claim_addresses_and_an_address_is_never_taken_over() {
        let now = Instant::now();
        let mut edge = Edge::new("127.0.0.1:5000".parse().unwrap(), now, [7; 32]);
        let (a, answer_a) = edge.accept(now, &offer(now)).unwrap();
        let (b, answer_b) = edge.accept(now, &offer(now)).unwrap();
        let (ua, ub) = (ufrag(&answer_a), ufrag(&answer_b));
        assert_ne!(ua, ub);
        let (pa, pb, mallory): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:6001".parse().unwrap(),
            "127.0.0.1:6002".parse().unwrap(),
            "127.0.0.1:6666".parse().unwrap(),
        );
        assert_eq!(
            edge.route(Via::Udp, pa, &binding_request(&format!("{ua}:x"))),
            Some(a)
        );
        assert_eq!(
            edge.route(Via::Udp, pb, &binding_request(&format!("{ub}:y"))),
            Some(b)
        );
        // Media from a claimed address goes to its connection.
        assert_eq!(edge.route(Via::Udp, pa, &[0x80; 40]), Some(a));
        assert_eq!(edge.route(Via::Udp, pb, &[0x80; 40]), Some(b));
        // A request from a's address naming b is refused; a keeps its address.
        assert_eq!(
            edge.route(Via::Udp, pa, &binding_request(&format!("{ub}:z"))),
            None
        );
        assert_eq!(edge.route(Via::Udp, pa, &[0x80; 40]), Some(a));
        // Unknown ufrags and unclaimed addresses reach nobody.
        assert_eq!(
            edge.route(Via::Udp, mallory, &binding_request("nobody:x")),
            None
        );
        assert_eq!(edge.route(Via::Udp, mallory, &[0x80; 40]), None);
        let before = edge.unrouted();
        edge.handle_datagram(now, mallory, &[0x80; 40]);
        assert_eq!(edge.unrouted(), before + 1);
        // Once a is gone its address is free, and its ufrag names nothing.
        edge.close(a);
        assert_eq!(edge.route(Via::Udp, pa, &[0x80; 40]), None);
        assert_eq!(
            edge.route(Via::Udp, pa, &binding_request(&format!("{ua}:x"))),
            None
        );
        assert_eq!(
            edge.route(Via::Udp, pa, &binding_request(&format!("{ub}:y"))),
            Some(b)
        );
        assert!(matches!(edge.poll_event(), Some((id, EdgeEvent::Closed)) if id == a));
    }

    /// SFU-TCP-01, SFU-TCP-02: with a TCP candidate, every answer offers it (passive, after
    /// the UDP one); a TCP peer claims its address for the connection its request names, apart
    /// from UDP addresses (the same IP and port over UDP is another address); without one,
    /// TCP frames reach nobody.
    #[test]
    fn tcp_peers_claim_their_own_addresses_and_the_answer_offers_the_tcp_candidate() {
        let now = Instant::now();
        let mut edge = Edge::new("127.0.0.1:5000".parse().unwrap(), now, [7; 32]);
        let (_, plain) = edge.accept(now, &offer(now)).unwrap();
        assert!(!plain.contains(" tcp "), "{plain}");
        let before = edge.unrouted();
        edge.handle_tcp_frame(now, "127.0.0.1:6001".parse().unwrap(), &[0x80; 40]);
        assert_eq!(edge.unrouted(), before + 1, "no TCP candidate, no TCP");

        edge.set_tcp("127.0.0.1:5443".parse().unwrap());
        let (a, answer_a) = edge.accept(now, &offer(now)).unwrap();
        let (b, answer_b) = edge.accept(now, &offer(now)).unwrap();
        let candidates: Vec<&str> = answer_a
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert!(
            candidates
                .iter()
                .any(|c| c.contains(" udp ") && c.contains(" 5000 typ host")),
            "{candidates:?}"
        );
        assert!(
            candidates
                .iter()
                .any(|c| c.contains(" tcp ") && c.contains(" 5443 typ host tcptype passive")),
            "{candidates:?}"
        );
        let peer: SocketAddr = "127.0.0.1:6001".parse().unwrap();
        let (ua, ub) = (ufrag(&answer_a), ufrag(&answer_b));
        assert_eq!(
            edge.route(Via::Tcp, peer, &binding_request(&format!("{ua}:x"))),
            Some(a)
        );
        assert_eq!(edge.tcp_conn_at(peer), Some(a));
        assert_eq!(edge.conn_at(peer), None, "a TCP peer claims no UDP address");
        assert_eq!(edge.route(Via::Tcp, peer, &[0x80; 40]), Some(a));
        assert_eq!(edge.route(Via::Udp, peer, &[0x80; 40]), None);
        // The same IP and port over UDP is b's to claim, and a keeps its stream.
        assert_eq!(
            edge.route(Via::Udp, peer, &binding_request(&format!("{ub}:y"))),
            Some(b)
        );
        assert_eq!(edge.route(Via::Tcp, peer, &[0x80; 40]), Some(a));
        assert_eq!(edge.route(Via::Udp, peer, &[0x80; 40]), Some(b));
        edge.close(a);
        assert_eq!(edge.tcp_conn_at(peer), None);
        assert_eq!(edge.conn_at(peer), Some(b));
    }
}
