//! What a token says: who, which room, when, and which grants.

use core::fmt;
use core::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::MAX_NAME_LEN;
use crate::error::{AuthError, Result};

/// One permission a token can carry; the argument of
/// [`VerifiedClaims::require`](crate::VerifiedClaims::require).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantKind {
    /// Take part in a room at all: every key-service call needs it.
    Join,
    /// Create a room at the key service.
    Create,
    /// Send media through the SFU.
    Publish,
    /// Receive media from the SFU.
    Subscribe,
}

impl GrantKind {
    /// Every grant, in the order of the `grants` object.
    pub const ALL: [GrantKind; 4] = [Self::Join, Self::Create, Self::Publish, Self::Subscribe];

    /// The grant's name inside the `grants` claim.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Create => "create",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

impl fmt::Display for GrantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `grants` claim. A grant that is absent from a token is `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Grants {
    /// Take part in the room (every key-service call).
    pub join: bool,
    /// Create the room at the key service.
    pub create: bool,
    /// Send media through the SFU.
    pub publish: bool,
    /// Receive media from the SFU.
    pub subscribe: bool,
}

impl Grants {
    /// What an ordinary call participant needs: join, publish and subscribe, but not create.
    pub const fn participant() -> Self {
        Self {
            join: true,
            create: false,
            publish: true,
            subscribe: true,
        }
    }

    /// Every grant, for a room's creator or an operator.
    pub const fn all() -> Self {
        Self {
            join: true,
            create: true,
            publish: true,
            subscribe: true,
        }
    }

    /// Whether `grant` is set.
    pub const fn allows(&self, grant: GrantKind) -> bool {
        match grant {
            GrantKind::Join => self.join,
            GrantKind::Create => self.create,
            GrantKind::Publish => self.publish,
            GrantKind::Subscribe => self.subscribe,
        }
    }

    fn slot(&mut self, grant: GrantKind) -> &mut bool {
        match grant {
            GrantKind::Join => &mut self.join,
            GrantKind::Create => &mut self.create,
            GrantKind::Publish => &mut self.publish,
            GrantKind::Subscribe => &mut self.subscribe,
        }
    }
}

/// The claims of a Veil access token: the input of [`TokenKey::mint`](crate::TokenKey::mint)
/// and, wrapped in [`VerifiedClaims`](crate::VerifiedClaims), the output of
/// [`Verifier::verify`](crate::Verifier::verify).
///
/// Times are whole seconds since the Unix epoch. The issuer (`iss`) is not a field: it is
/// always the id of the key that signs the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The participant's identity (`sub`): 1..=255 bytes of UTF-8 without control characters.
    pub identity: String,
    /// The room the token is for (`room`): same rule as `identity`.
    pub room: String,
    /// When the token was minted (`iat`). Informational; not checked against the clock.
    pub issued_at: u64,
    /// The token is not valid before this time (`nbf`).
    pub not_before: u64,
    /// The token is not valid from this time on (`exp`); must be after `not_before`.
    pub expires: u64,
    /// What the bearer may do (`grants`).
    pub grants: Grants,
    /// An optional unique token id (`jti`) for logs and revocation lists; same rule as
    /// `identity`.
    pub token_id: Option<String>,
}

impl Claims {
    /// Claims valid from `issued_at` for `ttl` (whole seconds; sub-second parts are dropped),
    /// without a token id.
    pub fn new(
        identity: impl Into<String>,
        room: impl Into<String>,
        grants: Grants,
        issued_at: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            identity: identity.into(),
            room: room.into(),
            issued_at,
            not_before: issued_at,
            expires: issued_at.saturating_add(ttl.as_secs()),
            grants,
            token_id: None,
        }
    }

    /// The same claims with a `jti`.
    pub fn with_token_id(mut self, token_id: impl Into<String>) -> Self {
        self.token_id = Some(token_id.into());
        self
    }

    /// The rules of AUTH-10, AUTH-11 and AUTH-13 that concern the values themselves; minting
    /// applies them so that no minted token fails verification for its content.
    pub(crate) fn check(&self) -> Result<()> {
        check_name("sub", &self.identity)?; // AUTH-10
        check_name("room", &self.room)?; // AUTH-10
        if self.expires <= self.not_before {
            // AUTH-11
            return Err(invalid("exp", "must be later than nbf"));
        }
        if let Some(jti) = &self.token_id {
            check_name("jti", jti)?; // AUTH-13
        }
        Ok(())
    }

    /// The claims as minted: `iss, sub, room, iat, nbf, exp, grants[, jti]`.
    pub(crate) fn to_json(&self, issuer: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            iss: &'a str,
            sub: &'a str,
            room: &'a str,
            iat: u64,
            nbf: u64,
            exp: u64,
            grants: Grants,
            #[serde(skip_serializing_if = "Option::is_none")]
            jti: Option<&'a str>,
        }
        serde_json::to_vec(&Wire {
            iss: issuer,
            sub: &self.identity,
            room: &self.room,
            iat: self.issued_at,
            nbf: self.not_before,
            exp: self.expires,
            grants: self.grants,
            jti: self.token_id.as_deref(),
        })
        .expect("strings, integers and booleans always serialise")
    }

    /// Reads the claims of a token whose signature verified under key `kid` (AUTH-08 …
    /// AUTH-13). Claims not named here are ignored, so backends may add their own. If a name
    /// occurs twice the last occurrence counts (RFC 7519 §4 allows this; the signer is trusted).
    pub(crate) fn from_json(json: &[u8], kid: &str) -> Result<Self> {
        // AUTH-08: a JSON object.
        let map: Map<String, Value> = serde_json::from_slice(json)
            .map_err(|_| AuthError::Malformed("the claims are not a JSON object"))?;

        // AUTH-09: the issuer is the signing key.
        match map.get("iss") {
            Some(Value::String(iss)) if iss == kid => {}
            Some(Value::String(_)) => return Err(invalid("iss", "must equal the header's kid")),
            Some(_) => return Err(invalid("iss", "must be a string (the key id)")),
            None => return Err(invalid("iss", "is missing; set it to the key id")),
        }

        // AUTH-10, -11, -13 via check(); AUTH-12 below.
        let claims = Self {
            identity: string(&map, "sub")?,
            room: string(&map, "room")?,
            issued_at: seconds(&map, "iat")?,
            not_before: seconds(&map, "nbf")?,
            expires: seconds(&map, "exp")?,
            grants: grants(map.get("grants"))?,
            token_id: match map.get("jti") {
                None => None,
                Some(Value::String(jti)) => Some(jti.clone()),
                Some(_) => return Err(invalid("jti", "must be a string")),
            },
        };
        claims.check()?;
        Ok(claims)
    }
}

const fn invalid(claim: &'static str, why: &'static str) -> AuthError {
    AuthError::InvalidClaim { claim, why }
}

/// AUTH-10: `sub`, `room` (and `jti`) are 1..=255 bytes of UTF-8 without control characters.
fn check_name(claim: &'static str, value: &str) -> Result<()> {
    name_rule(value).map_err(|why| invalid(claim, why))
}

/// AUTH-10 for a room name or identity that arrives outside a token (a service checks the room
/// a request names with it, so requests and tokens follow one rule): 1..=255 bytes of UTF-8
/// without control characters. The error says what is wrong and never holds the value, so a
/// service may echo it whatever the value's size.
///
/// ```
/// assert!(veil_auth::name_rule("standup").is_ok());
/// assert!(veil_auth::name_rule(&"x".repeat(20_000)).is_err());
/// ```
///
/// # Errors
/// Why the name breaks the rule.
pub fn name_rule(value: &str) -> core::result::Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return Err("must be at most 255 bytes of UTF-8");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

fn string(map: &Map<String, Value>, claim: &'static str) -> Result<String> {
    match map.get(claim) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(claim, "must be a string")),
        None => Err(invalid(claim, "is missing")),
    }
}

