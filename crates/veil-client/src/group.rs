//! Membership of a call's MLS group, kept in step with the key service by a background task.
//!
//! A [`Group`] owns a [`CallSession`] and the room's event stream. The task processes commits
//! and proposals in order, commits the service's Remove proposals (the lowest-ranked present
//! member at once, the others after a rank-proportional delay if it did not), reconnects and
//! resumes from its epoch when the stream breaks (on a capped back-off, for as long as the
//! member runs: a server outage does not end it), and rebases its own commits when another
//! commit won the epoch (specs/key-service.md §7).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::Code;
use veil_mls::{CallSession, CommitOut, KeyConfig, MlsError, Processed, Released};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::room_event::Event as Ev;

use crate::error::ClientError;
use crate::keys::KeyClient;
use crate::link::{Backoff, LinkEvent, LinkStatus, jitter};

/// How to reach the room.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Key-service URL, e.g. `http://127.0.0.1:7443`.
    pub url: String,
    /// Access token for `room` and `identity`.
    pub token: String,
    /// Room name.
    pub room: String,
    /// This participant's identity (must equal the token's).
    pub identity: String,
    /// SFrame key configuration.
    pub keys: KeyConfig,
    /// Delay per rank before a member commits the service's pending proposals.
    pub proposal_commit_delay: Duration,
    /// How long a request (a commit, a claim, a join) keeps retrying an unreachable service
    /// before it fails. The room's event stream itself is resubscribed for as long as the
    /// member runs.
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
            keys: KeyConfig::default(),
            proposal_commit_delay: Duration::from_millis(300),
            retry_for: Duration::from_secs(30),
        }
    }
}

/// What a group member looks like from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The current epoch, once joined.
    pub epoch: Option<u64>,
    /// The epoch authenticator (equal at every member of an epoch).
    pub epoch_authenticator: Option<Vec<u8>>,
    /// Members' identities, by leaf index.
    pub members: Vec<String>,
    /// This member was removed; the task has stopped.
    pub removed: bool,
    /// Commits this member could not process although the service accepted them (each one
    /// triggers a rejoin by external commit).
    pub resyncs: u32,
    /// The epochs in which the service acknowledged a commit of this member (the epoch the
    /// commit was made in), oldest first.
    pub acknowledged: Vec<u64>,
    /// The room's event stream from the key service: up, or lost and being resubscribed.
    pub key_service: LinkStatus,
}

/// A member's MLS session, shared by the membership task (commits) and the media path (SFrame
/// encryption and decryption), with the one clock both must use for key retention.
#[derive(Clone)]
pub struct SharedSession {
    inner: Arc<Mutex<CallSession>>,
    start: Instant,
}

impl core::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedSession").finish_non_exhaustive()
    }
}

impl SharedSession {
    fn new(session: CallSession) -> Self {
        Self {
            inner: Arc::new(Mutex::new(session)),
            start: Instant::now(),
        }
    }

    /// Lock the session (briefly: a frame's encryption or decryption, or one MLS operation).
    pub fn lock(&self) -> MutexGuard<'_, CallSession> {
        // Every MLS operation leaves the session consistent before returning, so a panic
        // elsewhere while the lock was held does not make it unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time since the session started: the `now` of every call into it.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

enum Cmd {
    Add(Vec<String>, oneshot::Sender<Result<u64, ClientError>>),
    Remove(Vec<String>, oneshot::Sender<Result<u64, ClientError>>),
    SelfUpdate(oneshot::Sender<Result<u64, ClientError>>),
    Leave(oneshot::Sender<Result<(), ClientError>>),
}

/// A handle on a group member running in a background task.
#[derive(Debug)]
pub struct Group {
    cmd: mpsc::Sender<Cmd>,
    status: watch::Receiver<GroupStatus>,
    task: JoinHandle<Result<(), ClientError>>,
    session: SharedSession,
    frame_keys: veil_mls::FrameKeys,
    released: Option<mpsc::UnboundedReceiver<Released>>,
    link_events: broadcast::Sender<LinkEvent>,
}

impl Group {
    /// Create the room: a new group listing the service as external sender, registered with
    /// the service from its epoch-0 GroupInfo.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn create(cfg: GroupConfig) -> Result<Self, ClientError> {
        let mut a = Actor::connect(cfg).await?;
        let info = a.retry(|c| Box::pin(c.service_info())).await?;
        a.s().create_group_with_external_senders(
            a.cfg.room.as_bytes(),
            &[(info.external_sender_key, info.external_sender_identity)],
            a.now(),
        )?;
        let gi = a.s().group_info()?;
        a.retry(move |c| {
            let gi = gi.clone();
            Box::pin(async move { c.create_room(gi).await })
        })
        .await?;
        a.joined = true;
        Ok(a.spawn())
    }

