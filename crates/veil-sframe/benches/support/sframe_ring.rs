//! The `sframe` crate's ring backend, for the bench's like-with-like column.
//!
//! The `sframe` crate picks its crypto backend with a Cargo feature (`ring`, `openssl` or
//! `rust-crypto`), and enabling two is a `compile_error!` in `sframe::crypto`. Cargo unifies the
//! features of one crate version across a build, so a renamed second dependency cannot give the
//! bench both backends. What the crate does offer is its documented extension point: any
//! `AeadEncrypt` + `AeadDecrypt` + `KeyDerivation` plugs into `GenericEncryptionKey` /
//! `GenericDecryptionKey`, and its whole frame pipeline (header, AAD, buffers, key lookup) runs
//! unchanged around it.
//!
//! This module is that backend: a port of `sframe-2.1.0/src/crypto/ring/{aead,key_derivation}.rs`
//! (MIT/Apache-2.0) with the same ring calls in the same order. In particular, like the
//! original, it builds a ring `UnboundKey` (the AES key schedule) for every frame. Only the
//! secret type is local, because the crate's own `Secret` cannot be constructed from outside.
//! [`check_matches_builtin`] proves at the start of a run that the port produces the same bytes
//! as the crate's built-in backend.

use sframe::CipherSuite;
use sframe::crypto::{
    AeadDecrypt, AeadEncrypt, DecryptionBufferView, EncryptionBufferView, KeyDerivation,
    get_hkdf_key_expand_label, get_hkdf_salt_expand_label,
};
use sframe::error::{Result, SframeError};
use sframe::header::{Counter, KeyId};
use sframe::key::{GenericDecryptionKey, GenericEncryptionKey};

/// `sframe_key` and `sframe_salt`, as the crate's `Secret` holds them for AES-GCM.
pub(crate) struct RingSecret {
    key: Vec<u8>,
    salt: Vec<u8>,
}

impl RingSecret {
    /// The crate's `Secret::create_nonce` (RFC 9605 §4.4.3): the salt XOR the counter,
    /// right-aligned.
    fn create_nonce(&self, counter: Counter) -> [u8; ring::aead::NONCE_LEN] {
        let be_counter = counter.to_be_bytes();
        let mut counter = be_counter.iter().rev();
        let mut iv = [0u8; ring::aead::NONCE_LEN];
        let n = self.salt.len().min(ring::aead::NONCE_LEN);
        for i in (0..n).rev() {
            iv[i] = self.salt[i];
            if let Some(b) = counter.next() {
                iv[i] ^= b;
            }
        }
        iv
    }
}

/// The crate's `ring::Aead`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingAead {
    cipher_suite: CipherSuite,
}

impl TryFrom<CipherSuite> for RingAead {
    type Error = SframeError;

    fn try_from(cipher_suite: CipherSuite) -> Result<Self> {
        // ring has AES-GCM only, as in the original.
        aead_algorithm(cipher_suite)?;
        Ok(Self { cipher_suite })
    }
}

/// The crate's `ring::Kdf`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RingKdf;

/// The crate's key types on this backend.
pub(crate) type RingEncryptionKey = GenericEncryptionKey<RingAead, RingKdf>;
/// See [`RingEncryptionKey`].
pub(crate) type RingDecryptionKey = GenericDecryptionKey<RingAead, RingKdf>;

struct FrameNonceSequence([u8; ring::aead::NONCE_LEN]);

impl ring::aead::NonceSequence for FrameNonceSequence {
    fn advance(&mut self) -> core::result::Result<ring::aead::Nonce, ring::error::Unspecified> {
        Ok(ring::aead::Nonce::assume_unique_for_key(std::mem::take(
            &mut self.0,
        )))
    }
}

fn aead_algorithm(cipher_suite: CipherSuite) -> Result<&'static ring::aead::Algorithm> {
    match cipher_suite {
        CipherSuite::AesGcm128Sha256 => Ok(&ring::aead::AES_128_GCM),
        CipherSuite::AesGcm256Sha512 => Ok(&ring::aead::AES_256_GCM),
        // The AES-CTR suites exist because the rust-crypto feature is on.
        _ => Err(SframeError::UnsupportedCipherSuite),
    }
}

fn unbound_key(cipher_suite: CipherSuite, secret: &RingSecret) -> Result<ring::aead::UnboundKey> {
    ring::aead::UnboundKey::new(aead_algorithm(cipher_suite)?, &secret.key)
        .map_err(|_| SframeError::KeyDerivationFailure)
}

