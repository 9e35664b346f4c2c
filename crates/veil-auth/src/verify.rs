//! Verification (AUTH-01 … AUTH-15) and authorisation (AUTH-20, AUTH-21).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::claims::{Claims, GrantKind};
use crate::error::{AuthError, Result, clip};
use crate::jwt::{B64, Segments};
use crate::key::TokenKey;
use crate::{DEFAULT_LEEWAY, MAX_TOKEN_LEN};

/// Verifies tokens against one or more keys, chosen by the token's `kid`.
///
/// Holding several keys lets an operator rotate: add the new key, switch minting to it, and
/// remove the old key once the last token minted with it has expired.
///
/// The verifier is clock-free: callers pass the current time, in seconds since the Unix epoch,
/// to [`Verifier::verify`].
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: BTreeMap<String, TokenKey>,
    leeway_secs: u64,
}

impl Verifier {
    /// A verifier for `keys`, with a clock leeway of [`DEFAULT_LEEWAY`].
    ///
    /// Fails with [`AuthError::InvalidKey`] if there are no keys or two share an id.
    pub fn new(keys: impl IntoIterator<Item = TokenKey>) -> Result<Self> {
        let mut by_id = BTreeMap::new();
        for key in keys {
            if by_id.contains_key(key.id()) {
                return Err(AuthError::InvalidKey(format!(
                    "two verification keys have the id {:?}: give every key its own id",
                    key.id()
                )));
            }
            by_id.insert(key.id().to_owned(), key);
        }
        if by_id.is_empty() {
            return Err(AuthError::InvalidKey(
                "no verification keys: configure at least one".into(),
            ));
        }
        Ok(Self {
            keys: by_id,
            leeway_secs: DEFAULT_LEEWAY.as_secs(),
        })
    }

    /// The same verifier tolerating clocks that are `leeway` apart (whole seconds; sub-second
    /// parts are dropped) when checking `nbf` and `exp`.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// The clock leeway.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// The ids of the keys this verifier accepts, in sorted order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies `token` at time `now_unix_secs` and returns its claims.
    ///
    /// Runs the checks AUTH-01 … AUTH-15 of `specs/auth.md` in order. The signature is checked
    /// in constant time, and before the claims are decoded; only the header is read earlier.
    /// Every error this returns is [`ErrorKind::Unauthenticated`](crate::ErrorKind).
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<VerifiedClaims> {
        // AUTH-01: bound the work before looking at the token at all.
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        // AUTH-02: three segments.
        let segments = Segments::split(token).ok_or(AuthError::Malformed(
            "expected three base64url segments separated by two dots",
        ))?;
        // AUTH-03: the header is a base64url-encoded JSON object.
        let header = B64
            .decode(segments.header)
            .map_err(|_| AuthError::Malformed("the header is not base64url without padding"))?;
        let header: Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|_| AuthError::Malformed("the header is not a JSON object"))?;
        check_algorithm(&header)?; // AUTH-04
        check_type(&header)?; // AUTH-05
        // AUTH-06: a known key id.
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => kid.as_str(),
            Some(_) => return Err(AuthError::Malformed("the header's kid is not a string")),
            None => {
                return Err(AuthError::Malformed(
                    "the header has no kid; mint with the key id in the kid header",
                ));
            }
        };
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| AuthError::UnknownKey(clip(kid)))?;
        // AUTH-07: HMAC-SHA256 over `header.payload`, compared in constant time.
        let signature = B64
            .decode(segments.signature)
            .map_err(|_| AuthError::Malformed("the signature is not base64url without padding"))?;
        if !key.verify_tag(segments.signing_input.as_bytes(), &signature) {
            return Err(AuthError::BadSignature);
        }
        // AUTH-08 … AUTH-13: only now are the claims decoded.
        let payload = B64
            .decode(segments.payload)
            .map_err(|_| AuthError::Malformed("the claims are not base64url without padding"))?;
        let claims = Claims::from_json(&payload, kid)?;
        // AUTH-14: valid from nbf, allowing for a minting clock that runs ahead.
        if now_unix_secs.saturating_add(self.leeway_secs) < claims.not_before {
            return Err(AuthError::NotYetValid {
                not_before: claims.not_before,
                now: now_unix_secs,
            });
        }
        // AUTH-15: valid until (not at) exp, allowing for a minting clock that runs behind.
        if now_unix_secs >= claims.expires.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired {
                expired_at: claims.expires,
                now: now_unix_secs,
            });
        }
        Ok(VerifiedClaims {
            claims,
            key_id: kid.to_owned(),
        })
    }
}

