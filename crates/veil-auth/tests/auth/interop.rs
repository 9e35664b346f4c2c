//! Interoperability both ways with the `jsonwebtoken` crate, standing in for the HS256
//! libraries application backends use.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use veil_auth::{Claims, Grants, TokenKey};

use crate::common::{self, KID, NOW, SECRET};

fn wall_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256_header() -> Header {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KID.into());
    header
}

#[test]
fn jsonwebtoken_minted_tokens_verify() {
    // The same claims JSON an application backend would build, plus one of its own.
    let mut claims = common::claims_object();
    claims.insert("tenant".into(), json!("acme"));
    claims.insert("jti".into(), json!("req-42"));
    let token = jsonwebtoken::encode(
        &hs256_header(),
        &Value::Object(claims),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    // jsonwebtoken orders the header differently ({"typ":…,"alg":…,"kid":…}); that is fine.
    assert_ne!(token.split('.').next(), common::token().split('.').next());
    let verified = common::verifier().verify(&token, NOW).unwrap();
    assert_eq!(verified.claims(), &common::claims().with_token_id("req-42"));
}

#[test]
fn jsonwebtoken_tokens_without_typ_verify_and_with_another_secret_do_not() {
    let mut header = hs256_header();
    header.typ = None;
    let claims = Value::Object(common::claims_object());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap();
    common::verifier().verify(&token, NOW).unwrap();
    let forged =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&[3; 32])).unwrap();
    assert!(matches!(
        common::verifier().verify(&forged, NOW),
        Err(veil_auth::AuthError::BadSignature)
    ));
}

#[test]
fn our_tokens_decode_with_jsonwebtoken_hs256_validation() {
    let now = wall_clock();
    let claims = Claims::new(
        "bob",
        "retro",
        Grants::all(),
        now,
        std::time::Duration::from_secs(300),
    )
    .with_token_id("t-7");
    let token = common::key().mint(&claims).unwrap();

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some(KID));
    assert_eq!(header.typ.as_deref(), Some("JWT"));

    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_nbf = true;
    validation.set_issuer(&[KID]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    let data =
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(SECRET), &validation)
            .unwrap();
    assert_eq!(
        data.claims,
        json!({
            "iss": KID, "sub": "bob", "room": "retro",
            "iat": now, "nbf": now, "exp": now + 300,
            "grants": {"join": true, "create": true, "publish": true, "subscribe": true},
            "jti": "t-7",
        })
    );

    // And jsonwebtoken agrees that a different secret does not verify it.
    let err =
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(&[3; 32]), &validation)
            .unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidSignature
    );
}

#[test]
fn jsonwebtoken_rejects_our_tokens_once_expired_too() {
    let now = wall_clock();
    let claims = Claims {
        not_before: now - 1000,
        expires: now - 500,
        ..Claims::new(
            "bob",
            "retro",
            Grants::all(),
            now - 1000,
            std::time::Duration::ZERO,
        )
    };
    let token = TokenKey::new(KID, SECRET.to_vec())
        .unwrap()
        .mint(&claims)
        .unwrap();
    let err = jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(SECRET),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
}
