//! The RustCrypto backend: `aes-gcm` for GCM suites, `aes` + `ctr` + `hmac` for the AES-CTR +
//! HMAC suites of RFC 9605 §4.5.1. Pure Rust, so it builds for `wasm32-unknown-unknown`.
//! Every keyed state here (AES key schedules, GHASH key, HMAC pads) is zeroized on drop through
//! the crates' `zeroize` features.

use aes::Aes128;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{AUTH_FAILED, Aad, AeadBackend, AeadKey, check_key_len};
use crate::error::{Result, SframeError};
use crate::suite::{CipherSuite, NONCE_LEN};

/// The pure-Rust backend (default).
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl AeadBackend for RustCrypto {
    fn name(&self) -> &'static str {
        "rustcrypto"
    }

    fn new_key(&self, suite: CipherSuite, key: &[u8]) -> Result<Box<dyn AeadKey>> {
        check_key_len(suite, key)?;
        Ok(match suite {
            CipherSuite::AesGcm128Sha256 => Box::new(Gcm128(
                Aes128Gcm::new_from_slice(key).map_err(|_| SframeError::Backend("AES-128 key"))?,
            )),
            CipherSuite::AesGcm256Sha512 => Box::new(Gcm256(
                Aes256Gcm::new_from_slice(key).map_err(|_| SframeError::Backend("AES-256 key"))?,
            )),
            _ => Box::new(CtrHmac::new(suite, key)?),
        })
    }
}

struct Gcm128(Aes128Gcm);
struct Gcm256(Aes256Gcm);

macro_rules! gcm_impl {
    ($t:ty, $suite:expr) => {
        impl AeadKey for $t {
            fn suite(&self) -> CipherSuite {
                $suite
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
                        self.0
                            .encrypt_inout_detached(&Nonce::from(*nonce), a, buf.into())
                    })?
                    .map_err(|_| SframeError::Backend("AES-GCM seal"))?;
                tag.copy_from_slice(&t);
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
                    self.0.decrypt_inout_detached(
                        &Nonce::from(*nonce),
                        a,
                        buf.into(),
                        &Tag::from(tag),
                    )
                })?
                .map_err(|_| AUTH_FAILED)
            }
        }
    };
}
gcm_impl!(Gcm128, CipherSuite::AesGcm128Sha256);
gcm_impl!(Gcm256, CipherSuite::AesGcm256Sha512);

/// AES-128-CTR + HMAC-SHA256 with a truncated tag (RFC 9605 §4.5.1, check SF-AEAD-02).
pub(crate) struct CtrHmac {
    suite: CipherSuite,
    enc: Aes128,
    /// HMAC keyed once with `auth_key`; cloned per frame (clones zeroize on drop too).
    mac: Hmac<Sha256>,
}

type Aes128Ctr = ctr::Ctr32BE<Aes128>;

impl CtrHmac {
    pub(crate) fn new(suite: CipherSuite, key: &[u8]) -> Result<Self> {
        check_key_len(suite, key)?;
        let enc =
            Aes128::new_from_slice(&key[..16]).map_err(|_| SframeError::Backend("AES key"))?;
        let mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key[16..48])
            .map_err(|_| SframeError::Backend("HMAC key"))?;
        Ok(Self { suite, enc, mac })
    }

    /// `initial_counter = nonce || 0x00000000`; AES-CTR over `buf`.
    fn apply_ctr(&self, nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..NONCE_LEN].copy_from_slice(nonce);
        let core = ctr::CtrCore::inner_iv_init(self.enc.clone(), &iv.into());
        Aes128Ctr::from_core(core).apply_keystream(buf);
    }

    /// `HMAC(auth_key, len(aad) || len(ct) || Nt || nonce || aad || ct)`, full 32 bytes.
    fn full_tag(&self, nonce: &[u8; NONCE_LEN], aad: Aad<'_>, ct: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(&(ct.len() as u64).to_be_bytes());
        mac.update(&(self.suite.tag_len() as u64).to_be_bytes());
        mac.update(nonce);
        mac.update(aad.header);
        mac.update(aad.metadata);
        mac.update(ct);
        mac.finalize().into_bytes().into()
    }
}

impl AeadKey for CtrHmac {
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
        self.apply_ctr(nonce, buf);
        let full = self.full_tag(nonce, aad, buf);
        tag.copy_from_slice(&full[..self.suite.tag_len()]);
        Ok(())
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        let full = self.full_tag(nonce, aad, buf);
        let n = self.suite.tag_len();
        // Verify before decrypting, in constant time (SF-AEAD-04).
        if tag.len() != n || !bool::from(full[..n].ct_eq(tag)) {
            return Err(AUTH_FAILED);
        }
        self.apply_ctr(nonce, buf);
        Ok(())
    }
}
