//! Rooms that span SFU nodes (specs/sfu.md, "Cascading rooms over nodes", SFU-CAS-01..07).
//!
//! A participant may connect to any node of a deployment (its own `sfu_url`), so a room can
//! have participants on several nodes. Each node records the rooms it hosts in a shared
//! [`Directory`] under a lease (the deployment's PostgreSQL: `server/src/cascade.rs`), and reads
//! which other nodes host the same rooms (SFU-CAS-01). Between two such nodes runs one
//! *leg*: a `veil.sfu.v1.Cascade/Leg` gRPC stream that the node with the lower URL dials,
//! authenticated with a node token signed by the deployment's token key (SFU-CAS-06). Each side
//! tells the other which rooms it hosts; for every room both host, each relays its local
//! publishers' tracks and every packet of every layer, unchanged, and the other side routes
//! them to its own subscribers like local ones (SFU-CAS-02..05, `edge::EdgeRooms`'s relay).
//!
//! The nodes stay blind: a leg carries what a participant's connection exposes to the node
//! already (RTP header, DD and audio-level extensions, SFrame ciphertext), nothing else.

mod leg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use veil_auth::{Claims, Grants, TokenKey, Verifier};

use crate::edge::EdgeSfu;
use crate::error::SfuError;

pub use leg::CascadeService;

/// The `room` claim of a node token: a token for this room, signed with the deployment's token
/// key, admits a node-to-node leg (SFU-CAS-06). No participant's signalling uses it.
pub const NODE_ROOM: &str = "veil.sfu.cascade";

/// Where SFU nodes record the rooms they host and learn which other nodes host them
/// (SFU-CAS-01; the deployment's PostgreSQL, key-service.md KDS-HOST-01). Called from a
/// blocking thread.
pub trait Directory: Send + Sync + 'static {
    /// Record that the node reached at `url` hosts exactly `rooms` until `lease` from now, and
    /// return the other live nodes hosting any of them, as (room, node URL).
    ///
    /// # Errors
    /// A message for the log: the directory could not be reached.
    fn host(
        &self,
        url: &str,
        rooms: &[String],
        lease: Duration,
    ) -> Result<Vec<(String, String)>, String>;
}

/// How a node takes part in cascades.
#[derive(Clone)]
pub struct CascadeConfig {
    /// This node's SFU URL: where participants and other nodes reach its gRPC.
    pub url: String,
    /// The deployment's token key, to sign this node's tokens for the legs it dials.
    pub token_key: TokenKey,
    /// The shared directory of hosted rooms.
    pub directory: Arc<dyn Directory>,
    /// How often the node records its rooms and looks for other nodes (default 1 s).
    pub period: Duration,
    /// How long a record lasts without renewal (default 5 s): a node that stops renewing is
    /// no longer a peer of anyone after it.
    pub lease: Duration,
    /// For legs to `https://` nodes: the CA certificates (PEM) their TLS certificates must
    /// verify against; `None`: the system's roots (SFU-CAS-08).
    pub ca_pem: Option<Vec<u8>>,
    /// Dial `http://` nodes that are not on loopback, sending the node token in plaintext
    /// (the server's `--insecure-plaintext`); otherwise such a leg is refused (SFU-CAS-08).
    pub insecure_plaintext: bool,
}

impl CascadeConfig {
    /// The defaults for node `url`.
    #[must_use]
    pub fn new(url: String, token_key: TokenKey, directory: Arc<dyn Directory>) -> Self {
        Self {
            url,
            token_key,
            directory,
            period: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            ca_pem: None,
            insecure_plaintext: false,
        }
    }
}

impl core::fmt::Debug for CascadeConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CascadeConfig")
            .field("url", &self.url)
            .field("period", &self.period)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// This node's legs, by the other node's URL.
pub(crate) struct Legs {
    pub(crate) sfu: EdgeSfu,
    by_peer: Mutex<HashMap<String, LegId>>,
    next: AtomicU64,
}

type LegId = crate::edge::LegId;

impl Legs {
    fn new(sfu: EdgeSfu) -> Self {
        Self {
            sfu,
            by_peer: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// A new leg to `peer`, unless one is up already.
    pub(crate) fn begin(&self, peer: &str) -> Option<LegId> {
        let mut m = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if m.contains_key(peer) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        m.insert(peer.to_owned(), id);
        Some(id)
    }

    /// Leg `id` to `peer` ended.
    pub(crate) fn end(&self, peer: &str, id: LegId) {
        let mut m = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if m.get(peer) == Some(&id) {
            m.remove(peer);
        }
    }

    fn up(&self, peer: &str) -> bool {
        self.by_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(peer)
    }
}

/// This node's part in cascades: the discovery loop and its legs. Serve [`Cascade::service`]
/// next to the SFU's signalling so that other nodes can dial in.
#[derive(Clone)]
pub struct Cascade {
    legs: Arc<Legs>,
}

impl core::fmt::Debug for Cascade {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cascade").finish_non_exhaustive()
    }
}

impl Cascade {
    /// Start recording `sfu`'s rooms and dialing the nodes that share them (SFU-CAS-01). Runs
    /// until the runtime stops. Call inside a tokio runtime.
    #[must_use]
    pub fn start(sfu: EdgeSfu, config: CascadeConfig) -> Self {
        let legs = Arc::new(Legs::new(sfu));
        tokio::spawn(discover(legs.clone(), config));
        Self { legs }
    }

