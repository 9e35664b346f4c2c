//! `veil-server`: run Veil's key-distribution service, or mint development access tokens.
//!
//! ```text
//! veil-server serve --data-dir ./veil-data            # embedded SQLite + token key
//! veil-server token --data-dir ./veil-data --room standup --identity alice
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use veil_auth::{Claims, Grants, TokenKey};
use veil_server::database::Database;
use veil_server::{ServerConfig, ServerError};

#[derive(Debug, Parser)]
#[command(
    name = "veil-server",
    version,
    about = "Veil server: key-distribution service and blind SFU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the key-distribution service over gRPC.
    Serve(Box<ServeArgs>),
    /// Mint an access token (development; application backends mint their own, see
    /// specs/auth.md).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory for the SQLite database and the embedded token key.
    #[arg(long, env = "VEIL_DATA_DIR", default_value = "./veil-data")]
    data_dir: PathBuf,
    /// The key service's store: `sqlite` (the file `veil.db` in the data directory) or a
    /// `postgres://user@host/db` URL, which replicas may share.
    #[arg(long, env = "VEIL_DATABASE", default_value = "sqlite", value_parser = Database::parse)]
    database: Database,
    /// CA certificates (PEM) that PostgreSQL's TLS certificate must verify against (default:
    /// the system's roots). The URL's `sslmode` says whether TLS is used: `require` always,
    /// `prefer` (the default) when the server offers it, `disable` never; a certificate that
    /// does not verify is always refused.
    #[arg(long, env = "VEIL_DATABASE_CA_FILE", value_name = "PEM")]
    database_ca_file: Option<PathBuf>,
    /// Connections to PostgreSQL: calls on different rooms run on different connections at
    /// once.
    #[arg(long, env = "VEIL_DATABASE_CONNECTIONS", default_value_t = veil_keys::store::PostgresStore::DEFAULT_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    database_connections: usize,
    /// CA certificates (PEM) that other SFU nodes' TLS certificates must verify against when
    /// this node dials them to carry a room across nodes (default: the system's roots).
    #[arg(long, env = "VEIL_NODE_CA_FILE", value_name = "PEM")]
    node_ca_file: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "VEIL_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Metrics and health HTTP listen address (`/metrics`, `/healthz`).
    #[arg(long, env = "VEIL_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// Turn the metrics endpoint off.
    #[arg(long)]
    no_metrics: bool,
    /// Web listen address: the browser page and both services over gRPC-Web (HTTP/1.1).
    #[arg(long, env = "VEIL_WEB_LISTEN", default_value = "127.0.0.1:7480")]
    web_listen: SocketAddr,
    /// Turn the web listener (the browser page) off.
    #[arg(long)]
    no_web: bool,
    /// TLS certificate chain (PEM, the server's own certificate first) for the gRPC and web
    /// listeners; with --tls-key. Clients then use `https://`.
    #[arg(long, env = "VEIL_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "VEIL_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Allow the gRPC and web listeners without TLS on addresses other than loopback (access
    /// tokens then cross that network in plaintext): only behind a TLS-terminating proxy on a
    /// network you trust.
    #[arg(long, env = "VEIL_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Token keys `id:secret` (secret in base64url or hex, at least 32 bytes), comma-separated;
    /// default: the embedded key in the data directory.
    #[arg(long, env = "VEIL_TOKEN_KEYS", value_delimiter = ',')]
    token_key: Vec<String>,
    /// The URL at which participants reach this node's SFU signalling, announced to the other
    /// replicas of a shared database so rooms can be placed here (default: this gRPC listener's
    /// bound address; set it when that is not what participants reach).
    #[arg(long, env = "VEIL_SFU_URL")]
    sfu_url: Option<String>,
    /// Milliseconds a member may be without a Subscribe stream before the service proposes its
    /// removal.
    #[arg(long, env = "VEIL_DEPARTURE_GRACE_MS", default_value_t = 10_000)]
    departure_grace_ms: u64,
    /// Largest MLS message accepted in any request field, in bytes.
    #[arg(long, env = "VEIL_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    max_message_bytes: usize,
    /// Largest `authenticated_data` of a commit, in bytes.
    #[arg(long, env = "VEIL_MAX_AUTHENTICATED_DATA_BYTES", default_value_t = kds_defaults().max_authenticated_data_bytes)]
    max_authenticated_data_bytes: usize,
    /// Open Subscribe streams one identity may hold in one room.
    #[arg(long, env = "VEIL_MAX_STREAMS_PER_IDENTITY", default_value_t = kds_defaults().max_streams_per_identity)]
    max_streams_per_identity: u32,
    /// Open Subscribe streams one room may hold.
    #[arg(long, env = "VEIL_MAX_STREAMS_PER_ROOM", default_value_t = kds_defaults().max_streams_per_room)]
    max_streams_per_room: u32,
    /// Milliseconds a room with no open stream and no request stays in memory; a room whose
    /// members have all departed is then deleted.
    #[arg(long, env = "VEIL_ROOM_IDLE_MS", default_value_t = kds_defaults().room_idle.as_millis() as u64)]
    room_idle_ms: u64,
    /// Live events each room keeps in memory for its slowest subscriber; one further behind
    /// is cut off and resubscribes from its epoch (KDS-FAN-01).
    #[arg(long, env = "VEIL_STREAM_BUFFER", default_value_t = kds_defaults().stream_buffer,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=65_536))]
    stream_buffer: usize,
    /// On a shared (PostgreSQL) database: milliseconds between the sweeps that compare every
    /// room in memory with the database, so that a lost notification delays another replica's
    /// events by at most this long (KDS-REP-02).
    #[arg(long, env = "VEIL_REPLICA_SYNC_MS", default_value_t = kds_defaults().replica_sync.as_millis() as u64,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(10..=60_000))]
    replica_sync_ms: u64,
    /// On a shared (PostgreSQL) database: milliseconds a replica's presence lease of a member
    /// and its SFU node's announcement last, renewed every third of it. After a replica or node
    /// dies, its members depart and its rooms are placed elsewhere at most this much later
    /// (KDS-REP-03, KDS-PLACE-01).
    #[arg(long, env = "VEIL_PRESENCE_LEASE_MS", default_value_t = kds_defaults().presence_lease.as_millis() as u64,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(300..=600_000))]
    presence_lease_ms: u64,
    /// Requests per second one token holder (room and identity) may make, to the key service
    /// and to the SFU's signalling each; over it the call is refused with RESOURCE_EXHAUSTED.
    /// 0 turns the limit off.
    #[arg(long, env = "VEIL_MAX_REQUESTS_PER_SECOND", default_value_t = kds_defaults().request_rate.per_second)]
    max_requests_per_second: u32,
    /// Requests one token holder may make at once, after a quiet spell.
    #[arg(long, env = "VEIL_REQUEST_BURST", default_value_t = kds_defaults().request_rate.burst)]
    request_burst: u32,
    /// Unclaimed KeyPackages kept per identity and room; an upload beyond it is refused.
    #[arg(long, env = "VEIL_MAX_KEY_PACKAGES_PER_IDENTITY", default_value_t = kds_defaults().key_package_cap)]
    max_key_packages_per_identity: u32,
    /// Participants one SFU room admits; the next join is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "VEIL_SFU_MAX_PARTICIPANTS", default_value_t = veil_sfu::SfuConfig::default().max_participants)]
    sfu_max_participants: usize,
    /// Tracks one SFU participant may subscribe to at once.
    #[arg(long, env = "VEIL_SFU_MAX_SUBSCRIPTIONS", default_value_t = veil_sfu::grpc::SignalLimits::default().max_subscriptions)]
    sfu_max_subscriptions: usize,
    /// Roles to serve: `keys` (key-distribution service), `sfu` (blind SFU), or both.
    #[arg(
        long,
        env = "VEIL_ROLES",
        value_delimiter = ',',
        default_value = "keys,sfu"
    )]
    role: Vec<Role>,
    /// The UDP address the SFU binds (port 0: any), one port per worker (`--sfu-workers`).
    /// A room's worker port is its participants' only candidate, so the address must be the
    /// one participants reach; of a list, the first is bound.
    #[arg(
        long,
        env = "VEIL_SFU_UDP",
        value_delimiter = ',',
        default_value = "127.0.0.1:0"
    )]
    sfu_udp: Vec<String>,
    /// The address participants reach when it is not `--sfu-udp`'s (a relay, NAT or port
    /// forwarding in front): the SFU binds `--sfu-udp` but offers this IP:port as its
    /// candidate, worker i at this port plus i (specs/sfu.md SFU-ADV-01).
    #[arg(long, env = "VEIL_SFU_ADVERTISE")]
    sfu_advertise: Option<std::net::SocketAddr>,
    /// Also accept ICE-TCP, for participants whose network blocks UDP (specs/sfu.md
    /// SFU-TCP-01): worker i listens on this address's port plus i (any free port for port 0)
    /// and offers it as a passive TCP candidate, below the UDP one. With --sfu-advertise, the
    /// candidate is the advertised IP with this port. Off by default.
    #[arg(long, env = "VEIL_SFU_TCP", value_name = "ADDR")]
    sfu_tcp: Option<std::net::SocketAddr>,
    /// SFU worker threads, each its own edge on its own UDP port (the `--sfu-udp` port plus
    /// the worker's index, or any free port for port 0); a room lives on one worker. Default:
    /// one per available core.
    #[arg(long, env = "VEIL_SFU_WORKERS", default_value_t = veil_sfu::SfuConfig::default().workers,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    sfu_workers: usize,
    /// Milliseconds a new connection has to send its first bytes (the HTTP/2 preface; on the
    /// metrics listener, its request) before it is closed.
    #[arg(long, env = "VEIL_HANDSHAKE_TIMEOUT_MS", default_value_t = defaults().handshake_timeout.as_millis() as u64)]
    handshake_timeout_ms: u64,
    /// Open connections over all listeners (lowered to three quarters of the descriptor limit
    /// if that is less).
    #[arg(long, env = "VEIL_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    max_connections: usize,
    /// Open connections from one IPv4 address or IPv6 /64.
    #[arg(long, env = "VEIL_MAX_CONNECTIONS_PER_IP", default_value_t = defaults().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Concurrent calls (HTTP/2 streams) on one gRPC connection.
    #[arg(long, env = "VEIL_MAX_CONCURRENT_STREAMS", default_value_t = defaults().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// Milliseconds a gRPC connection may stay open with no call (a Subscribe stream is a
    /// call) before it is closed.
    #[arg(long, env = "VEIL_IDLE_TIMEOUT_MS", default_value_t = defaults().idle_timeout.as_millis() as u64)]
    idle_timeout_ms: u64,
}

