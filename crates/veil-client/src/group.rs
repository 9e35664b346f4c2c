//! Membership of a call's MLS group: the tokio shell around the call core's sans-I/O
//! [`Member`] (crate `veil-call`, specs/member.md).
//!
//! Every decision (process commits in order, rebase a lost commit, commit the service's
//! Remove proposals by rank, resubscribe on a gap or a lost stream, rejoin after a commit that
//! cannot be processed) is the member's. This shell only moves bytes and runs timers: it
//! makes the RPCs the member asks for and hands it their replies, feeds it the room's event
//! stream, and wakes it at the time it names. MLS work (commit creation, processing, external
//! joins) never blocks an async worker (`block_in_place`, or the blocking pool on a
//! current-thread runtime); frames never touch it (they use [`Group::frame_keys`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt as _;
use tonic::{Code as GrpcCode, Status as GrpcStatus};
use veil_call::{
    CallError, Code, Command, CommandId, Event, Failure, Member, MemberConfig, Reply, Request,
    RequestId, ServiceEvent,
};
use veil_mls::{CallSession, FrameKeys, KeyConfig};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::room_event::Event as Ev;

use crate::endpoint::Security;
use crate::error::ClientError;
use crate::keys::KeyClient;
use crate::link::LinkEvent;

/// What a group member looks like from outside (the call core's status).
pub type GroupStatus = veil_call::Status;

/// How to reach the room.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Key-service URL, e.g. `http://127.0.0.1:7443`; for replicas of the key service, their
    /// URLs separated by commas (the client fails over from one to the next, KDS-REP-04).
    pub url: String,
    /// Access token for `room` and `identity`.
    pub token: String,
    /// Room name.
    pub room: String,
    /// This participant's identity (must equal the token's).
    pub identity: String,
    /// How to trust the server (a private CA) and whether plaintext may leave loopback; used
    /// for the SFU too ([`RoomConfig`](crate::room::RoomConfig)).
    pub security: Security,
    /// SFrame key configuration.
    pub keys: KeyConfig,
    /// Delay per rank before a member commits the service's pending proposals.
    pub proposal_commit_delay: Duration,
    /// How long a command (a commit, a claim, a join) may take, retrying an unreachable
    /// service and rebasing lost races, before it fails. The room's event stream itself is
    /// resubscribed for as long as the member runs.
    pub retry_for: Duration,
}

impl GroupConfig {
    /// A configuration with default keys and timers.
    #[must_use]
    pub fn new(url: &str, token: &str, room: &str, identity: &str) -> Self {
        Self {
            url: url.to_owned(),
            token: token.to_owned(),
            room: room.to_owned(),
            identity: identity.to_owned(),
            security: Security::default(),
            keys: KeyConfig::default(),
            proposal_commit_delay: Duration::from_millis(300),
            retry_for: Duration::from_secs(30),
        }
    }

    fn member(&self) -> MemberConfig {
        MemberConfig {
            identity: self.identity.clone(),
            room: self.room.clone(),
            proposal_commit_delay: self.proposal_commit_delay,
            retry_for: self.retry_for,
        }
    }
}

type Outcome = Result<Option<u64>, ClientError>;

/// A handle on a group member running in a background task.
#[derive(Debug)]
pub struct Group {
    cmd: mpsc::Sender<(Command, oneshot::Sender<Outcome>)>,
    status: watch::Receiver<GroupStatus>,
    task: JoinHandle<Result<(), ClientError>>,
    frame_keys: FrameKeys,
    start: Instant,
    link_events: broadcast::Sender<LinkEvent>,
    /// The shell's client, shared (its channels and the replica in use, KDS-REP-04).
    keys: KeyClient,
}

impl Group {
    async fn start(cfg: GroupConfig, first: Command) -> Result<Self, ClientError> {
        let client =
            KeyClient::connect_with(&cfg.url, &cfg.token, &cfg.room, &cfg.security).await?;
        let session = CallSession::new(cfg.identity.as_bytes(), cfg.keys)?;
        let member = Member::with_session(cfg.member(), session, crate::link::random_u64());
        let frame_keys = member.frame_keys();
        let (status_tx, status) = watch::channel(GroupStatus::default());
        let link_events = broadcast::channel(16).0;
        let (cmd, cmds) = mpsc::channel(16);
        let start = Instant::now();
        let keys = client.clone();
        let shell = Shell {
            member: Some(member),
            client,
            start,
            requests: JoinSet::new(),
            stream: None,
            waiting: HashMap::new(),
            status: status_tx,
            link_events: link_events.clone(),
        };
        let group = Self {
            cmd,
            status,
            task: tokio::spawn(shell.run(cmds)),
            frame_keys,
            start,
            link_events,
            keys,
        };
        match group.call(first).await {
            Ok(_) => Ok(group),
            Err(e) => {
                group.task.abort();
                Err(e)
            }
        }
    }