    /// Join by external commit from the newest GroupInfo, rebasing until a commit wins.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn join_external(cfg: GroupConfig) -> Result<Self, ClientError> {
        let mut a = Actor::connect(cfg).await?;
        a.join_external().await?;
        Ok(a.spawn())
    }

    /// Join the room by external commit, or create it if it does not exist yet (losing a race
    /// to create it falls back to joining).
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn join_or_create(cfg: GroupConfig) -> Result<Self, ClientError> {
        let mut probe = KeyClient::connect(&cfg.url, &cfg.token, &cfg.room).await?;
        let missing = |e: &ClientError, code: Code| matches!(e, ClientError::Refused { code: c, .. } if *c == code);
        match probe.group_info().await {
            Ok(_) => Self::join_external(cfg).await,
            Err(e) if missing(&e, Code::NotFound) => match Self::create(cfg.clone()).await {
                Err(e) if missing(&e, Code::AlreadyExists) => Self::join_external(cfg).await,
                r => r,
            },
            Err(e) => Err(e),
        }
    }

    /// Publish a KeyPackage and wait (in the background) for a member to add this identity;
    /// [`wait`](Self::wait) for `epoch.is_some()`.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn await_welcome(cfg: GroupConfig) -> Result<Self, ClientError> {
        let mut a = Actor::connect(cfg).await?;
        let kp = a.s().key_package(false)?;
        a.retry(move |c| {
            let kp = kp.clone();
            Box::pin(async move { c.publish_key_packages(vec![kp]).await })
        })
        .await?;
        // The task subscribes (and resubscribes) itself; the Welcome is replayed to a member
        // who subscribes after it was sent (KDS-FAN-03).

        Ok(a.spawn())
    }

    /// Add `identities` (they must have published KeyPackages); returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn add(&self, identities: &[&str]) -> Result<u64, ClientError> {
        let ids = identities.iter().map(|s| (*s).to_owned()).collect();
        self.call(|tx| Cmd::Add(ids, tx)).await
    }

    /// Remove `identities`; returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn remove(&self, identities: &[&str]) -> Result<u64, ClientError> {
        let ids = identities.iter().map(|s| (*s).to_owned()).collect();
        self.call(|tx| Cmd::Remove(ids, tx)).await
    }

    /// Commit a fresh leaf key (post-compromise security); returns the new epoch.
    ///
    /// # Errors
    /// Service or MLS errors.
    pub async fn self_update(&self) -> Result<u64, ClientError> {
        self.call(Cmd::SelfUpdate).await
    }

    /// Leave: the service proposes this member's removal and the task stops.
    ///
    /// # Errors
    /// Service errors.
    pub async fn leave(self) -> Result<(), ClientError> {
        let r = self.call(Cmd::Leave).await;
        let _ = self.task.await;
        r
    }

    /// Stop without telling anyone, as a crashed client would.
    pub fn vanish(self) {
        self.task.abort();
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Cmd,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// The member's session, for the media path (SFrame encryption and decryption).
    #[must_use]
    pub fn session(&self) -> SharedSession {
        self.session.clone()
    }

    /// The frame path's handle on this member's SFrame keys (swapped atomically at every
    /// epoch; never the MLS group): encrypt with it, and decrypt with a
    /// [`FrameKeys::decryptor`](veil_mls::FrameKeys::decryptor) per receiver.
    #[must_use]
    pub fn frame_keys(&self) -> veil_mls::FrameKeys {
        self.frame_keys.clone()
    }

    /// Frames that were held for an epoch not known yet and decrypted once its commit arrived
    /// (their `tag` is what the media path gave when it got `Held`). Available once.
    pub fn take_released(&mut self) -> Option<mpsc::UnboundedReceiver<Released>> {
        self.released.take()
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

struct Actor {
    cfg: GroupConfig,
    client: KeyClient,
    session: SharedSession,
    released: mpsc::UnboundedSender<Released>,
    released_rx: Option<mpsc::UnboundedReceiver<Released>>,
    stream: Option<tonic::Streaming<pb::RoomEvent>>,
    joined: bool,
    status: watch::Sender<GroupStatus>,
    /// Identities the service proposed to remove in the current epoch.
    removals: BTreeSet<String>,
    proposals_seen: u64,
    commit_deadline: Option<tokio::time::Instant>,
    resyncs: u32,
    acknowledged: Vec<u64>,
    /// The event stream's link, its back-off, the next attempt and when it was lost; kept
    /// here, not in `next_event`, which the run loop cancels every tick.
    link: LinkStatus,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    lost_at: Option<Instant>,
    link_events: broadcast::Sender<LinkEvent>,
}

fn retryable(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable(_))
}

fn rebase(e: &ClientError) -> bool {
    matches!(e, ClientError::Stale { .. })
        || matches!(
            e,
            ClientError::Refused {
                code: Code::FailedPrecondition,
                ..
            }
        )
}

impl Actor {
    async fn connect(cfg: GroupConfig) -> Result<Self, ClientError> {
        let client = KeyClient::connect(&cfg.url, &cfg.token, &cfg.room).await?;
        let session = SharedSession::new(CallSession::new(cfg.identity.as_bytes(), cfg.keys)?);
        let (released, released_rx) = mpsc::unbounded_channel();
        Ok(Self {
            cfg,
            client,
            session,
            released,
            released_rx: Some(released_rx),
            stream: None,
            joined: false,
            status: watch::channel(GroupStatus::default()).0,
            removals: BTreeSet::new(),
            proposals_seen: 0,
            commit_deadline: None,
            resyncs: 0,
            acknowledged: Vec::new(),
            link: LinkStatus::default(),
            backoff: Backoff::new(Backoff::KEY_SERVICE),
            retry_at: None,
            lost_at: None,
            link_events: broadcast::channel(16).0,
        })
    }

    fn now(&self) -> Duration {
        self.session.now()
    }

    fn s(&self) -> MutexGuard<'_, CallSession> {
        self.session.lock()
    }

    /// Hand frames that were held for an epoch and have now decrypted to the media path.
    fn deliver(&self, released: Vec<Released>) {
        for r in released {
            // Nobody listening is fine: the application took no receiver.
            let _ = self.released.send(r);
        }
    }

    fn spawn(mut self) -> Group {
        self.publish_status(false);
        let (tx, rx) = mpsc::channel(16);
        let status = self.status.subscribe();
        let session = self.session.clone();
        let frame_keys = self.s().frame_keys();
        let released = self.released_rx.take();
        let link_events = self.link_events.clone();
        let task = tokio::spawn(self.run(rx));
        Group {
            cmd: tx,
            status,
            task,
            session,
            frame_keys,
            released,
            link_events,
        }
    }

    fn publish_status(&self, removed: bool) {
        let s = GroupStatus {
            epoch: self.joined.then(|| self.s().epoch()).flatten(),
            epoch_authenticator: self
                .joined
                .then(|| self.s().epoch_authenticator())
                .flatten(),
            members: self
                .s()
                .members()
                .into_iter()
                .map(|(_, id)| String::from_utf8_lossy(&id).into_owned())
                .collect(),
            removed,
            resyncs: self.resyncs,
            acknowledged: self.acknowledged.clone(),
            key_service: self.link.clone(),
        };
        self.status.send_replace(s);
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) -> Result<(), ClientError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let deadline = self.commit_deadline;
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    if self.command(cmd).await {
                        return Ok(());
                    }
                }
                ev = self.next_event() => {
                    match self.handle(ev?).await {
                        Err(ClientError::Removed) => {
                            self.publish_status(true);
                            return Ok(());
                        }
                        r => r?,
                    }
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    self.commit_deadline = None;
                    if self.removals.iter().any(|id| self.is_member(id)) {
                        match self.commit_with(|s| s.commit_pending_proposals()).await {
                            Ok(_) => {}
                            Err(ClientError::Removed) => { self.publish_status(true); return Ok(()) }
                            Err(e) => tracing::debug!(error = %e, "committing pending proposals failed"),
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = self.now();
                    self.s().tick(now);
                }
            }
        }
    }

    /// Run one command; `true` when the member stops.
    async fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Add(ids, tx) => {
                let r = self.add(&ids).await;
                let _ = tx.send(r);
            }
            Cmd::Remove(ids, tx) => {
                let refs: Vec<Vec<u8>> = ids.iter().map(|s| s.as_bytes().to_vec()).collect();
                let r = self
                    .commit_with(|s| {
                        let v: Vec<&[u8]> = refs.iter().map(Vec::as_slice).collect();
                        s.remove_members(&v)
                    })
                    .await;
                let _ = tx.send(r);
            }
            Cmd::SelfUpdate(tx) => {
                let r = self.commit_with(CallSession::self_update).await;
                let _ = tx.send(r);
            }
            Cmd::Leave(tx) => {
                let r = self.client.leave().await;
                self.s().leave_locally();
                let _ = tx.send(r);
                return true;
            }
        }
        false
    }

    fn is_member(&self, identity: &str) -> bool {
        self.s()
            .members()
            .iter()
            .any(|(_, id)| id == identity.as_bytes())
    }

    async fn add(&mut self, ids: &[String]) -> Result<u64, ClientError> {
        let mut kps = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id.clone();
            kps.push(
                self.retry(move |c| {
                    let id = id.clone();
                    Box::pin(async move { c.claim_key_package(&id).await })
                })
                .await?,
            );
        }
        self.commit_with(|s| s.add_members(&kps)).await
    }

    /// Retry an RPC while the service is unreachable.
    async fn retry<T>(
        &mut self,
        mut f: impl for<'a> FnMut(
            &'a mut KeyClient,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<T, ClientError>> + Send + 'a>,
        >,
    ) -> Result<T, ClientError> {
        let give_up = Instant::now() + self.cfg.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match f(&mut self.client).await {
                Err(e) if retryable(&e) && Instant::now() < give_up => {
                    tracing::debug!(error = %e, "service unavailable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                r => return r,
            }
        }
    }

    async fn send(&mut self, out: &CommitOut) -> Result<pb::SendCommitResponse, ClientError> {
        let (c, w, g) = (
            out.commit.clone(),
            out.welcome.clone().unwrap_or_default(),
            out.group_info.clone().unwrap_or_default(),
        );
        // The same bytes on every retry: if an earlier attempt was accepted but its reply lost,
        // the service answers `duplicate` (KDS-ORD-03).
        self.retry(move |cl| {
            let (c, w, g) = (c.clone(), w.clone(), g.clone());
            Box::pin(async move { cl.send_commit(c, w, g).await })
        })
        .await
    }

    /// Build a commit with `make`, send it, and rebase on a lost race until it wins.
    async fn commit_with(
        &mut self,
        make: impl Fn(&mut CallSession) -> Result<CommitOut, MlsError>,
    ) -> Result<u64, ClientError> {
        for _ in 0..64 {
            let out = make(&mut self.s())?;
            let epoch = self.s().epoch().unwrap_or(0);
            match self.send(&out).await {
                Ok(resp) => {
                    let now = self.now();
                    let released = self.s().confirm_commit(now)?;
                    self.deliver(released);
                    self.acknowledged.push(epoch);
                    self.after_epoch_change();
                    return Ok(resp.epoch);
                }
                Err(e) if rebase(&e) => {
                    self.s().discard_commit()?;
                    let seen = self.proposals_seen;
                    let target = match &e {
                        ClientError::Stale {
                            room_epoch: Some(r),
                            ..
                        } => *r,
                        _ => epoch + 1,
                    };
                    // Catch up: the winning commit, or the proposals the service insists on.
                    self.pump_until(|a| {
                        a.s().epoch().unwrap_or(0) >= target || a.proposals_seen > seen
                    })
                    .await?;
                }
                Err(e) => {
                    self.s().discard_commit()?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::Timeout("commit lost 64 races in a row".into()))
    }

    async fn pump_until(&mut self, done: impl Fn(&Self) -> bool) -> Result<(), ClientError> {
        let give_up = tokio::time::Instant::now() + self.cfg.retry_for;
        while !done(self) {
            let ev = tokio::time::timeout_at(give_up, self.next_event())
                .await
                .map_err(|_| ClientError::Timeout("waiting for the room's commits".into()))??;
            self.handle(ev).await?;
        }
        Ok(())
    }

    async fn join_external(&mut self) -> Result<(), ClientError> {
        let give_up = Instant::now() + self.cfg.retry_for;
        let mut backoff = Duration::from_millis(10);
        loop {
            let (_, gi) = self.retry(|c| Box::pin(c.group_info())).await?;
            let now = self.now();
            let out = self.s().join_external(&gi, now)?;
            match self.send(&out).await {
                Ok(_) => {
                    self.joined = true;
                    self.stream = None;
                    let sent_in = self.s().epoch().unwrap_or(1).saturating_sub(1);
                    self.acknowledged.push(sent_in);
                    self.after_epoch_change();
                    return Ok(());
                }
                // Lost the epoch, or our old leaf is still being removed: try again from the
                // newer GroupInfo.
                Err(e) if rebase(&e) && Instant::now() < give_up => {
                    self.s().leave_locally();
                    tokio::time::sleep(backoff).await;
                    if matches!(e, ClientError::Refused { .. }) {
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                Err(e) => {
                    self.s().leave_locally();
                    return Err(e);
                }
            }
        }
    }

    fn after_epoch_change(&mut self) {
        self.removals.clear();
        self.commit_deadline = None;
        self.publish_status(false);
    }

    /// The next event, reconnecting (and resuming from this member's epoch, KDS-FAN-02) as
    /// needed. A stream that breaks or cannot be opened for want of the service is a lost link:
    /// reported, and retried on the key service's [`Backoff`] with no end. Any other refusal
    /// is returned. Cancel-safe: the schedule lives in `self`.
    async fn next_event(&mut self) -> Result<pb::RoomEvent, ClientError> {
        loop {
            if self.stream.is_none() {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                let from = if self.joined { self.s().epoch() } else { None };
                match self.client.subscribe(from).await {
                    Ok(s) => {
                        self.stream = Some(s);
                        self.retry_at = None;
                        self.link_restored();
                        self.backoff.reset();
                    }
                    // Only members replay (KDS-FAN-04): refused with the token that subscribed
                    // before, a member that resumes from its epoch was removed meanwhile.
                    Err(ClientError::Refused {
                        code: Code::PermissionDenied,
                        ..
                    }) if from.is_some() => return Err(ClientError::Removed),
                    Err(e) if retryable(&e) => {
                        self.link_lost(e.to_string());
                        self.link.failed(e.to_string());
                        self.publish_status(false);
                        tracing::debug!(error = %e, attempt = self.link.attempts, "resubscribing failed");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.next().await {
                Some(Ok(ev)) => return Ok(ev),
                Some(Err(s)) => {
                    tracing::debug!(status = %s, "room stream broke; resubscribing");
                    self.stream = None;
                    // A refusal (e.g. the room is gone) is not a lost link: the resubscription
                    // returns it. Either way the next attempt waits its turn, so a stream that
                    // keeps failing cannot spin.
                    let e = crate::keys::from_status(s);
                    if retryable(&e) {
                        self.link_lost(format!("the room's stream broke: {e}"));
                    } else {
                        let wait = self.backoff.next_delay(jitter());
                        self.retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
                None => {
                    self.stream = None;
                    self.link_lost("the key service ended the room's stream".to_owned());
                }
            }
        }
    }

    /// The event stream is lost (or another attempt failed): report a new loss once, and set
    /// the next attempt.
    fn link_lost(&mut self, reason: String) {
        if self.link.is_up() {
            tracing::warn!(reason, "lost the key service's room stream; resubscribing");
            self.link.lose(reason.clone());
            self.lost_at = Some(Instant::now());
            self.backoff.reset();
            self.publish_status(false);
            let _ = self.link_events.send(LinkEvent::Lost { reason });
        }
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay(jitter()));
    }

    fn link_restored(&mut self) {
        if self.link.is_up() {
            return;
        }
        let attempts = self.link.attempts + 1;
        let down_for = self.lost_at.take().map_or(Duration::ZERO, |t| t.elapsed());
        tracing::info!(attempts, ?down_for, "the key service's room stream is back");
        self.link.restore();
        self.backoff.reset();
        self.publish_status(false);
        let _ = self
            .link_events
            .send(LinkEvent::Restored { attempts, down_for });
    }

    async fn handle(&mut self, ev: pb::RoomEvent) -> Result<(), ClientError> {
        let now = self.now();
        match ev.event {
            Some(Ev::Commit(c)) if self.joined => {
                let mine = self.s().epoch().unwrap_or(0);
                if c.epoch < mine {
                    return Ok(()); // already merged (our own, or a replay)
                }
                if c.epoch > mine {
                    // A gap: resubscribe from our epoch.
                    self.stream = None;
                    return Ok(());
                }
                let processed = self.s().process(&c.message, now);
                match processed {
                    Ok(Processed::Removed) => return Err(ClientError::Removed),
                    Ok(
                        Processed::EpochChanged { released, .. }
                        | Processed::OwnCommitMerged { released, .. },
                    ) => {
                        self.deliver(released);
                        self.after_epoch_change();
                    }
                    Ok(Processed::ProposalStored) => {}
                    Err(MlsError::Rejected(why)) => {
                        // The service accepted a commit we cannot process (it cannot check
                        // confirmation and membership tags): rejoin by external commit.
                        tracing::warn!(why, "cannot process an accepted commit; rejoining");
                        self.resyncs += 1;
                        self.s().leave_locally();
                        self.joined = false;
                        self.join_external().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Some(Ev::Proposal(p)) if self.joined => {
                if Some(p.epoch) != self.s().epoch() {
                    return Ok(());
                }
                self.s().process(&p.message, now)?;
                self.proposals_seen += 1;
                self.removals.insert(p.removes);
                self.schedule_proposal_commit();
            }
            Some(Ev::Welcome(w)) if !self.joined => {
                let released = self.s().join_welcome(&w.message, now)?;
                self.deliver(released);
                self.joined = true;
                self.after_epoch_change();
            }
            _ => {}
        }
        Ok(())
    }

    /// The lowest-ranked member not being removed commits at once, the next after one delay…
    fn schedule_proposal_commit(&mut self) {
        let me = self.cfg.identity.as_bytes();
        let mut candidates: Vec<(u32, Vec<u8>)> = self
            .s()
            .members()
            .into_iter()
            .filter(|(_, id)| !self.removals.contains(&*String::from_utf8_lossy(id)))
            .collect();
        candidates.sort();
        let Some(rank) = candidates.iter().position(|(_, id)| id == me) else {
            return; // we are the one leaving
        };
        let delay = self.cfg.proposal_commit_delay * u32::try_from(rank).unwrap_or(u32::MAX);
        self.commit_deadline = Some(tokio::time::Instant::now() + delay);
    }
}
