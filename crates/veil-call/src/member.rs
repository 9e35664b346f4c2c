//! The member state machine (specs/member.md): one participant's MLS membership of a room,
//! kept in step with the key service. Sans-I/O in the manner of quinn-proto: inputs are
//! commands, the service's replies and events, and timeouts, each with `now`; outputs are
//! [`Request`]s to send, [`Event`]s, and the next time it wants to be woken. Keys reach the
//! frame path through [`Member::frame_keys`], never through the member.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use openmls_rust_crypto::OpenMlsRustCrypto;
use veil_mls::{CallSession, CommitOut, FrameKeys, KeyConfig, MlsError, Processed, Provider};

use crate::error::CallError;
use crate::io::{Code, CommandId, Failure, Reply, Request, RequestId, ServiceEvent};
use crate::link::{Backoff, LinkEvent, LinkStatus};

/// How a member behaves.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This participant's identity (its MLS credential; must equal its token's).
    pub identity: String,
    /// The room (the MLS group id).
    pub room: String,
    /// Delay per rank before a member commits the service's pending proposals (MEM-PROP-01).
    pub proposal_commit_delay: Duration,
    /// How long a command may take before it fails with a timeout: its requests are retried
    /// while the service is unreachable, and its commit rebased while others win, until then.
    /// The event stream itself is resubscribed for as long as the member runs.
    pub retry_for: Duration,
}

impl MemberConfig {
    /// A configuration with default timers.
    #[must_use]
    pub fn new(identity: &str, room: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            room: room.to_owned(),
            proposal_commit_delay: Duration::from_millis(300),
            retry_for: Duration::from_secs(30),
        }
    }
}

/// What a member is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create the room: a new group listing the service as external sender, registered from
    /// its epoch-0 GroupInfo.
    Create,
    /// Join by external commit from the newest GroupInfo, until a commit wins.
    JoinExternal,
    /// Join by external commit, or create the room if it does not exist (losing the race to
    /// create it falls back to joining).
    JoinOrCreate,
    /// Publish a KeyPackage; the member joins when a Welcome arrives.
    AwaitWelcome,
    /// Add these identities (they must have published KeyPackages).
    Add(Vec<String>),
    /// Remove these identities.
    Remove(Vec<String>),
    /// Commit a fresh leaf key (post-compromise security).
    SelfUpdate,
    /// Leave: the service proposes this member's removal; the member stops.
    Leave,
}

/// What a member looks like from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The current epoch, once joined.
    pub epoch: Option<u64>,
    /// The epoch authenticator (equal at every member of an epoch).
    pub epoch_authenticator: Option<Vec<u8>>,
    /// Members' identities, by leaf index.
    pub members: Vec<String>,
    /// This member was removed; it has stopped.
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

/// What a member tells its shell.
#[derive(Debug)]
pub enum Event {
    /// The status changed (epoch, members, link, removal).
    Status(Status),
    /// A command ended: the epoch it produced (a join or commit), or `None` (leave, publish).
    Done {
        /// The command.
        id: CommandId,
        /// Its outcome.
        result: Result<Option<u64>, CallError>,
    },
    /// The room's event stream was lost or is back.
    Link(LinkEvent),
    /// The member could not process a commit the service accepted, and rejoins by external
    /// commit (MEM-SYNC-03).
    Resync {
        /// What MLS said.
        reason: String,
    },
    /// The member stopped: left, removed, or failed (the error). It takes no more input.
    Stopped {
        /// Why, unless it left.
        error: Option<CallError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Create,
    Join,
    JoinOrCreate,
    AwaitWelcome,
    Add(Vec<String>),
    Remove(Vec<String>),
    SelfUpdate,
    /// Commit the service's pending proposals (internal).
    CommitProposals,
    Leave,
    /// Rejoin by external commit after a commit could not be processed (internal).
    Rejoin,
}

impl Kind {
    fn joins(&self) -> bool {
        matches!(
            self,
            Self::Join | Self::JoinOrCreate | Self::Rejoin | Self::Create
        )
    }
}

#[derive(Debug)]
enum Step {
    Start,
    /// A reply is awaited; the request is kept for a retry.
    Wait(RequestId, Request),
    /// The service was unreachable: send again at `at`.
    Retry(Duration, Request),
    /// The commit lost the epoch: wait until the member reaches `target` or sees a proposal
    /// after `seen`, then make it again (MEM-CMT-03).
    Rebase {
        target: u64,
        seen: u64,
    },
    /// The external join lost: fetch the GroupInfo again at `at`.
    JoinAgain(Duration),
}

/// Whether a step left its command going, or finished it with this outcome.
enum Flow {
    Going,
    Done(Option<u64>),
}

#[derive(Debug)]
struct Op {
    id: Option<CommandId>,
    kind: Kind,
    step: Step,
    deadline: Duration,
    backoff: Backoff,
    join_backoff: Duration,
    rebases: u32,
    /// The epoch the pending commit was made in.
    made_in: u64,
    key_packages: Vec<Vec<u8>>,
}

/// The request back-off of a command: 50 ms doubling to 1 s.
const REQUEST_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// A commit rebased this many times in a row gives up (MEM-CMT-04).
const MAX_REBASES: u32 = 64;
/// How often a joined member retires expired keys.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// No stream; (re)subscribe at this time if one is wanted.
    Down(Duration),
    Opening(RequestId, Option<u64>),
    Up(RequestId),
}