    /// Create the room: a new group listing the service as external sender, registered with
    /// the service from its epoch-0 GroupInfo.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn create(cfg: GroupConfig) -> Result<Self, ClientError> {
        Self::start(cfg, Command::Create).await
    }

    /// Join by external commit from the newest GroupInfo, rebasing until a commit wins.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn join_external(cfg: GroupConfig) -> Result<Self, ClientError> {
        Self::start(cfg, Command::JoinExternal).await
    }

    /// Join the room by external commit, or create it if it does not exist yet (losing a race
    /// to create it falls back to joining).
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn join_or_create(cfg: GroupConfig) -> Result<Self, ClientError> {
        Self::start(cfg, Command::JoinOrCreate).await
    }

    /// Publish a KeyPackage and wait (in the background) for a member to add this identity;
    /// [`wait`](Self::wait) for `epoch.is_some()`.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn await_welcome(cfg: GroupConfig) -> Result<Self, ClientError> {
        Self::start(cfg, Command::AwaitWelcome).await
    }

    /// Add `identities` (they must have published KeyPackages); returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn add(&self, identities: &[&str]) -> Result<u64, ClientError> {
        let ids = identities.iter().map(|s| (*s).to_owned()).collect();
        self.epoch_of(Command::Add(ids)).await
    }

    /// Remove `identities`; returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn remove(&self, identities: &[&str]) -> Result<u64, ClientError> {
        let ids = identities.iter().map(|s| (*s).to_owned()).collect();
        self.epoch_of(Command::Remove(ids)).await
    }

    /// Commit a fresh leaf key (post-compromise security); returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn self_update(&self) -> Result<u64, ClientError> {
        self.epoch_of(Command::SelfUpdate).await
    }

    /// Leave: the service proposes this member's removal and the task stops.
    ///
    /// # Errors
    /// Service errors.
    pub async fn leave(self) -> Result<(), ClientError> {
        let r = self.call(Command::Leave).await;
        let _ = self.task.await;
        r.map(|_| ())
    }

    /// The key-service client this member uses: its connections, and the replica it is on.
    pub(crate) fn keys(&self) -> KeyClient {
        self.keys.clone()
    }

    /// Stop without telling anyone, as a crashed client would.
    pub fn vanish(self) {
        self.task.abort();
    }

    async fn call(&self, cmd: Command) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send((cmd, tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    async fn epoch_of(&self, cmd: Command) -> Result<u64, ClientError> {
        self.call(cmd)
            .await?
            .ok_or_else(|| ClientError::Timeout("the commit produced no epoch".into()))
    }

    /// The frame path's handle on this member's SFrame keys (swapped atomically at every
    /// epoch; never the MLS group): encrypt with it, and decrypt with a
    /// [`FrameKeys::decryptor`](veil_mls::FrameKeys::decryptor) per receiver, passing
    /// [`now`](Self::now) as the time.
    #[must_use]
    pub fn frame_keys(&self) -> FrameKeys {
        self.frame_keys.clone()
    }

    /// The member's clock: the `now` its keys' retention deadlines are set on, which a
    /// decryptor of [`frame_keys`](Self::frame_keys) must be given too.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> GroupStatus {
        self.status.borrow().clone()
    }

    /// Every status change from now on (epoch changes with their authenticator, membership,
    /// removal): for applications that show them, or wait on them while the [`Group`] itself
    /// is owned elsewhere.
    #[must_use]
    pub fn watch_status(&self) -> watch::Receiver<GroupStatus> {
        self.status.clone()
    }

    /// Losses and returns of the room's event stream from now on (the current state is in
    /// [`GroupStatus::key_service`]).
    #[must_use]
    pub fn link_events(&self) -> broadcast::Receiver<LinkEvent> {
        self.link_events.subscribe()
    }

    /// Wait until `pred` holds for the status, at most `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`]; [`ClientError::Stopped`] if the task ended first.
    pub async fn wait(
        &self,
        timeout: Duration,
        pred: impl Fn(&GroupStatus) -> bool,
    ) -> Result<GroupStatus, ClientError> {
        let mut rx = self.status.clone();
        let r = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| pred(s)).await.map(|s| s.clone()).ok()
        })
        .await;
        match r {
            Ok(Some(s)) => Ok(s),
            Ok(None) => {
                let s = self.status.borrow().clone();
                if pred(&s) {
                    Ok(s)
                } else {
                    Err(ClientError::Stopped)
                }
            }
            Err(_) => Err(ClientError::Timeout(format!(
                "status after {timeout:?}: {:?}",
                *self.status.borrow()
            ))),
        }
    }
}

