//! RFC 9605 §4.5 / §8.1 cipher suites and their parameters.

use crate::error::{Result, SframeError};

/// Nonce length of every SFrame suite (`AEAD.Nn`).
pub const NONCE_LEN: usize = 12;

/// The five cipher suites of RFC 9605 §8.1 (check SF-SUITE-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CipherSuite {
    /// `AES_128_CTR_HMAC_SHA256_80`: AES-128-CTR + HMAC-SHA256 truncated to 80 bits.
    AesCtr128HmacSha256_80 = 1,
    /// `AES_128_CTR_HMAC_SHA256_64`: 64-bit tag.
    AesCtr128HmacSha256_64 = 2,
    /// `AES_128_CTR_HMAC_SHA256_32`: 32-bit tag (for audio where bytes are scarce).
    AesCtr128HmacSha256_32 = 3,
    /// `AES_128_GCM_SHA256_128`: the default.
    AesGcm128Sha256 = 4,
    /// `AES_256_GCM_SHA512_128`.
    AesGcm256Sha512 = 5,
}

/// Hash function of a suite's key derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfHash {
    /// SHA-256 (suites 1–4).
    Sha256,
    /// SHA-512 (suite 5).
    Sha512,
}

impl CipherSuite {
    /// Every suite, in registry order.
    pub const ALL: [Self; 5] = [
        Self::AesCtr128HmacSha256_80,
        Self::AesCtr128HmacSha256_64,
        Self::AesCtr128HmacSha256_32,
        Self::AesGcm128Sha256,
        Self::AesGcm256Sha512,
    ];

    /// The registry id (RFC 9605 §8.1).
    #[must_use]
    pub const fn id(self) -> u16 {
        self as u16
    }

    /// The suite with registry id `id`.
    ///
    /// # Errors
    /// [`SframeError::UnknownCipherSuite`] for ids outside 1..=5.
    pub const fn from_id(id: u16) -> Result<Self> {
        Ok(match id {
            1 => Self::AesCtr128HmacSha256_80,
            2 => Self::AesCtr128HmacSha256_64,
            3 => Self::AesCtr128HmacSha256_32,
            4 => Self::AesGcm128Sha256,
            5 => Self::AesGcm256Sha512,
            other => return Err(SframeError::UnknownCipherSuite(other)),
        })
    }

    /// The registry name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AesCtr128HmacSha256_80 => "AES_128_CTR_HMAC_SHA256_80",
            Self::AesCtr128HmacSha256_64 => "AES_128_CTR_HMAC_SHA256_64",
            Self::AesCtr128HmacSha256_32 => "AES_128_CTR_HMAC_SHA256_32",
            Self::AesGcm128Sha256 => "AES_128_GCM_SHA256_128",
            Self::AesGcm256Sha512 => "AES_256_GCM_SHA512_128",
        }
    }

    /// `AEAD.Nk`: bytes of `sframe_key` (for CTR-HMAC: 16 encryption + 32 authentication).
    #[must_use]
    pub const fn key_len(self) -> usize {
        match self {
            Self::AesCtr128HmacSha256_80
            | Self::AesCtr128HmacSha256_64
            | Self::AesCtr128HmacSha256_32 => 48,
            Self::AesGcm128Sha256 => 16,
            Self::AesGcm256Sha512 => 32,
        }
    }

    /// `AEAD.Nt`: bytes of the authentication tag.
    #[must_use]
    pub const fn tag_len(self) -> usize {
        match self {
            Self::AesCtr128HmacSha256_80 => 10,
            Self::AesCtr128HmacSha256_64 => 8,
            Self::AesCtr128HmacSha256_32 => 4,
            Self::AesGcm128Sha256 | Self::AesGcm256Sha512 => 16,
        }
    }

    /// The KDF hash (`Nh` = its output length).
    #[must_use]
    pub const fn hash(self) -> KdfHash {
        match self {
            Self::AesGcm256Sha512 => KdfHash::Sha512,
            _ => KdfHash::Sha256,
        }
    }

    /// Whether the suite is the AES-CTR + HMAC construction of RFC 9605 §4.5.1.
    #[must_use]
    pub const fn is_ctr_hmac(self) -> bool {
        matches!(
            self,
            Self::AesCtr128HmacSha256_80
                | Self::AesCtr128HmacSha256_64
                | Self::AesCtr128HmacSha256_32
        )
    }
}

impl core::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_rejected() {
        for s in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_id(s.id()).unwrap(), s);
        }
        assert_eq!(
            CipherSuite::from_id(0),
            Err(SframeError::UnknownCipherSuite(0))
        );
        assert!(CipherSuite::from_id(6).is_err());
    }
}
