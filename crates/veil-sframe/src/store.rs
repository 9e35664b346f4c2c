//! The receiving side: a [`KeyStore`] of decryption keys by KID, each with its replay window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use veil_wire::SframeHeader;
use zeroize::Zeroizing;

use crate::backend::{Aad, AeadBackend, AeadKey, default_backend};
use crate::error::{Result, SframeError};
use crate::kdf::{EpochKdf, MlsKidLayout, derive_key_material};
use crate::nonce::form_nonce;
use crate::replay::{DEFAULT_REPLAY_WINDOW, ReplayWindow};
use crate::secret::KeyMaterial;
use crate::suite::{CipherSuite, NONCE_LEN};

/// How many retired KIDs the store remembers, to tell "retired" from "never known" in errors.
const RETIRED_MEMORY: usize = 256;

struct ReceiverKey {
    suite: CipherSuite,
    aead: Box<dyn AeadKey>,
    salt: Zeroizing<[u8; NONCE_LEN]>,
    replay: ReplayWindow,
    expires_at: Option<Duration>,
}

/// A decrypted frame: its header and the plaintext, which lies inside the caller's buffer.
#[derive(Debug)]
pub struct Decrypted<'a> {
    /// The frame's SFrame header.
    pub header: SframeHeader,
    /// The plaintext (a sub-slice of the buffer passed in).
    pub plaintext: &'a mut [u8],
}

/// Decryption keys by KID (checks SF-KEY-01..03).
///
/// The store never reads a clock: expiry deadlines are plain [`Duration`]s on the caller's
/// monotonic time line and take effect when the caller calls [`expire`](Self::expire).
/// Decryption never allocates (SF-PERF-01).
pub struct KeyStore {
    keys: HashMap<u64, ReceiverKey>,
    retired: VecDeque<u64>,
    backend: &'static dyn AeadBackend,
    replay_window: u32,
}