    /// The gRPC service other nodes dial (`veil.sfu.v1.Cascade`), admitting node tokens that
    /// `verifier` accepts (SFU-CAS-06).
    #[must_use]
    pub fn service(
        &self,
        verifier: Verifier,
    ) -> veil_proto::sfu::v1::cascade_server::CascadeServer<CascadeService> {
        CascadeService::new(self.legs.clone(), verifier).into_server()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A node token for the node at `url` (SFU-CAS-06): room [`NODE_ROOM`], identity the URL,
/// valid for 5 minutes (it is checked when a leg opens).
fn node_token(key: &TokenKey, url: &str) -> Result<String, SfuError> {
    let grants = Grants {
        publish: true,
        subscribe: true,
        ..Grants::default()
    };
    let claims = Claims::new(url, NODE_ROOM, grants, now_secs(), Duration::from_secs(300));
    key.mint(&claims)
        .map_err(|e| SfuError::Config(format!("cannot sign a node token: {e}")))
}

/// Every `period`: record the rooms hosted here, and dial each node that shares one and whose
/// URL sorts after this node's, unless a leg to it is up (SFU-CAS-01, -06).
async fn discover(legs: Arc<Legs>, config: CascadeConfig) {
    let mut tick = tokio::time::interval(config.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rooms = legs.sfu.hosted_rooms();
        let (dir, url, lease) = (config.directory.clone(), config.url.clone(), config.lease);
        let peers = match tokio::task::spawn_blocking(move || dir.host(&url, &rooms, lease)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warn!(error = %e, "could not record this node's rooms");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "recording this node's rooms panicked");
                continue;
            }
        };
        let mut nodes: Vec<String> = peers.into_iter().map(|(_, u)| u).collect();
        nodes.sort();
        nodes.dedup();
        for peer in nodes {
            if peer.as_str() <= config.url.as_str() || legs.up(&peer) {
                continue;
            }
            let token = match node_token(&config.token_key, &config.url) {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "no leg dialed");
                    continue;
                }
            };
            let endpoint = match leg::endpoint(&peer, &config) {
                Ok(e) => e,
                Err(why) => {
                    warn!(peer, why, "no leg dialed");
                    continue;
                }
            };
            info!(peer, "dialing a node-to-node leg");
            tokio::spawn(leg::dial(legs.clone(), peer, endpoint, token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SFU-CAS-06: a node token verifies under the deployment's key, for the node room, in
    /// the dialing node's name.
    #[test]
    fn a_node_token_names_the_node_room_and_the_node() {
        let key = TokenKey::generate("deployment").unwrap();
        let token = node_token(&key, "http://10.0.0.1:7443").unwrap();
        let verified = Verifier::new([key])
            .unwrap()
            .verify(&token, now_secs())
            .unwrap();
        assert_eq!(verified.claims().room, NODE_ROOM);
        assert_eq!(verified.claims().identity, "http://10.0.0.1:7443");
        let other = Verifier::new([TokenKey::generate("deployment").unwrap()]).unwrap();
        assert!(other.verify(&token, now_secs()).is_err());
    }

    /// No node shares anything: enough to build a configuration.
    struct Nobody;

    impl Directory for Nobody {
        fn host(
            &self,
            _: &str,
            _: &[String],
            _: Duration,
        ) -> Result<Vec<(String, String)>, String> {
            Ok(Vec::new())
        }
    }

    /// SFU-CAS-08: a leg to a plaintext node off loopback would carry the node token in the
    /// clear, so it is dialed only when the operator opted out; loopback and `https://` are.
    #[tokio::test]
    async fn a_plaintext_leg_off_loopback_needs_the_operators_opt_out() {
        let key = TokenKey::generate("deployment").unwrap();
        let mut config = CascadeConfig::new("http://127.0.0.1:1".into(), key, Arc::new(Nobody));
        for ok in [
            "http://127.0.0.1:7443",
            "http://localhost:7443",
            "http://[::1]:7443",
            "https://10.0.0.2:7443",
        ] {
            assert!(leg::endpoint(ok, &config).is_ok(), "{ok}");
        }
        let e = leg::endpoint("http://10.0.0.2:7443", &config).unwrap_err();
        assert!(
            e.contains("--insecure-plaintext") && e.contains("--tls-cert"),
            "{e}"
        );
        assert!(leg::endpoint("ftp://10.0.0.2", &config).is_err());
        config.insecure_plaintext = true;
        assert!(leg::endpoint("http://10.0.0.2:7443", &config).is_ok());
    }
}
