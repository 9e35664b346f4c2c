//! Helpers for Veil's end-to-end tests: a real `veil-server` (key service and blind SFU) in
//! this process on loopback, with a fresh SQLite file, and tokens from its key.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_auth::{Claims, Grants, TokenKey};
use veil_client::room::RoomConfig;

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:port`.
    pub url: String,
    key: TokenKey,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start both roles on a free port.
    ///
    /// # Panics
    /// If the server cannot start.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate("e2e").unwrap();
        let mut cfg = veil_server::ServerConfig::embedded(dir.path().to_owned());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.metrics_listen = None;
        cfg.token_keys = vec![key.clone()];
        cfg.kds.departure_grace = Duration::from_secs(2);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            veil_server::run(
                cfg,
                |a| {
                    let _ = tx.send(a.grpc);
                },
                std::future::pending(),
            )
            .await
            .unwrap();
        });
        let addr = rx.await.unwrap();
        Self {
            url: format!("http://{addr}"),
            key,
            _dir: dir,
        }
    }

    /// A token for `identity` in `room` with every grant.
    ///
    /// # Panics
    /// Never for valid names.
    #[must_use]
    pub fn token(&self, room: &str, identity: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.key
            .mint(&Claims::new(
                identity,
                room,
                Grants::all(),
                now,
                Duration::from_secs(600),
            ))
            .unwrap()
    }

    /// A room configuration for `identity`.
    #[must_use]
    pub fn room(&self, room: &str, identity: &str) -> RoomConfig {
        let mut c = RoomConfig::new(&self.url, &self.token(room, identity), room, identity);
        c.group.proposal_commit_delay = Duration::from_millis(50);
        c
    }
}
