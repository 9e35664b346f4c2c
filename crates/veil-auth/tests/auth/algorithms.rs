//! Only HS256 is accepted, whatever the header asks for (AUTH-04).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use veil_auth::AuthError;

use crate::common::{self, KID, NOW, SECRET};

fn claims_json() -> String {
    Value::Object(common::claims_object()).to_string()
}

fn expect_unsupported(token: &str, want: &str) {
    match common::verifier().verify(token, NOW) {
        Err(e @ AuthError::UnsupportedAlgorithm(_)) => {
            let AuthError::UnsupportedAlgorithm(alg) = &e else {
                unreachable!()
            };
            assert_eq!(alg, want);
            assert!(e.to_string().contains("must be signed with HS256"), "{e}");
        }
        other => panic!("{want}: {other:?}"),
    }
}

#[test]
fn alg_none_is_rejected_with_or_without_a_signature() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{KID}"}}"#);
        let signed = common::sign_raw(SECRET, &header, &claims_json());
        let (unsigned, _) = signed.rsplit_once('.').unwrap();
        expect_unsupported(&format!("{unsigned}."), alg);
        expect_unsupported(&signed, alg);
    }
}

#[test]
fn other_hmac_algorithms_from_jsonwebtoken_are_rejected() {
    for (alg, name) in [(Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        let mut header = Header::new(alg);
        header.kid = Some(KID.into());
        let token = jsonwebtoken::encode(
            &header,
            &Value::Object(common::claims_object()),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        expect_unsupported(&token, name);
    }
}

#[test]
fn asymmetric_algorithms_are_rejected_even_when_hmac_signed() {
    // The classic confusion attack: an RS256/ES256 header over an HMAC made with the key.
    for alg in ["RS256", "ES256", "EdDSA", "PS256"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{KID}"}}"#);
        expect_unsupported(&common::sign_raw(SECRET, &header, &claims_json()), alg);
        let (signing_input, _) = common::sign_raw(SECRET, &header, &claims_json())
            .rsplit_once('.')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        let fake_rsa = common::b64(&[0x5a; 256]);
        expect_unsupported(&format!("{signing_input}.{fake_rsa}"), alg);
    }
}

#[test]
fn near_misses_of_hs256_are_rejected() {
    for alg in ["hs256", "HS256 ", " HS256", "HS-256", "HS2566", ""] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{KID}"}}"#);
        expect_unsupported(&common::sign_raw(SECRET, &header, &claims_json()), alg);
    }
}

#[test]
fn a_non_string_alg_is_rejected_and_shown_as_json() {
    for (alg, shown) in [
        ("null", "null"),
        ("[\"HS256\"]", "[\"HS256\"]"),
        ("256", "256"),
    ] {
        let header = format!(r#"{{"alg":{alg},"typ":"JWT","kid":"{KID}"}}"#);
        expect_unsupported(&common::sign_raw(SECRET, &header, &claims_json()), shown);
    }
}
