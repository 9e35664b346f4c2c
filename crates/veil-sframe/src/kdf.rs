//! Key derivation (RFC 9605 §4.4.2) and the MLS KID layout (RFC 9605 §5.2).
//!
//! ```text
//! sframe_secret = HKDF-Extract("", base_key)
//! sframe_key    = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret key "  || KID(8) || suite(2), Nk)
//! sframe_salt   = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret salt " || KID(8) || suite(2), Nn)
//! ```
//!
//! With MLS (§5.2) every member exports one `base_key` per epoch and the senders are told apart
//! by their KID, which enters both labels:
//!
//! ```text
//! base_key = MLS-Exporter("SFrame 1.0 Base Key", "", Nk)
//! KID      = (context << (S + E)) + (sender_index << E) + (epoch mod 2^E)
//! ```

use hkdf::Hkdf;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use crate::error::{Result, SframeError};
use crate::secret::{KeyMaterial, MAX_KEY_LEN};
use crate::suite::{CipherSuite, KdfHash, NONCE_LEN};

/// The MLS exporter label of RFC 9605 §5.2.
pub const MLS_EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";
/// The MLS exporter context of RFC 9605 §5.2 (empty).
pub const MLS_EXPORTER_CONTEXT: &[u8] = b"";

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";

/// Build `prefix || KID (8 bytes BE) || suite (2 bytes BE)` into `out`; returns its length.
fn label(prefix: &[u8], kid: u64, suite: CipherSuite, out: &mut [u8; 40]) -> usize {
    let n = prefix.len();
    out[..n].copy_from_slice(prefix);
    out[n..n + 8].copy_from_slice(&kid.to_be_bytes());
    out[n + 8..n + 10].copy_from_slice(&suite.id().to_be_bytes());
    n + 10
}

/// The HKDF labels of RFC 9605 §4.4.2 for `kid` (exposed for the known-answer tests).
#[must_use]
pub fn labels(suite: CipherSuite, kid: u64) -> (Vec<u8>, Vec<u8>) {
    let mut buf = [0u8; 40];
    let k = label(KEY_LABEL, kid, suite, &mut buf);
    let key_label = buf[..k].to_vec();
    let s = label(SALT_LABEL, kid, suite, &mut buf);
    (key_label, buf[..s].to_vec())
}

/// Expand key and salt with `expand` (an HKDF-Expand keyed with `sframe_secret`).
fn expand_with(
    expand: impl Fn(&[u8], &mut [u8]) -> core::result::Result<(), hkdf::InvalidLength>,
    kid: u64,
    suite: CipherSuite,
) -> Result<KeyMaterial> {
    let mut lbl = [0u8; 40];
    let mut key = Zeroizing::new([0u8; MAX_KEY_LEN]);
    let n = label(KEY_LABEL, kid, suite, &mut lbl);
    expand(&lbl[..n], &mut key[..suite.key_len()])
        .map_err(|_| SframeError::Backend("HKDF-Expand rejected the key length"))?;
    let mut salt = Zeroizing::new([0u8; NONCE_LEN]);
    let n = label(SALT_LABEL, kid, suite, &mut lbl);
    expand(&lbl[..n], &mut salt[..])
        .map_err(|_| SframeError::Backend("HKDF-Expand rejected the salt length"))?;
    #[cfg(feature = "hazard-export-secrets")]
    {
        use crate::hazard::{SecretKind, record};
        record(
            SecretKind::SframeKey,
            || format!("kid {kid:#x}"),
            &key[..suite.key_len()],
        );
        record(
            SecretKind::SframeSalt,
            || format!("kid {kid:#x}"),
            &salt[..],
        );
    }
    KeyMaterial::new(&key[..suite.key_len()], &salt)
}