/// AUTH-04: `alg` is exactly `"HS256"`; `none`, other HMACs and asymmetric algorithms are
/// refused, so a token cannot choose how it is checked.
fn check_algorithm(header: &Map<String, Value>) -> Result<()> {
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => Ok(()),
        Some(Value::String(alg)) => Err(AuthError::UnsupportedAlgorithm(clip(alg))),
        Some(other) => Err(AuthError::UnsupportedAlgorithm(clip(&other.to_string()))),
        None => Err(AuthError::Malformed("the header has no alg")),
    }
}

/// AUTH-05: `typ`, if present, is `JWT` (any case, RFC 7519 §5.1), and there is no `crit`
/// (RFC 7515 §4.1.11: extensions a recipient does not understand make the token invalid).
fn check_type(header: &Map<String, Value>) -> Result<()> {
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(AuthError::Malformed("the header's typ is not JWT")),
    }
    if header.contains_key("crit") {
        return Err(AuthError::Malformed(
            "the header lists critical extensions (crit)",
        ));
    }
    Ok(())
}

/// Claims that passed [`Verifier::verify`]: the proof a service's handlers take, so that a
/// request cannot be authorised on claims that were never verified.
///
/// Dereferences to [`Claims`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    claims: Claims,
    key_id: String,
}

impl VerifiedClaims {
    /// The id of the key that signed the token (also its `iss`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The verified claims, dropping the proof.
    pub fn into_claims(self) -> Claims {
        self.claims
    }

    /// Authorises a request about `room` that needs `grant`.
    ///
    /// AUTH-20: the token's room must equal `room` byte for byte, else
    /// [`AuthError::WrongRoom`]. AUTH-21: the grant must be set, else
    /// [`AuthError::MissingGrant`]. Both are [`ErrorKind::PermissionDenied`](crate::ErrorKind).
    /// Call it once per grant a request needs.
    pub fn require(&self, room: &str, grant: GrantKind) -> Result<()> {
        if self.claims.room != room {
            return Err(AuthError::WrongRoom {
                token_room: self.claims.room.clone(),
                requested: clip(room),
            });
        }
        if !self.claims.grants.allows(grant) {
            return Err(AuthError::MissingGrant(grant));
        }
        Ok(())
    }
}

impl Deref for VerifiedClaims {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

// Caller input never panics (issue 19): any mint time, lifetime, leeway and clock reading is
// handled with saturating arithmetic (AUTH-11, AUTH-12 in specs/auth.md), and a token inside
// its lifetime still verifies.
#[cfg(test)]
mod caller_input {
    use proptest::prelude::*;

    use super::*;
    use crate::claims::{Claims, Grants};

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..1_000_000).prop_map(Duration::from_secs)
        ]
    }

    proptest! {
        #[test]
        fn any_times_ttl_and_leeway(
            issued_at in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            ttl in any_duration(),
            leeway in any_duration(),
            now in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        ) {
            let key = TokenKey::new("k", vec![7u8; crate::MIN_SECRET_LEN]).unwrap();
            let claims = Claims::new("alice", "room", Grants::participant(), issued_at, ttl);
            prop_assert_eq!(claims.expires, issued_at.saturating_add(ttl.as_secs()));
            let v = Verifier::new([key.clone()]).unwrap().with_leeway(leeway);
            prop_assert_eq!(v.leeway().as_secs(), leeway.as_secs());
            let Ok(token) = key.mint(&claims) else {
                // Only an empty lifetime is refused (AUTH-11).
                prop_assert!(claims.expires <= claims.not_before);
                return Ok(());
            };
            let ok = v.verify(&token, now).is_ok();
            if now >= issued_at && now < claims.expires {
                prop_assert!(ok);
            }
        }
    }
}
