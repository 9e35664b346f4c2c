//! Any change to a token is rejected (AUTH-02 … AUTH-07).

use veil_auth::AuthError;

use crate::common::{self, NOW};

#[test]
fn flipping_any_bit_of_any_byte_is_rejected() {
    let token = common::token();
    let verifier = common::verifier();
    verifier.verify(&token, NOW).unwrap();
    let mut tried = 0;
    for i in 0..token.len() {
        // Bit 7 would leave ASCII and so UTF-8; `verify` takes `&str`.
        for bit in 0..7 {
            let mut bytes = token.clone().into_bytes();
            bytes[i] ^= 1 << bit;
            let tampered = String::from_utf8(bytes).unwrap();
            let err = verifier.verify(&tampered, NOW).unwrap_err();
            assert!(err.is_unauthenticated(), "byte {i} bit {bit}: {err:?}");
            tried += 1;
        }
    }
    assert_eq!(tried, token.len() * 7);
}

#[test]
fn the_last_signature_character_has_one_encoding() {
    // 32 bytes take 43 base64url characters; the last carries 4 bits and 2 unused zero bits.
    // Setting an unused bit must not yield a second valid spelling of the same signature.
    let token = common::token();
    let last = token.as_bytes()[token.len() - 1];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.iter().position(|&c| c == last).unwrap();
    assert_eq!(index & 3, 0, "the minted encoding is canonical");
    for other in [index | 1, index | 2, index | 3] {
        let mut bytes = token.clone().into_bytes();
        *bytes.last_mut().unwrap() = alphabet[other];
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            common::verifier().verify(&tampered, NOW),
            Err(AuthError::Malformed(_))
        ));
    }
}

#[test]
fn truncating_or_extending_is_rejected() {
    let token = common::token();
    let verifier = common::verifier();
    for cut in 0..token.len() {
        assert!(verifier.verify(&token[..cut], NOW).is_err(), "cut at {cut}");
    }
    for extra in ["A", "=", ".", " ", "\n"] {
        assert!(
            verifier.verify(&format!("{token}{extra}"), NOW).is_err(),
            "{extra:?}"
        );
        assert!(
            verifier.verify(&format!("{extra}{token}"), NOW).is_err(),
            "{extra:?}"
        );
    }
}

#[test]
fn splicing_parts_of_two_valid_tokens_is_rejected() {
    let key = common::key();
    let alice = key.mint(&common::claims()).unwrap();
    let bob = key
        .mint(&veil_auth::Claims {
            identity: "bob".into(),
            ..common::claims()
        })
        .unwrap();
    let a: Vec<&str> = alice.split('.').collect();
    let b: Vec<&str> = bob.split('.').collect();
    let spliced = format!("{}.{}.{}", a[0], b[1], a[2]);
    assert!(matches!(
        common::verifier().verify(&spliced, NOW),
        Err(AuthError::BadSignature)
    ));
}
