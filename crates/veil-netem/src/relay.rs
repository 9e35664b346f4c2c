//! [`Relay`]: the tokio shell around [`Link`]. It listens on addresses participants reach
//! (bound first, [`Relay::bind`], so that the SFU can advertise them) and forwards each client
//! flow, keyed by the client's source address, to its route's target through an upstream
//! socket of its own, impairing both directions: client → target on one [`Link`], target →
//! client on another (NETEM-RELAY-01). The impairment can be changed while it runs, for every
//! flow or one ([`Relay::set_all`], [`Relay::set_flow`]), and each flow's counters read
//! ([`Relay::flows`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::NetemError;
use crate::impairment::{Impairment, LossWindow};
use crate::link::{Link, LinkCounters};
use crate::rng::derive;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams waiting per flow between the listener and the flow's task.
const FLOW_QUEUE: usize = 4_096;

/// What every flow applies: one impairment for all, and overrides per client.
#[derive(Debug, Clone, Default)]
struct Settings {
    all: Impairment,
    flows: HashMap<SocketAddr, Impairment>,
}

impl Settings {
    fn of(&self, client: SocketAddr) -> &Impairment {
        self.flows.get(&client).unwrap_or(&self.all)
    }
}

/// One flow's counters: `up` is client → target, `down` target → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    /// The client's address (the flow's key).
    pub client: SocketAddr,
    /// The upstream socket's address: what the target sees as the client.
    pub upstream: SocketAddr,
    /// Client → target.
    pub up: LinkCounters,
    /// Target → client.
    pub down: LinkCounters,
}

type Flows = Arc<Mutex<Vec<Arc<Mutex<FlowStats>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere leaves them readable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Listening sockets bound, not yet relaying: their addresses are what the SFU advertises.
#[derive(Debug)]
pub struct BoundRelay {
    sockets: Vec<UdpSocket>,
}

/// A running relay. Dropping it stops every flow.
#[derive(Debug)]
pub struct Relay {
    listen: Vec<SocketAddr>,
    settings: watch::Sender<Settings>,
    flows: Flows,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Relay {
    /// Bind one listening socket per address (port 0: any free port).
    ///
    /// # Errors
    /// [`NetemError::Io`] if an address cannot be bound.
    pub async fn bind(listen: &[SocketAddr]) -> Result<BoundRelay, NetemError> {
        let mut sockets = Vec::with_capacity(listen.len());
        for a in listen {
            sockets.push(UdpSocket::bind(a).await.map_err(|source| NetemError::Io {
                what: format!("bind the relay's UDP {a}"),
                source,
            })?);
        }
        Ok(BoundRelay { sockets })
    }

    /// Where participants reach the relay, one per route.
    #[must_use]
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Apply `impairment` to every flow, now and new ones, dropping per-flow overrides.
    pub fn set_all(&self, impairment: Impairment) {
        self.settings.send_modify(|s| {
            s.all = impairment;
            s.flows.clear();
        });
    }

    /// Apply `impairment` to the flow of `client` only (both directions).
    pub fn set_flow(&self, client: SocketAddr, impairment: Impairment) {
        self.settings.send_modify(|s| {
            s.flows.insert(client, impairment);
        });
    }

    /// Every flow's counters, in the order the flows started.
    #[must_use]
    pub fn flows(&self) -> Vec<FlowStats> {
        lock(&self.flows).iter().map(|f| *lock(f)).collect()
    }

    /// The counters of all flows added up: (client → target, target → client).
    #[must_use]
    pub fn totals(&self) -> (LinkCounters, LinkCounters) {
        let add = |a: LinkCounters, b: LinkCounters| LinkCounters {
            received: a.received + b.received,
            forwarded: a.forwarded + b.forwarded,
            lost: a.lost + b.lost,
            blacked_out: a.blacked_out + b.blacked_out,
            queue_drops: a.queue_drops + b.queue_drops,
            duplicated: a.duplicated + b.duplicated,
            reordered: a.reordered + b.reordered,
        };
        self.flows().iter().fold(
            (LinkCounters::default(), LinkCounters::default()),
            |(u, d), f| (add(u, f.up), add(d, f.down)),
        )
    }
}

/// How a [`BoundRelay`] starts relaying.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where each listening socket's flows go, by the order of [`Relay::bind`]'s addresses.
    pub targets: Vec<SocketAddr>,
    /// The impairment of every flow, both directions, until changed.
    pub impairment: Impairment,
    /// Scripted loss windows of every link, from the relay's start (NETEM-LOSS-03).
    pub windows: Vec<LossWindow>,
    /// The run's seed: flow `n`'s links draw from seeds derived from it and `n`.
    pub seed: u64,
}

impl BoundRelay {
    /// Where participants reach the relay.
    ///
    /// # Errors
    /// [`NetemError::Io`] if a socket cannot tell its address.
    pub fn local_addrs(&self) -> Result<Vec<SocketAddr>, NetemError> {
        self.sockets
            .iter()
            .map(|s| {
                s.local_addr().map_err(|source| NetemError::Io {
                    what: "read the relay's address".into(),
                    source,
                })
            })
            .collect()
    }

