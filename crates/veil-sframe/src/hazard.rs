//! **HAZARD: a recorder of every secret this process derives.** Only with the cargo feature
//! `hazard-export-secrets`, which no production build enables; check MLS-LEAK-01
//! (`specs/key-schedule.md`).
//!
//! A leak test (`tests/tests/e2e/secrets.rs`, MLS-LEAK-02) must know every secret the
//! participants held in order to search logs, server traffic and server storage for them. This
//! module is how it learns them without a production path that exports secrets:
//!
//! - with the feature off (every normal build) the module does not exist;
//! - with it on (`--all-features`, or a test crate's dev-dependency) nothing is recorded until a
//!   test calls [`start`]: each recording point then costs one relaxed atomic load, and the
//!   frame path never reaches one (keys are derived once per sender and epoch, not per frame);
//! - once started, every secret derived in the whole process is kept (deduplicated) until
//!   [`stop`] hands them over. [`RecordedSecret`] zeroizes on drop and its `Debug` prints no
//!   secret byte, so even a test that prints one does not leak it into its own logs.
//!
//! This crate records the SFrame side (RFC 9605 §4.4.2): base keys, the extracted
//! `sframe_secret`, and every `sframe_key` and `sframe_salt`. `veil-mls` (same feature name)
//! records the MLS side: exporter secrets, resumption PSKs, the signature private key and the
//! HPKE init private keys of KeyPackages.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// What a recorded secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SecretKind {
    /// An SFrame base key (with MLS: the epoch's exporter output, RFC 9605 §5.2).
    SframeBaseKey,
    /// `sframe_secret = HKDF-Extract("", base_key)`.
    SframeSecret,
    /// An `sframe_key` of one KID.
    SframeKey,
    /// An `sframe_salt` of one KID.
    SframeSalt,
    /// An MLS exporter secret (`MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`).
    MlsExporterSecret,
    /// An MLS epoch's resumption PSK (derived from the epoch secret).
    MlsResumptionPsk,
    /// A member's signature private key (its MLS credential's).
    SignaturePrivateKey,
    /// A KeyPackage's HPKE init private key.
    HpkeInitPrivateKey,
}

/// One recorded secret. Zeroized on drop; `Debug` shows kind, label and length only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RecordedSecret {
    /// What it is.
    #[zeroize(skip)]
    pub kind: SecretKind,
    /// Where it came from, e.g. `alice epoch 3` or `kid 0x103`.
    #[zeroize(skip)]
    pub label: String,
    /// The secret bytes.
    pub bytes: Vec<u8>,
}

impl core::fmt::Debug for RecordedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "RecordedSecret({:?}, {:?}, <{} bytes>)",
            self.kind,
            self.label,
            self.bytes.len()
        )
    }
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static RECORDED: Mutex<Vec<RecordedSecret>> = Mutex::new(Vec::new());

/// Start recording every secret derived in this process (clearing anything recorded before).
pub fn start() {
    let mut r = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    r.clear();
    RECORDING.store(true, Ordering::SeqCst);
}

/// Stop recording and take what was recorded, each secret once (the first label it came with).
#[must_use]
pub fn stop() -> Vec<RecordedSecret> {
    RECORDING.store(false, Ordering::SeqCst);
    let mut r = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    let all = core::mem::take(&mut *r);
    let mut seen = HashSet::new();
    all.into_iter()
        .filter(|s| seen.insert((s.kind, s.bytes.clone())))
        .collect()
}

/// Whether a recording runs (cheap: recording points check it first).
#[must_use]
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Record `bytes` as a secret of `kind`, if a recording runs; `label` is called only then.
pub fn record(kind: SecretKind, label: impl FnOnce() -> String, bytes: &[u8]) {
    if !recording() || bytes.is_empty() {
        return;
    }
    let s = RecordedSecret {
        kind,
        label: label(),
        bytes: bytes.to_vec(),
    };
    RECORDED.lock().unwrap_or_else(|e| e.into_inner()).push(s);
}

/// Record an SFrame base key and the `sframe_secret` extracted from it (RFC 9605 §4.4.2).
pub(crate) fn record_base_key(suite: crate::CipherSuite, base_key: &[u8]) {
    if !recording() {
        return;
    }
    use crate::suite::KdfHash;
    let prk = match suite.hash() {
        KdfHash::Sha256 => hkdf::Hkdf::<sha2::Sha256>::extract(None, base_key)
            .0
            .to_vec(),
        KdfHash::Sha512 => hkdf::Hkdf::<sha2::Sha512>::extract(None, base_key)
            .0
            .to_vec(),
    };
    let prk = zeroize::Zeroizing::new(prk);
    record(SecretKind::SframeBaseKey, String::new, base_key);
    record(SecretKind::SframeSecret, String::new, &prk);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CipherSuite, derive_key_material};

    // One test only: the recorder is process-wide. Other tests running meanwhile in this
    // process may add their keys, so the test looks for its own.
    #[test]
    fn records_only_while_started_and_redacts_debug() {
        let base = [0x5A; 16];
        let _ = derive_key_material(CipherSuite::AesGcm128Sha256, 7, &base).unwrap();
        start();
        let m = derive_key_material(CipherSuite::AesGcm128Sha256, 7, &base).unwrap();
        let got = stop();
        let has = |k: SecretKind, bytes: &[u8]| {
            got.iter()
                .filter(|s| s.kind == k && s.bytes == bytes)
                .count()
        };
        assert_eq!(has(SecretKind::SframeBaseKey, &base), 1, "{got:?}");
        let prk = hkdf::Hkdf::<sha2::Sha256>::extract(None, &base).0;
        assert_eq!(has(SecretKind::SframeSecret, &prk), 1, "{got:?}");
        assert_eq!(has(SecretKind::SframeKey, m.key()), 1, "{got:?}");
        assert_eq!(has(SecretKind::SframeSalt, m.salt()), 1, "{got:?}");
        let key = got.iter().find(|s| s.bytes == m.key()).unwrap();
        assert_eq!(key.label, "kid 0x7");
        assert_eq!(
            format!("{key:?}"),
            "RecordedSecret(SframeKey, \"kid 0x7\", <16 bytes>)"
        );
        // Stopped: nothing more is kept.
        let _ = derive_key_material(CipherSuite::AesGcm128Sha256, 8, &base).unwrap();
        assert!(stop().is_empty());
    }
}
