//! One simulated call: the members, the service, the network between them, the scenario a seed
//! plays, and the checks after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use veil_call::{
    CallError, Command, CommandId, Event, Failure, FrameDecryptor, KeyConfig, Member, MemberConfig,
    Reply, Request, RequestId, ServiceEvent,
};
use veil_keys::store::Event as LogEvent;
use veil_mls::{CallSession, MlsError, Received, SqliteProvider};

use crate::net::{Item, Queue, Rng, StreamItem};
use crate::service::{ROOM, SimService, service_event, visible};

/// Each command's deadline.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(10);
/// One way through the network: 1 to 80 ms.
const MAX_DELAY_MS: u64 = 80;
const MAX_DELAY: Duration = Duration::from_millis(MAX_DELAY_MS);
/// A command ends within its `retry_for`, plus the last back-off it may have started before the
/// deadline (the request back-off's cap, 1 s) and that request's round trip.
pub(crate) const DONE_BOUND: Duration = RETRY_FOR
    .saturating_add(Duration::from_secs(1))
    .saturating_add(MAX_DELAY)
    .saturating_add(MAX_DELAY);
/// The quiet period after each step, with a reliable network.
const SETTLE: Duration = Duration::from_secs(8);
/// Identities a run may use.
const MAX_PEERS: usize = 10;
/// Members in the room at most.
const MAX_LIVE: usize = 6;

/// Fault rates, per mille.
mod rate {
    /// A stream event delivered twice.
    pub(super) const DUPLICATE: u64 = 20;
    /// A stream event lost (the stream goes on).
    pub(super) const DROP: u64 = 20;
    /// A stream breaks instead of delivering an event.
    pub(super) const BREAK: u64 = 10;
    /// The service did the request, but its reply is lost (the member sees UNAVAILABLE).
    pub(super) const LOST_REPLY: u64 = 20;
    /// The request never reaches the service (UNAVAILABLE, nothing done).
    pub(super) const UNPROCESSED: u64 = 20;
}

/// What a run did, summed over seeds by the caller.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) commands: u64,
    pub(crate) commands_ok: u64,
    pub(crate) commands_failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) epochs: u64,
    pub(crate) stale: u64,
    pub(crate) restarts: u64,
    /// Commands a restart abandoned (their process died before they ended).
    pub(crate) abandoned: u64,
    pub(crate) duplicates: u64,
    pub(crate) drops: u64,
    pub(crate) breaks: u64,
    pub(crate) lost_replies: u64,
    pub(crate) duplicate_commits: u64,
    pub(crate) unprocessed: u64,
    pub(crate) resyncs: u64,
    pub(crate) frames_checked: u64,
    pub(crate) removed: u64,
    pub(crate) left: u64,
    pub(crate) virtual_time: Duration,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Self) {
        self.commands += o.commands;
        self.commands_ok += o.commands_ok;
        self.commands_failed += o.commands_failed;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.epochs += o.epochs;
        self.stale += o.stale;
        self.restarts += o.restarts;
        self.abandoned += o.abandoned;
        self.duplicates += o.duplicates;
        self.drops += o.drops;
        self.breaks += o.breaks;
        self.lost_replies += o.lost_replies;
        self.duplicate_commits += o.duplicate_commits;
        self.unprocessed += o.unprocessed;
        self.resyncs += o.resyncs;
        self.frames_checked += o.frames_checked;
        self.removed += o.removed;
        self.left += o.left;
        self.virtual_time += o.virtual_time;
    }
}

