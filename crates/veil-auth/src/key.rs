//! The shared HS256 secret, with its key id, and minting.

use core::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{KeyInit as _, Mac as _};
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::claims::Claims;
use crate::error::{AuthError, Result};
use crate::jwt::{B64, HmacSha256, SIG_LEN};
use crate::{MAX_KEY_ID_LEN, MIN_SECRET_LEN};

/// Lenient decoders for secrets in configuration: either alphabet, padding optional.
const CONFIG_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const CONFIG_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An HS256 signing and verification key: a key id (the JWT `kid` and `iss`) and a secret of
/// at least [`MIN_SECRET_LEN`] bytes.
///
/// The secret is zeroed on drop, never printed by `Debug`, compared in constant time by `==`,
/// and cannot be read back out of the value; it leaves the process only through
/// [`TokenKey::load_or_create`]'s key file.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    secret: Zeroizing<Vec<u8>>,
    /// HMAC state keyed with `secret`, cloned per token instead of re-keying.
    mac: HmacSha256,
}

impl TokenKey {
    /// A key from an id and a secret.
    ///
    /// The id is 1..=64 characters from `A-Z a-z 0-9 . _ -`. The secret must be at least
    /// [`MIN_SECRET_LEN`] bytes, and should be that many bytes from a random generator, not a
    /// password.
    pub fn new(id: impl Into<String>, secret: impl Into<Zeroizing<Vec<u8>>>) -> Result<Self> {
        // AUTH-KEY-01
        let secret = secret.into();
        let id = id.into();
        check_key_id(&id)?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::WeakSecret {
                len: secret.len(),
                min: MIN_SECRET_LEN,
            });
        }
        let mac = HmacSha256::new_from_slice(&secret).expect("HMAC takes keys of any length");
        Ok(Self { id, secret, mac })
    }

    /// A key with [`MIN_SECRET_LEN`] fresh bytes from the operating system's random generator.
    pub fn generate(id: impl Into<String>) -> Result<Self> {
        let mut secret = Zeroizing::new(vec![0u8; MIN_SECRET_LEN]);
        OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| AuthError::Io {
                what: "read the operating system's random generator".into(),
                source: std::io::Error::other(e),
            })?;
        Self::new(id, secret)
    }

    /// A key from a configuration or environment value `id:secret`.
    ///
    /// The secret is hex if it is an even number of hex digits (`openssl rand -hex 32`), and
    /// base64 otherwise, in the URL-safe or the standard alphabet with or without padding (the
    /// form [`TokenKey::load_or_create`] writes, or `openssl rand -base64 32`). Whitespace
    /// around the value is ignored. Error messages never repeat the value.
    pub fn parse(value: &str) -> Result<Self> {
        let Some((id, encoded)) = value.trim().split_once(':') else {
            return Err(AuthError::InvalidKey(
                "expected `id:secret`, e.g. `main:` followed by the output of `openssl rand -hex 32`"
                    .into(),
            ));
        };
        check_key_id(id)?;
        let secret = decode_secret(encoded)?;
        Self::new(id, secret)
    }

    /// The key id, sent as the token's `kid` header and `iss` claim.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Mints a token for `claims`: a compact HS256 JWT with header
    /// `{"alg":"HS256","typ":"JWT","kid":<id>}`.
    ///
    /// Fails with [`AuthError::InvalidClaim`] if the claims break a rule that
    /// [`Verifier::verify`](crate::Verifier::verify) enforces (an empty or over-long name, a
    /// control character, `expires` not after `not_before`), so every minted token can verify.
    /// It does not look at the clock: an already expired token can be minted.
    pub fn mint(&self, claims: &Claims) -> Result<String> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'static str,
            typ: &'static str,
            kid: &'a str,
        }
        claims.check()?; // AUTH-MINT-01
        let header = serde_json::to_vec(&Header {
            alg: "HS256",
            typ: "JWT",
            kid: &self.id,
        })
        .expect("strings always serialise");
        let payload = claims.to_json(&self.id);

        let mut token = String::with_capacity((header.len() + payload.len() + SIG_LEN) * 4 / 3 + 8);
        B64.encode_string(&header, &mut token);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let tag = self.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(tag, &mut token);
        Ok(token)
    }

    /// HMAC-SHA256 of the JWS signing input.
    fn sign(&self, signing_input: &[u8]) -> [u8; SIG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against the HMAC of `signing_input` in constant time (AUTH-07).
    pub(crate) fn verify_tag(&self, signing_input: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac.verify_slice(tag).is_ok()
    }

    /// The key file's contents, `id:base64url-secret` and a newline.
    pub(crate) fn to_file_contents(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(
            self.id.len() + 2 + 4 * self.secret.len() / 3 + 4,
        ));
        out.push_str(&self.id);
        out.push(':');
        B64.encode_string(&*self.secret, &mut out);
        out.push('\n');
        out
    }
}

