//! KeyPackages a member uploads for others to add it with (KDS-KP-01).

use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;

use super::{CIPHERSUITE, identity_of, internal, parse};
use crate::error::KdsError;

/// Validate an uploaded KeyPackage (KDS-KP-01): it parses, verifies, uses the room's cipher
/// suite, and its credential is `identity`. Returns its hash reference and whether it is a
/// last-resort KeyPackage.
///
/// # Errors
/// [`KdsError::Malformed`], [`KdsError::Invalid`], [`KdsError::PermissionDenied`].
pub fn check_key_package(bytes: &[u8], identity: &str) -> Result<(Vec<u8>, bool), KdsError> {
    let crypto = RustCrypto::default();
    let MlsMessageBodyIn::KeyPackage(kp) = parse("key_package", bytes)?.extract() else {
        return Err(KdsError::Malformed {
            what: "key_package",
            why: "not a KeyPackage message".into(),
            source: None,
        });
    };
    let kp = kp
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| KdsError::invalid(format!("key_package: {e:?}")))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(KdsError::invalid(format!(
            "key_package uses {:?}; rooms use {CIPHERSUITE:?}",
            kp.ciphersuite()
        )));
    }
    let id = identity_of(kp.leaf_node().credential())?;
    if id != identity {
        return Err(KdsError::PermissionDenied(format!(
            "the KeyPackage is for {id:?} but the token is for {identity:?}"
        )));
    }
    let hash = kp.hash_ref(&crypto).map_err(internal)?;
    Ok((hash.as_slice().to_vec(), kp.last_resort()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testkit::Member;

    #[test]
    fn kds_kp_01_the_callers_own_key_package_is_accepted() {
        let bob = Member::new("bob");
        let (hash, last_resort) = check_key_package(&bob.key_package(false), "bob").unwrap();
        assert_eq!(hash.len(), 32, "a SHA-256 hash reference");
        assert!(!last_resort);
        let (other, last_resort) = check_key_package(&bob.key_package(true), "bob").unwrap();
        assert!(last_resort);
        assert_ne!(hash, other, "each KeyPackage has its own reference");
    }

    #[test]
    fn kds_kp_01_someone_elses_key_package_is_refused() {
        let bob = Member::new("bob");
        let e = check_key_package(&bob.key_package(false), "mallory").unwrap_err();
        assert!(matches!(e, KdsError::PermissionDenied(_)), "{e}");
    }

    #[test]
    fn kds_kp_01_bytes_that_are_no_key_package_are_refused() {
        let e = check_key_package(b"\x00\x01garbage", "bob").unwrap_err();
        assert!(
            matches!(
                e,
                KdsError::Malformed {
                    what: "key_package",
                    ..
                }
            ),
            "{e}"
        );
        let mut alice = Member::new("alice");
        let group_info = alice.create("room", &[]);
        let e = check_key_package(&group_info, "alice").unwrap_err();
        assert!(
            matches!(&e, KdsError::Malformed { why, .. } if why.contains("not a KeyPackage")),
            "{e}"
        );
    }

    #[test]
    fn kds_kp_01_a_key_package_of_another_cipher_suite_is_refused() {
        let p256 = Member::with_suite("bob", Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256);
        let e = check_key_package(&p256.key_package(false), "bob").unwrap_err();
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("rooms use")),
            "{e}"
        );
    }
}