struct Peer {
    name: String,
    db: PathBuf,
    m: Member<SqliteProvider>,
    /// Incarnation: bumped by a restart; deliveries to an earlier one are lost.
    life: u32,
    dec: FrameDecryptor,
    pending: BTreeMap<CommandId, (&'static str, Duration)>,
    last_result: Option<Result<Option<u64>, String>>,
    /// Why it stopped: `Some(None)` after leaving.
    stopped: Option<Option<String>>,
    leaving: bool,
    removal_asked: bool,
    /// Between a restart's death and its new process.
    dead: bool,
    /// The first epoch the service counted it a member in.
    joined_at: Option<u64>,
    /// The first epoch after it was in the group (removed, or left).
    gone_from: Option<u64>,
    seen_epoch: Option<u64>,
    old_frames_checked: bool,
}

struct Frame {
    epoch: u64,
    sender: usize,
    bytes: Vec<u8>,
}

/// One simulated call.
pub(crate) struct World {
    rng: Rng,
    now: Duration,
    q: Queue,
    svc: SimService,
    /// Each member's open stream at the service: its incarnation, id, and whether an event on
    /// it was lost.
    subs: BTreeMap<usize, (u32, RequestId, bool)>,
    peers: Vec<Peer>,
    dir: tempfile::TempDir,
    faults: bool,
    frames: Vec<Frame>,
    in_room: BTreeSet<String>,
    pub(crate) stats: Stats,
    errors: Vec<String>,
    trace: Vec<String>,
}

fn scratch_dir() -> tempfile::TempDir {
    // SQLite with synchronous=FULL: a RAM disk where there is one.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("a scratch directory")
}

fn cfg(name: &str) -> MemberConfig {
    let mut c = MemberConfig::new(name, ROOM);
    c.retry_for = RETRY_FOR;
    c
}

fn label(cmd: &Command) -> &'static str {
    match cmd {
        Command::Create => "create",
        Command::JoinExternal => "join",
        Command::JoinOrCreate => "join-or-create",
        Command::AwaitWelcome => "await-welcome",
        Command::Add(_) => "add",
        Command::Remove(_) => "remove",
        Command::SelfUpdate => "self-update",
        Command::Leave => "leave",
    }
}

fn describe(ev: &ServiceEvent) -> String {
    match ev {
        ServiceEvent::Commit { epoch, .. } => format!("the commit of epoch {epoch}"),
        ServiceEvent::Proposal { epoch, removes, .. } => {
            format!("the proposal of epoch {epoch} to remove {removes}")
        }
        ServiceEvent::Welcome { .. } => "a Welcome".into(),
        ServiceEvent::Synced { epoch } => format!("Synced at {epoch}"),
    }
}

