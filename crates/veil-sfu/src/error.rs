//! The one error type of `veil-sfu`.
//!
//! Variants are grouped by who is at fault, and the gRPC service maps each group to one status
//! code (specs/sfu.md, "Errors"): peer input → `INVALID_ARGUMENT`, authentication →
//! `UNAUTHENTICATED`/`PERMISSION_DENIED`, caller misuse and state → `FAILED_PRECONDITION` /
//! `NOT_FOUND` / `ALREADY_EXISTS`, transport and internal → `UNAVAILABLE`/`INTERNAL`.
//!
//! A variant caused by another error keeps it as its [`source`](std::error::Error::source)
//! (webrtc-rs, the `rtc` crate, socket and address errors); its message also names the cause,
//! because the gRPC status carries only the message to the participant. webrtc-rs and `rtc`
//! errors are boxed ([`Cause`]) so that their pinned versions stay out of this crate's API:
//! downcast the source to read them.

use veil_wire::WireError;

/// The error that caused an [`SfuError`]: a webrtc-rs (`webrtc::error::Error`), `rtc`
/// (`rtc::shared::error::Error`) or socket error, boxed.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the SFU.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    // --- peer input: drop and count, or refuse the request ---
    /// A packet's header extensions or dependency descriptor could not be read (peer input:
    /// drop and count).
    #[error("unreadable packet metadata: {0}")]
    Metadata(#[from] WireError),
    /// A packet whose SSRC no publisher announced (peer input).
    #[error("unknown SSRC {0:#010x}")]
    UnknownSsrc(u32),
    /// A participant sent an SSRC that another participant owns (peer input: reject, count).
    #[error(
        "SSRC {ssrc:#010x} belongs to participant {owner}; participant {sender} may not send it"
    )]
    SpoofedSsrc {
        /// The SSRC.
        ssrc: u32,
        /// Its owner.
        owner: u64,
        /// Who sent it.
        sender: u64,
    },
    /// A participant sent packets faster than its limit (peer input: drop and count,
    /// SFU-LIVE-04).
    #[error("participant {0} is over its packet-rate limit")]
    RateLimited(u64),
    /// A track has more simulcast layers than the SFU forwards (peer input).
    #[error("SSRC {0:#010x} would be a simulcast layer beyond the limit")]
    TooManyLayers(u32),
    /// A packet of a simulcast track whose stream never showed its rid (peer input).
    #[error("SSRC {0:#010x} of a simulcast track has no rid latched")]
    UnknownLayer(u32),
    /// An offer, answer or candidate webrtc-rs refused (peer input).
    #[error("bad session description or candidate ({what}): {source}")]
    Sdp {
        /// What was being read (e.g. "offer", "candidate").
        what: &'static str,
        /// webrtc-rs's reason.
        #[source]
        source: Cause,
    },

    /// An ICE-TCP stream framed a packet longer than the SFU takes (peer input: the stream is
    /// closed, SFU-TCP-03), or a packet to send is longer than a frame can say.
    #[error("ICE-TCP frame of {len} bytes is over the limit of {max} bytes")]
    TcpFrame {
        /// The frame's length (0 once the stream is already broken).
        len: usize,
        /// The limit.
        max: usize,
    },

    // --- authentication and authorisation ---
    /// No valid access token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token does not allow this room or action.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    // --- caller misuse and state ---
    /// No such participant in the routing core.
    #[error("unknown participant {0}")]
    UnknownParticipant(u64),
    /// No such track.
    #[error("unknown track {0}")]
    UnknownTrack(u64),
    /// No such track, by name.
    #[error("no track {0:?} in this room")]
    NoSuchTrack(String),
    /// The participant does not subscribe to this track.
    #[error("not subscribed to track {0}")]
    NotSubscribed(u64),
    /// The identity is already in the room.
    #[error("{identity:?} is already in room {room:?}")]
    AlreadyJoined {
        /// Room.
        room: String,
        /// Identity.
        identity: String,
    },
    /// The identity is not in the room.
    #[error("{identity:?} is not in room {room:?}")]
    NotJoined {
        /// Room.
        room: String,
        /// Identity.
        identity: String,
    },
    /// An offer or answer at the wrong moment (e.g. an offer while the SFU's own offer waits for
    /// its answer: answer that first). The SFU detects this itself: there is no source.
    #[error("negotiation: {0}")]
    Negotiation(&'static str),
    /// A request the signalling protocol does not allow at this point (detected by the SFU
    /// itself: there is no source).
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The SFU is at a configured limit (rooms, participants, tracks).
    #[error("limit reached: {0}")]
    Limit(&'static str),

    // --- transport and internal ---
    /// The SFU cannot start with its configuration (e.g. no UDP address, or an unspecified
    /// one). Built from the configuration only: a failure with a cause is [`SfuError::BadAddress`]
    /// or [`SfuError::Io`].
    #[error("SFU configuration: {0}")]
    Config(String),
    /// A configured address is not `ip:port`.
    #[error("SFU configuration: address {addr:?} is not ip:port: {source}")]
    BadAddress {
        /// The address as configured.
        addr: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// A socket or thread could not be set up (e.g. the UDP address cannot be bound).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "cannot bind UDP 192.0.2.1:7882".
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// webrtc-rs (or the edge's `rtc`) failed.
    #[error("WebRTC {what}: {source}")]
    WebRtc {
        /// What was being done.
        what: &'static str,
        /// The webrtc-rs or `rtc` error.
        #[source]
        source: Cause,
    },
    /// webrtc-rs did not produce what it should have (e.g. no local description after setting
    /// one); there is no error to keep.
    #[error("WebRTC: {0}")]
    WebRtcState(&'static str),
    /// The participant's connection is closed.
    #[error("connection closed")]
    Closed,
}

impl SfuError {
    /// Wrap a webrtc-rs error with what was being done.
    pub(crate) fn webrtc<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> SfuError {
        move |e| SfuError::WebRtc {
            what,
            source: Box::new(e),
        }
    }

    /// Wrap webrtc-rs's refusal of a session description or candidate.
    pub(crate) fn sdp<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> SfuError {
        move |e| SfuError::Sdp {
            what,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use tonic::Code;
    use webrtc::peer_connection::RTCSessionDescription;

    use super::SfuError;
    use crate::edge::EdgeSfu;
    use crate::grpc::code;
    use crate::session::SfuConfig;

    fn edge_on(addr: &str) -> SfuError {
        EdgeSfu::new(SfuConfig {
            udp_addrs: vec![addr.to_owned()],
            ..SfuConfig::default()
        })
        .expect_err("the edge must refuse this address")
    }

    #[test]
    fn a_refused_offer_keeps_webrtc_rs_reason() {
        let e = RTCSessionDescription::offer("not an SDP".into())
            .map_err(SfuError::sdp("offer"))
            .unwrap_err();
        let source = e.source().expect("the webrtc-rs error is kept");
        let cause = source
            .downcast_ref::<webrtc::error::Error>()
            .expect("the source is webrtc-rs's error");
        assert!(e.to_string().contains(&cause.to_string()), "{e}");
        assert_eq!(code(&e), Code::InvalidArgument);
    }

    #[test]
    fn a_webrtc_failure_keeps_its_cause() {
        let e = SfuError::webrtc("create offer")(webrtc::error::Error::ErrConnectionClosed);
        assert!(matches!(
            e.source()
                .and_then(|s| s.downcast_ref::<webrtc::error::Error>()),
            Some(webrtc::error::Error::ErrConnectionClosed)
        ));
        assert_eq!(code(&e), Code::Internal);
    }

    #[test]
    fn an_unparsable_address_keeps_the_parse_error() {
        let e = edge_on("not-an-address");
        assert!(matches!(e, SfuError::BadAddress { .. }), "{e}");
        assert!(
            e.source()
                .is_some_and(|s| s.is::<std::net::AddrParseError>())
        );
        assert!(e.to_string().contains("not-an-address"), "{e}");
    }

    #[test]
    fn an_address_in_use_keeps_the_io_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = edge_on(&taken.local_addr().unwrap().to_string());
        let io = e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the io error is kept");
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("cannot bind UDP"), "{e}");
    }

    #[test]
    fn a_rule_the_sfu_checks_itself_has_no_source() {
        let e = SfuError::Negotiation("no offer from the SFU waits for an answer");
        assert!(e.source().is_none());
        assert_eq!(code(&e), Code::FailedPrecondition);
    }
}
