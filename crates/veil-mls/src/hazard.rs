//! **HAZARD:** the MLS side of the secret recorder `veil_sframe::hazard` (feature
//! `hazard-export-secrets`, MLS-LEAK-01 in `specs/key-schedule.md`). Nothing is recorded unless
//! a test started a recording; no build that ships enables the feature.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use veil_sframe::hazard::{SecretKind, record, recording};

/// The signature private key of `signer`, for `identity`. openmls exposes it only through the
/// key pair's TLS encoding, whose first field is the private key.
pub(crate) fn signer(identity: &[u8], signer: &SignatureKeyPair) {
    if !recording() {
        return;
    }
    let Ok(encoded) = signer.tls_serialize_detached() else {
        return;
    };
    let encoded = zeroize::Zeroizing::new(encoded);
    if let Ok(private) = VLBytes::tls_deserialize(&mut encoded.as_slice()) {
        let private = zeroize::Zeroizing::new(private.as_slice().to_vec());
        record(
            SecretKind::SignaturePrivateKey,
            || String::from_utf8_lossy(identity).into_owned(),
            &private,
        );
    }
}

/// The HPKE init private key of a KeyPackage `identity` made. (Its leaf's encryption private
/// key is openmls-internal outside openmls's `test-utils`.)
pub(crate) fn key_package(identity: &[u8], bundle: &KeyPackageBundle) {
    record(
        SecretKind::HpkeInitPrivateKey,
        || String::from_utf8_lossy(identity).into_owned(),
        bundle.init_private_key(),
    );
}

/// The epoch secrets of `group` that openmls exposes, as `identity` installs its epoch: the
/// SFrame exporter secret and the resumption PSK. (The epoch secret itself and the secrets
/// between it and these are openmls-internal; the epoch authenticator is not secret.)
pub(crate) fn epoch(identity: &[u8], group: &MlsGroup, exporter_secret: &[u8]) {
    let label = || {
        format!(
            "{} epoch {}",
            String::from_utf8_lossy(identity),
            group.epoch().as_u64()
        )
    };
    record(SecretKind::MlsExporterSecret, label, exporter_secret);
    record(
        SecretKind::MlsResumptionPsk,
        label,
        group.resumption_psk_secret().as_slice(),
    );
}