fn error_kind(e: &CallError) -> String {
    match e {
        CallError::Service(Failure::Unavailable(_)) => "service: unavailable".into(),
        CallError::Service(Failure::Stale { .. }) => "service: stale".into(),
        CallError::Service(Failure::Refused { code, .. }) => format!("service: {code:?}"),
        CallError::Timeout(_) => "timeout".into(),
        CallError::Removed => "removed".into(),
        CallError::Mls(m) => format!(
            "mls: {}",
            m.to_string().chars().take(60).collect::<String>()
        ),
        CallError::Stopped => "stopped".into(),
        other => format!("{other}"),
    }
}

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        let dir = scratch_dir();
        let svc = SimService::open(&dir.path().join("kds.db"));
        Self {
            rng: Rng::new(seed),
            now: Duration::ZERO,
            q: Queue::default(),
            svc,
            subs: BTreeMap::new(),
            peers: Vec::new(),
            dir,
            faults: true,
            frames: Vec::new(),
            in_room: BTreeSet::new(),
            stats: Stats::default(),
            errors: Vec::new(),
            trace: Vec::new(),
        }
    }

    fn note(&mut self, s: String) {
        self.trace
            .push(format!("{:>8.3}s {s}", self.now.as_secs_f64()));
    }

    fn fail(&mut self, s: String) {
        self.note(format!("FAILED: {s}"));
        self.errors.push(s);
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.range(1, MAX_DELAY_MS))
    }

    fn add_peer(&mut self) -> usize {
        let name = format!("m{}", self.peers.len());
        let db = self.dir.path().join(format!("{name}.db"));
        let provider = SqliteProvider::open(&db).expect("a member's state file");
        let s = CallSession::with_provider(provider, name.as_bytes(), KeyConfig::default())
            .expect("a session");
        let m = Member::with_session(cfg(&name), s, self.rng.next());
        let dec = m.frame_keys().decryptor();
        self.peers.push(Peer {
            name,
            db,
            m,
            life: 0,
            dec,
            pending: BTreeMap::new(),
            last_result: None,
            stopped: None,
            leaving: false,
            removal_asked: false,
            dead: false,
            joined_at: None,
            gone_from: None,
            seen_epoch: None,
            old_frames_checked: false,
        });
        self.peers.len() - 1
    }

    fn command(&mut self, p: usize, cmd: Command) {
        let l = label(&cmd);
        let name = self.peers[p].name.clone();
        self.note(format!("{name}: {cmd:?}"));
        let id = self.peers[p].m.command(cmd, self.now);
        self.peers[p].pending.insert(id, (l, self.now));
        self.stats.commands += 1;
        self.drain(p);
    }

    /// Take what member `p` wants sent and what it says.
    fn drain(&mut self, p: usize) {
        while let Some((rid, req)) = self.peers[p].m.poll_request() {
            let at = self.now + self.delay();
            let life = self.peers[p].life;
            self.q.push(
                at,
                Item::Request {
                    peer: p,
                    life,
                    rid,
                    req,
                },
            );
        }
        while let Some(ev) = self.peers[p].m.poll_event() {
            self.on_member_event(p, ev);
        }
        // (b) after every input: a departed member's keys never reach the epoch without it.
        if let Some(g) = self.peers[p].gone_from
            && let Some(e) = self.peers[p].m.frame_keys().epoch()
            && e >= g
            && !self.live(p)
        {
            let n = self.peers[p].name.clone();
            self.fail(format!(
                "(b) {n} left in epoch {g} but has keys of epoch {e}"
            ));
        }
    }

    fn on_member_event(&mut self, p: usize, ev: Event) {
        let name = self.peers[p].name.clone();
        match ev {
            Event::Done { id, result } => {
                let Some((l, at)) = self.peers[p].pending.remove(&id) else {
                    return;
                };
                let took = self.now - at;
                self.note(format!("{name}: {l} done after {took:?}: {result:?}"));
                // (e) every command ends in time.
                if took > DONE_BOUND {
                    self.fail(format!("(e) {name}'s {l} took {took:?}"));
                }
                match &result {
                    Ok(_) => self.stats.commands_ok += 1,
                    Err(e) => {
                        self.stats.commands_failed += 1;
                        let k = format!("{l}: {}", error_kind(e));
                        *self.stats.failures.entry(k).or_default() += 1;
                        if let CallError::Mls(MlsError::Internal(m)) = e {
                            self.fail(format!("{name}'s {l} failed inside: {m}"));
                        }
                    }
                }
                self.peers[p].last_result = Some(result.map_err(|e| e.to_string()));
            }
            Event::Stopped { error } => {
                self.note(format!("{name}: stopped: {error:?}"));
                let peer = &self.peers[p];
                let expected = match &error {
                    None => peer.leaving,
                    Some(CallError::Removed) => peer.leaving || peer.removal_asked,
                    Some(_) => false,
                };
                if expected {
                    if error.is_none() {
                        self.stats.left += 1;
                    } else {
                        self.stats.removed += 1;
                    }
                } else {
                    self.fail(format!("{name} stopped unexpectedly: {error:?}"));
                }
                self.peers[p].stopped = Some(error.map(|e| e.to_string()));
            }
            Event::Status(s) => {
                if s.epoch.is_some() && s.epoch != self.peers[p].seen_epoch {
                    self.peers[p].seen_epoch = s.epoch;
                    self.frame_at_epoch_change(p);
                }
            }
            Event::Resync { reason } => {
                self.stats.resyncs += 1;
                self.note(format!("{name}: resync: {reason}"));
            }
            Event::Link(l) => self.note(format!("{name}: link {l:?}")),
        }
    }

    fn encrypt(&mut self, p: usize) -> Option<(u64, Vec<u8>, Vec<u8>)> {
        let keys = self.peers[p].m.frame_keys();
        let epoch = keys.epoch()?;
        let plain = format!("{} {epoch} {}", self.peers[p].name, self.rng.next()).into_bytes();
        let mut out = vec![0u8; plain.len() + keys.max_overhead()];
        match keys.encrypt(b"sim", &plain, &mut out) {
            Ok(n) => {
                out.truncate(n);
                Some((epoch, plain, out))
            }
            // A restored member sends after its first commit (MEM-RST-01).
            Err(MlsError::NotSending) => None,
            Err(e) => {
                let name = self.peers[p].name.clone();
                self.fail(format!("{name} cannot encrypt in epoch {epoch}: {e}"));
                None
            }
        }
    }

    /// Decrypt `frame` at `q`: the plaintext, if it decrypted.
    fn decrypt(&mut self, q: usize, frame: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut buf = frame.to_vec();
        match self.peers[q]
            .dec
            .decrypt_in_place(b"sim", &mut buf, self.now, 0)
        {
            Ok(Received::Plaintext { plaintext, .. }) => Ok(Some(plaintext.to_vec())),
            Ok(Received::Held) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn live(&self, p: usize) -> bool {
        !self.peers[p].dead
            && self.peers[p].stopped.is_none()
            && self.peers[p].m.status().epoch.is_some()
    }

    /// (d) at the moment a member's epoch changes: its frame decrypts at once at every member
    /// already in that epoch.
    fn frame_at_epoch_change(&mut self, p: usize) {
        let Some((epoch, plain, bytes)) = self.encrypt(p) else {
            return;
        };
        for q in 0..self.peers.len() {
            if q == p || !self.live(q) || self.peers[q].m.status().epoch != Some(epoch) {
                continue;
            }
            self.stats.frames_checked += 1;
            let got = self.decrypt(q, &bytes);
            if got.as_ref().ok().and_then(Option::as_ref) != Some(&plain) {
                let (a, b) = (self.peers[p].name.clone(), self.peers[q].name.clone());
                self.fail(format!(
                    "(d) {b} failed {a}'s frame of epoch {epoch}: {got:?}"
                ));
            }
        }
        self.frames.push(Frame {
            epoch,
            sender: p,
            bytes,
        });
    }

    fn stream_send(&mut self, p: usize, life: u32, sid: RequestId, ev: ServiceEvent) -> bool {
        let at = self.now + self.delay();
        if self.faults {
            if self.rng.chance(rate::BREAK) {
                self.stats.breaks += 1;
                let name = self.peers[p].name.clone();
                self.note(format!("net: {name}'s stream breaks"));
                let end = StreamItem::End(Some(Failure::Unavailable("stream reset".into())));
                self.q.push_stream(at, p, life, sid, end);
                self.subs.remove(&p);
                return false;
            }
            if self.rng.chance(rate::DROP) {
                self.stats.drops += 1;
                let name = self.peers[p].name.clone();
                self.note(format!("net: {name}'s stream loses {}", describe(&ev)));
                if let Some(s) = self.subs.get_mut(&p) {
                    s.2 = true;
                }
                return true;
            }
            if self.rng.chance(rate::DUPLICATE) {
                self.stats.duplicates += 1;
                self.q
                    .push_stream(at, p, life, sid, StreamItem::Event(ev.clone()));
            }
        }
        self.q.push_stream(at, p, life, sid, StreamItem::Event(ev));
        true
    }

    fn fan_out(&mut self, events: &[LogEvent]) {
        for (p, (life, sid, _)) in self.subs.clone() {
            let name = self.peers[p].name.clone();
            for e in events.iter().filter(|e| visible(e, &name)) {
                if !self.stream_send(p, life, sid, service_event(e)) {
                    break;
                }
            }
        }
    }

    /// Who is in the room changed: note joins and departures by epoch.
    fn on_room_change(&mut self) {
        let now_in: BTreeSet<String> = self.svc.members().into_iter().collect();
        if now_in == self.in_room {
            return;
        }
        let epoch = self.svc.epoch().unwrap_or_default();
        for p in &mut self.peers {
            if now_in.contains(&p.name) && p.joined_at.is_none() {
                p.joined_at = Some(epoch);
            }
            if self.in_room.contains(&p.name) && !now_in.contains(&p.name) && p.gone_from.is_none()
            {
                p.gone_from = Some(epoch);
            }
        }
        self.in_room = now_in;
    }

    fn deliver(&mut self, item: Item) {
        match item {
            Item::Request {
                peer,
                life,
                rid,
                req,
            } => self.at_service(peer, life, rid, &req),
            Item::Reply {
                peer,
                life,
                rid,
                reply,
            } => {
                if life == self.peers[peer].life {
                    self.peers[peer].m.handle_reply(rid, reply, self.now);
                    self.drain(peer);
                }
            }
            Item::Stream {
                peer,
                life,
                sid,
                item,
            } => {
                if life != self.peers[peer].life {
                    return;
                }
                let now = self.now;
                let m = &mut self.peers[peer].m;
                match item {
                    StreamItem::Opened(r) => m.handle_reply(sid, r, now),
                    StreamItem::Event(e) => m.handle_event(sid, e, now),
                    StreamItem::End(f) => m.handle_stream_end(sid, f, now),
                }
                self.drain(peer);
            }
        }
    }

    fn at_service(&mut self, p: usize, life: u32, rid: RequestId, req: &Request) {
        let subscribe = matches!(req, Request::Subscribe { .. });
        if subscribe && life != self.peers[p].life {
            return; // the process that asked is gone, and its connection with it
        }
        let at = self.now + self.delay();
        if self.faults && self.rng.chance(rate::UNPROCESSED) {
            self.stats.unprocessed += 1;
            let reply = Reply::Failed(Failure::Unavailable("no route to the service".into()));
            self.reply(p, life, rid, subscribe, at, reply);
            return;
        }
        if subscribe {
            // The shell drops its old stream first.
            self.subs.remove(&p);
        }
        let name = self.peers[p].name.clone();
        let h = self.svc.handle(&name, req);
        if matches!(h.reply, Reply::Failed(Failure::Stale { .. })) {
            self.stats.stale += 1;
        }
        if matches!(req, Request::SendCommit { .. }) {
            self.note(format!("kds: {name}'s commit: {:?}", h.reply));
        }
        self.on_room_change();
        // A lost CreateRoom reply is answered ALREADY_EXISTS on the retry; the creator then
        // recognises its own room by its GroupInfo (MEM-JOIN-04; VEIL_SIM_SEED=60 found it).
        let lost = self.faults && self.rng.chance(rate::LOST_REPLY);
        let reply = if lost {
            self.stats.lost_replies += 1;
            Reply::Failed(Failure::Unavailable("the reply was lost".into()))
        } else {
            h.reply
        };
        self.reply(p, life, rid, subscribe, at, reply);
        if let Some((replay, epoch)) = h.replay {
            self.subs.insert(p, (life, rid, false));
            for e in replay.iter().filter(|e| visible(e, &name)) {
                if !self.stream_send(p, life, rid, service_event(e)) {
                    return;
                }
            }
            self.stream_send(p, life, rid, ServiceEvent::Synced { epoch });
        }
        self.fan_out(&h.appended);
    }

    fn reply(
        &mut self,
        p: usize,
        life: u32,
        rid: RequestId,
        stream: bool,
        at: Duration,
        reply: Reply,
    ) {
        if stream {
            self.q
                .push_stream(at, p, life, rid, StreamItem::Opened(reply));
        } else {
            self.q.push(
                at,
                Item::Reply {
                    peer: p,
                    life,
                    rid,
                    reply,
                },
            );
        }
    }

    fn idle(&self) -> bool {
        self.peers
            .iter()
            .all(|p| p.pending.is_empty() || p.stopped.is_some())
    }

    /// Run until `until`, or (with `until_idle`) until no command is pending.
    fn run_until(&mut self, until: Duration, until_idle: bool) {
        let mut spins = 0u32;
        loop {
            let mut busy = false;
            while let Some(item) = self.q.pop_due(self.now) {
                self.deliver(item);
                busy = true;
            }
            for p in 0..self.peers.len() {
                if !self.peers[p].dead
                    && self.peers[p]
                        .m
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now)
                {
                    self.peers[p].m.handle_timeout(self.now);
                    self.drain(p);
                    busy = true;
                }
            }
            if busy {
                spins += 1;
                if spins > 100_000 {
                    self.fail("a member keeps asking to be woken at the same instant".into());
                    return;
                }
                continue;
            }
            spins = 0;
            if until_idle && self.idle() {
                return;
            }
            let next = self
                .peers
                .iter()
                .filter(|p| !p.dead)
                .filter_map(|p| p.m.poll_timeout())
                .chain(self.q.next_time())
                .min();
            match next {
                Some(t) if t <= until => self.now = t.max(self.now),
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    /// Restart member `p` from its stored state (MEM-RST-01): the process dies with whatever
    /// it had in flight (requests already sent may still reach the service), and after
    /// `downtime` a new one restores the session from its SQLite file.
    fn restart(&mut self, p: usize, downtime: Duration) {
        let name = self.peers[p].name.clone();
        self.note(format!("{name}: dies, back in {downtime:?}"));
        self.stats.restarts += 1;
        let sig = self.peers[p].m.session().signature_public_key();
        self.subs.remove(&p);
        {
            let peer = &mut self.peers[p];
            // Nothing reaches the dead process; its commands never end and nobody waits.
            peer.life += 1;
            peer.dead = true;
            self.stats.abandoned += peer.pending.len() as u64;
            peer.pending.clear();
        }
        self.run_until(self.now + downtime, false);
        let provider = SqliteProvider::open(&self.peers[p].db).expect("the state file");
        let s = match CallSession::restore(
            provider,
            name.as_bytes(),
            &sig,
            ROOM.as_bytes(),
            KeyConfig::default(),
            self.now,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.fail(format!("{name} cannot restore its session: {e}"));
                return;
            }
        };
        self.note(format!("{name}: restored in epoch {:?}", s.epoch()));
        let seed = self.rng.next();
        let peer = &mut self.peers[p];
        peer.m = Member::with_session(cfg(&name), s, seed);
        peer.dead = false;
        peer.dec = peer.m.frame_keys().decryptor();
        peer.seen_epoch = None;
    }

    /// Let every command end, then a quiet period on a reliable network, then check.
    fn finish_step(&mut self, step: &str) -> Result<(), String> {
        let deadline = self.now + DONE_BOUND + MAX_DELAY;
        self.run_until(deadline, true);
        for p in 0..self.peers.len() {
            let peer = &self.peers[p];
            if peer.stopped.is_none() && !peer.pending.is_empty() {
                let msg = format!("(e) {} has commands pending: {:?}", peer.name, peer.pending);
                self.fail(msg);
            }
        }
        self.faults = false;
        // A stream that lost an event and saw no later commit to notice it by is reset (the
        // shell's keepalive would end it).
        for (p, (life, sid, lossy)) in self.subs.clone() {
            if lossy {
                let at = self.now + self.delay();
                let end = StreamItem::End(Some(Failure::Unavailable("lossy stream reset".into())));
                self.q.push_stream(at, p, life, sid, end);
                self.subs.remove(&p);
            }
        }
        let until = self.now + SETTLE;
        self.run_until(until, false);
        self.faults = true;
        self.check();
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(format!("after {step}: {}", self.errors.join("; ")))
        }
    }

    /// The checks of a quiet moment: (a) one epoch everywhere, (b) departed members derive no
    /// later key, (c) joiners no earlier one, (d) every member decrypts every other.
    fn check(&mut self) {
        let epoch = self.svc.epoch();
        let live: Vec<usize> = (0..self.peers.len()).filter(|&p| self.live(p)).collect();
        // (a)
        let names: BTreeSet<String> = live.iter().map(|&p| self.peers[p].name.clone()).collect();
        let room: BTreeSet<String> = self.svc.members().into_iter().collect();
        if names != room {
            self.fail(format!("(a) live members {names:?}, the room's {room:?}"));
        }
        let first = live.first().map(|&p| self.peers[p].m.status());
        for &p in &live {
            let s = self.peers[p].m.status();
            if s.epoch != epoch {
                let n = self.peers[p].name.clone();
                self.fail(format!(
                    "(a) {n} is in epoch {:?}, the room in {epoch:?}",
                    s.epoch
                ));
            } else if s.epoch_authenticator != first.as_ref().unwrap().epoch_authenticator {
                let n = self.peers[p].name.clone();
                self.fail(format!("(a) {n}'s epoch authenticator differs"));
            }
        }
        // (b) keys of departed members stop before the epoch that left them out.
        let departed: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.peers[p].gone_from.is_some() && !live.contains(&p))
            .collect();
        for &p in &departed {
            let g = self.peers[p].gone_from.unwrap();
            if let Some(e) = self.peers[p].m.frame_keys().epoch()
                && e >= g
            {
                let n = self.peers[p].name.clone();
                self.fail(format!(
                    "(b) {n} left in epoch {g} but has keys of epoch {e}"
                ));
            }
        }
        // (d) every live member's frame decrypts at every other; (b) at no departed member.
        let mut fresh = Vec::new();
        for &p in &live {
            let Some((e, plain, bytes)) = self.encrypt(p) else {
                if self.peers[p].m.frame_keys().sender_kid().is_none() {
                    let n = self.peers[p].name.clone();
                    self.fail(format!("(d) {n} has no sender key after the quiet period"));
                }
                continue;
            };
            for &q in &live {
                if q == p {
                    continue;
                }
                self.stats.frames_checked += 1;
                let got = self.decrypt(q, &bytes);
                if got.as_ref().ok().and_then(Option::as_ref) != Some(&plain) {
                    let (a, b) = (self.peers[p].name.clone(), self.peers[q].name.clone());
                    self.fail(format!("(d) {b} failed {a}'s frame of epoch {e}: {got:?}"));
                }
            }
            for &q in &departed {
                self.stats.frames_checked += 1;
                if let Ok(Some(_)) = self.decrypt(q, &bytes) {
                    let (a, b) = (self.peers[p].name.clone(), self.peers[q].name.clone());
                    self.fail(format!("(b) {b}, gone, decrypted {a}'s frame of epoch {e}"));
                }
            }
            fresh.push(Frame {
                epoch: e,
                sender: p,
                bytes,
            });
        }
        // (c) a joiner decrypts no frame of an epoch before its join.
        for &q in &live {
            if self.peers[q].old_frames_checked {
                continue;
            }
            self.peers[q].old_frames_checked = true;
            let Some(j) = self.peers[q].joined_at else {
                continue;
            };
            let old: Vec<(u64, usize, Vec<u8>)> = self
                .frames
                .iter()
                .filter(|f| f.epoch < j && f.sender != q)
                .map(|f| (f.epoch, f.sender, f.bytes.clone()))
                .collect();
            for (e, s, bytes) in old {
                self.stats.frames_checked += 1;
                if let Ok(Some(_)) = self.decrypt(q, &bytes) {
                    let (a, b) = (self.peers[s].name.clone(), self.peers[q].name.clone());
                    self.fail(format!(
                        "(c) {b}, joined in {j}, decrypted {a}'s frame of {e}"
                    ));
                }
            }
        }
        self.frames.extend(fresh);
    }

    /// Live members that are not on their way out.
    fn staying(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&p| self.live(p) && !self.peers[p].leaving && !self.peers[p].removal_asked)
            .collect()
    }

    fn pick_other(&mut self, from: &[usize], not: usize) -> Option<usize> {
        let others: Vec<usize> = from.iter().copied().filter(|&p| p != not).collect();
        (!others.is_empty()).then(|| self.rng.pick(&others))
    }

    /// A new member joins: by external commit, or by an Add of a member and the Welcome.
    fn join_one(&mut self, with_update: bool) -> Result<(), String> {
        let staying = self.staying();
        let p = self.add_peer();
        if self.rng.chance(500) || staying.is_empty() {
            self.command(p, Command::JoinExternal);
            if with_update && let Some(&q) = staying.first() {
                self.command(q, Command::SelfUpdate);
            }
        } else {
            self.command(p, Command::AwaitWelcome);
            self.run_until(self.now + DONE_BOUND + MAX_DELAY, true);
            if !matches!(self.peers[p].last_result, Some(Ok(_))) {
                return self.finish_step("await-welcome");
            }
            let adder = self.rng.pick(&staying);
            let name = self.peers[p].name.clone();
            self.command(adder, Command::Add(vec![name]));
            if with_update && let Some(q) = self.pick_other(&staying, adder) {
                self.command(q, Command::SelfUpdate);
            }
        }
        self.finish_step("a join")
    }

    fn random_op(&mut self) -> Result<(), String> {
        let staying = self.staying();
        if staying.is_empty() {
            return Ok(());
        }
        let with_update = self.rng.chance(500);
        let roll = self.rng.range(0, 99);
        match roll {
            0..=19 => {
                let p = self.rng.pick(&staying);
                self.command(p, Command::SelfUpdate);
                self.finish_step("a self-update")
            }
            20..=39 => {
                // Several commits in the same instant: all but one lose the race.
                let n = self.rng.range(2, staying.len().max(2) as u64) as usize;
                for &p in staying.iter().take(n) {
                    self.command(p, Command::SelfUpdate);
                }
                self.finish_step("concurrent self-updates")
            }
            40..=51 if staying.len() >= 3 => {
                let r = self.rng.pick(&staying);
                let t = self.pick_other(&staying, r).unwrap();
                self.peers[t].removal_asked = true;
                let name = self.peers[t].name.clone();
                self.command(r, Command::Remove(vec![name]));
                if with_update && let Some(q) = self.pick_other(&staying, r) {
                    self.command(q, Command::SelfUpdate);
                }
                self.finish_step("a removal")
            }
            52..=61 if staying.len() >= 3 => {
                let t = self.rng.pick(&staying);
                self.peers[t].leaving = true;
                self.command(t, Command::Leave);
                if with_update && let Some(q) = self.pick_other(&staying, t) {
                    self.command(q, Command::SelfUpdate);
                }
                self.finish_step("a leave")
            }
            62..=75 if staying.len() < MAX_LIVE && self.peers.len() < MAX_PEERS => {
                self.join_one(with_update)
            }
            76..=99 => {
                // A restart at a random moment, maybe while another member commits.
                let p = self.rng.pick(&staying);
                if with_update && let Some(q) = self.pick_other(&staying, p) {
                    self.command(q, Command::SelfUpdate);
                }
                if self.rng.chance(500) {
                    self.command(p, Command::SelfUpdate);
                }
                let at = self.now + Duration::from_millis(self.rng.range(0, 150));
                self.run_until(at, false);
                // Mostly a real restart's downtime; sometimes at once, while the dead
                // process's last requests are still on their way.
                let down = if self.rng.chance(250) {
                    self.rng.range(0, MAX_DELAY_MS)
                } else {
                    self.rng.range(200, 3000)
                };
                self.restart(p, Duration::from_millis(down));
                self.finish_step("a restart")
            }
            _ => {
                let p = self.rng.pick(&staying);
                self.command(p, Command::SelfUpdate);
                self.finish_step("a self-update")
            }
        }
    }

    /// The trace of the run, for a failure report.
    pub(crate) fn trace(&self) -> String {
        let mut s = String::new();
        for l in &self.trace {
            let _ = writeln!(s, "  {l}");
        }
        s
    }
}

/// Play seed `seed`'s scenario; `Err` says which check failed first.
pub(crate) fn run(seed: u64, w: &mut World) -> Result<(), String> {
    let members = w.rng.range(3, MAX_LIVE as u64) as usize;
    let a = w.add_peer();
    if w.rng.chance(500) {
        w.command(a, Command::Create);
    } else {
        // Two create the room at once: one loses and joins the other's.
        let b = w.add_peer();
        w.command(a, Command::JoinOrCreate);
        w.command(b, Command::JoinOrCreate);
    }
    w.finish_step("the creation")?;
    if w.staying().is_empty() {
        return Err(format!("seed {seed}: nobody created the room"));
    }
    while w.staying().len() < members && w.peers.len() < MAX_PEERS {
        let with_update = w.rng.chance(300);
        w.join_one(with_update)?;
    }
    let ops = w.rng.range(6, 10);
    for _ in 0..ops {
        w.random_op()?;
    }
    w.stats.epochs = w.svc.epoch().unwrap_or_default();
    w.stats.duplicate_commits = w.svc.duplicates;
    w.stats.virtual_time = w.now;
    Ok(())
}
