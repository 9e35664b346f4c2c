//! The member state machine (specs/member.md): one participant's MLS membership of a room,
//! kept in step with the key service. Sans-I/O in the manner of quinn-proto: inputs are
//! commands, the service's replies and events, and timeouts, each with `now`; outputs are
//! [`Request`]s to send, [`Event`]s, and the next time it wants to be woken. Keys reach the
//! frame path through [`Member::frame_keys`], never through the member.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use openmls_rust_crypto::OpenMlsRustCrypto;
use veil_mls::{CallSession, FrameKeys, KeyConfig, Provider};

use crate::error::CallError;

mod events;
mod ops;
use crate::io::{CommandId, Failure, Reply, Request, RequestId, ServiceEvent};
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
    /// The epoch-0 GroupInfo this command registered with `CreateRoom`, to recognise the room
    /// as its own if a retry is told it exists (MEM-JOIN-04).
    created: Option<Vec<u8>>,
    key_packages: Vec<Vec<u8>>,
}

/// The session's epoch, whether joined, resyncs, acknowledged commits and the stream's link:
/// the status changes only when one of these does.
type StatusKey = (Option<u64>, bool, u32, usize, LinkStatus);

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
    /// What the last published status was computed from ([`Member::publish_status`]).
    status_key: Option<StatusKey>,
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
            status_key: None,
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
        created: None,
        key_packages: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