/// The key service's defaults, shown by `--help`.
fn kds_defaults() -> veil_server::Config {
    veil_server::Config::default()
}

/// The connection limits' defaults, shown by `--help`.
fn defaults() -> veil_server::listen::ConnLimits {
    veil_server::listen::ConnLimits::default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// The key-distribution service.
    Keys,
    /// The blind SFU.
    Sfu,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Data directory whose embedded token key signs the token.
    #[arg(long, env = "VEIL_DATA_DIR", default_value = "./veil-data")]
    data_dir: PathBuf,
    /// Sign with this key `id:secret` instead of the embedded one.
    #[arg(long, env = "VEIL_TOKEN_KEY")]
    key: Option<String>,
    /// Room the token admits to.
    #[arg(long)]
    room: String,
    /// Participant identity (the MLS credential must carry the same).
    #[arg(long)]
    identity: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    /// Grants, comma-separated: join, create, publish, subscribe.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "join,create,publish,subscribe"
    )]
    grants: Vec<String>,
}

fn mint(args: &TokenArgs) -> Result<String, String> {
    let key = match &args.key {
        Some(k) => TokenKey::parse(k).map_err(|e| e.to_string())?,
        None => veil_server::embedded_token_key(&args.data_dir).map_err(|e| e.to_string())?,
    };
    let mut grants = Grants::default();
    for g in &args.grants {
        match g.as_str() {
            "join" => grants.join = true,
            "create" => grants.create = true,
            "publish" => grants.publish = true,
            "subscribe" => grants.subscribe = true,
            other => {
                return Err(format!(
                    "unknown grant {other:?}: use join, create, publish, subscribe"
                ));
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = Claims::new(
        &args.identity,
        &args.room,
        grants,
        now,
        Duration::from_secs(args.ttl),
    );
    key.mint(&claims).map_err(|e| e.to_string())
}

async fn serve(args: ServeArgs) -> Result<(), ServerError> {
    let mut cfg = ServerConfig::embedded(args.data_dir);
    cfg.database = args.database;
    cfg.database_ca_file = args.database_ca_file;
    cfg.database_connections = args.database_connections;
    cfg.node_ca_file = args.node_ca_file;
    cfg.listen = args.listen;
    cfg.metrics_listen = (!args.no_metrics).then_some(args.metrics_listen);
    cfg.web_listen = (!args.no_web).then_some(args.web_listen);
    cfg.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| veil_server::tls::TlsFiles { cert, key });
    cfg.insecure_plaintext = args.insecure_plaintext;
    cfg.token_keys = args
        .token_key
        .iter()
        .map(|k| TokenKey::parse(k).map_err(ServerError::TokenKey))
        .collect::<Result<_, _>>()?;
    cfg.kds.departure_grace = Duration::from_millis(args.departure_grace_ms);
    cfg.kds.sfu_url = args.sfu_url.clone();
    cfg.kds.max_message_bytes = args.max_message_bytes;
    cfg.kds.max_authenticated_data_bytes = args.max_authenticated_data_bytes;
    cfg.kds.max_streams_per_identity = args.max_streams_per_identity;
    cfg.kds.max_streams_per_room = args.max_streams_per_room;
    cfg.kds.room_idle = Duration::from_millis(args.room_idle_ms);
    cfg.kds.stream_buffer = args.stream_buffer;
    cfg.kds.replica_sync = Duration::from_millis(args.replica_sync_ms);
    cfg.kds.presence_lease = Duration::from_millis(args.presence_lease_ms);
    cfg.kds.key_package_cap = args.max_key_packages_per_identity;
    let rate = veil_auth::RequestRate {
        per_second: args.max_requests_per_second,
        burst: args.request_burst,
    };
    cfg.kds.request_rate = rate;
    cfg.signal_limits.request_rate = rate;
    cfg.signal_limits.max_subscriptions = args.sfu_max_subscriptions;
    cfg.limits = veil_server::listen::ConnLimits {
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_concurrent_streams: args.max_concurrent_streams,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
    };
    cfg.keys = args.role.contains(&Role::Keys);
    cfg.sfu = args.role.contains(&Role::Sfu).then(|| veil_sfu::SfuConfig {
        udp_addrs: args.sfu_udp.clone(),
        advertise: args.sfu_advertise,
        tcp: args.sfu_tcp,
        workers: args.sfu_workers,
        max_participants: args.sfu_max_participants,
        ..veil_sfu::SfuConfig::default()
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    veil_server::run(
        cfg,
        |a| {
            // One machine-readable line: tests and scripts read the bound ports from it. A
            // closed stdout must not take the server down, so write errors are ignored.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let off = |a: Option<std::net::SocketAddr>| {
                a.map_or_else(|| "off".to_owned(), |m| m.to_string())
            };
            let _ = writeln!(
                out,
                "veil-server listening grpc={} metrics={} web={} tls={}",
                a.grpc,
                off(a.metrics),
                off(a.web),
                if a.tls { "on" } else { "off" }
            );
            let _ = out.flush();
        },
        shutdown,
    )
    .await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(a) => serve(*a).await.map_err(|e| e.to_string()),
        Cmd::Token(a) => mint(&a).map(|t| println!("{t}")),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
