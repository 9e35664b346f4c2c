//! Server restarts mid-call, measured (issue 23; specs/sfu.md SFU-CLI-01..04, specs/key-service.md
//! §7): a `veil-server` child process is SIGKILLed while alice, bob and carol talk, and started
//! again on the same port and data directory. For each restart: how long until media flowed
//! again both ways between everyone, counted from the moment the new process answered, and
//! whether everyone kept the epoch they had. Before one of the kills a self-update commit is
//! acknowledged, and after the last restart dave joins: both show that no acknowledged commit
//! was lost (the joiner's epoch follows the last one acknowledged).
//!
//! The server is this same executable started again with [`CHILD_ENV`] set (see
//! [`serve_if_child`]), so that the kill is a real `kill -9` of another process. The CI test of
//! the same behaviour is `client/tests/cli/restart.rs`; `cargo run -p veil-e2e --example
//! reliability -- restart` writes these figures to RELIABILITY.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use veil_client::room::{Room, RoomConfig};
use veil_testkit::server::ChildServer;

use crate::peer::{Peer, all_hear_after};
use crate::reliability::{epoch, secs};

/// Set to `<port> <data dir>` in a child: [`serve_if_child`] runs the server there.
pub const CHILD_ENV: &str = "VEIL_E2E_SERVE_CHILD";

const ROOM: &str = "restart";
const NAMES: [&str; 3] = ["alice", "bob", "carol"];

/// If this process was started as the restart scenario's server, serve until killed and never
/// return; otherwise return at once. Call it first thing in `main`.
///
/// # Panics
/// If the child's configuration is malformed or the server does not start.
pub fn serve_if_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (port, dir) = spec
        .split_once(' ')
        .expect("VEIL_E2E_SERVE_CHILD is '<port> <dir>'");
    let port: u16 = port.parse().expect("a port");
    let mut cfg = veil_server::ServerConfig::embedded(PathBuf::from(dir));
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    cfg.metrics_listen = None;
    cfg.web_listen = None;
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let r = rt.block_on(veil_server::run(
        cfg,
        |a| println!("veil-server listening grpc={}", a.grpc),
        std::future::pending(),
    ));
    eprintln!("the restart scenario's server stopped: {r:?}");
    std::process::exit(1);
}

/// One kill and restart.
#[derive(Debug, Clone)]
pub struct Round {
    /// A self-update commit was acknowledged just before this kill.
    pub commit_before_kill: bool,
    /// From the kill until the new process listened (includes the scenario's 2 s pause).
    pub down_for: Duration,
    /// From the new process listening until every pair heard each other again (`None`: not
    /// within 30 s).
    pub media_back_after: Option<Duration>,
    /// The epoch before the kill and each participant's after.
    pub epochs: (Option<u64>, Vec<Option<u64>>),
}

/// What the scenario showed.
#[derive(Debug, Clone)]
pub struct Restarts {
    /// Every kill and restart.
    pub rounds: Vec<Round>,
    /// The epoch after the last acknowledged commit, and dave's once he joined after the
    /// last restart (`last + 1` if nothing was lost), with the member count everyone reached.
    pub joiner: (Option<u64>, Option<u64>, usize),
    /// Decrypt failures of alice, bob and carol over the whole run.
    pub decrypt_failures: Vec<u64>,
}

struct Child {
    dir: PathBuf,
    port: u16,
    server: ChildServer,
}

impl Child {
    fn spawn(dir: &Path, port: u16) -> ChildServer {
        let mut cmd = Command::new(std::env::current_exe().expect("this executable"));
        cmd.env(CHILD_ENV, format!("{port} {}", dir.display()))
            .env("RUST_LOG", "warn");
        ChildServer::spawn(cmd, None)
    }

    fn restart(&mut self) {
        self.server = Self::spawn(&self.dir, self.port);
    }
}

/// Kill and restart the server `rounds` times during a three-party call, then let a fourth
/// join. The executable must call [`serve_if_child`] first thing in `main`.
///
/// # Panics
/// If the server or a join fails, or the call never starts.
pub async fn run(rounds: usize) -> Restarts {
    let dir = tempfile::tempdir().expect("a data directory");
    veil_testkit::server::private(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Child {
        dir: dir.path().to_owned(),
        port,
        server: Child::spawn(dir.path(), port),
    };
    let key = veil_server::embedded_token_key(dir.path()).expect("the server's token key");
    let url = format!("http://127.0.0.1:{port}");
    let cfg = |name: &str| {
        let token = veil_testkit::token::mint(&key, ROOM, name, Duration::from_secs(3600));
        RoomConfig::new(&url, &token, ROOM, name)
    };
    let mut peers = Vec::new();
    for name in NAMES {
        let room = Room::join(cfg(name)).await.expect("join");
        peers.push(Peer::start(room));
    }
    let named: Vec<(&str, &Peer)> = NAMES.iter().copied().zip(&peers).collect();
    all_hear_after(&named, Instant::now(), Duration::from_secs(30))
        .await
        .expect("the call starts");

    let mut out = Vec::new();
    for i in 0..rounds {
        // Every other round, a commit acknowledged just before the kill.
        let commit_before_kill = i % 2 == 1;
        if commit_before_kill {
            self_update(&peers[0], &peers).await;
        }
        let before = peers[0].epoch();
        child.server.kill();
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        child.restart();
        let answered = Instant::now();
        let back = all_hear_after(&named, answered, Duration::from_secs(30)).await;
        out.push(Round {
            commit_before_kill,
            down_for: answered - killed,
            media_back_after: back,
            epochs: (before, peers.iter().map(Peer::epoch).collect()),
        });
    }

    // No acknowledged commit was lost: dave's join is the next epoch after the last one.
    let last = peers[0].epoch();
    let dave = Room::join(cfg("dave")).await.expect("dave joins");
    let members = dave
        .group()
        .wait(Duration::from_secs(30), |s| s.members.len() == 4)
        .await
        .map_or(0, |s| s.members.len());
    let dave_epoch = dave.group().status().epoch;
    let decrypt_failures = peers.iter().map(Peer::decrypt_failures).collect();
    let _ = dave.leave().await;
    for p in peers {
        p.leave().await;
    }
    child.server.kill();
    Restarts {
        rounds: out,
        joiner: (last, dave_epoch, members),
        decrypt_failures,
    }
}

/// A self-update by the first peer's group, acknowledged, and seen by everyone.
async fn self_update(first: &Peer, peers: &[Peer]) {
    let target = first.epoch().map(|e| e + 1);
    first.self_update().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers.iter().any(|p| p.epoch() < target) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Restarts {
    /// The Markdown section for RELIABILITY.md.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| restart | commit acknowledged just before the kill | killed → listening again | media back (everyone hears everyone) after listening | epoch before → after (alice, bob, carol) |\n|---|---|---|---|---|\n",
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} → {} |",
                i + 1,
                if r.commit_before_kill { "yes" } else { "no" },
                secs(r.down_for),
                r.media_back_after
                    .map_or_else(|| "not within 30 s".to_owned(), secs),
                epoch(r.epochs.0),
                r.epochs
                    .1
                    .iter()
                    .map(|e| epoch(*e))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let (last, dave, members) = self.joiner;
        let _ = write!(
            s,
            "\nAfter the last restart dave joined: the last acknowledged epoch was {}, dave's \
             first is {}, and the group reached {members} members. Decrypt failures (alice, \
             bob, carol): {:?}.\n",
            epoch(last),
            epoch(dave),
            self.decrypt_failures
        );
        s
    }
}