/// Derive `sframe_key` and `sframe_salt` for `kid` from `base_key` (RFC 9605 §4.4.2, SF-KDF-01).
///
/// # Errors
/// Only [`SframeError::Backend`], which correct inputs never cause.
pub fn derive_key_material(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<KeyMaterial> {
    #[cfg(feature = "hazard-export-secrets")]
    crate::hazard::record_base_key(suite, base_key);
    // Extract with an empty salt: HKDF substitutes HashLen zero bytes, which keys HMAC exactly
    // as the empty string does.
    match suite.hash() {
        KdfHash::Sha256 => {
            let hk = Hkdf::<Sha256>::new(None, base_key);
            expand_with(|i, o| hk.expand(i, o), kid, suite)
        }
        KdfHash::Sha512 => {
            let hk = Hkdf::<Sha512>::new(None, base_key);
            expand_with(|i, o| hk.expand(i, o), kid, suite)
        }
    }
}

/// `sframe_secret = HKDF-Extract("", base_key)` computed once, for deriving the keys of many
/// KIDs that share one base key (every sender of an MLS epoch, RFC 9605 §5.2). Gives exactly
/// what [`derive_key_material`] gives, for a fraction of the cost per KID.
pub struct EpochKdf {
    suite: CipherSuite,
    hk: EpochHkdf,
}

enum EpochHkdf {
    Sha256(Hkdf<Sha256>),
    Sha512(Hkdf<Sha512>),
}

impl EpochKdf {
    /// Extract `sframe_secret` from `base_key`.
    #[must_use]
    pub fn new(suite: CipherSuite, base_key: &[u8]) -> Self {
        #[cfg(feature = "hazard-export-secrets")]
        crate::hazard::record_base_key(suite, base_key);
        let hk = match suite.hash() {
            KdfHash::Sha256 => EpochHkdf::Sha256(Hkdf::<Sha256>::new(None, base_key)),
            KdfHash::Sha512 => EpochHkdf::Sha512(Hkdf::<Sha512>::new(None, base_key)),
        };
        Self { suite, hk }
    }

    /// `sframe_key` and `sframe_salt` of `kid`.
    ///
    /// # Errors
    /// Only [`SframeError::Backend`], which correct inputs never cause.
    pub fn material(&self, kid: u64) -> Result<KeyMaterial> {
        match &self.hk {
            EpochHkdf::Sha256(hk) => expand_with(|i, o| hk.expand(i, o), kid, self.suite),
            EpochHkdf::Sha512(hk) => expand_with(|i, o| hk.expand(i, o), kid, self.suite),
        }
    }
}

/// How a 64-bit KID is split for MLS (RFC 9605 §5.2): `E` low bits of the epoch, `S` bits of
/// sender index above them, the rest a sender-chosen context (SF-MLS-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MlsKidLayout {
    epoch_bits: u32,
    index_bits: u32,
}

impl MlsKidLayout {
    /// A layout with `epoch_bits` (E) and `index_bits` (S). At least one bit must remain for
    /// the context, and E must be at least 1 so consecutive epochs get distinct KIDs
    /// (`specs/sframe.md` §4: `1 <= E` and `E + S <= 63`).
    ///
    /// # Errors
    /// [`SframeError::InvalidKidLayout`] if `E + S > 63` or `E == 0`. Any pair of `u32`s is
    /// accepted as input: the sum is taken in 64 bits, so it cannot overflow.
    pub const fn new(epoch_bits: u32, index_bits: u32) -> Result<Self> {
        // Widen before adding: `u32::MAX + 1` must be refused, not wrap to a small layout.
        if epoch_bits == 0 || epoch_bits as u64 + index_bits as u64 > 63 {
            return Err(SframeError::InvalidKidLayout {
                epoch_bits,
                index_bits,
            });
        }
        Ok(Self {
            epoch_bits,
            index_bits,
        })
    }

    /// The smallest layout for a group of `group_size` members with `epoch_bits` of epoch:
    /// `S` is the least value with `group_size <= 2^S` (RFC 9605 §5.2).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub const fn for_group(epoch_bits: u32, group_size: u64) -> Result<Self> {
        let s = if group_size <= 1 {
            0
        } else {
            64 - (group_size - 1).leading_zeros()
        };
        Self::new(epoch_bits, s)
    }

    /// `E`.
    #[must_use]
    pub const fn epoch_bits(&self) -> u32 {
        self.epoch_bits
    }

    /// `S`.
    #[must_use]
    pub const fn index_bits(&self) -> u32 {
        self.index_bits
    }

    /// The KID of `sender_index` at `epoch` with `context` (SF-MLS-01).
    ///
    /// # Errors
    /// [`SframeError::KidOverflow`] if the index or context does not fit its bits.
    pub const fn kid(&self, context: u64, sender_index: u32, epoch: u64) -> Result<u64> {
        let (e, s) = (self.epoch_bits, self.index_bits);
        let idx = sender_index as u64;
        if s < 64 && idx >> s != 0 {
            return Err(SframeError::KidOverflow {
                field: "sender index",
                value: idx,
                bits: s,
            });
        }
        let ctx_bits = 64 - s - e;
        if context >> ctx_bits != 0 {
            return Err(SframeError::KidOverflow {
                field: "context",
                value: context,
                bits: ctx_bits,
            });
        }
        let epoch_low = epoch & ((1u64 << e) - 1);
        Ok((context << (s + e)) | (idx << e) | epoch_low)
    }

    /// Split a KID into `(context, sender_index, epoch mod 2^E)`.
    #[must_use]
    pub const fn split(&self, kid: u64) -> (u64, u64, u64) {
        let (e, s) = (self.epoch_bits, self.index_bits);
        let epoch_low = kid & ((1u64 << e) - 1);
        let idx = (kid >> e) & ((1u64 << s) - 1);
        (kid >> (s + e), idx, epoch_low)
    }
}