impl core::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeyStore")
            .field("kids", &kids)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Default for KeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyStore {
    /// An empty store with the default backend and a 1024-counter replay window.
    #[must_use]
    pub fn new() -> Self {
        Self::with_backend(default_backend())
    }

    /// An empty store keyed through `backend`.
    #[must_use]
    pub fn with_backend(backend: &'static dyn AeadBackend) -> Self {
        Self {
            keys: HashMap::new(),
            retired: VecDeque::new(),
            backend,
            replay_window: DEFAULT_REPLAY_WINDOW,
        }
    }

    /// Use a replay window of `size` counters for keys inserted from now on; any `size` is
    /// clamped to 1..=1024 (`specs/sframe.md` §5), as [`ReplayWindow::new`] does.
    #[must_use]
    pub fn with_replay_window(mut self, size: u32) -> Self {
        self.replay_window = size;
        self
    }

    /// Install `material` under `kid`, replacing any key with that KID (RFC 9605 §5.2: a new
    /// epoch with the same low epoch bits removes the old one). The new key gets a fresh window.
    ///
    /// # Errors
    /// [`SframeError::InvalidKeyLength`] if `material` does not fit `suite`.
    pub fn insert(&mut self, suite: CipherSuite, kid: u64, material: &KeyMaterial) -> Result<()> {
        let key = ReceiverKey {
            suite,
            aead: self.backend.new_key(suite, material.key())?,
            salt: Zeroizing::new(*material.salt()),
            replay: ReplayWindow::new(self.replay_window),
            expires_at: None,
        };
        self.keys.insert(kid, key);
        self.retired.retain(|k| *k != kid);
        Ok(())
    }

    /// Derive from `base_key` (RFC 9605 §4.4.2) and install under `kid`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn insert_base_key(&mut self, suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<()> {
        let m = derive_key_material(suite, kid, base_key)?;
        self.insert(suite, kid, &m)
    }

    /// Install the keys of every sender in `members` for one MLS epoch (RFC 9605 §5.2) from the
    /// epoch's exporter secret; returns the KIDs installed, in `members` order.
    ///
    /// # Errors
    /// [`SframeError::KidOverflow`] or [`SframeError::InvalidKeyLength`]; nothing is installed
    /// then.
    pub fn insert_mls_epoch(
        &mut self,
        suite: CipherSuite,
        exporter_secret: &[u8],
        layout: MlsKidLayout,
        context: u64,
        epoch: u64,
        members: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<u64>> {
        if exporter_secret.len() != suite.key_len() {
            return Err(SframeError::InvalidKeyLength {
                what: "MLS exporter secret",
                expected: suite.key_len(),
                got: exporter_secret.len(),
            });
        }
        // One HKDF-Extract for the epoch; one expand pair per sender.
        let kdf = EpochKdf::new(suite, exporter_secret);
        let derived = members
            .into_iter()
            .map(|m| {
                let kid = layout.kid(context, m, epoch)?;
                Ok((kid, kdf.material(kid)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut kids = Vec::with_capacity(derived.len());
        for (kid, material) in &derived {
            self.insert(suite, *kid, material)?;
            kids.push(*kid);
        }
        Ok(kids)
    }

    /// Remove the key for `kid` now; its secrets are zeroized. Returns whether it was present.
    pub fn retire(&mut self, kid: u64) -> bool {
        let present = self.keys.remove(&kid).is_some();
        if present {
            if self.retired.len() == RETIRED_MEMORY {
                self.retired.pop_front();
            }
            self.retired.push_back(kid);
        }
        present
    }

    /// Let the key for `kid` expire at `deadline` (caller's monotonic time). Returns whether a
    /// key was present.
    pub fn set_expiry(&mut self, kid: u64, deadline: Duration) -> bool {
        self.keys
            .get_mut(&kid)
            .map(|k| k.expires_at = Some(deadline))
            .is_some()
    }

    /// Retire every key whose deadline is at or before `now`; returns how many.
    pub fn expire(&mut self, now: Duration) -> usize {
        let due: Vec<u64> = self
            .keys
            .iter()
            .filter(|(_, k)| k.expires_at.is_some_and(|d| d <= now))
            .map(|(kid, _)| *kid)
            .collect();
        for kid in &due {
            self.retire(*kid);
        }
        due.len()
    }

    /// Whether a key for `kid` is installed.
    #[must_use]
    pub fn contains(&self, kid: u64) -> bool {
        self.keys.contains_key(&kid)
    }

    /// Number of installed keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is installed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The installed KIDs, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.keys().copied()
    }

    /// Decrypt the frame in `buf` in place; the plaintext is returned as a slice of `buf`.
    ///
    /// Order of checks: header (SF-HDR-03/04) → key (SF-KEY-02) → length → replay screen
    /// (SF-RPL-01/02) → tag (SF-AEAD-04) → record the counter (SF-RPL-03). On any error the
    /// frame must be dropped; a failed tag leaves the ciphertext region zeroed, so unverified
    /// plaintext is never exposed.
    ///
    /// # Errors
    /// Any peer-input variant of [`SframeError`], or [`SframeError::MetadataTooLarge`].
    pub fn decrypt_in_place<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
    ) -> Result<Decrypted<'a>> {
        let (header, hlen) = SframeHeader::parse(buf)?;
        let kid = header.kid;
        let Some(key) = self.keys.get_mut(&kid) else {
            return Err(if self.retired.contains(&kid) {
                SframeError::KeyRetired { kid }
            } else {
                SframeError::UnknownKid { kid }
            });
        };
        let tag_len = key.suite.tag_len();
        if buf.len() < hlen + tag_len {
            return Err(SframeError::FrameTooShort {
                len: buf.len(),
                tag_len,
            });
        }
        let token = key.replay.check(kid, header.ctr)?;
        let nonce = Zeroizing::new(form_nonce(&key.salt, header.ctr));
        let (hdr, rest) = buf.split_at_mut(hlen);
        let ct_len = rest.len() - tag_len;
        let (ct, tag) = rest.split_at_mut(ct_len);
        let aad = Aad {
            header: hdr,
            metadata,
        };
        if let Err(e) = key.aead.open(&nonce, aad, ct, tag) {
            ct.fill(0);
            return Err(match e {
                SframeError::AuthenticationFailed { .. } => {
                    SframeError::AuthenticationFailed { kid }
                }
                other => other,
            });
        }
        key.replay.record(kid, token)?;
        Ok(Decrypted {
            header,
            plaintext: ct,
        })
    }

    /// Decrypt `frame` into `out`; returns the header and the plaintext length.
    ///
    /// # Errors
    /// As [`decrypt_in_place`](Self::decrypt_in_place), plus [`SframeError::BufferTooSmall`].
    pub fn decrypt(
        &mut self,
        metadata: &[u8],
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<(SframeHeader, usize)> {
        if out.len() < frame.len() {
            return Err(SframeError::BufferTooSmall {
                what: "decryption scratch buffer",
                needed: frame.len(),
                got: out.len(),
            });
        }
        let scratch = &mut out[..frame.len()];
        scratch.copy_from_slice(frame);
        let d = self.decrypt_in_place(metadata, scratch)?;
        let (header, len) = (d.header, d.plaintext.len());
        let hlen = header.encoded_len();
        out.copy_within(hlen..hlen + len, 0);
        Ok((header, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::SenderKey;

    // Caller input never panics (issue 19): any window size is clamped to 1..=1024, and frames
    // still decrypt once and only once.
    proptest::proptest! {
        #[test]
        fn any_replay_window_size_decrypts_each_frame_once(size: u32, frames in 1usize..20) {
            let suite = CipherSuite::AesGcm128Sha256;
            let mut tx = SenderKey::from_base_key(suite, 3, b"base").unwrap();
            let mut rx = KeyStore::new().with_replay_window(size);
            rx.insert_base_key(suite, 3, b"base").unwrap();
            for _ in 0..frames {
                let mut out = [0u8; 64];
                let n = tx.encrypt(b"", b"frame", &mut out).unwrap();
                let mut again = out;
                proptest::prop_assert!(rx.decrypt_in_place(b"", &mut out[..n]).is_ok());
                proptest::prop_assert!(rx.decrypt_in_place(b"", &mut again[..n]).is_err());
            }
        }
    }
}
