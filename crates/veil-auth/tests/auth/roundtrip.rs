//! Mint → verify, the exact minted format, and authorisation of verified claims.

use std::time::Duration;

use serde_json::json;
use veil_auth::{AuthError, Claims, GrantKind, Grants, MAX_TOKEN_LEN, TokenKey};

use crate::common::{self, KID, NOW};

#[test]
fn mint_then_verify_returns_the_same_claims() {
    let claims = common::claims().with_token_id("tok-1");
    let token = common::key().mint(&claims).unwrap();
    let verified = common::verifier().verify(&token, NOW + 1).unwrap();
    assert_eq!(verified.claims(), &claims);
    assert_eq!(verified.key_id(), KID);
    assert_eq!(verified.identity, "alice"); // through Deref
    assert_eq!(verified.clone().into_claims(), claims);
}

#[test]
fn minted_token_has_the_specified_header_and_claims() {
    let token = common::token();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        common::unb64(parts[0]),
        br#"{"alg":"HS256","typ":"JWT","kid":"main"}"#
    );
    let claims: serde_json::Value = serde_json::from_slice(&common::unb64(parts[1])).unwrap();
    assert_eq!(claims, serde_json::Value::Object(common::claims_object()));
    assert_eq!(common::unb64(parts[2]).len(), 32);
    // base64url without padding: no '=', '+' or '/' anywhere.
    assert!(!token.contains(['=', '+', '/']), "{token}");
    // Same key and claims give the same token: HS256 is deterministic.
    assert_eq!(token, common::token());
}

#[test]
fn a_hand_signed_token_with_the_same_claims_is_identical() {
    // Our signature is plain HMAC-SHA256 over `b64(header).b64(claims)` (RFC 7515 §5.1),
    // and the claims are serialised in the order of specs/auth.md.
    let claims = concat!(
        r#"{"iss":"main","sub":"alice","room":"standup","iat":1750000000,"nbf":1750000000,"#,
        r#""exp":1750000600,"grants":{"join":true,"create":false,"publish":true,"subscribe":true}}"#
    );
    let want = common::sign_raw(common::SECRET, &common::header(KID), claims);
    assert_eq!(common::token(), want);
}

#[test]
fn longest_names_fit_far_below_the_size_limit() {
    let long = "é".repeat(127) + "x"; // 255 bytes
    let claims = Claims::new(
        long.clone(),
        long.clone(),
        Grants::all(),
        NOW,
        Duration::from_secs(60),
    )
    .with_token_id(long.clone());
    let token = common::key().mint(&claims).unwrap();
    assert!(token.len() < MAX_TOKEN_LEN / 2, "{}", token.len());
    assert_eq!(
        common::verifier().verify(&token, NOW).unwrap().claims(),
        &claims
    );
}

#[test]
fn mint_refuses_claims_that_verify_would_reject() {
    let key = common::key();
    let cases: [(&str, Claims); 6] = [
        (
            "sub",
            Claims {
                identity: String::new(),
                ..common::claims()
            },
        ),
        (
            "sub",
            Claims {
                identity: "a".repeat(256),
                ..common::claims()
            },
        ),
        (
            "room",
            Claims {
                room: "line\nbreak".into(),
                ..common::claims()
            },
        ),
        (
            "exp",
            Claims {
                expires: NOW,
                not_before: NOW,
                ..common::claims()
            },
        ),
        (
            "exp",
            Claims {
                expires: NOW - 1,
                not_before: NOW,
                ..common::claims()
            },
        ),
        ("jti", common::claims().with_token_id("")),
    ];
    for (want, claims) in cases {
        match key.mint(&claims) {
            Err(AuthError::InvalidClaim { claim, .. }) => assert_eq!(claim, want),
            other => panic!("{want}: {other:?}"),
        }
    }
}

#[test]
fn mint_does_not_look_at_the_clock() {
    let claims = Claims::new("a", "r", Grants::all(), 0, Duration::from_secs(1));
    let token = TokenKey::generate("k").unwrap().mint(&claims).unwrap();
    assert!(!token.is_empty());
}

#[test]
fn unknown_claims_and_grants_are_ignored() {
    let token = common::signed_with(|m| {
        m.insert("app_role".into(), json!({"nested": [1, 2, 3]}));
        m.insert("aud".into(), json!("someone-else"));
        m["grants"]["admin"] = json!(true);
    });
    let verified = common::verifier().verify(&token, NOW).unwrap();
    assert_eq!(verified.claims(), &common::claims());
}

#[test]
fn missing_grants_are_false() {
    let token = common::signed_with(|m| {
        m.insert("grants".into(), json!({"subscribe": true}));
    });
    let verified = common::verifier().verify(&token, NOW).unwrap();
    assert_eq!(
        verified.grants,
        Grants {
            subscribe: true,
            ..Grants::default()
        }
    );
    let token = common::signed_with(|m| {
        m.remove("grants");
    });
    assert_eq!(
        common::verifier().verify(&token, NOW).unwrap().grants,
        Grants::default()
    );
}

#[test]
fn require_checks_room_then_grant() {
    let verified = common::verifier().verify(&common::token(), NOW).unwrap();
    for grant in [GrantKind::Join, GrantKind::Publish, GrantKind::Subscribe] {
        verified.require("standup", grant).unwrap();
    }
    assert!(matches!(
        verified.require("standup", GrantKind::Create),
        Err(AuthError::MissingGrant(GrantKind::Create))
    ));
    // A wrong room is reported even for a grant the token has (AUTH-20 before AUTH-21).
    assert!(matches!(
        verified.require("Standup", GrantKind::Join),
        Err(AuthError::WrongRoom { .. })
    ));

    let creator = common::key()
        .mint(&Claims {
            grants: Grants::all(),
            ..common::claims()
        })
        .unwrap();
    let creator = common::verifier().verify(&creator, NOW).unwrap();
    for grant in GrantKind::ALL {
        creator.require("standup", grant).unwrap();
    }
}

#[test]
fn grant_presets() {
    assert_eq!(
        Grants::default(),
        Grants {
            join: false,
            create: false,
            publish: false,
            subscribe: false
        }
    );
    assert_eq!(
        Grants::participant(),
        Grants {
            join: true,
            create: false,
            publish: true,
            subscribe: true
        }
    );
    assert_eq!(
        Grants::all(),
        Grants {
            join: true,
            create: true,
            publish: true,
            subscribe: true
        }
    );
    for grant in GrantKind::ALL {
        assert!(!Grants::default().allows(grant));
        assert!(Grants::all().allows(grant));
        assert_eq!(
            Grants::participant().allows(grant),
            grant != GrantKind::Create
        );
    }
}

#[test]
fn tokens_up_to_the_size_limit_verify_and_longer_ones_do_not() {
    // Pad an unknown claim until the token is as long as base64 allows without passing 4096.
    let padded = |pad: usize| {
        common::signed_with(|m| {
            m.insert("pad".into(), json!("p".repeat(pad)));
        })
    };
    let mut pad = 0;
    while padded(pad + 1).len() <= MAX_TOKEN_LEN {
        pad += 1;
    }
    let longest = padded(pad);
    assert!(longest.len() >= MAX_TOKEN_LEN - 2, "{}", longest.len());
    common::verifier().verify(&longest, NOW).unwrap();
    let too_long = padded(pad + 1);
    match common::verifier().verify(&too_long, NOW) {
        Err(AuthError::TooLarge { len, max }) => {
            assert_eq!((len, max), (too_long.len(), MAX_TOKEN_LEN));
        }
        other => panic!("{other:?}"),
    }
}
