//! What every `kds_request` input starts from, made once per process: the service's
//! external-sender key, access tokens, and real MLS messages made by members (veil-mls), so
//! that requests can reach the key service's deepest checks and its success paths.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_auth::{Claims, Grants, TokenKey, Verifier};
use veil_keys::room::{SERVICE_IDENTITY, ServiceKey};
use veil_keys::store::{SqliteStore, Store};
use veil_mls::{CallSession, KeyConfig};

/// The room of every token.
pub const ROOM: &str = "fuzz";

/// The store key under which veil-keys keeps its external-sender key pair (room/key.rs). If it
/// changes, the fixture room no longer names the service as external sender and
/// [`super::setup`] fails loudly.
const SERVICE_KEY_META: &str = "external_sender_key";

/// Members' messages, all for room [`ROOM`] at epoch 0.
pub struct Fixture {
    /// The service's key pair as veil-keys stores it.
    pub service_key: Vec<u8>,
    /// Verifies [`Fixture::tokens`].
    pub verifier: Verifier,
    /// Bearer tokens for `alice` (every grant), `bob` and `carol` (participants).
    pub tokens: [String; 3],
    /// Alice's epoch-0 GroupInfo, naming the service as external sender.
    pub group_info: Vec<u8>,
    /// Bob's KeyPackages: single-use, last-resort.
    pub bob_key_packages: [Vec<u8>; 2],
    /// Alice adds Bob (commit, Welcome, GroupInfo).
    pub add_bob: [Vec<u8>; 3],
    /// Alice updates her own leaf (commit, no Welcome, GroupInfo).
    pub self_update: [Vec<u8>; 3],
    /// Carol joins by external commit (commit, no Welcome, GroupInfo).
    pub carol_joins: [Vec<u8>; 3],
}

fn commit(c: veil_mls::CommitOut) -> [Vec<u8>; 3] {
    [
        c.commit,
        c.welcome.unwrap_or_default(),
        c.group_info.unwrap_or_default(),
    ]
}

impl Fixture {
    /// The fixture of this process.
    pub fn get() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(Fixture::make)
    }

    fn make() -> Fixture {
        let store = Arc::new(SqliteStore::open(":memory:").expect("in-memory SQLite"));
        let key = ServiceKey::load_or_create(store.as_ref()).expect("a service key");
        let service_key = store
            .meta(SERVICE_KEY_META)
            .expect("SQLite")
            .expect("veil-keys keeps its key under `external_sender_key`");
        let now = Duration::ZERO;
        let cfg = KeyConfig::default;
        let mut alice = CallSession::new(b"alice", cfg()).expect("alice");
        alice
            .create_group_with_external_senders(
                ROOM.as_bytes(),
                &[(key.public().to_vec(), SERVICE_IDENTITY.to_vec())],
                now,
            )
            .expect("alice's group");
        let group_info = alice.group_info().expect("GroupInfo");
        let bob = CallSession::new(b"bob", cfg()).expect("bob");
        let bob_key_packages = [
            bob.key_package(false).expect("KeyPackage"),
            bob.key_package(true).expect("KeyPackage"),
        ];
        let add_bob = commit(alice.add_members(&bob_key_packages[..1]).expect("add"));
        alice.discard_commit().expect("discard");
        let self_update = commit(alice.self_update().expect("update"));
        alice.discard_commit().expect("discard");
        let mut carol = CallSession::new(b"carol", cfg()).expect("carol");
        let carol_joins = commit(
            carol
                .join_external(&group_info, now)
                .expect("external join"),
        );

        let token_key = TokenKey::generate("fuzz").expect("token key");
        let issued = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let day = Duration::from_secs(86_400);
        let mint = |who: &str, grants| {
            token_key
                .mint(&Claims::new(who, ROOM, grants, issued, day))
                .expect("mint")
        };
        let tokens = [
            mint("alice", Grants::all()),
            mint("bob", Grants::participant()),
            mint("carol", Grants::participant()),
        ];
        let verifier = Verifier::new([token_key]).expect("verifier");
        Fixture {
            service_key,
            verifier,
            tokens,
            group_info,
            bob_key_packages,
            add_bob,
            self_update,
            carol_joins,
        }
    }

    /// A fresh in-memory store holding the fixture's service key.
    pub fn store(&self) -> Arc<dyn Store> {
        let store = SqliteStore::open(":memory:").expect("in-memory SQLite");
        store
            .meta_init(SERVICE_KEY_META, &self.service_key)
            .expect("SQLite");
        Arc::new(store)
    }
}