/// AUTH-KEY-02: the secret is never printed.
impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .field(
                "secret",
                &format_args!("<redacted, {} bytes>", self.secret.len()),
            )
            .finish()
    }
}

impl PartialEq for TokenKey {
    /// Same id and same secret; the secrets are compared in constant time (AUTH-KEY-02).
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && bool::from(self.secret.as_slice().ct_eq(other.secret.as_slice()))
    }
}

impl Eq for TokenKey {}

/// Key ids: 1..=64 characters of `A-Z a-z 0-9 . _ -` (safe in headers, file names and
/// `id:secret` strings).
fn check_key_id(id: &str) -> Result<()> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.bytes().all(ok_char) {
        // The id is not echoed: in a mistyped `secret:id` it would be the secret.
        return Err(AuthError::InvalidKey(format!(
            "a key id must be 1 to {MAX_KEY_ID_LEN} characters of A-Z, a-z, 0-9, `.`, `_`, `-`"
        )));
    }
    Ok(())
}

fn decode_secret(encoded: &str) -> Result<Zeroizing<Vec<u8>>> {
    if encoded.is_empty() {
        return Err(AuthError::InvalidKey(
            "the secret after `id:` is empty".into(),
        ));
    }
    let is_hex = encoded.len().is_multiple_of(2) && encoded.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let mut out = Zeroizing::new(Vec::with_capacity(encoded.len() / 2));
        for pair in encoded.as_bytes().chunks_exact(2) {
            out.push((hex_val(pair[0]) << 4) | hex_val(pair[1]));
        }
        return Ok(out);
    }
    let engine = if encoded.contains(['+', '/']) {
        &CONFIG_STANDARD
    } else {
        &CONFIG_URL_SAFE
    };
    engine.decode(encoded).map(Zeroizing::new).map_err(|_| {
        AuthError::InvalidKey("the secret after `id:` is neither hex nor base64".into())
    })
}

fn hex_val(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn bytes() -> Vec<u8> {
        (0u8..32).collect()
    }

    #[test]
    fn parse_accepts_hex_and_both_base64_alphabets() {
        let want = TokenKey::new("k", bytes()).unwrap();
        assert_eq!(TokenKey::parse(&format!("k:{HEX}")).unwrap(), want);
        assert_eq!(
            TokenKey::parse(&format!(" k:{}\n", HEX.to_uppercase())).unwrap(),
            want
        );
        let url = B64.encode(bytes());
        assert_eq!(TokenKey::parse(&format!("k:{url}")).unwrap(), want);
        assert_eq!(TokenKey::parse(&format!("k:{url}=")).unwrap(), want);
        let secret: Vec<u8> = (0xe0..=0xff).collect(); // encodes with `+` and `/`
        let std = base64::engine::general_purpose::STANDARD.encode(&secret);
        assert!(std.contains('/') && std.ends_with('='));
        assert_eq!(
            TokenKey::parse(&format!("k:{std}")).unwrap(),
            TokenKey::new("k", secret).unwrap()
        );
    }

    #[test]
    fn parse_rejects_bad_values_without_echoing_them() {
        for bad in [
            "no-colon-3q2+7w",
            "k:",
            ":abcd",
            "3q2+7w/:00",
            "k:!!!3q2+7w!!!",
        ] {
            let err = TokenKey::parse(bad).unwrap_err();
            assert!(matches!(err, AuthError::InvalidKey(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("3q2+7w"), "{err}");
        }
        let short = TokenKey::parse(&format!("k:{}", &HEX[..62])).unwrap_err();
        assert!(matches!(short, AuthError::WeakSecret { len: 31, min: 32 }));
    }

    #[test]
    fn key_ids_are_restricted() {
        for ok in ["a", "main", "key-2025.01_b", &"x".repeat(64)] {
            assert!(TokenKey::new(ok, bytes()).is_ok(), "{ok}");
        }
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(
                matches!(TokenKey::new(bad, bytes()), Err(AuthError::InvalidKey(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_is_redacted_and_eq_compares_secrets() {
        let key = TokenKey::new("k", vec![0xabu8; 32]).unwrap();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, r#"TokenKey { id: "k", secret: <redacted, 32 bytes> }"#);
        assert_ne!(key, TokenKey::new("k", vec![0xacu8; 32]).unwrap());
        assert_ne!(key, TokenKey::new("j", vec![0xabu8; 32]).unwrap());
        assert_eq!(key, key.clone());
    }

    #[test]
    fn generate_gives_distinct_full_length_secrets() {
        let a = TokenKey::generate("k").unwrap();
        let b = TokenKey::generate("k").unwrap();
        assert_eq!(a.secret.len(), MIN_SECRET_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn file_contents_parse_back() {
        let key = TokenKey::generate("k").unwrap();
        assert_eq!(TokenKey::parse(&key.to_file_contents()).unwrap(), key);
    }
}
