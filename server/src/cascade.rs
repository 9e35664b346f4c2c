//! The SFU cascade's directory on the key service's shared store (specs/sfu.md SFU-CAS-01,
//! key-service.md KDS-HOST-01): an SFU node records the rooms it hosts in the deployment's
//! PostgreSQL and learns the other nodes that host them. `veil-sfu` names the seam
//! ([`veil_sfu::cascade::Directory`]) so that it needs no store of its own.

use std::sync::Arc;
use std::time::Duration;

use veil_keys::store::Store;

/// [`veil_sfu::cascade::Directory`] over the key service's store.
pub(crate) struct StoreDirectory(pub(crate) Arc<dyn Store>);

impl veil_sfu::cascade::Directory for StoreDirectory {
    fn host(
        &self,
        url: &str,
        rooms: &[String],
        lease: Duration,
    ) -> Result<Vec<(String, String)>, String> {
        self.0
            .host_rooms(url, rooms, lease)
            .map_err(|e| e.to_string())
    }
}
