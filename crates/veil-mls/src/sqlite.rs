//! SQLite storage for a member that must survive a restart (feature `sqlite`, native only).
//!
//! openmls writes every state change through its storage provider as it happens, so the file
//! always holds the state after the last completed operation. `SqliteProvider::open` runs the
//! storage crate's migrations and puts the database in WAL mode.

use std::path::Path;

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::Connection;

use crate::error::MlsError;

/// serde_json encoding of openmls' stored values.
#[derive(Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// An openmls provider whose storage is one SQLite file.
pub struct SqliteProvider {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, Connection>,
}

impl core::fmt::Debug for SqliteProvider {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SqliteProvider")
    }
}

impl SqliteProvider {
    /// Open (or create) the state file at `path`.
    ///
    /// # Errors
    /// [`MlsError::Internal`] if the file cannot be opened or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MlsError> {
        let storage_err =
            |e: &dyn core::fmt::Display| MlsError::Internal(format!("SQLite state: {e}"));
        let conn = Connection::open(path.as_ref()).map_err(|e| storage_err(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| storage_err(&e))?;
        let mut storage = SqliteStorageProvider::new(conn);
        storage.run_migrations().map_err(|e| storage_err(&e))?;
        Ok(Self {
            crypto: RustCrypto::default(),
            storage,
        })
    }
}

impl openmls_traits::OpenMlsProvider for SqliteProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
