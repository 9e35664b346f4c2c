//! The `ring` backend (feature `ring`): AES-GCM from `ring`, which uses hand-tuned assembly.
//! `ring` exposes no raw AES-CTR, so the CTR-HMAC suites reuse the RustCrypto construction.

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad as RingAad, LessSafeKey, Nonce, Tag, UnboundKey};

use super::rust_crypto::CtrHmac;
use super::{AUTH_FAILED, Aad, AeadBackend, AeadKey, check_key_len};
use crate::error::{Result, SframeError};
use crate::suite::{CipherSuite, NONCE_LEN};

/// The `ring` backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring;

impl AeadBackend for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn new_key(&self, suite: CipherSuite, key: &[u8]) -> Result<Box<dyn AeadKey>> {
        check_key_len(suite, key)?;
        let alg = match suite {
            CipherSuite::AesGcm128Sha256 => &AES_128_GCM,
            CipherSuite::AesGcm256Sha512 => &AES_256_GCM,
            _ => return Ok(Box::new(CtrHmac::new(suite, key)?)),
        };
        let unbound =
            UnboundKey::new(alg, key).map_err(|_| SframeError::Backend("ring rejected the key"))?;
        Ok(Box::new(RingGcm {
            suite,
            key: LessSafeKey::new(unbound),
        }))
    }
}

struct RingGcm {
    suite: CipherSuite,
    key: LessSafeKey,
}

impl AeadKey for RingGcm {
    fn suite(&self) -> CipherSuite {
        self.suite
    }

    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag: &mut [u8],
    ) -> Result<()> {
        let t = aad
            .with_contiguous(|a| {
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    RingAad::from(a),
                    buf,
                )
            })?
            .map_err(|_| SframeError::Backend("ring seal"))?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        let tag: [u8; 16] = tag.try_into().map_err(|_| AUTH_FAILED)?;
        aad.with_contiguous(|a| {
            self.key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    RingAad::from(a),
                    Tag::from(tag),
                    buf,
                    0..,
                )
                .map(|_| ())
        })?
        .map_err(|_| AUTH_FAILED)
    }
}
