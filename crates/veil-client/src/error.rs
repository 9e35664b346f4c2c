//! The client's one error type.
//!
//! The key service and the SFU are told apart: a refusal or outage of one is never reported as
//! the other's (`Refused`/`Unavailable`/`Stale` are the key service's, specs/key-service.md §6;
//! `SfuRefused`/`SfuUnavailable` the SFU's, specs/sfu.md "Errors"). An error caused by another
//! keeps it as its [`source`](std::error::Error::source): the gRPC `Status`, webrtc-rs's or the
//! `rtc` crate's error, a URL or packetizer error.

use tonic::{Code, Status};
use veil_mls::MlsError;

/// The error that caused a [`ClientError`] (webrtc-rs, `rtc`, tonic transport, packetizer),
/// boxed so that the pinned webrtc-rs version stays out of this crate's API: downcast it to read
/// it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    // --- the key service (specs/key-service.md §6) ---
    /// The key service could not be reached (retry later). The status is the source.
    #[error("key service unavailable: {}", chain(.0))]
    Unavailable(#[source] Status),
    /// Another commit won the epoch: process it and commit again.
    #[error("stale commit (room at epoch {room_epoch:?}): {message}")]
    Stale {
        /// The room's epoch, if the service said.
        room_epoch: Option<u64>,
        /// The service's explanation.
        message: String,
    },
    /// The key service refused the request.
    #[error("key service refused ({code:?}): {message}")]
    Refused {
        /// The gRPC code (see specs/key-service.md §6).
        code: Code,
        /// The service's explanation.
        message: String,
    },

    // --- the SFU (specs/sfu.md, "Errors") ---
    /// The SFU refused a signalling request (its `RequestFailed`, or the status that ended the
    /// signalling stream).
    #[error("SFU refused ({code:?}): {message}")]
    SfuRefused {
        /// The gRPC code (see specs/sfu.md, "Errors").
        code: Code,
        /// The SFU's explanation.
        message: String,
    },
    /// The SFU could not be reached, or its signalling stream broke (the session reconnects;
    /// retry later). The tonic status or transport error is the source.
    #[error("SFU unavailable ({what}): {}", chain(.source.as_ref()))]
    SfuUnavailable {
        /// What was being done, e.g. `connect http://127.0.0.1:7443`.
        what: String,
        /// The cause.
        #[source]
        source: Cause,
    },

    // --- this client ---
    /// The local MLS session failed.
    #[error(transparent)]
    Mls(#[from] MlsError),
    /// The WebRTC transport failed.
    #[error("WebRTC {what}{}", colon(.source))]
    Transport {
        /// What was being done, or what went wrong.
        what: String,
        /// webrtc-rs's (or `rtc`'s) error, if one caused it.
        #[source]
        source: Option<Cause>,
    },
    /// A bad URL, token or argument.
    #[error("configuration: {why}{}", colon(.source))]
    Config {
        /// What is wrong.
        why: String,
        /// The error that found it, if any (e.g. the URL parser's).
        #[source]
        source: Option<Cause>,
    },
    /// This member was removed from the group.
    #[error("removed from the group")]
    Removed,
    /// The member's task has stopped.
    #[error("the group member has stopped")]
    Stopped,
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A link to the server is lost and being reconnected in the background: try again once
    /// it is back (`RoomEvent::Reconnected`).
    #[error("reconnecting to the {0}")]
    Reconnecting(crate::link::Link),
}

/// A cause and the causes under it, `: `-separated; a `Status` by its message ("transport
/// error" alone says little, so its own sources follow).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut why = match e.downcast_ref::<Status>() {
        Some(s) => s.message().to_owned(),
        None => e.to_string(),
    };
    let mut src = e.source();
    while let Some(e) = src {
        why.push_str(": ");
        why.push_str(&e.to_string());
        src = e.source();
    }
    why
}

/// `": {cause}"`, or nothing.
fn colon(source: &Option<Cause>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {}", chain(e.as_ref())))
        .unwrap_or_default()
}

