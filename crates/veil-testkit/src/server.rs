//! `veil-server` for tests: in this process ([`InProcess`]) or as a child process
//! ([`ChildServer`]); certificates for its TLS ([`TestPki`]).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use veil_auth::TokenKey;
use veil_server::{BoundAddrs, ServerConfig};

/// A server in this process (both roles on loopback), with a fresh data directory and a key
/// generated for it. It runs until the tokio runtime ends.
#[derive(Debug)]
pub struct InProcess {
    /// Where it listens.
    pub bound: BoundAddrs,
    /// `http://127.0.0.1:port` of the gRPC listener (`https://` with TLS configured).
    pub url: String,
    /// The key its tokens are signed with.
    pub key: TokenKey,
    /// Its data directory, removed on drop.
    pub dir: tempfile::TempDir,
}

impl InProcess {
    /// Start with [`ServerConfig::loopback`] and a key named `key_id`, after `configure` has
    /// adjusted the configuration.
    ///
    /// # Panics
    /// If the server cannot start.
    pub async fn start(key_id: &str, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate(key_id).unwrap();
        let mut cfg = ServerConfig::loopback(dir.path().to_owned(), key.clone());
        configure(&mut cfg);
        let bound = veil_server::spawn(cfg).await.unwrap();
        Self {
            url: format!(
                "{}://{}",
                if bound.tls { "https" } else { "http" },
                bound.grpc
            ),
            bound,
            key,
            dir,
        }
    }

    /// The text of its `/metrics` (configure `metrics_listen` to have one).
    ///
    /// # Panics
    /// If it has no metrics listener, or the endpoint does not answer 200.
    pub async fn metrics_text(&self) -> String {
        let addr = self
            .bound
            .metrics
            .expect("a metrics listener (metrics_listen)");
        scrape_metrics(addr)
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
    }

    /// A token for `identity` in `room` with every grant, valid for `ttl`.
    #[must_use]
    pub fn token(&self, room: &str, identity: &str, ttl: Duration) -> String {
        crate::token::mint(&self.key, room, identity, ttl)
    }
}

/// `GET /metrics` from the metrics listener at `addr` (an [`InProcess`] server's, or a
/// [`ChildServer`]'s `metrics=`): the body.
///
/// # Errors
/// Why not, in words: no connection, no HTTP head, or an answer other than 200 (its head).
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: veil\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.to_owned());
    }
    Ok(body.to_owned())
}

pub use crate::pki::TestPki;

/// A `veil-server` child process, started by [`ChildServer::spawn`]. Dropping it does not kill
/// it; [`ChildServer::kill`] does.
#[derive(Debug)]
pub struct ChildServer {
    /// The process.
    pub child: Child,
    /// The gRPC address it printed (`grpc=`), as `host:port`.
    pub grpc: String,
    /// The metrics address it printed (`metrics=`), if any.
    pub metrics: Option<String>,
}

impl ChildServer {
    /// Spawn `cmd` (a `veil-server serve …` command, or a shell wrapping one) with its stdout
    /// piped and wait for the line in which the server reports where it listens. `log`, if
    /// given, is the server's log file, quoted when that line lacks the gRPC address.
    ///
    /// # Panics
    /// If the process cannot start or reports no gRPC address.
    pub fn spawn(mut cmd: Command, log: Option<&Path>) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        let grpc = field("grpc=").unwrap_or_else(|| {
            let log = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!("no grpc= in {line:?}; the server's log:\n{log}")
        });
        Self {
            metrics: field("metrics="),
            grpc,
            child,
        }
    }

    /// The gRPC address as a socket address.
    ///
    /// # Panics
    /// If the printed address does not parse.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.parse().unwrap()
    }

    /// SIGKILL, no shutdown; waits for the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `binary serve …` wrapped in `sh -c` so that `prelude` (e.g. `ulimit -n 256; ` or
/// `umask 022; `) applies to the server.
#[must_use]
pub fn under_shell(prelude: &str, binary: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"{prelude}exec "$@""#))
        .arg("sh")
        .arg(binary);
    cmd
}

/// Make `dir` the owner's only: the server refuses a data directory other users can read
/// (specs/auth.md §4.1), and a `tempfile` directory follows the umask.
///
/// # Panics
/// If the permissions cannot be set.
pub fn private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}
