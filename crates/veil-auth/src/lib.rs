#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod claims;
mod error;
mod jwt;
mod key;
mod keyfile;
pub mod rate;
mod verify;

use std::time::Duration;

pub use claims::{Claims, GrantKind, Grants, name_rule};
pub use error::{AuthError, ErrorKind, Result};
pub use key::TokenKey;
pub use rate::{RateLimiter, RequestRate, SlowDown};
pub use verify::{VerifiedClaims, Verifier};

/// Whether `host` (a URI host: a name, an IPv4 address or a bracketed IPv6 address) is this
/// machine's loopback: the only place a token may be sent over plaintext without the
/// operator's opt-out (SRV-TLS-05 for clients, SFU-CAS-08 for node-to-node legs).
#[must_use]
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Longest token [`Verifier::verify`] looks at, in bytes (AUTH-01). Tokens minted by this
/// crate stay far below it (about 1.5 KiB with 255-byte names); the headroom is for claims an
/// application backend adds.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Shortest accepted HS256 secret, in bytes: the HMAC-SHA256 output size (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Longest `sub`, `room` or `jti`, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// Clock leeway a [`Verifier`] allows unless told otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// File name of the embedded default key inside a data directory, for
/// [`TokenKey::load_or_create`].
pub const DEFAULT_KEY_FILE: &str = "token.key";

/// Key id [`TokenKey::load_or_create`] is given for the embedded default key.
pub const DEFAULT_KEY_ID: &str = "embedded";

#[cfg(test)]
mod loopback_tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_names_and_addresses_and_nothing_else() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.2",
            "example.org",
            "[::2]",
            "localhost.example",
            "",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