/// Key material of one sender in one MLS epoch: `base_key` is the epoch's exporter secret
/// (`MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`), which is all an MLS library must hand over
/// (SF-MLS-02). Returns the KID with its key material.
///
/// # Errors
/// [`SframeError::KidOverflow`] if the index or context does not fit the layout;
/// [`SframeError::InvalidKeyLength`] if `exporter_secret` is not `Nk` bytes.
pub fn mls_sender_key(
    suite: CipherSuite,
    exporter_secret: &[u8],
    layout: MlsKidLayout,
    context: u64,
    sender_index: u32,
    epoch: u64,
) -> Result<(u64, KeyMaterial)> {
    if exporter_secret.len() != suite.key_len() {
        return Err(SframeError::InvalidKeyLength {
            what: "MLS exporter secret",
            expected: suite.key_len(),
            got: exporter_secret.len(),
        });
    }
    let kid = layout.kid(context, sender_index, epoch)?;
    Ok((kid, derive_key_material(suite, kid, exporter_secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_layout_packs_and_splits() {
        let l = MlsKidLayout::new(4, 6).unwrap();
        let kid = l.kid(3, 37, 0x1235).unwrap();
        assert_eq!(kid, (3 << 10) | (37 << 4) | 0x5);
        assert_eq!(l.split(kid), (3, 37, 5));
    }

    #[test]
    fn kid_layout_rejects_overflow() {
        let l = MlsKidLayout::new(4, 6).unwrap();
        assert!(matches!(
            l.kid(0, 64, 0),
            Err(SframeError::KidOverflow {
                field: "sender index",
                ..
            })
        ));
        assert!(matches!(
            l.kid(1 << 54, 0, 0),
            Err(SframeError::KidOverflow {
                field: "context",
                ..
            })
        ));
        assert!(l.kid((1 << 54) - 1, 63, u64::MAX).is_ok());
        assert!(MlsKidLayout::new(0, 8).is_err());
        assert!(MlsKidLayout::new(32, 32).is_err());
    }

    #[test]
    fn group_layout_uses_the_fewest_index_bits() {
        assert_eq!(MlsKidLayout::for_group(8, 1).unwrap().index_bits(), 0);
        assert_eq!(MlsKidLayout::for_group(8, 2).unwrap().index_bits(), 1);
        assert_eq!(MlsKidLayout::for_group(8, 3).unwrap().index_bits(), 2);
        assert_eq!(MlsKidLayout::for_group(8, 4).unwrap().index_bits(), 2);
        assert_eq!(MlsKidLayout::for_group(8, 1000).unwrap().index_bits(), 10);
    }

    #[test]
    fn epoch_kdf_equals_per_kid_derivation() {
        for suite in CipherSuite::ALL {
            let kdf = EpochKdf::new(suite, b"an epoch base key");
            for kid in [0, 1, 0x123, u64::MAX] {
                assert_eq!(
                    kdf.material(kid).unwrap(),
                    derive_key_material(suite, kid, b"an epoch base key").unwrap()
                );
            }
        }
    }

    #[test]
    fn senders_of_one_epoch_get_distinct_keys() {
        let secret = [7u8; 16];
        let l = MlsKidLayout::new(8, 8).unwrap();
        let suite = CipherSuite::AesGcm128Sha256;
        let (k0, m0) = mls_sender_key(suite, &secret, l, 0, 0, 5).unwrap();
        let (k1, m1) = mls_sender_key(suite, &secret, l, 0, 1, 5).unwrap();
        assert_ne!(k0, k1);
        assert_ne!(m0, m1);
        assert!(mls_sender_key(suite, &[0u8; 15], l, 0, 0, 5).is_err());
    }

    // Caller input never panics (issue 19): every (E, S) pair is accepted or refused with a
    // typed error, and the layouts that were valid before pack and split as before.
    proptest::proptest! {
        #[test]
        fn any_layout_is_accepted_or_refused_without_panicking(e: u32, s: u32) {
            let got = MlsKidLayout::new(e, s);
            let valid = e >= 1 && u64::from(e) + u64::from(s) <= 63;
            proptest::prop_assert_eq!(got.is_ok(), valid);
            if !valid {
                proptest::prop_assert_eq!(
                    got,
                    Err(SframeError::InvalidKidLayout { epoch_bits: e, index_bits: s })
                );
            }
        }

        #[test]
        fn valid_layouts_pack_and_split(
            e in 1u32..=63,
            s in 0u32..=62,
            ctx: u64,
            idx: u32,
            epoch: u64,
        ) {
            proptest::prop_assume!(e + s <= 63);
            let l = MlsKidLayout::new(e, s).unwrap();
            let (ctx, idx) = (ctx >> (e + s), if s >= 32 { idx } else { idx & ((1 << s) - 1) });
            let kid = l.kid(ctx, idx, epoch).unwrap();
            proptest::prop_assert_eq!(
                l.split(kid),
                (ctx, u64::from(idx), epoch & ((1 << e) - 1))
            );
        }

        #[test]
        fn any_group_size_gets_a_layout_or_an_error(e: u32, n: u64) {
            if let Ok(l) = MlsKidLayout::for_group(e, n) {
                proptest::prop_assert!(u128::from(n) <= 1u128 << l.index_bits());
            }
        }
    }
}
