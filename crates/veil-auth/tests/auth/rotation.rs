//! Several keys by id: rotation without a flag day (AUTH-06, AUTH-07, AUTH-09).

use veil_auth::{AuthError, TokenKey, Verifier};

use crate::common::{self, NOW};

#[test]
fn both_keys_verify_during_rotation_and_the_old_one_stops_after() {
    let old = TokenKey::generate("2025-01").unwrap();
    let new = TokenKey::generate("2025-02").unwrap();
    let old_token = old.mint(&common::claims()).unwrap();
    let new_token = new.mint(&common::claims()).unwrap();

    let during = Verifier::new([old.clone(), new.clone()]).unwrap();
    assert_eq!(during.key_ids().collect::<Vec<_>>(), ["2025-01", "2025-02"]);
    assert_eq!(during.verify(&old_token, NOW).unwrap().key_id(), "2025-01");
    assert_eq!(during.verify(&new_token, NOW).unwrap().key_id(), "2025-02");

    let after = Verifier::new([new]).unwrap();
    after.verify(&new_token, NOW).unwrap();
    match after.verify(&old_token, NOW) {
        Err(AuthError::UnknownKey(kid)) => assert_eq!(kid, "2025-01"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_token_is_checked_only_with_the_key_its_kid_names() {
    let a = TokenKey::generate("a").unwrap();
    let b = TokenKey::generate("b").unwrap();
    let verifier = Verifier::new([a.clone(), b]).unwrap();
    // Re-labelling a's token as b's changes the signed header, and b's secret differs anyway.
    let token = a.mint(&common::claims()).unwrap();
    let (_, rest) = token.split_once('.').unwrap();
    let relabelled = format!(
        "{}.{rest}",
        common::b64(br#"{"alg":"HS256","typ":"JWT","kid":"b"}"#)
    );
    assert!(matches!(
        verifier.verify(&relabelled, NOW),
        Err(AuthError::BadSignature)
    ));
}

#[test]
fn the_same_id_with_another_secret_is_a_bad_signature() {
    let token = TokenKey::generate(common::KID)
        .unwrap()
        .mint(&common::claims())
        .unwrap();
    assert!(matches!(
        common::verifier().verify(&token, NOW),
        Err(AuthError::BadSignature)
    ));
}

#[test]
fn iss_must_name_the_signing_key() {
    // Signed by `main` but claiming to be issued by another key.
    let token = common::signed_with(|m| drop(m.insert("iss".into(), "2025-02".into())));
    assert!(matches!(
        common::verifier().verify(&token, NOW),
        Err(AuthError::InvalidClaim { claim: "iss", .. })
    ));
}