/// A request the shell finished: its reply, or the event stream it opened.
enum Completed {
    Reply(RequestId, Reply),
    Stream(
        RequestId,
        Result<tonic::Streaming<pb::RoomEvent>, ClientError>,
    ),
}

/// The background task: the member, and the I/O it asks for.
struct Shell {
    /// Out only while it works on tokio's blocking pool (current-thread runtimes).
    member: Option<Member>,
    client: KeyClient,
    start: Instant,
    requests: JoinSet<Completed>,
    stream: Option<(RequestId, tonic::Streaming<pb::RoomEvent>)>,
    waiting: HashMap<CommandId, oneshot::Sender<Outcome>>,
    status: watch::Sender<GroupStatus>,
    link_events: broadcast::Sender<LinkEvent>,
}

impl Shell {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<(Command, oneshot::Sender<Outcome>)>,
    ) -> Result<(), ClientError> {
        loop {
            if let Some(end) = self.flush() {
                // Finish what the member still owes its callers, then stop.
                for (_, tx) in self.waiting.drain() {
                    let _ = tx.send(Err(ClientError::Stopped));
                }
                return end;
            }
            let wake = self.member().poll_timeout().map(|t| self.start + t);
            tokio::select! {
                Some(done) = self.requests.join_next(), if !self.requests.is_empty() => {
                    match done {
                        Ok(Completed::Reply(id, reply)) => {
                            self.with(move |m, now| m.handle_reply(id, reply, now)).await;
                        }
                        Ok(Completed::Stream(id, Ok(s))) => {
                            self.stream = Some((id, s));
                            self.with(move |m, now| m.handle_reply(id, Reply::Subscribed, now)).await;
                        }
                        Ok(Completed::Stream(id, Err(e))) => {
                            let reply = Reply::Failed(failure(e));
                            self.with(move |m, now| m.handle_reply(id, reply, now)).await;
                        }
                        Err(e) => tracing::error!(error = %e, "a key-service request task failed"),
                    }
                }
                ev = next_event(&mut self.stream) => {
                    let Some((id, ev)) = ev else { continue };
                    match ev {
                        Some(Ok(ev)) => {
                            if let Some(ev) = service_event(ev) {
                                self.with(move |m, now| m.handle_event(id, ev, now)).await;
                            }
                        }
                        Some(Err(s)) => {
                            tracing::debug!(status = %s, "room stream broke");
                            self.stream = None;
                            let why = failure(crate::keys::from_status(s));
                            self.with(move |m, now| m.handle_stream_end(id, Some(why), now)).await;
                        }
                        None => {
                            self.stream = None;
                            self.with(move |m, now| m.handle_stream_end(id, None, now)).await;
                        }
                    }
                }
                cmd = cmds.recv() => {
                    // The Group was dropped: nobody can command or watch it any more.
                    let Some((cmd, tx)) = cmd else { return Ok(()) };
                    let id = self.with(move |m, now| m.command(cmd, now)).await;
                    self.waiting.insert(id, tx);
                }
                () = sleep_until(wake) => {
                    self.with(|m, now| m.handle_timeout(now)).await;
                }
            }
        }
    }

    fn member(&self) -> &Member {
        self.member
            .as_ref()
            .expect("the member is back after each call")
    }

    /// Run `f` on the member with the shell's clock, never blocking an async worker: on a
    /// multi-threaded runtime this worker becomes a blocking thread for the call
    /// (`block_in_place`: the runtime moves its other tasks to another worker, and nothing
    /// crosses threads); on a current-thread runtime the member goes to the blocking pool.
    async fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Member, Duration) -> R + Send + 'static,
    ) -> R {
        let now = self.start.elapsed();
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            let m = self.member.as_mut().expect("one call at a time");
            return tokio::task::block_in_place(|| f(m, now));
        }
        let mut m = self.member.take().expect("one call at a time");
        let (m, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut m, now);
            (m, r)
        })
        .await
        .expect("the member does not panic");
        self.member = Some(m);
        r
    }

    /// Start the requests and deliver the events the member has queued. Returns the task's
    /// result once the member has stopped.
    fn flush(&mut self) -> Option<Result<(), ClientError>> {
        let mut end = None;
        let m = self
            .member
            .as_mut()
            .expect("the member is back after each call");
        while let Some((id, req)) = m.poll_request() {
            if matches!(req, Request::Subscribe { .. }) {
                // The new subscription replaces the old one (specs/member.md §4).
                self.stream = None;
            }
            let c = self.client.clone();
            self.requests.spawn(execute(c, id, req));
        }
        while let Some(ev) = m.poll_event() {
            match ev {
                Event::Status(s) => {
                    self.status.send_replace(s);
                }
                Event::Done { id, result } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(result.map_err(client_error));
                    }
                }
                Event::Link(e) => {
                    // Nobody listening is fine.
                    let _ = self.link_events.send(e);
                }
                Event::Resync { reason } => {
                    tracing::warn!(reason, "rejoining the room by external commit");
                }
                Event::Stopped { error } => {
                    end = Some(match error {
                        None => Ok(()),
                        Some(e) => Err(client_error(e)),
                    });
                }
            }
        }
        end
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next item of the open stream, with the stream's id; pending while none is open.
async fn next_event(
    stream: &mut Option<(RequestId, tonic::Streaming<pb::RoomEvent>)>,
) -> Option<(RequestId, Option<Result<pb::RoomEvent, GrpcStatus>>)> {
    match stream {
        Some((id, s)) => {
            let id = *id;
            Some((id, s.next().await))
        }
        None => std::future::pending().await,
    }
}