impl AeadEncrypt for RingAead {
    type Secret = RingSecret;

    fn encrypt<'a, B>(&self, secret: &RingSecret, buffer: B, counter: Counter) -> Result<()>
    where
        B: Into<EncryptionBufferView<'a>>,
    {
        use ring::aead::BoundKey;
        let view: EncryptionBufferView<'_> = buffer.into();
        let mut key = ring::aead::SealingKey::new(
            unbound_key(self.cipher_suite, secret)?,
            FrameNonceSequence(secret.create_nonce(counter)),
        );
        let tag = key
            .seal_in_place_separate_tag(ring::aead::Aad::from(view.aad), view.data)
            .map_err(|_| SframeError::EncryptionFailure)?;
        view.tag.copy_from_slice(tag.as_ref());
        Ok(())
    }
}

impl AeadDecrypt for RingAead {
    type Secret = RingSecret;

    fn decrypt<'a, B>(&self, secret: &RingSecret, buffer: B, counter: Counter) -> Result<()>
    where
        B: Into<DecryptionBufferView<'a>>,
    {
        use ring::aead::BoundKey;
        let view: DecryptionBufferView<'_> = buffer.into();
        let mut key = ring::aead::OpeningKey::new(
            unbound_key(self.cipher_suite, secret)?,
            FrameNonceSequence(secret.create_nonce(counter)),
        );
        key.open_in_place(ring::aead::Aad::from(view.aad), view.data)
            .map_err(|_| SframeError::DecryptionFailure)?;
        Ok(())
    }
}

struct OkmLen(usize);

impl ring::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &ring::hkdf::Prk, info: &[u8], len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    prk.expand(&[info], OkmLen(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SframeError::KeyDerivationFailure)?;
    Ok(out)
}

impl KeyDerivation for RingKdf {
    type Secret = RingSecret;

    fn expand_from<M, K>(
        cipher_suite: CipherSuite,
        key_material: M,
        key_id: K,
    ) -> Result<RingSecret>
    where
        M: AsRef<[u8]>,
        K: Into<KeyId>,
    {
        let key_id = key_id.into();
        let hkdf = match cipher_suite {
            CipherSuite::AesGcm128Sha256 => ring::hkdf::HKDF_SHA256,
            CipherSuite::AesGcm256Sha512 => ring::hkdf::HKDF_SHA512,
            _ => return Err(SframeError::UnsupportedCipherSuite),
        };
        let prk = ring::hkdf::Salt::new(hkdf, b"").extract(key_material.as_ref());
        Ok(RingSecret {
            key: expand(
                &prk,
                &get_hkdf_key_expand_label(key_id, cipher_suite),
                cipher_suite.key_len(),
            )?,
            salt: expand(
                &prk,
                &get_hkdf_salt_expand_label(key_id, cipher_suite),
                cipher_suite.nonce_len(),
            )?,
        })
    }
}

/// Panic unless the port encrypts exactly as the crate's built-in backend and decrypts what
/// the built-in backend encrypted.
pub(crate) fn check_matches_builtin(kid: u64, base: &[u8]) {
    use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
    use sframe::key::EncryptionKey;
    let suite = CipherSuite::AesGcm128Sha256;
    let theirs = EncryptionKey::derive_from(suite, kid, base).unwrap();
    let ours = RingEncryptionKey::derive_from(suite, kid, base).unwrap();
    let ours_rx = RingDecryptionKey::derive_from(suite, kid, base).unwrap();
    let pt = b"the same frame through both backends".repeat(7);
    let (mut a, mut b) = (MonotonicCounter::default(), MonotonicCounter::default());
    let ct_theirs = MediaFrameView::try_new(&mut a, &pt)
        .unwrap()
        .encrypt(&theirs)
        .unwrap();
    let ct_ours = MediaFrameView::try_new(&mut b, &pt)
        .unwrap()
        .encrypt(&ours)
        .unwrap();
    assert_eq!(
        ct_theirs.sframe_cipher_text(),
        ct_ours.sframe_cipher_text(),
        "the ring port must produce the built-in backend's bytes"
    );
    let back = EncryptedFrameView::try_new(ct_theirs.sframe_cipher_text())
        .unwrap()
        .decrypt(&ours_rx)
        .unwrap();
    assert_eq!(back.payload(), &pt[..]);
}
