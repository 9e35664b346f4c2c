//! Every `AuthError` variant, its kind, and messages that help without leaking.

use base64::Engine as _;
use serde_json::json;
use veil_auth::{AuthError, ErrorKind, GrantKind, MAX_TOKEN_LEN, TokenKey, Verifier};

use crate::common::{self, KID, NOW, SECRET};

fn verify(token: &str) -> Result<veil_auth::VerifiedClaims, AuthError> {
    common::verifier().verify(token, NOW)
}

fn b64(s: &str) -> String {
    common::b64(s.as_bytes())
}

#[test]
fn too_large_is_checked_before_any_parsing() {
    let junk = "!".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        verify(&junk),
        Err(AuthError::TooLarge {
            len: 4097,
            max: 4096
        })
    ));
    // At the limit the same junk is looked at, and found malformed.
    assert!(matches!(verify(&junk[1..]), Err(AuthError::Malformed(_))));
}

#[test]
fn malformed_shapes() {
    let token = common::token();
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let (_, payload) = signing_input.split_once('.').unwrap();
    let hs = b64(&common::header(KID));
    let cases = [
        String::new(),
        "abc".into(),
        signing_input.to_string(),
        format!("{token}.{sig}"),
        format!("{signing_input}.{sig}.x.y"),
        format!("!!!.{payload}.{sig}"),
        format!("{hs}=.{payload}.{sig}"),
        format!(".{payload}.{sig}"),
        format!("{}.{payload}.{sig}", b64("not json")),
        format!("{}.{payload}.{sig}", b64(r#"["HS256","JWT","main"]"#)),
        format!("{}.{payload}.{sig}", b64(r#"{"typ":"JWT","kid":"main"}"#)),
        format!(
            "{}.{payload}.{sig}",
            b64(r#"{"alg":"HS256","typ":"JOSE+JSON","kid":"main"}"#)
        ),
        format!(
            "{}.{payload}.{sig}",
            b64(r#"{"alg":"HS256","typ":7,"kid":"main"}"#)
        ),
        format!(
            "{}.{payload}.{sig}",
            b64(r#"{"alg":"HS256","kid":"main","crit":["b64"]}"#)
        ),
        format!("{}.{payload}.{sig}", b64(r#"{"alg":"HS256","typ":"JWT"}"#)),
        format!("{}.{payload}.{sig}", b64(r#"{"alg":"HS256","kid":1}"#)),
        format!("{signing_input}.{sig}="),
        format!("{signing_input}.{}/", &sig[..42]),
        format!("{signing_input}.a"),
    ];
    for bad in cases {
        let err = verify(&bad).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{bad}: {err:?}");
        assert!(err.to_string().starts_with("malformed token: "), "{err}");
    }
}

#[test]
fn a_lowercase_typ_and_no_typ_are_accepted() {
    for header in [
        r#"{"alg":"HS256","typ":"jwt","kid":"main"}"#,
        r#"{"kid":"main","alg":"HS256"}"#,
    ] {
        let token = common::sign_raw(
            SECRET,
            header,
            &serde_json::Value::Object(common::claims_object()).to_string(),
        );
        verify(&token).unwrap();
    }
}

#[test]
fn claims_that_are_not_json_are_malformed_but_only_after_the_signature() {
    let token = common::sign_raw(SECRET, &common::header(KID), "[1,2,3]");
    assert!(matches!(verify(&token), Err(AuthError::Malformed(_))));
    let forged = common::sign_raw(&[7; 32], &common::header(KID), "[1,2,3]");
    assert!(matches!(verify(&forged), Err(AuthError::BadSignature)));
}

#[test]
fn unknown_key() {
    let token = TokenKey::new("other", SECRET.to_vec())
        .unwrap()
        .mint(&common::claims())
        .unwrap();
    match verify(&token) {
        Err(AuthError::UnknownKey(kid)) => assert_eq!(kid, "other"),
        other => panic!("{other:?}"),
    }
    // An attacker-chosen kid is clipped in the error.
    let long = "k".repeat(500);
    let token = common::sign_raw(SECRET, &common::header(&long), "{}");
    match verify(&token) {
        Err(AuthError::UnknownKey(kid)) => assert_eq!(kid, format!("{}…", "k".repeat(64))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_signature() {
    let wrong_secret = TokenKey::new(KID, vec![1u8; 32])
        .unwrap()
        .mint(&common::claims())
        .unwrap();
    let token = common::token();
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let sig_bytes = common::unb64(sig);
    let cases = [
        wrong_secret,
        format!("{signing_input}."),
        format!("{signing_input}.{}", common::b64(&sig_bytes[..31])),
        format!(
            "{signing_input}.{}",
            common::b64(&[sig_bytes.as_slice(), &[0]].concat())
        ),
        format!("{signing_input}.{}", common::b64(&[0u8; 32])),
    ];
    for bad in cases {
        assert!(
            matches!(verify(&bad), Err(AuthError::BadSignature)),
            "{bad}"
        );
    }
}

#[test]
fn invalid_claims() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("iss", Box::new(|m| drop(m.remove("iss")))),
        (
            "iss",
            Box::new(|m| drop(m.insert("iss".into(), json!("other")))),
        ),
        (
            "iss",
            Box::new(|m| drop(m.insert("iss".into(), json!(["main"])))),
        ),
        ("sub", Box::new(|m| drop(m.remove("sub")))),
        ("sub", Box::new(|m| drop(m.insert("sub".into(), json!(""))))),
        (
            "sub",
            Box::new(|m| drop(m.insert("sub".into(), json!("x".repeat(256))))),
        ),
        (
            "sub",
            Box::new(|m| drop(m.insert("sub".into(), json!("bell\u{7}")))),
        ),
        ("sub", Box::new(|m| drop(m.insert("sub".into(), json!(42))))),
        ("room", Box::new(|m| drop(m.remove("room")))),
        (
            "room",
            Box::new(|m| drop(m.insert("room".into(), json!("a\u{0}b")))),
        ),
        (
            "room",
            Box::new(|m| drop(m.insert("room".into(), json!(null)))),
        ),
        ("iat", Box::new(|m| drop(m.remove("iat")))),
        (
            "iat",
            Box::new(|m| drop(m.insert("iat".into(), json!(1.5)))),
        ),
        ("nbf", Box::new(|m| drop(m.remove("nbf")))),
        (
            "nbf",
            Box::new(|m| drop(m.insert("nbf".into(), json!("1750000000")))),
        ),
        ("exp", Box::new(|m| drop(m.remove("exp")))),
        ("exp", Box::new(|m| drop(m.insert("exp".into(), json!(-1))))),
        (
            "exp",
            Box::new(|m| drop(m.insert("exp".into(), json!(NOW)))),
        ), // == nbf
        (
            "exp",
            Box::new(|m| drop(m.insert("exp".into(), json!(NOW - 1)))),
        ),
        (
            "grants",
            Box::new(|m| drop(m.insert("grants".into(), json!(["join"])))),
        ),
        (
            "grants",
            Box::new(|m| drop(m.insert("grants".into(), json!(true)))),
        ),
        ("grants.join", Box::new(|m| m["grants"]["join"] = json!(1))),
        (
            "grants.create",
            Box::new(|m| m["grants"]["create"] = json!(null)),
        ),
        (
            "grants.publish",
            Box::new(|m| m["grants"]["publish"] = json!("yes")),
        ),
        (
            "grants.subscribe",
            Box::new(|m| m["grants"]["subscribe"] = json!("true")),
        ),
        ("jti", Box::new(|m| drop(m.insert("jti".into(), json!(7))))),
        ("jti", Box::new(|m| drop(m.insert("jti".into(), json!(""))))),
    ];
    for (want, edit) in cases {
        let token = common::signed_with(edit);
        match verify(&token) {
            Err(e @ AuthError::InvalidClaim { claim, .. }) => {
                assert_eq!(claim, want, "{e}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("invalid claim `{want}`: ")),
                    "{e}"
                );
            }
            other => panic!("{want}: {other:?}"),
        }
    }
}

#[test]
fn weak_secret() {
    let err = TokenKey::new("k", vec![9u8; 31]).unwrap_err();
    assert!(matches!(err, AuthError::WeakSecret { len: 31, min: 32 }));
    assert_eq!(
        err.to_string(),
        "signing secret is 31 bytes: use at least 32 random bytes (e.g. `openssl rand -hex 32`)"
    );
    assert!(matches!(
        TokenKey::new("k", Vec::new()),
        Err(AuthError::WeakSecret { len: 0, .. })
    ));
    TokenKey::new("k", vec![9u8; 32]).unwrap();
}

#[test]
fn invalid_key_configuration() {
    assert!(matches!(Verifier::new([]), Err(AuthError::InvalidKey(_))));
    let dup = Verifier::new([common::key(), TokenKey::generate(KID).unwrap()]).unwrap_err();
    assert!(
        matches!(dup, AuthError::InvalidKey(ref m) if m.contains("\"main\"")),
        "{dup}"
    );
    assert!(matches!(
        TokenKey::generate("has space"),
        Err(AuthError::InvalidKey(_))
    ));
    assert!(matches!(
        TokenKey::parse("just-a-secret"),
        Err(AuthError::InvalidKey(_))
    ));
}

#[test]
fn wrong_room_and_missing_grant() {
    let verified = verify(&common::token()).unwrap();
    let err = verified.require("retro", GrantKind::Join).unwrap_err();
    match &err {
        AuthError::WrongRoom {
            token_room,
            requested,
        } => {
            assert_eq!(
                (token_room.as_str(), requested.as_str()),
                ("standup", "retro")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        r#"token is for room "standup", not "retro": mint a token for this room"#
    );
    let err = verified.require("standup", GrantKind::Create).unwrap_err();
    assert!(matches!(err, AuthError::MissingGrant(GrantKind::Create)));
    assert_eq!(
        err.to_string(),
        "token does not grant `create`: mint a token with grants.create = true"
    );
}

#[test]
fn io_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("token.key");
    let err = TokenKey::load_or_create(&under_file, "veil").unwrap_err();
    match &err {
        AuthError::Io { what, .. } => assert!(what.contains("token.key"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("could not "), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn kinds_map_to_grpc_codes() {
    let verified = verify(&common::token()).unwrap();
    let unauthenticated = [
        verify(&"x".repeat(5000)).unwrap_err(),
        verify("a.b").unwrap_err(),
        verify(&common::sign_raw(
            SECRET,
            r#"{"alg":"none","kid":"main"}"#,
            "{}",
        ))
        .unwrap_err(),
        verify(
            &TokenKey::generate("other")
                .unwrap()
                .mint(&common::claims())
                .unwrap(),
        )
        .unwrap_err(),
        verify(
            &TokenKey::generate(KID)
                .unwrap()
                .mint(&common::claims())
                .unwrap(),
        )
        .unwrap_err(),
        common::verifier()
            .verify(&common::token(), NOW + 10_000)
            .unwrap_err(),
        common::verifier()
            .verify(&common::token(), NOW - 10_000)
            .unwrap_err(),
        verify(&common::signed_with(|m| drop(m.remove("sub")))).unwrap_err(),
    ];
    for err in &unauthenticated {
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err:?}");
        assert!(err.is_unauthenticated() && !err.is_permission_denied());
    }
    let denied = [
        verified.require("other", GrantKind::Join).unwrap_err(),
        verified.require("standup", GrantKind::Create).unwrap_err(),
    ];
    for err in &denied {
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");
        assert!(err.is_permission_denied() && !err.is_unauthenticated());
    }
    let configuration = [
        TokenKey::new("k", vec![0; 8]).unwrap_err(),
        Verifier::new([]).unwrap_err(),
        TokenKey::load_or_create("/dev/null/token.key", "k").unwrap_err(),
    ];
    for err in &configuration {
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err:?}");
        assert!(!err.is_permission_denied() && !err.is_unauthenticated());
    }
}

#[test]
fn messages_never_contain_the_secret_or_the_token() {
    let token = common::token();
    let secret_forms = [
        String::from_utf8(SECRET.to_vec()).unwrap(),
        common::b64(SECRET),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
        SECRET.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    let (_, sig) = token.rsplit_once('.').unwrap();
    let mut errors = Vec::new();
    // Every prefix and a few mutations of a real token.
    for cut in 0..token.len() {
        errors.push(verify(&token[..cut]).unwrap_err());
    }
    errors.push(common::verifier().verify(&token, NOW + 10_000).unwrap_err());
    errors.push(
        verify(
            &TokenKey::new(KID, vec![1; 32])
                .unwrap()
                .mint(&common::claims())
                .unwrap(),
        )
        .unwrap_err(),
    );
    errors.push(TokenKey::parse(&format!("bad id:{}", secret_forms[1])).unwrap_err());
    errors.push(TokenKey::parse(&format!("{}:{}", secret_forms[2], secret_forms[3])).unwrap_err());
    errors.push(TokenKey::parse(&secret_forms[2]).unwrap_err());
    errors.push(TokenKey::parse(&format!("k:{}", &secret_forms[3][..40])).unwrap_err());
    for err in &errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(&token), "{text}");
            assert!(!text.contains(sig), "{text}");
            for secret in &secret_forms {
                assert!(!text.contains(secret.as_str()), "{text}");
                assert!(!text.contains(&secret[..16]), "{text}");
            }
        }
    }
    assert!(!format!("{:?}", common::key()).contains(&secret_forms[0][..16]));
    assert!(!format!("{:?}", common::verifier()).contains(&secret_forms[0][..16]));
}
