//! Secret newtypes: zeroized on drop, redacted in `Debug`, compared in constant time.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Result, SframeError};
use crate::suite::NONCE_LEN;

/// Longest `sframe_key` of any suite (CTR-HMAC: 16 + 32 bytes).
pub(crate) const MAX_KEY_LEN: usize = 48;

/// Secret bytes handed to this crate: a base key (RFC 9605 §4.4.2) or an MLS exporter secret.
///
/// Zeroized on drop; `Debug` prints only the length; `==` runs in constant time (check SF-SEC-01).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap secret bytes. The caller should zeroize its own copy.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copy secret bytes from a slice.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret bytes. Handle with care: never log them, never send them to a server.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Secret {}

/// `sframe_key` and `sframe_salt` of one KID (RFC 9605 §4.4.2). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyMaterial {
    key: [u8; MAX_KEY_LEN],
    key_len: usize,
    salt: [u8; NONCE_LEN],
}

impl KeyMaterial {
    /// Key material from raw bytes (e.g. a known-answer test). `key` must be at most 48 bytes,
    /// the longest `AEAD.Nk` of any suite (`specs/sframe.md` §2); whether it fits a given suite
    /// is checked when a key is built from it.
    ///
    /// # Errors
    /// [`SframeError::KeyTooLong`] if `key` is longer than 48 bytes.
    pub fn new(key: &[u8], salt: &[u8; NONCE_LEN]) -> Result<Self> {
        if key.len() > MAX_KEY_LEN {
            return Err(SframeError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let mut m = Self {
            key: [0u8; MAX_KEY_LEN],
            key_len: key.len(),
            salt: *salt,
        };
        m.key[..key.len()].copy_from_slice(key);
        Ok(m)
    }

    /// `sframe_key` (`AEAD.Nk` bytes). Secret.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// `sframe_salt` (`AEAD.Nn` bytes). Secret.
    #[must_use]
    pub fn salt(&self) -> &[u8; NONCE_LEN] {
        &self.salt
    }
}

impl core::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl PartialEq for KeyMaterial {
    fn eq(&self, other: &Self) -> bool {
        (self.key().ct_eq(other.key()) & self.salt.ct_eq(&other.salt)).into()
    }
}
impl Eq for KeyMaterial {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::from_slice(&[0xAB; 16]);
        let d = format!("{s:?}");
        assert!(!d.to_lowercase().contains("ab"), "{d}");
        assert!(d.contains("16 bytes"));
        let m = KeyMaterial::new(&[0xCD; 16], &[0xEF; 12]).unwrap();
        let d = format!("{m:?}");
        assert!(
            !d.to_lowercase().contains("cd") && !d.to_lowercase().contains("ef"),
            "{d}"
        );
    }

    #[test]
    fn equality_compares_content() {
        assert_eq!(Secret::from_slice(b"abc"), Secret::from_slice(b"abc"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"abd"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"abcd"));
    }

    // Caller input never panics (issue 19): a key longer than 48 bytes is a typed error.
    proptest::proptest! {
        #[test]
        fn key_material_of_any_length_is_accepted_or_refused(
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
        ) {
            match KeyMaterial::new(&key, &[1; NONCE_LEN]) {
                Ok(m) => {
                    proptest::prop_assert!(key.len() <= MAX_KEY_LEN);
                    proptest::prop_assert_eq!(m.key(), &key[..]);
                }
                Err(e) => proptest::prop_assert_eq!(
                    e,
                    SframeError::KeyTooLong { len: key.len(), max: MAX_KEY_LEN }
                ),
            }
        }
    }
}
