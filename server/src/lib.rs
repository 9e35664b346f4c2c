//! `veil-server`: one process that composes Veil's two server roles behind one gRPC listener
//! and one metrics endpoint:
//!
//! - the key-distribution service ([`veil_keys`]: the MLS Delivery and Authentication Service
//!   of a call, specs/key-service.md), with its SQLite store under the data directory;
//! - the blind SFU ([`veil_sfu`], specs/sfu.md): every participant's media on one UDP port
//!   ([`veil_sfu::EdgeSfu`]).
//!
//! What belongs to the process stays here: [`ServerConfig`] and [`run`]/[`spawn`], the
//! private data directory ([`datadir`], KDS-SEC-02), the connection gate of every listener
//! ([`listen`], SRV-CONN-01..06), TLS on the gRPC and web listeners ([`tls`], SRV-TLS-01..05),
//! the metrics/health HTTP endpoint ([`metrics`]), and the web listener ([`web`]): the browser
//! client's page and both services over gRPC-Web (specs/browser.md). A participant the SFU timed out is handed to the key service as a
//! departure (KDS-REM-01).
//! Run it with [`run`], or as the `veil-server` binary:
//!
//! ```no_run
//! # async fn demo() -> Result<(), veil_server::ServerError> {
//! let cfg = veil_server::ServerConfig::embedded("./veil-data".into());
//! veil_server::run(cfg, |addrs| println!("key service on {}", addrs.grpc), std::future::pending())
//!     .await
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cascade;
pub mod database;
pub mod datadir;
pub mod listen;
pub mod metrics;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use veil_auth::{TokenKey, Verifier};
pub use veil_keys::{Config, KdsError, KeyService};
use veil_proto::keys::v1::key_service_server::KeyServiceServer;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The key service could not load its state.
    #[error(transparent)]
    Kds(#[from] KdsError),
    /// A socket or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A TLS certificate or key file cannot be used (SRV-TLS-02); `why` says what to fix.
    #[error("TLS {file} {}: {why}", path.display())]
    TlsFile {
        /// `certificate` or `key`.
        file: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to give instead.
        why: String,
    },
    /// The TLS private key does not belong to the certificate, or rustls cannot use it
    /// (SRV-TLS-02).
    #[error(
        "TLS: the key {} cannot be used with the certificate {} ({source}): give the private key the certificate was issued for",
        key.display(),
        cert.display()
    )]
    TlsKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: tokio_rustls::rustls::Error,
    },
    /// A gRPC or web listener without TLS on an address other machines can reach: every call
    /// carries an access token (SRV-TLS-04).
    #[error(
        "the {listener} listener {addr} is not on loopback and has no TLS, so access tokens would cross the network in plaintext: give --tls-cert and --tls-key, bind it to 127.0.0.1, or pass --insecure-plaintext if TLS ends in front of this server on a network you trust"
    )]
    PlaintextNotLoopback {
        /// `gRPC` or `web`.
        listener: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
    /// The token key could not be loaded, created or parsed; `veil-auth`'s reason is the source.
    #[error("token key: {0}")]
    TokenKey(#[source] veil_auth::AuthError),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The SFU could not start (e.g. its UDP address cannot be bound).
    #[error("SFU: {0}")]
    Sfu(#[from] veil_sfu::SfuError),
    /// The data directory, or a file in it that holds a private key, can be read by other
    /// users (KDS-SEC-02).
    #[error(
        "other users can access {}; the data directory holds the service's private keys: run `{fix}` and start again",
        paths
            .iter()
            .map(|e| format!("{} (mode {:04o})", e.path.display(), e.mode))
            .collect::<Vec<_>>()
            .join(", ")
    )]
    DataDirExposed {
        /// What is exposed.
        paths: Vec<datadir::Exposed>,
        /// The `chmod` commands that fix it.
        fix: String,
    },
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics and health over HTTP (`/metrics`, `/healthz`); `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// The browser page and gRPC-Web (HTTP/1.1, [`web`]); `None` turns it off.
    pub web_listen: Option<SocketAddr>,
    /// Directory for `veil.db` and the embedded token key.
    pub data_dir: PathBuf,
    /// The key service's store: SQLite in `data_dir` (the default) or PostgreSQL.
    pub database: database::Database,
    /// The CA certificates (PEM file) PostgreSQL's TLS certificate must verify against;
    /// `None`: the system's roots (KDS-PG-TLS-01).
    pub database_ca_file: Option<PathBuf>,
    /// Connections to PostgreSQL (KDS-PG-POOL-01).
    pub database_connections: usize,
    /// The CA certificates (PEM file) other SFU nodes' TLS certificates must verify against
    /// when this node dials them for a cascade; `None`: the system's roots (SFU-CAS-08).
    pub node_ca_file: Option<PathBuf>,
    /// Token keys to accept; empty means the embedded key in `data_dir/token.key`.
    pub token_keys: Vec<TokenKey>,
    /// Key-service limits and timers.
    pub kds: Config,
    /// Serve the key service (`veil.keys.v1`).
    pub keys: bool,
    /// Serve the blind SFU (`veil.sfu.v1`) with this configuration.
    pub sfu: Option<veil_sfu::SfuConfig>,
    /// Limits of the SFU's signalling: requests per second per token holder, subscriptions
    /// per participant (LIM-RATE-01, LIM-SUB-01; specs/limits.md).
    pub signal_limits: veil_sfu::grpc::SignalLimits,
    /// Connection caps and the handshake timeout of every listener (SRV-CONN-01..05).
    pub limits: listen::ConnLimits,
    /// TLS on the gRPC and web listeners (SRV-TLS-01); `None`: plaintext, which only loopback
    /// addresses may use unless `insecure_plaintext` (SRV-TLS-04).
    pub tls: Option<tls::TlsFiles>,
    /// Allow plaintext gRPC and web listeners on addresses other than loopback (SRV-TLS-04).
    pub insecure_plaintext: bool,
}

impl ServerConfig {
    /// Embedded defaults: gRPC on 127.0.0.1:7443, the page on 127.0.0.1:7480, metrics on
    /// 127.0.0.1:9464, state and token key under `data_dir`.
    #[must_use]
    pub fn embedded(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            web_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
            data_dir,
            database: database::Database::Sqlite,
            database_ca_file: None,
            database_connections: veil_keys::store::PostgresStore::DEFAULT_CONNECTIONS,
            node_ca_file: None,
            token_keys: Vec::new(),
            kds: Config::default(),
            keys: true,
            sfu: Some(veil_sfu::SfuConfig::default()),
            signal_limits: veil_sfu::grpc::SignalLimits::default(),
            limits: listen::ConnLimits::default(),
            tls: None,
            insecure_plaintext: false,
        }
    }
}

impl ServerConfig {
    /// For tests, benches and demos in one process: both roles on a free loopback port (the
    /// page on another), no metrics listener, tokens signed with `key`, state under
    /// `data_dir`. Every client comes from 127.0.0.1, so the per-address cap is the total cap.
    #[must_use]
    pub fn loopback(data_dir: PathBuf, key: TokenKey) -> Self {
        let embedded = Self::embedded(data_dir);
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            web_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            token_keys: vec![key],
            limits: listen::ConnLimits {
                max_connections_per_ip: embedded.limits.max_connections,
                ..embedded.limits.clone()
            },
            ..embedded
        }
    }
}

/// Run the server in the background of the current tokio runtime until the runtime ends;
/// returns once it listens.
///
/// # Errors
/// [`ServerError`] if it does not start.
pub async fn spawn(cfg: ServerConfig) -> Result<BoundAddrs, ServerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (err_tx, err_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = run(
            cfg,
            |a| {
                let _ = tx.send(a);
            },
            std::future::pending(),
        )
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "veil-server stopped");
            let _ = err_tx.send(e);
        }
    });
    tokio::select! {
        Ok(a) = rx => Ok(a),
        Ok(e) = err_rx => Err(e),
        else => Err(ServerError::Io {
            what: "start the server".into(),
            source: std::io::Error::other("the server task ended before listening"),
        }),
    }
}

/// Where the server listens, once bound.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Metrics/health HTTP, if enabled.
    pub metrics: Option<SocketAddr>,
    /// The page and gRPC-Web, if enabled.
    pub web: Option<SocketAddr>,
    /// Whether the gRPC and web listeners speak TLS (`https://`).
    pub tls: bool,
}