impl ClientError {
    /// The gRPC code, for refusals and outages of the key service or the SFU.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Refused { code, .. } | Self::SfuRefused { code, .. } => Some(*code),
            Self::Stale { .. } => Some(Code::Aborted),
            Self::Unavailable(_) | Self::SfuUnavailable { .. } => Some(Code::Unavailable),
            Self::Mls(_)
            | Self::Transport { .. }
            | Self::Config { .. }
            | Self::Removed
            | Self::Stopped
            | Self::Timeout(_)
            | Self::Reconnecting(_) => None,
        }
    }

    /// Whether the SFU, not the key service, failed or refused.
    #[must_use]
    pub fn is_sfu(&self) -> bool {
        matches!(self, Self::SfuRefused { .. } | Self::SfuUnavailable { .. })
    }

    pub(crate) fn config(why: impl Into<String>) -> Self {
        Self::Config {
            why: why.into(),
            source: None,
        }
    }

    pub(crate) fn config_by(
        why: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Config {
            why: why.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn transport(what: impl Into<String>) -> Self {
        Self::Transport {
            what: what.into(),
            source: None,
        }
    }

    pub(crate) fn transport_by(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Transport {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A status that ended the SFU's signalling stream, or refused opening it: an outage
    /// ([`ClientError::SfuUnavailable`]) or a refusal ([`ClientError::SfuRefused`]).
    pub(crate) fn from_sfu_status(what: &str, s: Status) -> Self {
        match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Self::SfuUnavailable {
                    what: what.to_owned(),
                    source: Box::new(s),
                }
            }
            code => Self::SfuRefused {
                code,
                message: s.message().to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use tonic::{Code, Status};

    use super::ClientError;

    #[test]
    fn a_refused_sfu_join_is_the_sfus_refusal_not_the_key_services() {
        let e = ClientError::from_sfu_status(
            "join",
            Status::permission_denied("the token lacks the `subscribe` grant"),
        );
        assert!(
            matches!(
                &e,
                ClientError::SfuRefused {
                    code: Code::PermissionDenied,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_sfu());
        assert_eq!(e.code(), Some(Code::PermissionDenied));
        assert!(e.to_string().starts_with("SFU refused"), "{e}");
        // The same status from the key service stays the key service's.
        let k = crate::keys::from_status(Status::permission_denied("no"));
        assert!(
            matches!(k, ClientError::Refused { .. }) && !k.is_sfu(),
            "{k:?}"
        );
    }

    #[test]
    fn a_lost_sfu_keeps_the_status_as_source() {
        let e = ClientError::from_sfu_status("signalling", Status::unavailable("gone"));
        assert!(matches!(e, ClientError::SfuUnavailable { .. }), "{e:?}");
        let s = e
            .source()
            .and_then(|s| s.downcast_ref::<Status>())
            .expect("the status is kept");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(e.to_string(), "SFU unavailable (signalling): gone");
        assert_eq!(e.code(), Some(Code::Unavailable));
    }

    #[test]
    fn an_unreachable_key_service_keeps_the_status_as_source() {
        let e = crate::keys::from_status(Status::unavailable("transport error"));
        assert!(matches!(e, ClientError::Unavailable(_)), "{e:?}");
        assert!(e.source().is_some_and(|s| s.is::<Status>()));
        assert_eq!(e.to_string(), "key service unavailable: transport error");
    }

    #[test]
    fn a_webrtc_failure_keeps_webrtc_rs_error() {
        let e = ClientError::transport_by("offer", webrtc::error::Error::ErrConnectionClosed);
        assert!(matches!(
            e.source()
                .and_then(|s| s.downcast_ref::<webrtc::error::Error>()),
            Some(webrtc::error::Error::ErrConnectionClosed)
        ));
        assert!(e.to_string().starts_with("WebRTC offer: "), "{e}");
        assert_eq!(e.code(), None);
    }
}