    /// Start relaying each listening socket's flows to its target.
    ///
    /// # Errors
    /// [`NetemError::Config`] if there is not one target per listening socket;
    /// [`NetemError::Io`] if an address cannot be read.
    pub fn start(self, config: RelayConfig) -> Result<Relay, NetemError> {
        if config.targets.len() != self.sockets.len() {
            return Err(NetemError::Config(format!(
                "{} listening sockets but {} targets: give one target per listening address",
                self.sockets.len(),
                config.targets.len()
            )));
        }
        let listen = self.local_addrs()?;
        let (settings, _) = watch::channel(Settings {
            all: config.impairment.clone(),
            flows: HashMap::new(),
        });
        let flows: Flows = Arc::default();
        let start = Instant::now();
        let next_flow = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = self
            .sockets
            .into_iter()
            .zip(config.targets)
            .map(|(socket, target)| {
                let route = Route {
                    socket: Arc::new(socket),
                    target,
                    settings: settings.subscribe(),
                    flows: flows.clone(),
                    windows: config.windows.clone(),
                    seed: config.seed,
                    start,
                    next_flow: next_flow.clone(),
                };
                tokio::spawn(route.listen())
            })
            .collect();
        Ok(Relay {
            listen,
            settings,
            flows,
            tasks,
        })
    }
}

/// One listening socket and where its flows go.
struct Route {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    settings: watch::Receiver<Settings>,
    flows: Flows,
    windows: Vec<LossWindow>,
    seed: u64,
    start: Instant,
    next_flow: Arc<std::sync::atomic::AtomicU64>,
}

impl Route {
    /// Read client datagrams and hand each to its flow, starting flows as clients appear.
    /// Flow tasks end with this one (their queues close).
    async fn listen(self) {
        let mut by_client: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut flow_tasks = Vec::new();
        loop {
            let (n, client) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors (a client gone) surface here on Linux; keep relaying.
                    debug!(error = %e, "relay receive");
                    continue;
                }
            };
            let tx = match by_client.entry(client) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => match self.open(client) {
                    Ok((tx, task)) => {
                        flow_tasks.push(AbortOnDrop(task));
                        e.insert(tx)
                    }
                    Err(e) => {
                        warn!(error = %e, %client, "the relay could not open a flow");
                        continue;
                    }
                },
            };
            if tx.try_send(buf[..n].to_vec()).is_err() {
                debug!(%client, "relay flow queue full: datagram dropped");
            }
        }
    }

    fn open(
        &self,
        client: SocketAddr,
    ) -> Result<(mpsc::Sender<Vec<u8>>, JoinHandle<()>), NetemError> {
        let io = |what: &str, source| NetemError::Io {
            what: format!("{what} for the flow of {client}"),
            source,
        };
        let any: SocketAddr = if self.target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let up = std::net::UdpSocket::bind(any).map_err(|e| io("bind an upstream socket", e))?;
        up.connect(self.target)
            .map_err(|e| io("connect the upstream socket", e))?;
        up.set_nonblocking(true)
            .map_err(|e| io("set the upstream socket non-blocking", e))?;
        let up = UdpSocket::from_std(up).map_err(|e| io("register the upstream socket", e))?;
        let upstream = up
            .local_addr()
            .map_err(|e| io("read the upstream address", e))?;
        let n = self
            .next_flow
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let settings = self.settings.borrow().of(client).clone();
        let stats = Arc::new(Mutex::new(FlowStats {
            client,
            upstream,
            up: LinkCounters::default(),
            down: LinkCounters::default(),
        }));
        lock(&self.flows).push(stats.clone());
        let flow = Flow {
            client,
            listen: self.socket.clone(),
            upstream: up,
            up: Link::new(settings.clone(), derive(self.seed, 2 * n), self.start)
                .with_windows(self.windows.clone()),
            down: Link::new(settings, derive(self.seed, 2 * n + 1), self.start)
                .with_windows(self.windows.clone()),
            settings: self.settings.clone(),
            stats,
        };
        debug!(%client, %upstream, target = %self.target, "relay flow opened");
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        Ok((tx, tokio::spawn(flow.run(rx))))
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One client's flow: its two links and its upstream socket.
struct Flow {
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    upstream: UdpSocket,
    up: Link,
    down: Link,
    settings: watch::Receiver<Settings>,
    stats: Arc<Mutex<FlowStats>>,
}

impl Flow {
    async fn run(mut self, mut from_client: mpsc::Receiver<Vec<u8>>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let due = [self.up.next_timeout(), self.down.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match due {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = from_client.recv() => match d {
                    Some(d) => self.up.push(Instant::now(), d),
                    None => return,
                },
                r = self.upstream.recv(&mut buf) => match r {
                    Ok(n) => self.down.push(Instant::now(), buf[..n].to_vec()),
                    Err(e) => debug!(error = %e, client = %self.client, "relay upstream receive"),
                },
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = self.settings.borrow_and_update().of(self.client).clone();
                    self.up.set_impairment(now.clone());
                    self.down.set_impairment(now);
                }
                () = sleep => {}
            }
            let now = Instant::now();
            while let Some(d) = self.up.poll(now) {
                if let Err(e) = self.upstream.send(&d).await {
                    debug!(error = %e, client = %self.client, "relay upstream send");
                }
            }
            while let Some(d) = self.down.poll(now) {
                if let Err(e) = self.listen.send_to(&d, self.client).await {
                    debug!(error = %e, client = %self.client, "relay downstream send");
                }
            }
            let mut s = lock(&self.stats);
            s.up = self.up.counters();
            s.down = self.down.counters();
        }
    }
}
