//! The one error type of `veil-auth`.

use crate::claims::GrantKind;

/// Everything that can go wrong while minting, verifying or authorising a token, or while
/// loading a signing key.
///
/// Grouped by who is at fault (STYLE.md §5), and [`AuthError::kind`] names the group:
///
/// * **the presented token** ([`ErrorKind::Unauthenticated`]): it is malformed, signed with an
///   unknown key or the wrong secret, expired, or not yet valid — gRPC `UNAUTHENTICATED`;
/// * **the token's permissions** ([`ErrorKind::PermissionDenied`]): the token is genuine but is
///   for another room or lacks a grant — gRPC `PERMISSION_DENIED`;
/// * **the operator's configuration** ([`ErrorKind::Configuration`]): a weak or unparsable key,
///   or a key file that cannot be read or written. These arise at start-up, not per request.
///
/// No message contains a secret or a whole token; strings copied from an unverified token
/// (algorithm, key id) are clipped to 64 characters and printed escaped.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    // ---- the presented token: UNAUTHENTICATED ----------------------------------------------
    /// The token is longer than [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) bytes (AUTH-01).
    #[error(
        "token is {len} bytes, more than the {max}-byte limit; mint it without large custom claims"
    )]
    TooLarge {
        /// Length of the presented token in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not a compact JWT of the expected shape (AUTH-02, -03, -05, -06, -08).
    #[error(
        "malformed token: {0}; pass the compact JWT (header.claims.signature) exactly as minted"
    )]
    Malformed(&'static str),
    /// The header names an algorithm other than `HS256`, including `none` (AUTH-04).
    #[error("token algorithm {0:?} is not accepted: Veil tokens must be signed with HS256")]
    UnsupportedAlgorithm(String),
    /// No verification key has the header's `kid` (AUTH-06).
    #[error(
        "no verification key has id {0:?}: mint with a configured key, or add the key to the verifier"
    )]
    UnknownKey(String),
    /// The HMAC does not verify: wrong secret for this key id, or the token was altered (AUTH-07).
    #[error(
        "token signature does not verify: it was altered, or minted with a different secret for this key id"
    )]
    BadSignature,
    /// The token's `exp` has passed, even allowing for the clock leeway (AUTH-15).
    #[error("token expired at {expired_at} (now {now}, Unix seconds): mint a new token")]
    Expired {
        /// The token's `exp`.
        expired_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// The token's `nbf` lies in the future, even allowing for the clock leeway (AUTH-14).
    #[error(
        "token is not valid before {not_before} (now {now}, Unix seconds): wait, or check the minting host's clock"
    )]
    NotYetValid {
        /// The token's `nbf`.
        not_before: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// A claim is missing, has the wrong JSON type, or breaks its rule (AUTH-09 … AUTH-13).
    /// [`TokenKey::mint`](crate::TokenKey::mint) applies the same rules and returns this too.
    #[error("invalid claim `{claim}`: {why}")]
    InvalidClaim {
        /// The claim's JSON name, e.g. `"sub"` or `"grants.join"`.
        claim: &'static str,
        /// What is wrong and what is expected.
        why: &'static str,
    },

    // ---- the token's permissions: PERMISSION_DENIED ----------------------------------------
    /// The token is valid but for another room (AUTH-20).
    #[error("token is for room {token_room:?}, not {requested:?}: mint a token for this room")]
    WrongRoom {
        /// The token's `room`.
        token_room: String,
        /// The room the request is about (clipped to 64 characters).
        requested: String,
    },
    /// The token is valid but does not carry the grant the call needs (AUTH-21).
    #[error("token does not grant `{0}`: mint a token with grants.{0} = true")]
    MissingGrant(GrantKind),

    // ---- the operator's configuration ------------------------------------------------------
    /// The signing secret is shorter than [`MIN_SECRET_LEN`](crate::MIN_SECRET_LEN) bytes.
    #[error(
        "signing secret is {len} bytes: use at least {min} random bytes (e.g. `openssl rand -hex 32`)"
    )]
    WeakSecret {
        /// Length of the rejected secret.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A key id or key string (`id:secret`) is unusable; the message says how to fix it.
    #[error("invalid token key: {0}")]
    InvalidKey(String),
    /// A key file could not be read or written, or the OS random generator failed.
    #[error("could not {what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Which party is at fault for an [`AuthError`]; services map it to a status code
/// (see `specs/auth.md`, "Errors").
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The token itself is unacceptable: gRPC `UNAUTHENTICATED`.
    Unauthenticated,
    /// The token is genuine but does not permit the request: gRPC `PERMISSION_DENIED`.
    PermissionDenied,
    /// A key or key file is unusable; a start-up error, never caused by a client.
    Configuration,
}

impl AuthError {
    /// Which party is at fault, for mapping to a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. }
            | Self::Malformed(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::UnknownKey(_)
            | Self::BadSignature
            | Self::Expired { .. }
            | Self::NotYetValid { .. }
            | Self::InvalidClaim { .. } => ErrorKind::Unauthenticated,
            Self::WrongRoom { .. } | Self::MissingGrant(_) => ErrorKind::PermissionDenied,
            Self::WeakSecret { .. } | Self::InvalidKey(_) | Self::Io { .. } => {
                ErrorKind::Configuration
            }
        }
    }

    /// `true` if the token was rejected (gRPC `UNAUTHENTICATED`).
    pub fn is_unauthenticated(&self) -> bool {
        self.kind() == ErrorKind::Unauthenticated
    }

    /// `true` if a valid token does not permit the request (gRPC `PERMISSION_DENIED`).
    pub fn is_permission_denied(&self) -> bool {
        self.kind() == ErrorKind::PermissionDenied
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = AuthError> = core::result::Result<T, E>;

/// At most this many characters of an untrusted string are copied into an error.
const CLIP_CHARS: usize = 64;

/// Copies at most [`CLIP_CHARS`] characters of an untrusted string into an error message
/// (the message prints it with `{:?}`, which escapes control characters).
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP_CHARS) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_strings_and_cuts_long_ones() {
        assert_eq!(clip("HS512"), "HS512");
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), CLIP_CHARS + 1);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn messages_say_what_to_fix() {
        let e = AuthError::Expired {
            expired_at: 10,
            now: 50,
        };
        assert_eq!(
            e.to_string(),
            "token expired at 10 (now 50, Unix seconds): mint a new token"
        );
        let e = AuthError::WeakSecret { len: 16, min: 32 };
        assert!(e.to_string().contains("at least 32 random bytes"));
        let e = AuthError::MissingGrant(GrantKind::Publish);
        assert_eq!(
            e.to_string(),
            "token does not grant `publish`: mint a token with grants.publish = true"
        );
    }
}
