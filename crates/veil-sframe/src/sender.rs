//! The sending side: one [`SenderKey`] per (sender, epoch) KID.

use core::ops::Range;

use veil_wire::{MAX_HEADER_LEN, SframeHeader};
use zeroize::Zeroizing;

use crate::backend::{Aad, AeadBackend, AeadKey, default_backend};
use crate::error::{Result, SframeError};
use crate::kdf::derive_key_material;
use crate::nonce::form_nonce;
use crate::secret::KeyMaterial;
use crate::suite::{CipherSuite, NONCE_LEN};

/// A sender's key for one KID: encrypts frames with consecutive counters.
///
/// Encryption never allocates (SF-PERF-01): it writes into the caller's buffer.
pub struct SenderKey {
    kid: u64,
    suite: CipherSuite,
    aead: Box<dyn AeadKey>,
    salt: Zeroizing<[u8; NONCE_LEN]>,
    next_ctr: u64,
    limit: u64,
    exhausted: bool,
}

impl core::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SenderKey")
            .field("kid", &self.kid)
            .field("suite", &self.suite)
            .field("next_ctr", &self.next_ctr)
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// A sender key for `kid` from derived key material, using `backend`.
    ///
    /// # Errors
    /// [`SframeError::InvalidKeyLength`] if the material does not match the suite.
    pub fn new(
        suite: CipherSuite,
        kid: u64,
        material: &KeyMaterial,
        backend: &dyn AeadBackend,
    ) -> Result<Self> {
        Ok(Self {
            kid,
            suite,
            aead: backend.new_key(suite, material.key())?,
            salt: Zeroizing::new(*material.salt()),
            next_ctr: 0,
            limit: u64::MAX,
            exhausted: false,
        })
    }

    /// A sender key for `kid` derived from `base_key` (RFC 9605 §4.4.2) with the default backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_base_key(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Self> {
        let m = derive_key_material(suite, kid, base_key)?;
        Self::new(suite, kid, &m, default_backend())
    }

    /// Start counting at `ctr` instead of 0 (e.g. to resume after a restart).
    #[must_use]
    pub fn with_counter(mut self, ctr: u64) -> Self {
        self.next_ctr = ctr;
        self.exhausted = ctr > self.limit;
        self
    }

    /// Refuse to encrypt with counters above `limit` (default `u64::MAX`), so a policy such
    /// as "rekey after 2^32 frames" is enforced here rather than trusted (SF-KEY-04).
    #[must_use]
    pub fn with_counter_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self.exhausted = self.next_ctr > limit;
        self
    }

    /// The KID this key sends under.
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The cipher suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The counter the next frame will carry.
    #[must_use]
    pub fn next_counter(&self) -> u64 {
        self.next_ctr
    }

    /// Bytes the next frame adds to a plaintext of any length: header plus tag.
    #[must_use]
    pub fn overhead(&self) -> usize {
        SframeHeader::new(self.kid, self.next_ctr).encoded_len() + self.suite.tag_len()
    }

    /// Upper bound of the overhead for any counter: 17-byte header plus tag.
    #[must_use]
    pub fn max_overhead(&self) -> usize {
        MAX_HEADER_LEN + self.suite.tag_len()
    }

    fn take_counter(&mut self) -> Result<u64> {
        if self.exhausted {
            return Err(SframeError::CounterExhausted { kid: self.kid });
        }
        let ctr = self.next_ctr;
        if ctr >= self.limit {
            self.exhausted = true;
        } else {
            self.next_ctr += 1;
        }
        Ok(ctr)
    }

    /// Encrypt `plaintext` into `out` as `header || ciphertext || tag`; returns the length.
    ///
    /// # Errors
    /// [`SframeError::BufferTooSmall`], [`SframeError::CounterExhausted`],
    /// [`SframeError::MetadataTooLarge`].
    pub fn encrypt(&mut self, metadata: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        let hlen = SframeHeader::new(self.kid, self.next_ctr).encoded_len();
        let total = hlen + plaintext.len() + self.suite.tag_len();
        if out.len() < total {
            return Err(SframeError::BufferTooSmall {
                what: "encrypted frame",
                needed: total,
                got: out.len(),
            });
        }
        out[hlen..hlen + plaintext.len()].copy_from_slice(plaintext);
        let r = self.encrypt_in_place(metadata, out, hlen..hlen + plaintext.len())?;
        debug_assert_eq!(r, 0..total);
        Ok(total)
    }

    /// Encrypt the plaintext at `buf[payload]` in place and return where the frame now lies.
    ///
    /// The header is written just before `payload.start` when there is room (reserve
    /// [`MAX_HEADER_LEN`] bytes in front to get a zero-copy path); otherwise the payload is moved
    /// right to make room. The tag goes right after the ciphertext, so `buf` must extend at least
    /// `tag_len` bytes beyond the (possibly moved) payload.
    ///
    /// # Errors
    /// [`SframeError::BufferTooSmall`] (also for a range beyond `buf`),
    /// [`SframeError::InvalidPayloadRange`] for a reversed range,
    /// [`SframeError::CounterExhausted`], [`SframeError::MetadataTooLarge`].
    pub fn encrypt_in_place(
        &mut self,
        metadata: &[u8],
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Result<Range<usize>> {
        let tag_len = self.suite.tag_len();
        let header = SframeHeader::new(self.kid, self.next_ctr);
        let hlen = header.encoded_len();
        if payload.start > payload.end {
            return Err(SframeError::InvalidPayloadRange {
                start: payload.start,
                end: payload.end,
            });
        }
        let pt_len = payload.end - payload.start;
        let start = payload.start.saturating_sub(hlen);
        // `start + hlen` is at most `max(payload.start, hlen)`; the rest may overflow for a
        // range near `usize::MAX`, which no buffer can hold anyway.
        let end = (start + hlen)
            .checked_add(pt_len)
            .and_then(|e| e.checked_add(tag_len))
            .unwrap_or(usize::MAX);
        if payload.end > buf.len() || end > buf.len() {
            return Err(SframeError::BufferTooSmall {
                what: "encrypted frame",
                needed: end.max(payload.end),
                got: buf.len(),
            });
        }
        let ctr = self.take_counter()?;
        if start + hlen != payload.start {
            buf.copy_within(payload.clone(), start + hlen);
        }
        let frame = &mut buf[start..end];
        header.write(frame)?;
        let (hdr, rest) = frame.split_at_mut(hlen);
        let (ct, tag) = rest.split_at_mut(pt_len);
        let nonce = Zeroizing::new(form_nonce(&self.salt, ctr));
        self.aead.seal(
            &nonce,
            Aad {
                header: hdr,
                metadata,
            },
            ct,
            tag,
        )?;
        Ok(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyStore;

    fn pair() -> (SenderKey, KeyStore) {
        let suite = CipherSuite::AesGcm128Sha256;
        let tx = SenderKey::from_base_key(suite, 7, b"base").unwrap();
        let mut rx = KeyStore::new();
        rx.insert_base_key(suite, 7, b"base").unwrap();
        (tx, rx)
    }

    // Caller input never panics (issue 19): any payload range, reversed or beyond the buffer
    // or near `usize::MAX`, is encrypted or refused with a typed error, and a frame encrypted
    // from a valid range decrypts to the plaintext.
    proptest::proptest! {
        #[test]
        fn any_payload_range_is_encrypted_or_refused(
            len in 0usize..200,
            start in proptest::prop_oneof![0usize..220, proptest::num::usize::ANY],
            end in proptest::prop_oneof![0usize..220, proptest::num::usize::ANY],
        ) {
            let (mut tx, mut rx) = pair();
            let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let before = buf.clone();
            match tx.encrypt_in_place(b"m", &mut buf, start..end) {
                Ok(frame) => {
                    let d = rx.decrypt_in_place(b"m", &mut buf[frame]).unwrap();
                    proptest::prop_assert_eq!(&*d.plaintext, &before[start..end]);
                }
                Err(e) => proptest::prop_assert!(
                    matches!(
                        e,
                        SframeError::BufferTooSmall { .. }
                            | SframeError::InvalidPayloadRange { .. }
                    ),
                    "{e:?}"
                ),
            }
        }
    }
}
