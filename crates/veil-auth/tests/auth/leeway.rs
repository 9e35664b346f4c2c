//! `nbf` and `exp` against the clock, with leeway (AUTH-14, AUTH-15).

use std::time::Duration;

use veil_auth::{AuthError, Claims, DEFAULT_LEEWAY, Grants, Verifier};

use crate::common::{self, NOW};

/// A token valid over `[nbf, exp)`.
fn token(nbf: u64, exp: u64) -> String {
    let claims = Claims {
        not_before: nbf,
        expires: exp,
        ..Claims::new("a", "r", Grants::participant(), nbf, Duration::ZERO)
    };
    common::key().mint(&claims).unwrap()
}

#[test]
fn default_leeway_is_thirty_seconds() {
    assert_eq!(DEFAULT_LEEWAY, Duration::from_secs(30));
    assert_eq!(common::verifier().leeway(), DEFAULT_LEEWAY);
}

#[test]
fn expiry_edges_with_the_default_leeway() {
    let v = common::verifier();
    // Valid until exp + leeway, exclusive.
    v.verify(&token(NOW - 100, NOW - 29), NOW).unwrap();
    match v.verify(&token(NOW - 100, NOW - 30), NOW) {
        Err(e @ AuthError::Expired { .. }) => {
            assert!(
                matches!(e, AuthError::Expired { expired_at, now } if expired_at == NOW - 30 && now == NOW)
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "token expired at {} (now {NOW}, Unix seconds): mint a new token",
                    NOW - 30
                )
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_before_edges_with_the_default_leeway() {
    let v = common::verifier();
    // Valid from nbf - leeway, inclusive.
    v.verify(&token(NOW + 30, NOW + 100), NOW).unwrap();
    match v.verify(&token(NOW + 31, NOW + 100), NOW) {
        Err(AuthError::NotYetValid { not_before, now }) => {
            assert_eq!((not_before, now), (NOW + 31, NOW));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn edges_without_leeway_follow_rfc_7519() {
    let v = common::verifier().with_leeway(Duration::ZERO);
    // RFC 7519 §4.1.4: "on or after" exp is invalid; §4.1.5: "before" nbf is invalid.
    assert!(matches!(
        v.verify(&token(NOW - 10, NOW), NOW),
        Err(AuthError::Expired { .. })
    ));
    v.verify(&token(NOW - 10, NOW + 1), NOW).unwrap();
    v.verify(&token(NOW, NOW + 1), NOW).unwrap();
    assert!(matches!(
        v.verify(&token(NOW + 1, NOW + 2), NOW),
        Err(AuthError::NotYetValid { .. })
    ));
}

#[test]
fn a_longer_leeway_widens_both_edges_in_whole_seconds() {
    let v = Verifier::new([common::key()])
        .unwrap()
        .with_leeway(Duration::from_millis(120_900));
    assert_eq!(v.leeway(), Duration::from_secs(120));
    v.verify(&token(NOW - 200, NOW - 119), NOW).unwrap();
    assert!(matches!(
        v.verify(&token(NOW - 200, NOW - 120), NOW),
        Err(AuthError::Expired { .. })
    ));
    v.verify(&token(NOW + 120, NOW + 200), NOW).unwrap();
    assert!(matches!(
        v.verify(&token(NOW + 121, NOW + 200), NOW),
        Err(AuthError::NotYetValid { .. })
    ));
}

#[test]
fn extreme_times_do_not_overflow() {
    let v = common::verifier();
    v.verify(&token(0, u64::MAX), u64::MAX - 1).unwrap();
    v.verify(&token(0, u64::MAX), 0).unwrap();
    assert!(matches!(
        v.verify(&token(u64::MAX - 1, u64::MAX), 0),
        Err(AuthError::NotYetValid { .. })
    ));
    assert!(matches!(
        v.verify(&token(0, 1), u64::MAX),
        Err(AuthError::Expired { .. })
    ));
}

#[test]
fn lifetime_is_not_capped() {
    let v = common::verifier();
    v.verify(&token(NOW, NOW + 10 * 365 * 24 * 3600), NOW)
        .unwrap();
}
