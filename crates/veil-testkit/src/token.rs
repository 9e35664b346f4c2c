//! Access tokens for tests: minted with the clock of now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_auth::{Claims, Grants, TokenKey};

/// Seconds since the Unix epoch.
///
/// # Panics
/// If the clock is before 1970.
#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token from `key` for `identity` in `room` with every grant, issued now, valid for `ttl`.
///
/// # Panics
/// If the names are not valid claims.
#[must_use]
pub fn mint(key: &TokenKey, room: &str, identity: &str, ttl: Duration) -> String {
    mint_with(key, room, identity, Grants::all(), 0, ttl)
}

/// A token with chosen `grants`, issued `age` seconds ago, valid for `ttl`.
///
/// # Panics
/// If the names are not valid claims.
#[must_use]
pub fn mint_with(
    key: &TokenKey,
    room: &str,
    identity: &str,
    grants: Grants,
    age: u64,
    ttl: Duration,
) -> String {
    key.mint(&Claims::new(identity, room, grants, now() - age, ttl))
        .unwrap()
}

/// Grants to join (not create) a room, publishing and subscribing as asked.
#[must_use]
pub fn joiner(publish: bool, subscribe: bool) -> Grants {
    Grants {
        join: true,
        create: false,
        publish,
        subscribe,
    }
}
