//! Shared fixtures: a fixed key, fixed claims, and a raw signer for hand-made tokens.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Map, Value, json};
use veil_auth::{Claims, Grants, TokenKey, Verifier};

/// The verifier's clock in most tests.
pub(crate) const NOW: u64 = 1_750_000_000;

/// A fixed 32-byte secret. ASCII, so tests can also search messages for it verbatim.
pub(crate) const SECRET: &[u8; 32] = b"veil-test-secret-0123456789abcde";

/// Key id of [`key`].
pub(crate) const KID: &str = "main";

pub(crate) fn key() -> TokenKey {
    TokenKey::new(KID, SECRET.to_vec()).unwrap()
}

pub(crate) fn verifier() -> Verifier {
    Verifier::new([key()]).unwrap()
}

/// alice in room "standup" as a participant, minted at [`NOW`], valid for ten minutes.
pub(crate) fn claims() -> Claims {
    Claims::new(
        "alice",
        "standup",
        Grants::participant(),
        NOW,
        Duration::from_secs(600),
    )
}

pub(crate) fn token() -> String {
    key().mint(&claims()).unwrap()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn unb64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}

/// The standard header for key id `kid`.
pub(crate) fn header(kid: &str) -> String {
    format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#)
}

/// The JSON object of [`claims`] as minted by key [`KID`], for tests to edit.
pub(crate) fn claims_object() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "iss": KID, "sub": "alice", "room": "standup",
        "iat": NOW, "nbf": NOW, "exp": NOW + 600,
        "grants": {"join": true, "create": false, "publish": true, "subscribe": true},
    }) else {
        unreachable!()
    };
    map
}

/// A compact JWS over arbitrary header and payload bytes, HMAC-SHA256 with `secret`.
pub(crate) fn sign_raw(secret: &[u8], header: &str, payload: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

/// [`claims_object`] after `edit`, signed correctly with [`SECRET`] under [`KID`].
pub(crate) fn signed_with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut map = claims_object();
    edit(&mut map);
    sign_raw(SECRET, &header(KID), &Value::Object(map).to_string())
}
