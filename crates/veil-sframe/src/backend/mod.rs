//! AEAD backends: the only place that touches a cipher implementation.
//!
//! A backend turns `sframe_key` into a keyed [`AeadKey`]; the frame code only ever calls
//! [`AeadKey::seal`] and [`AeadKey::open`] on caller buffers, so a backend must not allocate per
//! call (check SF-PERF-01). Two backends exist:
//!
//! | backend | suites | builds for wasm32 | note |
//! |---|---|---|---|
//! | [`RustCrypto`] (default) | all five | yes | `aes-gcm`, `aes` + `ctr` + `hmac` |
//! | `Ring` (feature `ring`) | all five | not used there | GCM in `ring`; CTR-HMAC delegated to RustCrypto, since `ring` exposes no AES-CTR |

mod rust_crypto;
pub use rust_crypto::RustCrypto;

#[cfg(feature = "ring")]
mod ring_backend;
#[cfg(feature = "ring")]
pub use ring_backend::Ring;

use crate::error::{Result, SframeError};
use crate::suite::{CipherSuite, NONCE_LEN};

/// The largest metadata a frame may authenticate (bytes). GCM takes its AAD as one slice, so
/// header and metadata are joined on the stack; the bound keeps that allocation-free.
pub const MAX_METADATA_LEN: usize = 512;

/// Associated data of one frame: the encoded SFrame header followed by application metadata
/// (RFC 9605 §4.4.3: `AAD = header || metadata`).
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    /// The encoded SFrame header.
    pub header: &'a [u8],
    /// Application metadata (may be empty).
    pub metadata: &'a [u8],
}

impl Aad<'_> {
    /// Total AAD length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.header.len() + self.metadata.len()
    }

    /// Whether the AAD is empty (never, for a real frame: the header is at least one byte).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f` with the AAD as one contiguous slice, joining on the stack only when metadata
    /// is present.
    pub(crate) fn with_contiguous<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if self.metadata.is_empty() {
            return Ok(f(self.header));
        }
        if self.metadata.len() > MAX_METADATA_LEN {
            return Err(SframeError::MetadataTooLarge {
                len: self.metadata.len(),
                max: MAX_METADATA_LEN,
            });
        }
        let mut buf = [0u8; veil_wire::MAX_HEADER_LEN + MAX_METADATA_LEN];
        let (h, m) = (self.header.len(), self.metadata.len());
        buf[..h].copy_from_slice(self.header);
        buf[h..h + m].copy_from_slice(self.metadata);
        Ok(f(&buf[..h + m]))
    }
}

/// A keyed AEAD for one SFrame key. Implementations zeroize their key schedule on drop.
pub trait AeadKey: Send + Sync {
    /// The suite this key implements.
    fn suite(&self) -> CipherSuite;

    /// Encrypt `buf` in place and write the suite's tag (`tag.len() == suite.tag_len()`).
    ///
    /// # Errors
    /// [`SframeError::MetadataTooLarge`], or [`SframeError::Backend`] on an internal failure.
    fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag: &mut [u8],
    ) -> Result<()>;

    /// Verify `tag` and decrypt `buf` in place. On failure `buf` content is unspecified and
    /// must be discarded.
    ///
    /// # Errors
    /// [`SframeError::AuthenticationFailed`] (with `kid` 0: the caller fills it in) if the tag
    /// does not verify.
    fn open(&self, nonce: &[u8; NONCE_LEN], aad: Aad<'_>, buf: &mut [u8], tag: &[u8])
    -> Result<()>;
}

/// A source of [`AeadKey`]s: the small trait behind which the cipher implementation sits.
pub trait AeadBackend: Send + Sync + core::fmt::Debug + 'static {
    /// A short name for reports and benchmarks.
    fn name(&self) -> &'static str;

    /// Key an AEAD for `suite` with `sframe_key` (`suite.key_len()` bytes).
    ///
    /// # Errors
    /// [`SframeError::InvalidKeyLength`] or [`SframeError::UnsupportedSuite`].
    fn new_key(&self, suite: CipherSuite, key: &[u8]) -> Result<Box<dyn AeadKey>>;
}

/// The default backend of this build: `Ring` with feature `ring`, else [`RustCrypto`].
#[must_use]
pub fn default_backend() -> &'static dyn AeadBackend {
    #[cfg(feature = "ring")]
    {
        &Ring
    }
    #[cfg(not(feature = "ring"))]
    {
        &RustCrypto
    }
}

pub(crate) fn check_key_len(suite: CipherSuite, key: &[u8]) -> Result<()> {
    if key.len() == suite.key_len() {
        Ok(())
    } else {
        Err(SframeError::InvalidKeyLength {
            what: "sframe_key",
            expected: suite.key_len(),
            got: key.len(),
        })
    }
}

pub(crate) const AUTH_FAILED: SframeError = SframeError::AuthenticationFailed { kid: 0 };
