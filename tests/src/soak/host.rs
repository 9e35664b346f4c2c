//! The soak's server: `veil-server` in this process, on a tokio runtime and threads of its own
//! ([`Host::start`]), so that `veil_server_tokio_alive_tasks` counts the server's tasks and
//! none of the participants' (resident memory, descriptors and threads are then the whole
//! process's, participants included); or the `veil-server` binary as a child process
//! ([`Host::spawn`]), whose every figure is the server's alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use veil_client::room::RoomConfig;
use veil_testkit::server::{ChildServer, InProcess};

/// Mints a token for `(room, identity)`.
type Mint = Box<dyn Fn(&str, &str) -> String + Send + Sync>;

/// The running server; [`Host::stop`] (or dropping it) ends its runtime.
pub struct Host {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Where `/metrics` is served.
    pub metrics: SocketAddr,
    mint: Mint,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The child process and its data directory, with [`Host::spawn`].
    child: Option<(ChildServer, PathBuf)>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("url", &self.url)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Start both roles on free ports, on a runtime of `workers` threads of their own; rooms
    /// leave the key service's memory after `room_idle` and departed members are removed after
    /// `departure_grace`.
    ///
    /// # Panics
    /// If the server cannot start.
    pub async fn start(workers: usize, room_idle: Duration, departure_grace: Duration) -> Self {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("soak-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .thread_name("soak-server-rt")
                    .enable_all()
                    .build()
                    .expect("the server's runtime");
                rt.block_on(async move {
                    let server = InProcess::start("soak", |cfg| {
                        cfg.kds.room_idle = room_idle;
                        cfg.kds.departure_grace = departure_grace;
                        cfg.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
                    })
                    .await;
                    let key = server.key.clone();
                    let mint: Mint = Box::new(move |room, identity| {
                        veil_testkit::token::mint(&key, room, identity, Duration::from_secs(86_400))
                    });
                    let metrics = server.bound.metrics.expect("a metrics listener");
                    let _ = ready_tx.send((server.url.clone(), metrics, mint));
                    let _ = stopped.await;
                    drop(server);
                });
            })
            .expect("the server's thread");
        let (url, metrics, mint) = ready.await.expect("the server started");
        Self {
            url,
            metrics,
            mint,
            stop: Some(stop),
            thread: Some(thread),
            child: None,
        }
    }

    /// Run the `veil-server` at `binary` as a child process, both roles on free loopback
    /// ports, with a fresh data directory under the system's temporary directory (removed
    /// when stopped) and the same settings as [`Host::start`]; its log (warnings) is
    /// `server.log` there.
    ///
    /// # Panics
    /// If the process does not start or reports no addresses.
    #[must_use]
    pub fn spawn(binary: &Path, room_idle: Duration, departure_grace: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "veil-soak-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        // The server's embedded key, made before it starts: tokens are minted with it here.
        let key = veil_server::embedded_token_key(&dir).expect("the soak's data directory");
        let log = dir.join("server.log");
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--no-web")
            .args(["--sfu-udp", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--room-idle-ms")
            .arg(room_idle.as_millis().to_string())
            .arg("--departure-grace-ms")
            .arg(departure_grace.as_millis().to_string())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("the server's log"),
            ));
        let child = ChildServer::spawn(cmd, Some(&log));
        let metrics = child
            .metrics
            .as_deref()
            .and_then(|m| m.parse().ok())
            .expect("the child's metrics address");
        let mint: Mint = Box::new(move |room, identity| {
            veil_testkit::token::mint(&key, room, identity, Duration::from_secs(86_400))
        });
        Self {
            url: format!("http://{}", child.grpc),
            metrics,
            mint,
            stop: None,
            thread: None,
            child: Some((child, dir)),
        }
    }

    /// Whether the server is a child process (every figure its own).
    #[must_use]
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// A room configuration for `identity` in `room` (commits 50 ms after a proposal, as in
    /// the other e2e tests).
    #[must_use]
    pub fn room(&self, room: &str, identity: &str) -> RoomConfig {
        let mut c = RoomConfig::new(&self.url, &(self.mint)(room, identity), room, identity);
        c.group.proposal_commit_delay = Duration::from_millis(50);
        c
    }

    /// `GET /metrics`: the body, or why not.
    ///
    /// # Errors
    /// The endpoint did not answer 200.
    pub async fn scrape(&self) -> Result<String, String> {
        veil_testkit::server::scrape_metrics(self.metrics).await
    }

    /// End the server's runtime and wait for its thread, or kill the child process.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((mut child, dir)) = self.child.take() {
            child.kill();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shut();
    }
}
