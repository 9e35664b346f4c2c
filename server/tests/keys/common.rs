//! Shared helpers: start the real `veil-server` binary on loopback with a fresh data directory,
//! mint tokens with its embedded key, drive it with veil-client members.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_auth::{Claims, Grants, TokenKey};
use veil_client::group::{Group, GroupConfig, GroupStatus};

/// A running server process.
pub struct Server {
    child: Child,
    pub url: String,
    pub metrics: String,
    pub dir: PathBuf,
    grace_ms: u64,
}

/// The server refuses a data directory other users can read (specs/auth.md §4.1), and a
/// `tempfile` directory follows the umask: make it the owner's.
fn private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

impl Server {
    /// Start on a free port with `dir` as data directory.
    pub fn start(dir: &Path, grace_ms: u64) -> Self {
        Self::start_on(dir, grace_ms, 0)
    }

    /// Start on `port` (0 = any free port).
    pub fn start_on(dir: &Path, grace_ms: u64, port: u16) -> Self {
        private(dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_veil-server"))
            .args(["serve", "--metrics-listen", "127.0.0.1:0", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--departure-grace-ms")
            .arg(grace_ms.to_string())
            .env("RUST_LOG", "veil_server=debug,veil_keys=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grab = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        Self {
            url: format!("http://{}", grab("grpc=")),
            metrics: grab("metrics="),
            child,
            dir: dir.to_owned(),
            grace_ms,
        }
    }

    /// Start on a free port with `extra` flags, under `ulimit -n nofile` if given (a hard
    /// limit too: the server cannot raise it).
    pub fn start_with(dir: &Path, extra: &[&str], nofile: Option<u32>) -> Self {
        private(dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut cmd = Command::new("sh");
        let limit = nofile.map_or_else(String::new, |n| format!("ulimit -n {n}; "));
        cmd.arg("-c")
            .arg(format!(r#"{limit}exec "$@""#))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_veil-server"))
            .args(["serve", "--metrics-listen", "127.0.0.1:0"])
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra);
        let mut child = cmd
            .env("RUST_LOG", "veil_server=debug,veil_keys=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grab = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    panic!("no {k} in {line:?}; the server's log:\n{log}")
                })
                .to_owned()
        };
        Self {
            url: format!("http://{}", grab("grpc=")),
            metrics: grab("metrics="),
            child,
            dir: dir.to_owned(),
            grace_ms: 10_000,
        }
    }

    /// The server's process id (for its memory figures in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The gRPC port.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGKILL, then start again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        let (dir, port) = (self.dir.clone(), self.port());
        // The old socket may linger for a moment; retry the bind briefly.
        for _ in 0..50 {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *self = Self::start_on(&dir, self.grace_ms, port);
    }

    /// A token for `identity` in `room` with every grant.
    pub fn token(&self, room: &str, identity: &str) -> String {
        let g = Grants {
            join: true,
            create: true,
            publish: true,
            subscribe: true,
        };
        self.token_with(room, identity, g, 0, 3600)
    }

    /// A token with chosen grants, issued `age` seconds ago, valid for `ttl` seconds.
    pub fn token_with(&self, room: &str, identity: &str, g: Grants, age: u64, ttl: u64) -> String {
        let key = TokenKey::load_or_create(self.dir.join("token.key"), "embedded").unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        key.mint(&Claims::new(
            identity,
            room,
            g,
            now - age,
            Duration::from_secs(ttl),
        ))
        .unwrap()
    }

    pub fn config(&self, room: &str, identity: &str) -> GroupConfig {
        let mut c = GroupConfig::new(&self.url, &self.token(room, identity), room, identity);
        c.proposal_commit_delay = Duration::from_millis(100);
        c
    }

    /// Prometheus text from the metrics endpoint.
    pub async fn scrape(&self) -> String {
        self.get("/metrics").await
    }

    /// `GET path` on the metrics/health listener: the whole response.
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const WAIT: Duration = Duration::from_secs(60);

/// Wait until every group is at one epoch with one authenticator and `members` as its members;
/// returns that epoch.
pub async fn converged(groups: &[&Group], members: &[&str]) -> u64 {
    let mut want: Vec<String> = members.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st: Vec<GroupStatus> = groups.iter().map(|g| g.status()).collect();
        let same = st.windows(2).all(|w| {
            w[0].epoch == w[1].epoch && w[0].epoch_authenticator == w[1].epoch_authenticator
        });
        let mut have = st[0].members.clone();
        have.sort();
        if same && st[0].epoch.is_some() && have == want {
            return st[0].epoch.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {:#?}",
            st.iter()
                .map(|s| (s.epoch, s.members.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