/// Make one RPC the member asked for.
async fn execute(mut c: KeyClient, id: RequestId, req: Request) -> Completed {
    let reply = |r: Result<Reply, ClientError>| {
        Completed::Reply(id, r.unwrap_or_else(|e| Reply::Failed(failure(e))))
    };
    match req {
        Request::ServiceInfo => reply(c.service_info().await.map(|i| Reply::ServiceInfo {
            external_sender_key: i.external_sender_key,
            external_sender_identity: i.external_sender_identity,
        })),
        Request::CreateRoom { group_info } => {
            reply(c.create_room(group_info).await.map(|_| Reply::Ok))
        }
        Request::GroupInfo => reply(
            c.group_info()
                .await
                .map(|(epoch, group_info)| Reply::GroupInfo { epoch, group_info }),
        ),
        Request::PublishKeyPackages { key_packages } => reply(
            c.publish_key_packages(key_packages)
                .await
                .map(|_| Reply::Ok),
        ),
        Request::ClaimKeyPackage { identity } => {
            reply(c.claim_key_package(&identity).await.map(Reply::KeyPackage))
        }
        Request::SendCommit {
            commit,
            welcome,
            group_info,
        } => reply(
            c.send_commit(commit, welcome, group_info)
                .await
                .map(|r| Reply::CommitAccepted { epoch: r.epoch }),
        ),
        Request::Leave => reply(c.leave().await.map(|()| Reply::Ok)),
        Request::Subscribe { from_epoch } => Completed::Stream(id, c.subscribe(from_epoch).await),
    }
}

fn service_event(ev: pb::RoomEvent) -> Option<ServiceEvent> {
    Some(match ev.event? {
        Ev::Commit(c) => ServiceEvent::Commit {
            epoch: c.epoch,
            message: c.message,
        },
        Ev::Proposal(p) => ServiceEvent::Proposal {
            epoch: p.epoch,
            message: p.message,
            removes: p.removes,
        },
        Ev::Welcome(w) => ServiceEvent::Welcome { message: w.message },
        Ev::Synced(s) => ServiceEvent::Synced { epoch: s.epoch },
    })
}

/// A failed RPC in the member's terms.
fn failure(e: ClientError) -> Failure {
    match e {
        ClientError::Stale {
            room_epoch,
            message,
        } => Failure::Stale {
            room_epoch,
            message,
        },
        ClientError::Refused { code, message } => Failure::Refused {
            code: Code::from_i32(code as i32),
            message,
        },
        // Unreachable, or anything else on the way there: the member retries.
        other => Failure::Unavailable(other.to_string()),
    }
}

/// A member's error in the SDK's terms.
fn client_error(e: CallError) -> ClientError {
    match e {
        CallError::Service(Failure::Unavailable(m)) => {
            ClientError::Unavailable(GrpcStatus::unavailable(m))
        }
        CallError::Service(Failure::Stale {
            room_epoch,
            message,
        }) => ClientError::Stale {
            room_epoch,
            message,
        },
        CallError::Service(Failure::Refused { code, message }) => ClientError::Refused {
            code: GrpcCode::from_i32(code.as_i32()),
            message,
        },
        CallError::Timeout(m) => ClientError::Timeout(m),
        CallError::Removed => ClientError::Removed,
        CallError::Mls(e) => ClientError::Mls(e),
        _ => ClientError::Stopped,
    }
}