/// A small deterministic generator for the jitter (splitmix64): the randomness is the seed
/// the caller gives.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One participant's membership of a room (specs/member.md). `P` is the openmls provider:
/// in memory by default, or SQLite (feature `sqlite`) for a member that restarts from its
/// stored state.
pub struct Member<P: Provider = OpenMlsRustCrypto> {
    cfg: MemberConfig,
    s: CallSession<P>,
    frames: FrameKeys,
    phase: Phase,
    joined: bool,
    awaiting_welcome: bool,
    next_request: u64,
    next_command: u64,
    requests: VecDeque<(RequestId, Request)>,
    events: VecDeque<Event>,
    queue: VecDeque<(Option<CommandId>, Kind)>,
    op: Option<Op>,
    rejoin: Option<Op>,
    /// Events that arrived while this member's commit awaited its verdict (MEM-CMT-02).
    deferred: VecDeque<ServiceEvent>,
    stream: Stream,
    link: LinkStatus,
    backoff: Backoff,
    lost_at: Option<Duration>,
    /// Identities the service proposed to remove in the current epoch.
    removals: BTreeSet<String>,
    proposals_seen: u64,
    commit_at: Option<Duration>,
    next_tick: Option<Duration>,
    resyncs: u32,
    acknowledged: Vec<u64>,
    last_status: Status,
    jitter: Jitter,
}

impl<P: Provider> core::fmt::Debug for Member<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Member")
            .field("identity", &self.cfg.identity)
            .field("epoch", &self.s.epoch())
            .field("joined", &self.joined)
            .field("op", &self.op.as_ref().map(|o| &o.kind))
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Member<OpenMlsRustCrypto> {
    /// A member with a fresh signature key and its MLS state in memory. `seed` is the
    /// randomness of its retry jitter.
    ///
    /// # Errors
    /// [`CallError::Mls`] for an impossible key configuration.
    pub fn new(cfg: MemberConfig, keys: KeyConfig, seed: u64) -> Result<Self, CallError> {
        let s = CallSession::new(cfg.identity.as_bytes(), keys)?;
        Ok(Self::with_session(cfg, s, seed))
    }
}

impl<P: Provider> Member<P> {
    /// A member around a session made by the caller (e.g. with a SQLite provider). If the
    /// session is already in the room's group (restored after a restart, MEM-RST-01), the
    /// member resubscribes from its epoch and commits a self-update at once, since a restored
    /// session has no sender key (its counter position was lost).
    pub fn with_session(cfg: MemberConfig, session: CallSession<P>, seed: u64) -> Self {
        let joined = session.epoch().is_some();
        let frames = session.frame_keys();
        let mut m = Self {
            cfg,
            s: session,
            frames,
            phase: Phase::Running,
            joined,
            awaiting_welcome: false,
            next_request: 0,
            next_command: 0,
            requests: VecDeque::new(),
            events: VecDeque::new(),
            queue: VecDeque::new(),
            op: None,
            rejoin: None,
            deferred: VecDeque::new(),
            stream: Stream::Down(Duration::ZERO),
            link: LinkStatus::default(),
            backoff: Backoff::new(Backoff::KEY_SERVICE),
            lost_at: None,
            removals: BTreeSet::new(),
            proposals_seen: 0,
            commit_at: None,
            next_tick: None,
            resyncs: 0,
            acknowledged: Vec::new(),
            last_status: Status::default(),
            jitter: Jitter(seed),
        };
        if joined {
            m.queue.push_back((None, Kind::SelfUpdate));
        }
        m
    }