/// AUTH-11: `iat`, `nbf` and `exp` are JSON integers in `0..2^64` (no fractions, no exponents).
fn seconds(map: &Map<String, Value>, claim: &'static str) -> Result<u64> {
    match map.get(claim) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            invalid(
                claim,
                "must be a non-negative integer number of seconds since the Unix epoch",
            )
        }),
        Some(_) => Err(invalid(
            claim,
            "must be a number of seconds since the Unix epoch",
        )),
        None => Err(invalid(claim, "is missing")),
    }
}

/// AUTH-12: `grants` is absent (no grants) or an object whose known members are booleans.
fn grants(value: Option<&Value>) -> Result<Grants> {
    let mut grants = Grants::default();
    let map = match value {
        None => return Ok(grants),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("grants", "must be an object of booleans")),
    };
    for kind in GrantKind::ALL {
        match map.get(kind.name()) {
            None => {}
            Some(Value::Bool(b)) => *grants.slot(kind) = *b,
            Some(_) => {
                let claim = match kind {
                    GrantKind::Join => "grants.join",
                    GrantKind::Create => "grants.create",
                    GrantKind::Publish => "grants.publish",
                    GrantKind::Subscribe => "grants.subscribe",
                };
                return Err(invalid(claim, "must be true or false"));
            }
        }
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Claims> {
        Claims::from_json(json.as_bytes(), "k1")
    }

    const BASE: &str = r#""iss":"k1","sub":"alice","room":"r","iat":1,"nbf":1,"exp":2"#;

    #[test]
    fn minted_json_parses_back() {
        let claims = Claims::new(
            "alice",
            "standup",
            Grants::participant(),
            100,
            Duration::from_secs(60),
        )
        .with_token_id("t-1");
        let json = claims.to_json("k1");
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{"iss":"k1","sub":"alice","room":"standup","iat":100,"nbf":100,"exp":160,"grants":{"join":true,"create":false,"publish":true,"subscribe":true},"jti":"t-1"}"#
        );
        assert_eq!(Claims::from_json(&json, "k1").unwrap(), claims);
    }

    #[test]
    fn missing_grants_are_false_and_unknown_claims_ignored() {
        let c = parse(&format!(
            r#"{{{BASE},"grants":{{"publish":true,"admin":true}},"app":[1]}}"#
        ))
        .unwrap();
        assert_eq!(
            c.grants,
            Grants {
                publish: true,
                ..Grants::default()
            }
        );
        let c = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(c.grants, Grants::default());
    }

    #[test]
    fn names_are_bounded_in_bytes_not_chars() {
        // 127 two-byte characters = 254 bytes: fine; 128 = 256 bytes: too long.
        assert!(check_name("sub", &"é".repeat(127)).is_ok());
        assert!(check_name("sub", &"a".repeat(255)).is_ok());
        assert!(check_name("sub", &"é".repeat(128)).is_err());
        assert!(check_name("sub", "tab\there").is_err());
        assert!(check_name("sub", "c1\u{85}").is_err());
        assert!(check_name("sub", "").is_err());
    }

    #[test]
    fn times_must_be_plain_non_negative_integers() {
        for bad in ["-1", "1.5", "1e3", "\"5\"", "null", "18446744073709551616"] {
            let json =
                format!(r#"{{"iss":"k1","sub":"a","room":"r","iat":{bad},"nbf":1,"exp":2}}"#);
            let err = parse(&json).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidClaim { claim: "iat", .. }),
                "{bad}: {err:?}"
            );
        }
        let max = format!(
            r#"{{"iss":"k1","sub":"a","room":"r","iat":0,"nbf":0,"exp":{}}}"#,
            u64::MAX
        );
        assert_eq!(parse(&max).unwrap().expires, u64::MAX);
    }

    #[test]
    fn claims_must_be_an_object() {
        for bad in ["[]", "\"x\"", "1", "", "{", r#"{"a":1}x"#] {
            assert!(matches!(parse(bad), Err(AuthError::Malformed(_))), "{bad}");
        }
    }
}
