//! Shared helpers: start the real `veil-server` binary on loopback with a fresh data directory,
//! mint tokens with its embedded key, drive it with veil-client members. The store is the one
//! this binary tests (`crate::POSTGRES`): SQLite in the data directory, or a fresh database on
//! the binary's own PostgreSQL server, one per data directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use veil_auth::{Grants, TokenKey};
use veil_client::group::{Group, GroupConfig, GroupStatus};
use veil_keys::store::{PostgresStore, SqliteStore, Store};
use veil_testkit::postgres::TempPostgres;
use veil_testkit::server::{ChildServer, private, under_shell};
use veil_testkit::token::mint_with;

/// A running server process.
pub struct Server {
    child: ChildServer,
    pub url: String,
    pub metrics: String,
    pub dir: PathBuf,
    grace_ms: u64,
}

/// This build's `veil-server` binary.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_veil-server"))
}

/// The `--database` of data directory `dir`: `sqlite`, or (when this binary tests PostgreSQL)
/// a database of its own, the same one each time the server starts on `dir`.
pub fn database(dir: &Path) -> String {
    if !crate::POSTGRES {
        return "sqlite".into();
    }
    let mut by_dir = BY_DIR.lock().unwrap();
    by_dir
        .entry(dir.to_owned())
        .or_insert_with(|| TempPostgres::shared().database())
        .clone()
}

/// The database of each data directory, when this binary tests PostgreSQL.
static BY_DIR: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

/// Make data directory `dir` a replica of `first`'s deployment: the same PostgreSQL database
/// and the same embedded token key (so a token works on every replica).
pub fn replica_of(dir: &Path, first: &Path) {
    // Replicas share a PostgreSQL database; under SQLite each directory has its own file.
    let db = database(first);
    BY_DIR.lock().unwrap().insert(dir.to_owned(), db);
    private(dir);
    std::fs::copy(first.join("token.key"), dir.join("token.key")).unwrap();
}

/// The store of data directory `dir`, opened beside the server (a second connection).
pub fn store(dir: &Path) -> Box<dyn Store> {
    if crate::POSTGRES {
        // The server kept nothing in the data directory's SQLite file.
        assert!(!dir.join("veil.db").exists(), "a veil.db beside PostgreSQL");
        Box::new(PostgresStore::open(&database(dir)).unwrap())
    } else {
        Box::new(SqliteStore::open(dir.join("veil.db")).unwrap())
    }
}

/// The server's log, appended to `dir/server.log`.
fn log(dir: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap(),
    )
}

impl Server {
    /// Start on a free port with `dir` as data directory.
    pub fn start(dir: &Path, grace_ms: u64) -> Self {
        Self::start_on(dir, grace_ms, 0)
    }

    /// Start on `port` (0 = any free port).
    pub fn start_on(dir: &Path, grace_ms: u64, port: u16) -> Self {
        private(dir);
        let mut cmd = Command::new(binary());
        cmd.args([
            "serve",
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--database")
        .arg(database(dir))
        .arg("--departure-grace-ms")
        .arg(grace_ms.to_string())
        .env("RUST_LOG", "veil_server=debug,veil_keys=debug,info")
        .stderr(log(dir));
        Self::spawned(cmd, dir, grace_ms)
    }

    /// Start on a free port with `extra` flags, under `ulimit -n nofile` if given (a hard
    /// limit too: the server cannot raise it).
    pub fn start_with(dir: &Path, extra: &[&str], nofile: Option<u32>) -> Self {
        private(dir);
        let limit = nofile.map_or_else(String::new, |n| format!("ulimit -n {n}; "));
        let mut cmd = under_shell(&limit, binary());
        cmd.args([
            "serve",
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--database")
        .arg(database(dir))
        .args(extra)
        .env("RUST_LOG", "veil_server=debug,veil_keys=debug,info")
        .stderr(log(dir));
        Self::spawned(cmd, dir, 10_000)
    }

    fn spawned(cmd: Command, dir: &Path, grace_ms: u64) -> Self {
        let child = ChildServer::spawn(cmd, Some(&dir.join("server.log")));
        Self {
            url: format!("http://{}", child.grpc),
            metrics: child.metrics.clone().expect("a metrics listener"),
            child,
            dir: dir.to_owned(),
            grace_ms,
        }
    }

    /// The server's process id (for its memory figures in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.child.id()
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self) {
        self.child.kill();
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
        mint_with(&key, room, identity, g, age, Duration::from_secs(ttl))
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