    /// The frame path's handle on this member's SFrame keys: swapped at every epoch, never the
    /// MLS group (MLS-KEY-07).
    #[must_use]
    pub fn frame_keys(&self) -> FrameKeys {
        self.frames.clone()
    }

    /// The MLS session (read-only: epoch, members, signature key for a restore).
    #[must_use]
    pub fn session(&self) -> &CallSession<P> {
        &self.s
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            epoch: if self.joined { self.s.epoch() } else { None },
            epoch_authenticator: if self.joined {
                self.s.epoch_authenticator()
            } else {
                None
            },
            members: self
                .s
                .members()
                .into_iter()
                .map(|(_, id)| String::from_utf8_lossy(&id).into_owned())
                .collect(),
            removed: self.last_status.removed,
            resyncs: self.resyncs,
            acknowledged: self.acknowledged.clone(),
            key_service: self.link.clone(),
        }
    }

    /// Whether the member has stopped (left, removed, failed).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Give the member a command; its outcome comes as [`Event::Done`] with the returned id.
    /// Commands run one at a time, in order.
    pub fn command(&mut self, cmd: Command, now: Duration) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        if self.phase == Phase::Stopped {
            self.events.push_back(Event::Done {
                id,
                result: Err(CallError::Stopped),
            });
            return id;
        }
        let kind = match cmd {
            Command::Create => Kind::Create,
            Command::JoinExternal => Kind::Join,
            Command::JoinOrCreate => Kind::JoinOrCreate,
            Command::AwaitWelcome => Kind::AwaitWelcome,
            Command::Add(ids) => Kind::Add(ids),
            Command::Remove(ids) => Kind::Remove(ids),
            Command::SelfUpdate => Kind::SelfUpdate,
            Command::Leave => Kind::Leave,
        };
        self.queue.push_back((Some(id), kind));
        self.advance(now);
        id
    }

    /// The next request to send, with the id its reply must carry.
    pub fn poll_request(&mut self) -> Option<(RequestId, Request)> {
        self.requests.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the member wants [`handle_timeout`](Self::handle_timeout) next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.phase == Phase::Stopped {
            return None;
        }
        let op_time = |o: &Op| match o.step {
            Step::Retry(at, _) | Step::JoinAgain(at) => Some(at),
            Step::Rebase { .. } => Some(o.deadline),
            Step::Start | Step::Wait(..) => None,
        };
        let stream = match self.stream {
            Stream::Down(at) if self.stream_wanted() => Some(at),
            _ => None,
        };
        [
            self.op.as_ref().and_then(op_time),
            self.rejoin.as_ref().and_then(op_time),
            stream,
            // Due only between commands (MEM-PROP-01): while one runs, a past time would wake
            // the shell again and again until it ends.
            self.commit_at.filter(|_| self.op.is_none()),
            self.next_tick,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time has passed.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.next_tick.is_some_and(|t| t <= now) {
            self.s.tick(now);
            self.next_tick = Some(now + TICK);
        }
        self.advance(now);
    }

    /// The reply to request `id`.
    pub fn handle_reply(&mut self, id: RequestId, reply: Reply, now: Duration) {
        if self.phase == Phase::Stopped {
            return;
        }
        if let Stream::Opening(sid, from) = self.stream
            && sid == id
        {
            self.on_subscribed(id, from, reply, now);
        } else if self
            .rejoin
            .as_ref()
            .is_some_and(|o| matches!(o.step, Step::Wait(w, _) if w == id))
        {
            let op = self.rejoin.take().expect("checked above");
            if let Some(op) = self.on_reply(op, reply, now) {
                self.rejoin = Some(op);
            }
        } else if self
            .op
            .as_ref()
            .is_some_and(|o| matches!(o.step, Step::Wait(w, _) if w == id))
        {
            let op = self.op.take().expect("checked above");
            if let Some(op) = self.on_reply(op, reply, now) {
                self.op = Some(op);
            }
        }
        // Anything else answers a request of a step that is over: dropped.
        self.drain_deferred(now);
        self.advance(now);
    }

    /// An event of the stream opened by request `stream`.
    pub fn handle_event(&mut self, stream: RequestId, ev: ServiceEvent, now: Duration) {
        if self.phase == Phase::Stopped || self.stream != Stream::Up(stream) {
            return; // a straggler of a stream that was replaced (MEM-SYNC-01)
        }
        if self.committing() {
            self.deferred.push_back(ev);
            return;
        }
        self.on_event(ev, now);
        self.advance(now);
    }

    /// The stream opened by request `stream` ended: cleanly (`None`) or with a failure.
    pub fn handle_stream_end(&mut self, stream: RequestId, why: Option<Failure>, now: Duration) {
        if self.phase == Phase::Stopped || self.stream != Stream::Up(stream) {
            return;
        }
        match why {
            None => self.link_lost("the key service ended the room's stream".into(), now),
            Some(Failure::Unavailable(m)) => {
                self.link_lost(format!("the room's stream broke: {m}"), now);
            }
            // A refusal (e.g. the room is gone) is not a lost link: the resubscription returns
            // it. Either way the next attempt waits its turn, so a failing stream cannot spin.
            Some(_) => {
                let wait = self.backoff.next_delay(self.jitter.unit());
                self.stream = Stream::Down(now + wait);
            }
        }
        self.advance(now);
    }

    // ---- internals -----------------------------------------------------------------------

    fn request(&mut self, req: Request) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.requests.push_back((id, req));
        id
    }

    fn stream_wanted(&self) -> bool {
        self.phase == Phase::Running && (self.joined || self.awaiting_welcome)
    }

    /// A commit of this member awaits the service's verdict: the room's events wait too, so
    /// the member's own commit, echoed back, is not processed before it is confirmed
    /// (MEM-CMT-02).
    fn committing(&self) -> bool {
        self.op.as_ref().is_some_and(|o| {
            !o.kind.joins()
                && matches!(
                    o.step,
                    Step::Wait(_, Request::SendCommit { .. })
                        | Step::Retry(_, Request::SendCommit { .. })
                )
        })
    }

    fn drain_deferred(&mut self, now: Duration) {
        while !self.committing() && self.phase == Phase::Running {
            let Some(ev) = self.deferred.pop_front() else {
                break;
            };
            self.on_event(ev, now);
        }
    }

    fn publish_status(&mut self) {
        let s = self.status();
        if s != self.last_status {
            self.last_status = s.clone();
            self.events.push_back(Event::Status(s));
        }
    }

    fn finish(&mut self, op: Op, result: Result<Option<u64>, CallError>) {
        match op.id {
            Some(id) => self.events.push_back(Event::Done { id, result }),
            None => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, kind = ?op.kind, "internal step failed");
                }
            }
        }
    }

    fn stop(&mut self, error: Option<CallError>) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        let removed = matches!(error, Some(CallError::Removed));
        for op in [self.op.take(), self.rejoin.take()].into_iter().flatten() {
            let e = if removed {
                CallError::Removed
            } else {
                CallError::Stopped
            };
            self.finish(op, Err(e));
        }
        while let Some((id, kind)) = self.queue.pop_front() {
            let e = if removed {
                CallError::Removed
            } else {
                CallError::Stopped
            };
            self.finish(new_op(id, kind, Duration::ZERO), Err(e));
        }
        self.deferred.clear();
        self.commit_at = None;
        self.next_tick = None;
        if removed {
            self.last_status.removed = true;
            let mut s = self.status();
            s.removed = true;
            self.last_status = s.clone();
            self.events.push_back(Event::Status(s));
        } else {
            self.publish_status();
        }
        self.events.push_back(Event::Stopped { error });
    }

    /// Move every piece forward as far as `now` allows.
    fn advance(&mut self, now: Duration) {
        if self.phase == Phase::Stopped {
            return;
        }
        // The resync rejoin first: nothing else can run while out of the group.
        if let Some(op) = self.rejoin.take() {
            self.rejoin = self.step(op, now);
        }
        if let Some(op) = self.op.take() {
            self.op = self.step(op, now);
        }
        while self.op.is_none() && self.phase == Phase::Running {
            // The service's proposals are committed between commands (MEM-PROP-01).
            let kind = if self.commit_at.is_some_and(|t| t <= now) && self.joined {
                self.commit_at = None;
                if !self.removals.iter().any(|id| self.is_member(id)) {
                    continue;
                }
                (None, Kind::CommitProposals)
            } else if let Some(next) = self.queue.pop_front() {
                next
            } else {
                break;
            };
            let op = new_op(kind.0, kind.1, now + self.cfg.retry_for);
            self.op = self.step(op, now);
        }
        if self.phase != Phase::Running {
            return;
        }
        if self.joined && self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
        if let Stream::Down(at) = self.stream
            && self.stream_wanted()
            && at <= now
        {
            let from = if self.joined { self.s.epoch() } else { None };
            let id = self.request(Request::Subscribe { from_epoch: from });
            self.stream = Stream::Opening(id, from);
        }
        self.publish_status();
    }

    /// Run `op` as far as it goes now; `None` once it has finished.
    fn step(&mut self, mut op: Op, now: Duration) -> Option<Op> {
        loop {
            match std::mem::replace(&mut op.step, Step::Start) {
                Step::Start => match self.begin(&mut op) {
                    Ok(Flow::Going) => {}
                    Ok(Flow::Done(epoch)) => {
                        self.finish(op, Ok(epoch));
                        return None;
                    }
                    Err(e) => {
                        self.finish(op, Err(e));
                        return None;
                    }
                },
                Step::Retry(at, req) if at <= now => {
                    let id = self.request(req.clone());
                    op.step = Step::Wait(id, req);
                }
                Step::JoinAgain(at) if at <= now => {
                    let id = self.request(Request::GroupInfo);
                    op.step = Step::Wait(id, Request::GroupInfo);
                }
                Step::Rebase { target, seen } => {
                    let epoch = self.s.epoch().unwrap_or(0);
                    if self.joined && (epoch >= target || self.proposals_seen > seen) {
                        op.rebases += 1;
                        if op.rebases >= MAX_REBASES {
                            self.finish(
                                op,
                                Err(CallError::Timeout(format!(
                                    "the commit lost {MAX_REBASES} races in a row"
                                ))),
                            );
                            return None;
                        }
                        match self.make_commit(&mut op) {
                            Ok(Flow::Going) => {}
                            Ok(Flow::Done(epoch)) => {
                                self.finish(op, Ok(epoch));
                                return None;
                            }
                            Err(e) => {
                                self.finish(op, Err(e));
                                return None;
                            }
                        }
                    } else if now >= op.deadline {
                        self.finish(
                            op,
                            Err(CallError::Timeout(
                                "waiting for the room's commits to rebase on".into(),
                            )),
                        );
                        return None;
                    } else {
                        op.step = Step::Rebase { target, seen };
                    }
                }
                other => op.step = other,
            }
            // Settled: a request in flight, or waiting for a time or an epoch.
            if !matches!(op.step, Step::Start) {
                let ready = match &op.step {
                    Step::Retry(at, _) | Step::JoinAgain(at) => *at <= now,
                    _ => false,
                };
                if !ready {
                    return Some(op);
                }
            }
        }
    }

    /// The first step of a command.
    fn begin(&mut self, op: &mut Op) -> Result<Flow, CallError> {
        let req = match &op.kind {
            Kind::Create => Request::ServiceInfo,
            Kind::Join | Kind::JoinOrCreate | Kind::Rejoin => Request::GroupInfo,
            Kind::AwaitWelcome => Request::PublishKeyPackages {
                key_packages: vec![self.s.key_package(false)?],
            },
            Kind::Add(ids) if !ids.is_empty() => Request::ClaimKeyPackage {
                identity: ids[0].clone(),
            },
            Kind::Add(_) | Kind::Remove(_) | Kind::SelfUpdate | Kind::CommitProposals => {
                return self.make_commit(op);
            }
            Kind::Leave => Request::Leave,
        };
        self.send(op, req);
        Ok(Flow::Going)
    }

    /// Make this command's commit and send it (MEM-CMT-01), unless there is nothing to commit.
    fn make_commit(&mut self, op: &mut Op) -> Result<Flow, CallError> {
        if !self.joined {
            if self.rejoin.is_some() {
                // Out of the group while rejoining: make the commit once back in (MEM-SYNC-03).
                op.step = Step::Rebase {
                    target: 0,
                    seen: self.proposals_seen,
                };
                return Ok(Flow::Going);
            }
            return Err(MlsError::NotInGroup.into());
        }
        let out: CommitOut = match &op.kind {
            Kind::Add(_) => self.s.add_members(&op.key_packages)?,
            Kind::Remove(ids) => {
                let refs: Vec<&[u8]> = ids.iter().map(|s| s.as_bytes()).collect();
                self.s.remove_members(&refs)?
            }
            Kind::SelfUpdate => self.s.self_update()?,
            Kind::CommitProposals => {
                if !self.removals.iter().any(|id| self.is_member(id)) {
                    return Ok(Flow::Done(self.s.epoch()));
                }
                self.s.commit_pending_proposals()?
            }
            other => {
                return Err(CallError::Mls(MlsError::Internal(format!(
                    "{other:?} makes no commit"
                ))));
            }
        };
        op.made_in = self.s.epoch().unwrap_or(0);
        let req = Request::SendCommit {
            commit: out.commit,
            welcome: out.welcome.unwrap_or_default(),
            group_info: out.group_info.unwrap_or_default(),
        };
        self.send(op, req);
        Ok(Flow::Going)
    }

    /// The reply to `op`'s request; returns the op if it goes on.
    fn on_reply(&mut self, mut op: Op, reply: Reply, now: Duration) -> Option<Op> {
        let Step::Wait(_, req) = std::mem::replace(&mut op.step, Step::Start) else {
            unreachable!("routed by request id")
        };
        match self.on_reply_inner(&mut op, req, reply, now) {
            Ok(Some(epoch)) => {
                self.finish(op, Ok(epoch));
                None
            }
            Ok(None) => Some(op),
            Err(e) => {
                if matches!(op.kind, Kind::Rejoin) {
                    // Out of the group with no way back: the member cannot go on.
                    self.finish(op, Err(CallError::Stopped));
                    self.stop(Some(e));
                } else {
                    self.finish(op, Err(e));
                }
                None
            }
        }
    }

    /// `Ok(Some(result))`: the op finished; `Ok(None)`: it goes on (its step is set).
    #[allow(clippy::too_many_lines)] // one arm per request kind, each a few lines
    fn on_reply_inner(
        &mut self,
        op: &mut Op,
        req: Request,
        reply: Reply,
        now: Duration,
    ) -> Result<Option<Option<u64>>, CallError> {
        let group_commit = matches!(req, Request::SendCommit { .. }) && !op.kind.joins();
        if let Reply::Failed(Failure::Unavailable(m)) = &reply {
            if now < op.deadline {
                op.step = Step::Retry(now + op.backoff.next_delay(self.jitter.unit()), req);
                return Ok(None);
            }
            if group_commit {
                self.s.discard_commit()?;
            }
            if op.kind.joins() && self.s.epoch().is_some() && !self.joined {
                self.s.leave_locally();
            }
            return Err(CallError::Service(Failure::Unavailable(m.clone())));
        }
        let rebase = |f: &Failure| {
            matches!(
                f,
                Failure::Stale { .. }
                    | Failure::Refused {
                        code: Code::FailedPrecondition,
                        ..
                    }
            )
        };
        match (req, reply) {
            (
                Request::ServiceInfo,
                Reply::ServiceInfo {
                    external_sender_key,
                    external_sender_identity,
                },
            ) => {
                self.s.create_group_with_external_senders(
                    self.cfg.room.as_bytes(),
                    &[(external_sender_key, external_sender_identity)],
                    now,
                )?;
                let gi = self.s.group_info()?;
                self.send(op, Request::CreateRoom { group_info: gi });
                Ok(None)
            }
            (Request::CreateRoom { .. }, Reply::Ok) => {
                self.joined = true;
                self.after_epoch_change();
                Ok(Some(self.s.epoch()))
            }
            (
                Request::CreateRoom { .. },
                Reply::Failed(Failure::Refused {
                    code: Code::AlreadyExists,
                    ..
                }),
            ) if op.kind == Kind::JoinOrCreate => {
                // Someone created it first: join theirs.
                self.s.leave_locally();
                op.kind = Kind::Join;
                self.send(op, Request::GroupInfo);
                Ok(None)
            }
            (
                Request::GroupInfo,
                Reply::Failed(Failure::Refused {
                    code: Code::NotFound,
                    ..
                }),
            ) if op.kind == Kind::JoinOrCreate => {
                self.send(op, Request::ServiceInfo);
                Ok(None)
            }
            (Request::GroupInfo, Reply::GroupInfo { group_info, .. }) => {
                let out = self.s.join_external(&group_info, now)?;
                self.send(
                    op,
                    Request::SendCommit {
                        commit: out.commit,
                        welcome: out.welcome.unwrap_or_default(),
                        group_info: out.group_info.unwrap_or_default(),
                    },
                );
                Ok(None)
            }
            (Request::ClaimKeyPackage { .. }, Reply::KeyPackage(kp)) => {
                op.key_packages.push(kp);
                let Kind::Add(ids) = &op.kind else {
                    unreachable!("only Add claims")
                };
                if let Some(next) = ids.get(op.key_packages.len()).cloned() {
                    self.send(op, Request::ClaimKeyPackage { identity: next });
                    return Ok(None);
                }
                match self.make_commit(op)? {
                    Flow::Going => Ok(None),
                    Flow::Done(epoch) => Ok(Some(epoch)),
                }
            }
            (Request::PublishKeyPackages { .. }, Reply::Ok) => {
                self.awaiting_welcome = true;
                Ok(Some(None))
            }
            (Request::Leave, r) => {
                self.s.leave_locally();
                self.joined = false;
                let result = match r {
                    Reply::Failed(f) => Err(CallError::Service(f)),
                    _ => Ok(None),
                };
                self.stop(None);
                result.map(Some)
            }
            (Request::SendCommit { .. }, Reply::CommitAccepted { epoch }) if op.kind.joins() => {
                // An external join won (MEM-JOIN-02): resubscribe from the new epoch.
                self.joined = true;
                self.stream = Stream::Down(now);
                let sent_in = self.s.epoch().unwrap_or(1).saturating_sub(1);
                self.acknowledged.push(sent_in);
                self.after_epoch_change();
                Ok(Some(Some(epoch)))
            }
            (Request::SendCommit { .. }, Reply::CommitAccepted { epoch }) => {
                self.s.confirm_commit(now)?;
                self.acknowledged.push(op.made_in);
                self.after_epoch_change();
                Ok(Some(Some(epoch)))
            }
            (Request::SendCommit { .. }, Reply::Failed(f)) if op.kind.joins() => {
                self.s.leave_locally();
                if rebase(&f) && now < op.deadline {
                    // Lost the epoch, or our old leaf is still being removed: again from the
                    // newer GroupInfo (MEM-JOIN-03).
                    op.step = Step::JoinAgain(now + op.join_backoff);
                    if matches!(f, Failure::Refused { .. }) {
                        op.join_backoff = (op.join_backoff * 2).min(Duration::from_secs(1));
                    }
                    return Ok(None);
                }
                Err(CallError::Service(f))
            }
            (Request::SendCommit { .. }, Reply::Failed(f)) => {
                self.s.discard_commit()?;
                if rebase(&f) {
                    let target = match &f {
                        Failure::Stale {
                            room_epoch: Some(r),
                            ..
                        } => *r,
                        _ => op.made_in + 1,
                    };
                    op.step = Step::Rebase {
                        target,
                        seen: self.proposals_seen,
                    };
                    return Ok(None);
                }
                Err(CallError::Service(f))
            }
            (_, Reply::Failed(f)) => Err(CallError::Service(f)),
            (req, reply) => Err(CallError::Mls(MlsError::Internal(format!(
                "unexpected reply {reply:?} to {req:?}"
            )))),
        }
    }

    fn send(&mut self, op: &mut Op, req: Request) {
        let id = self.request(req.clone());
        op.step = Step::Wait(id, req);
    }

    fn after_epoch_change(&mut self) {
        self.removals.clear();
        self.commit_at = None;
        self.publish_status();
    }

    fn is_member(&self, identity: &str) -> bool {
        self.s
            .members()
            .iter()
            .any(|(_, id)| id == identity.as_bytes())
    }

    fn on_subscribed(&mut self, id: RequestId, from: Option<u64>, reply: Reply, now: Duration) {
        match reply {
            Reply::Subscribed => {
                self.stream = Stream::Up(id);
                self.link_restored(now);
            }
            // Only members replay (KDS-FAN-04): a member refused its replay was removed while
            // away (MEM-SYNC-04).
            Reply::Failed(Failure::Refused {
                code: Code::PermissionDenied,
                ..
            }) if from.is_some() => self.stop(Some(CallError::Removed)),
            Reply::Failed(Failure::Unavailable(m)) => {
                self.link_lost(m.clone(), now);
                self.link.failed(m);
                self.publish_status();
            }
            Reply::Failed(f) => self.stop(Some(CallError::Service(f))),
            other => self.stop(Some(CallError::Mls(MlsError::Internal(format!(
                "unexpected reply {other:?} to a subscription"
            ))))),
        }
    }

    /// The stream is lost (or another attempt failed): report a new loss once, and set the
    /// next attempt (MEM-SYNC-02).
    fn link_lost(&mut self, reason: String, now: Duration) {
        if self.link.is_up() {
            tracing::warn!(reason, "lost the key service's room stream; resubscribing");
            self.link.lose(reason.clone());
            self.lost_at = Some(now);
            self.backoff.reset();
            self.events
                .push_back(Event::Link(LinkEvent::Lost { reason }));
        }
        let wait = self.backoff.next_delay(self.jitter.unit());
        self.stream = Stream::Down(now + wait);
        self.publish_status();
    }

    fn link_restored(&mut self, now: Duration) {
        self.backoff.reset();
        if self.link.is_up() {
            return;
        }
        let attempts = self.link.attempts + 1;
        let down_for = self.lost_at.take().map_or(Duration::ZERO, |t| now - t);
        tracing::info!(attempts, ?down_for, "the key service's room stream is back");
        self.link.restore();
        self.events
            .push_back(Event::Link(LinkEvent::Restored { attempts, down_for }));
        self.publish_status();
    }

    fn on_event(&mut self, ev: ServiceEvent, now: Duration) {
        match ev {
            ServiceEvent::Commit { epoch, message } if self.joined => {
                let mine = self.s.epoch().unwrap_or(0);
                if epoch < mine {
                    return; // merged already (our own, or a replay): MEM-SYNC-01
                }
                if epoch > mine {
                    // A gap: resubscribe from our epoch (MEM-SYNC-01).
                    self.stream = Stream::Down(now);
                    return;
                }
                match self.s.process(&message, now) {
                    Ok(Processed::Removed) => self.stop(Some(CallError::Removed)),
                    Ok(Processed::EpochChanged { .. } | Processed::OwnCommitMerged { .. }) => {
                        self.after_epoch_change();
                    }
                    Ok(Processed::ProposalStored) => {}
                    Err(MlsError::Rejected(why)) => {
                        // The service accepted a commit we cannot process (it cannot check
                        // confirmation and membership tags): rejoin by external commit
                        // (MEM-SYNC-03).
                        tracing::warn!(why, "cannot process an accepted commit; rejoining");
                        self.resyncs += 1;
                        self.s.leave_locally();
                        self.joined = false;
                        self.stream = Stream::Down(now);
                        self.events.push_back(Event::Resync { reason: why });
                        if self.rejoin.is_none() {
                            let op = new_op(None, Kind::Rejoin, now + self.cfg.retry_for);
                            self.rejoin = self.step(op, now);
                        }
                        self.publish_status();
                    }
                    Err(e) => self.stop(Some(e.into())),
                }
            }
            ServiceEvent::Proposal {
                epoch,
                message,
                removes,
            } if self.joined => {
                if Some(epoch) != self.s.epoch() {
                    return;
                }
                if let Err(e) = self.s.process(&message, now) {
                    self.stop(Some(e.into()));
                    return;
                }
                self.proposals_seen += 1;
                self.removals.insert(removes);
                self.schedule_proposal_commit(now);
            }
            ServiceEvent::Synced { epoch } if self.joined && self.s.epoch() == Some(epoch) => {
                // MEM-RST-01: the replay is over and the room is at our epoch, so a pending
                // commit an earlier process left in the stored state never reached the room
                // (no commit of ours is in flight while events are processed): drop it, and a
                // restored member that still cannot send commits its self-update now.
                if let Err(e) = self.s.discard_commit() {
                    self.stop(Some(e.into()));
                    return;
                }
                if self.frames.sender_kid().is_none()
                    && !self.queue.iter().any(|(_, k)| *k == Kind::SelfUpdate)
                {
                    self.queue.push_back((None, Kind::SelfUpdate));
                }
            }
            ServiceEvent::Welcome { message } if !self.joined && self.rejoin.is_none() => {
                match self.s.join_welcome(&message, now) {
                    Ok(_) => {
                        self.joined = true;
                        self.awaiting_welcome = false;
                        self.after_epoch_change();
                    }
                    Err(e) => self.stop(Some(e.into())),
                }
            }
            _ => {}
        }
    }

    /// The lowest-ranked member not being removed commits at once, the next after one delay,
    /// and so on (MEM-PROP-01).
    fn schedule_proposal_commit(&mut self, now: Duration) {
        let me = self.cfg.identity.as_bytes();
        let mut candidates: Vec<(u32, Vec<u8>)> = self
            .s
            .members()
            .into_iter()
            .filter(|(_, id)| !self.removals.contains(&*String::from_utf8_lossy(id)))
            .collect();
        candidates.sort();
        let Some(rank) = candidates.iter().position(|(_, id)| id == me) else {
            return; // we are the one leaving
        };
        let delay = self.cfg.proposal_commit_delay * u32::try_from(rank).unwrap_or(u32::MAX);
        self.commit_at = Some(now + delay);
    }
}

fn new_op(id: Option<CommandId>, kind: Kind, deadline: Duration) -> Op {
    Op {
        id,
        kind,
        step: Step::Start,
        deadline,
        backoff: Backoff::new(REQUEST_BACKOFF),
        join_backoff: Duration::from_millis(10),
        rebases: 0,
        made_in: 0,
        key_packages: Vec::new(),
    }
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;
