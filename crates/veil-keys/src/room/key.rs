//! The service's own MLS identity: its external-sender key pair (KDS-SEC-01), and the constants
//! every room must match.

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;

use crate::error::KdsError;
use crate::store::Store;

/// The MLS cipher suite rooms must use.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The service's MLS identity as external sender.
pub const SERVICE_IDENTITY: &[u8] = b"veil-key-service";

/// The service's own key: its only private key (KDS-SEC-01).
pub struct ServiceKey {
    pub(super) signer: SignatureKeyPair,
}

impl core::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServiceKey")
            .field("public", &self.signer.public())
            .finish_non_exhaustive()
    }
}

impl ServiceKey {
    /// Load the service's key pair from `store`, creating it on first start.
    ///
    /// # Errors
    /// Storage errors; a stored key that does not parse.
    pub fn load_or_create(store: &dyn Store) -> Result<Self, KdsError> {
        const KEY: &str = "external_sender_key";
        let fresh = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| KdsError::internal_by("key generation", e))?;
        let fresh = serde_json::to_vec(&fresh)
            .map_err(|e| KdsError::internal_by("encoding the service key", e))?;
        let stored = store.meta_init(KEY, &fresh)?;
        let signer = serde_json::from_slice(&stored)
            .map_err(|e| KdsError::storage_by("stored service key", e))?;
        Ok(Self { signer })
    }

    /// The Ed25519 public key rooms list as external sender.
    #[must_use]
    pub fn public(&self) -> &[u8] {
        self.signer.public()
    }

    /// The entry rooms list in their `external_senders` extension (KDS-ROOM-02).
    pub(super) fn external_sender(&self) -> ExternalSender {
        ExternalSender::new(
            SignaturePublicKey::from(self.signer.public().to_vec()),
            BasicCredential::new(SERVICE_IDENTITY.to_vec()).into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn the_key_is_made_once_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let first = ServiceKey::load_or_create(&SqliteStore::open(&path).unwrap()).unwrap();
        let again = ServiceKey::load_or_create(&SqliteStore::open(&path).unwrap()).unwrap();
        assert_eq!(first.public(), again.public());
        assert_eq!(first.public().len(), 32, "an Ed25519 public key");
        // Debug shows the public key only.
        let shown = format!("{first:?}");
        assert!(shown.starts_with("ServiceKey { public: "), "{shown}");
        assert!(!shown.contains("private"), "{shown}");
    }
}