/// The file under the data directory that holds the embedded token key.
pub const TOKEN_KEY_FILE: &str = "token.key";
/// The id of the embedded token key.
pub const EMBEDDED_KEY_ID: &str = "embedded";

/// Load the embedded token key of `data_dir`, creating it (and the directory, mode `0700`) on
/// first use.
///
/// # Errors
/// [`ServerError::Io`], [`ServerError::TokenKey`]; [`ServerError::DataDirExposed`] if the
/// directory or the key file lets other users in (KDS-SEC-02).
pub fn embedded_token_key(data_dir: &std::path::Path) -> Result<TokenKey, ServerError> {
    datadir::prepare_dir(data_dir)?;
    let key = TokenKey::load_or_create(data_dir.join(TOKEN_KEY_FILE), EMBEDDED_KEY_ID)
        .map_err(ServerError::TokenKey)?;
    datadir::check_private(data_dir)?;
    Ok(key)
}

/// Run the key service until `shutdown` resolves; `ready` is called once the sockets are bound.
///
/// # Errors
/// [`ServerError`] when start-up fails or the transport stops with an error.
pub async fn run(
    cfg: ServerConfig,
    ready: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // SRV-TLS-04 and -02 before anything is opened: a refusal leaves nothing behind.
    tls::check_plaintext(
        cfg.tls.is_some(),
        cfg.insecure_plaintext,
        &[("gRPC", Some(cfg.listen)), ("web", cfg.web_listen)],
    )?;
    let acceptors = cfg.tls.as_ref().map(tls::Acceptors::load).transpose()?;
    // SRV-CONN-05: descriptors for as many connections as the hard limit allows.
    let limits = listen::fit_to_descriptors(cfg.limits.clone(), listen::raise_descriptor_limit());
    let listen_metrics = Arc::new(listen::ListenMetrics::default());
    let gate = listen::Gate::new(limits.clone(), listen_metrics.clone());
    // KDS-SEC-02: a private directory, and a private database file before SQLite opens it.
    let keys = if cfg.token_keys.is_empty() {
        vec![embedded_token_key(&cfg.data_dir)?]
    } else {
        datadir::prepare_dir(&cfg.data_dir)?;
        cfg.token_keys.clone()
    };
    // The key a node signs its node-to-node legs' tokens with (SFU-CAS-06).
    let node_key = keys.first().cloned();
    let verifier = Verifier::new(keys).map_err(ServerError::TokenKey)?;
    // A PostgreSQL store is opened before the data directory's database file is considered,
    // and only for the key service (the SFU keeps no state).
    let shared = if cfg.keys {
        cfg.database
            .open_shared(cfg.database_ca_file.as_deref(), cfg.database_connections)
            .transpose()?
    } else {
        None
    };
    let db = if cfg.keys && shared.is_none() {
        datadir::create_db_file(&cfg.data_dir)?
    } else {
        cfg.data_dir.join(datadir::DB_FILE)
    };
    datadir::check_private(&cfg.data_dir)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("bind {}", cfg.listen),
            source,
        })?;
    let grpc = listener.local_addr().map_err(|source| ServerError::Io {
        what: "local address".into(),
        source,
    })?;
    // KDS-PLACE-01: where participants reach this process's SFU, unless the operator said.
    let mut kds = cfg.kds.clone();
    if kds.sfu_url.is_none() && cfg.sfu.is_some() {
        let scheme = if acceptors.is_some() { "https" } else { "http" };
        kds.sfu_url = Some(format!("{scheme}://{grpc}"));
    }
    let metrics = Arc::new(veil_keys::Metrics::default());
    // SFU-CAS-01: on a shared store, the SFU node records its rooms and joins rooms that span
    // nodes.
    let directory = shared.clone();
    let node_url = kds.sfu_url.clone();
    let svc = if cfg.keys {
        let store = match shared {
            Some(store) => store,
            None => database::Database::open_sqlite(&db)?,
        };
        let svc = KeyService::new(store, verifier.clone(), kds, metrics.clone())?;
        svc.start();
        Some(svc)
    } else {
        None
    };
    let sfu = cfg.sfu.clone().map(veil_sfu::EdgeSfu::new).transpose()?;
    let cascade_api = match (&sfu, directory, node_url, node_key) {
        (Some(sfu), Some(store), Some(url), Some(key)) => {
            let dir = Arc::new(cascade::StoreDirectory(store));
            let mut config = veil_sfu::cascade::CascadeConfig::new(url, key, dir);
            config.insecure_plaintext = cfg.insecure_plaintext;
            config.ca_pem = cfg
                .node_ca_file
                .as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|source| ServerError::Io {
                        what: format!("read the node CA file {}", p.display()),
                        source,
                    })
                })
                .transpose()?;
            let cascade = veil_sfu::cascade::Cascade::start(sfu.clone(), config);
            Some(cascade.service(verifier.clone()))
        }
        _ => None,
    };
    let room_events = sfu.as_ref().map(veil_sfu::EdgeSfu::room_events);
    let sfu_metrics = sfu
        .clone()
        .map(|s| -> Arc<dyn Fn() -> String + Send + Sync> {
            Arc::new(move || s.metrics().encode())
        });
    // One process, both roles: a participant the SFU timed out is one the key service should
    // remove from the group (KDS-REM-01), without waiting for its key-service stream to drop.
    if let (Some(svc), Some(mut events)) = (&svc, room_events) {
        let svc = svc.clone();
        tokio::spawn(async move {
            use veil_sfu::{LeaveReason, ParticipantEvent};
            loop {
                match events.recv().await {
                    Ok(ParticipantEvent::ParticipantLeft {
                        room,
                        identity,
                        reason: LeaveReason::Timeout | LeaveReason::NeverConnected,
                    }) => {
                        if let Err(e) = svc.depart(&room, &identity).await {
                            tracing::warn!(room, identity, error = %e, "departure not recorded");
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Io {
                    what: format!("bind metrics {addr}"),
                    source,
                })?;
            let bound = l.local_addr().ok();
            // One exposition for the roles this process runs (the SFU's metrics are
            // `veil_sfu_*`, the key service's `veil_keys_*`).
            let (keys, sfu_handle) = (metrics.clone(), sfu_metrics.clone());
            let conns = listen_metrics.clone();
            let exposition: metrics::Exposition = Arc::new(move || {
                // SRV-OBS-01: the process's own gauges, read at each scrape.
                let mut parts = vec![keys.encode(), conns.encode(), metrics::process_exposition()];
                if let Some(s) = &sfu_handle {
                    parts.push(s());
                }
                metrics::join_expositions(&parts)
            });
            tokio::spawn(metrics::serve_http(l, gate.clone(), exposition));
            bound
        }
        None => None,
    };

    let web_listener = match cfg.web_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Io {
                    what: format!("bind web {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    let web_addr = web_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (health, health_svc) = tonic_health::server::health_reporter();
    // Three message fields of max_message_bytes plus framing; beyond it tonic refuses the
    // request with OUT_OF_RANGE before it is decoded (KDS-LIM-01).
    let limit = cfg.kds.max_message_bytes * 3 + 64 * 1024;
    let keys_api = match svc {
        Some(svc) => {
            health.set_serving::<KeyServiceServer<KeyService>>().await;
            Some(
                KeyServiceServer::new(svc)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
        }
        None => None,
    };
    let sfu_api = sfu.map(|s| {
        veil_sfu::grpc::SfuService::new(s, verifier)
            .with_limits(cfg.signal_limits)
            .into_server()
    });
    tracing::info!(
        %grpc,
        web = ?web_addr,
        metrics = ?metrics_addr,
        keys = keys_api.is_some(),
        sfu = sfu_api.is_some(),
        tls = acceptors.is_some(),
        db = %db.display(),
        "veil-server listening"
    );
    ready(BoundAddrs {
        grpc,
        metrics: metrics_addr,
        web: web_addr,
        tls: acceptors.is_some(),
    });
    // One shutdown for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let web_server = web_listener.map(|l| {
        let routes = web::routes(keys_api.clone(), sfu_api.clone());
        tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(listen::CountCallsLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                listen::web_incoming(l, gate.clone(), acceptors.as_ref().map(|a| a.web.clone())),
                stopped(stop_rx.clone()),
            )
    });
    // SRV-CONN-01/02: connections under the caps, handed to tonic once their preface arrived.
    let incoming = listen::grpc_incoming(listener, gate, acceptors.map(|a| a.grpc));
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .layer(listen::CountCallsLayer)
        .add_service(health_svc)
        .add_optional_service(keys_api)
        .add_optional_service(sfu_api)
        .add_optional_service(cascade_api)
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx));
    match web_server {
        Some(web_server) => {
            tokio::try_join!(grpc_server, web_server)?;
        }
        None => grpc_server.await?,
    }
    Ok(())
}
