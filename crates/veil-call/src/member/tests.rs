//! Unit tests of the member state machine: one or a few [`Member`]s driven by hand with
//! scripted replies. Real MLS messages come from other members, and the service's own messages
//! (its Remove proposals, replays) from `veil_keys`' synchronous room state ([`Kds`]), so
//! every byte a member processes is one the real service could send.

use std::collections::HashMap;
use std::time::Duration;

use veil_keys::KdsError;
use veil_keys::room::{CommitOutcome, RoomState, SERVICE_IDENTITY, SentCommit, ServiceKey};
use veil_keys::store::{Event as LogEvent, EventKind, SqliteStore, Store as _};
use veil_mls::{KeyConfig, SqliteProvider};

use super::*;
use crate::io::Code;

const ROOM: &str = "standup";
const MS: Duration = Duration::from_millis(1);

fn cfg(identity: &str) -> MemberConfig {
    MemberConfig::new(identity, ROOM)
}

fn member(identity: &str) -> Member {
    Member::new(cfg(identity), KeyConfig::default(), 42).unwrap()
}

/// The service as the members see it: the real room state and store, handling one request at
/// a time with no network in between.
struct Kds {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    key: ServiceKey,
    room: Option<RoomState>,
}

/// A `KdsError` as the member's shell would turn its gRPC status into a [`Failure`].
fn failure(e: &KdsError, room_epoch: Option<u64>) -> Failure {
    match e.code() as i32 {
        10 => Failure::Stale {
            room_epoch,
            message: e.to_string(),
        },
        14 => Failure::Unavailable(e.to_string()),
        n => Failure::Refused {
            code: Code::from_i32(n),
            message: e.to_string(),
        },
    }
}

fn service_event(e: &LogEvent) -> ServiceEvent {
    match e.kind {
        EventKind::Commit => ServiceEvent::Commit {
            epoch: e.epoch,
            message: e.message.clone(),
        },
        EventKind::Proposal => ServiceEvent::Proposal {
            epoch: e.epoch,
            message: e.message.clone(),
            removes: e.actor.clone(),
        },
        EventKind::Welcome => ServiceEvent::Welcome {
            message: e.message.clone(),
        },
    }
}

impl Kds {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("kds.db")).unwrap();
        let key = ServiceKey::load_or_create(&store).unwrap();
        Self {
            _dir: dir,
            store,
            key,
            room: None,
        }
    }

    fn info(&self) -> Reply {
        Reply::ServiceInfo {
            external_sender_key: self.key.public().to_vec(),
            external_sender_identity: SERVICE_IDENTITY.to_vec(),
        }
    }

    fn epoch(&self) -> u64 {
        self.room.as_ref().unwrap().epoch()
    }

    /// Handle `who`'s request like the real service: the reply, and the log entries it
    /// appended (to fan out). A `Subscribe` returns its replay as the entries.
    fn handle(&mut self, who: &str, req: &Request) -> (Reply, Vec<LogEvent>) {
        match self.try_handle(who, req) {
            Ok(r) => r,
            Err(e) => {
                let epoch = self.room.as_ref().map(RoomState::epoch);
                (Reply::Failed(failure(&e, epoch)), Vec::new())
            }
        }
    }

    fn room(&self) -> Result<&RoomState, KdsError> {
        self.room
            .as_ref()
            .ok_or_else(|| KdsError::NoSuchRoom(ROOM.into()))
    }

    fn try_handle(&mut self, who: &str, req: &Request) -> Result<(Reply, Vec<LogEvent>), KdsError> {
        Ok(match req {
            Request::ServiceInfo => (self.info(), Vec::new()),
            Request::CreateRoom { group_info } => {
                if self.room.is_some() {
                    return Err(KdsError::RoomExists(ROOM.into()));
                }
                let st = RoomState::create(ROOM, group_info, who, &self.key)?;
                self.store.create_room(&st.record()?)?;
                self.room = Some(st);
                (Reply::Ok, Vec::new())
            }
            Request::GroupInfo => {
                let st = self.room()?;
                (
                    Reply::GroupInfo {
                        epoch: st.epoch(),
                        group_info: st.group_info().to_vec(),
                    },
                    Vec::new(),
                )
            }
            Request::PublishKeyPackages { key_packages } => {
                let records = key_packages
                    .iter()
                    .map(|m| {
                        let (hash_ref, last_resort) = veil_keys::room::check_key_package(m, who)?;
                        Ok(veil_keys::store::KeyPackageRecord {
                            hash_ref,
                            last_resort,
                            message: m.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, KdsError>>()?;
                self.store.add_key_packages(ROOM, who, &records, 64)?;
                (Reply::Ok, Vec::new())
            }
            Request::ClaimKeyPackage { identity } => {
                if !self.room()?.is_member(who) {
                    return Err(KdsError::PermissionDenied("not a member".into()));
                }
                let kp = self
                    .store
                    .claim_key_package(ROOM, identity, who)?
                    .ok_or_else(|| KdsError::NoKeyPackage(identity.clone()))?;
                (Reply::KeyPackage(kp), Vec::new())
            }
            Request::SendCommit {
                commit,
                welcome,
                group_info,
            } => {
                let sent = SentCommit {
                    identity: who,
                    commit,
                    welcome,
                    group_info,
                };
                match self
                    .room()?
                    .check_commit(&self.store, &self.key, &sent, 4096)?
                {
                    CommitOutcome::Duplicate { epoch } => {
                        (Reply::CommitAccepted { epoch }, Vec::new())
                    }
                    CommitOutcome::Accept(a) => {
                        self.store
                            .append(&a.next.record()?, &a.events, &a.consumed)?;
                        self.room = Some(a.next);
                        (
                            Reply::CommitAccepted {
                                epoch: self.epoch(),
                            },
                            a.events,
                        )
                    }
                }
            }
            Request::Leave => {
                let st = self
                    .room
                    .as_mut()
                    .ok_or(KdsError::NoSuchRoom(ROOM.into()))?;
                let events = st.depart(&self.key, who)?;
                if !events.is_empty() {
                    self.store.append(&st.record()?, &events, &[])?;
                }
                (Reply::Ok, events)
            }
            Request::Subscribe { from_epoch } => {
                let start = self.room()?.replay_start(&self.store, who, *from_epoch)?;
                let mut replay: Vec<LogEvent> = start.welcome.into_iter().collect();
                if let Some(from) = start.from {
                    replay.extend(
                        self.store
                            .log_page(ROOM, from, 0, start.up_to, usize::MAX)?,
                    );
                }
                (Reply::Subscribed, replay)
            }
        })
    }
}

/// Members and the service, wired with no delay: every request is answered at once, and the
/// room's events reach every open stream (Welcomes only their recipient).
struct Net {
    kds: Kds,
    members: Vec<Member>,
    /// Each member's open stream.
    streams: HashMap<usize, RequestId>,
}

impl Net {
    fn new() -> Self {
        Self {
            kds: Kds::new(),
            members: Vec::new(),
            streams: HashMap::new(),
        }
    }

    fn id(&self, i: usize) -> String {
        self.members[i].cfg.identity.clone()
    }

    /// Deliver `events` to every open stream that may see them (not `except`).
    fn fan_out(&mut self, events: &[LogEvent], except: Option<usize>, now: Duration) {
        for (&i, &sid) in &self.streams {
            if Some(i) == except {
                continue;
            }
            let id = self.members[i].cfg.identity.clone();
            for e in events {
                if e.kind == EventKind::Welcome && e.recipient.as_deref() != Some(&id) {
                    continue;
                }
                self.members[i].handle_event(sid, service_event(e), now);
            }
        }
    }

    /// Answer requests and fan out events until nobody asks anything.
    fn pump(&mut self, now: Duration) {
        loop {
            let mut any = false;
            for i in 0..self.members.len() {
                while let Some((rid, req)) = self.members[i].poll_request() {
                    any = true;
                    let who = self.id(i);
                    let (reply, events) = self.kds.handle(&who, &req);
                    let subscribed = matches!(req, Request::Subscribe { .. })
                        && matches!(reply, Reply::Subscribed);
                    self.members[i].handle_reply(rid, reply, now);
                    if subscribed {
                        self.streams.insert(i, rid);
                        for e in &events {
                            self.members[i].handle_event(rid, service_event(e), now);
                        }
                        let epoch = self.kds.epoch();
                        self.members[i].handle_event(rid, ServiceEvent::Synced { epoch }, now);
                    } else {
                        self.fan_out(&events, None, now);
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// A room of `ids`: the first creates it, the others join by external commit.
    fn room_of(ids: &[&str]) -> Self {
        let mut net = Self::new();
        for (i, id) in ids.iter().enumerate() {
            net.members.push(member(id));
            let cmd = if i == 0 {
                Command::Create
            } else {
                Command::JoinExternal
            };
            net.members[i].command(cmd, Duration::ZERO);
            net.pump(Duration::ZERO);
        }
        for m in &mut net.members {
            while m.poll_event().is_some() {}
        }
        net.assert_in_step();
        net
    }

    /// Wake every member at `now` (so the periodic key-expiry tick is due after `now`).
    fn tick_all(&mut self, now: Duration) -> Duration {
        for m in &mut self.members {
            m.handle_timeout(now);
        }
        self.pump(now);
        now
    }

    fn assert_in_step(&self) {
        let epoch = self.kds.epoch();
        let first = self.members[0].status();
        for m in &self.members {
            let s = m.status();
            assert_eq!(s.epoch, Some(epoch), "{m:?}");
            assert_eq!(s.epoch_authenticator, first.epoch_authenticator, "{m:?}");
        }
    }
}

fn drain(m: &mut Member) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn dones(events: &[Event]) -> Vec<(CommandId, Result<Option<u64>, String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Done { id, result } => Some((
                *id,
                result.as_ref().map(|r| *r).map_err(ToString::to_string),
            )),
            _ => None,
        })
        .collect()
}

fn one_request<P: Provider>(m: &mut Member<P>) -> (RequestId, Request) {
    let r = m.poll_request().expect("a request");
    assert_eq!(m.poll_request(), None, "only one request");
    r
}

// ---- creating and joining ----------------------------------------------------------------

/// Create (KDS-ROOM-01/02 on the service's side): the service's key first, then the room from the epoch-0 GroupInfo,
/// then the member subscribes from epoch 0.
#[test]
fn create_fetches_the_service_key_registers_epoch_0_and_subscribes() {
    let kds = Kds::new();
    let mut a = member("alice");
    let id = a.command(Command::Create, Duration::ZERO);
    let (rid, req) = one_request(&mut a);
    assert_eq!(req, Request::ServiceInfo);
    a.handle_reply(rid, kds.info(), MS);
    let (rid, req) = one_request(&mut a);
    let Request::CreateRoom { group_info } = req else {
        panic!("expected CreateRoom, got {req:?}")
    };
    assert!(!group_info.is_empty());
    // Nothing is subscribed before the room exists.
    assert_eq!(a.status().epoch, None);
    a.handle_reply(rid, Reply::Ok, 2 * MS);
    let ev = drain(&mut a);
    assert_eq!(dones(&ev), [(id, Ok(Some(0)))]);
    assert_eq!(a.status().epoch, Some(0));
    let (_, req) = one_request(&mut a);
    assert_eq!(
        req,
        Request::Subscribe {
            from_epoch: Some(0)
        }
    );
}

/// MEM-JOIN-04: a creator whose `CreateRoom` reply was lost is told on its retry that the room
/// exists; the room's GroupInfo is its own, so it is in (found by the simulator, seed 60).
#[test]
fn a_create_whose_reply_was_lost_recognises_its_own_room() {
    let mut kds = Kds::new();
    let mut a = member("alice");
    let id = a.command(Command::Create, Duration::ZERO);
    let (rid, _) = one_request(&mut a);
    a.handle_reply(rid, kds.info(), MS);
    let (rid, req) = one_request(&mut a);
    // The service creates the room; its reply is lost.
    let (reply, _) = kds.handle("alice", &req);
    assert_eq!(reply, Reply::Ok);
    a.handle_reply(
        rid,
        Reply::Failed(Failure::Unavailable("lost".into())),
        2 * MS,
    );
    let at = a.poll_timeout().expect("a retry");
    a.handle_timeout(at);
    let (rid, again) = one_request(&mut a);
    assert_eq!(again, req, "the retry sends the same GroupInfo");
    let (reply, _) = kds.handle("alice", &again);
    assert!(matches!(
        reply,
        Reply::Failed(Failure::Refused {
            code: Code::AlreadyExists,
            ..
        })
    ));
    a.handle_reply(rid, reply, at);
    let (rid, req) = one_request(&mut a);
    assert_eq!(req, Request::GroupInfo);
    let (reply, _) = kds.handle("alice", &req);
    a.handle_reply(rid, reply, at);
    assert_eq!(dones(&drain(&mut a)), [(id, Ok(Some(0)))]);
    assert_eq!(a.status().epoch, Some(0));
    assert!(matches!(
        one_request(&mut a).1,
        Request::Subscribe {
            from_epoch: Some(0)
        }
    ));
}

/// MEM-JOIN-04: a plain `Create` of a room someone else made fails with ALREADY_EXISTS and
/// leaves no group behind.
#[test]
fn a_create_of_someone_elses_room_fails_and_keeps_no_group() {
    let mut net = Net::room_of(&["alice"]);
    let mut b = member("bob");
    let id = b.command(Command::Create, Duration::ZERO);
    let (rid, _) = one_request(&mut b);
    b.handle_reply(rid, net.kds.info(), MS);
    let (rid, req) = one_request(&mut b);
    let (reply, _) = net.kds.handle("bob", &req);
    b.handle_reply(rid, reply, MS);
    let (rid, req) = one_request(&mut b);
    assert_eq!(req, Request::GroupInfo);
    let (reply, _) = net.kds.handle("bob", &req);
    b.handle_reply(rid, reply, MS);
    let done = dones(&drain(&mut b));
    assert_eq!((done.len(), done[0].0), (1, id));
    assert!(
        done[0]
            .1
            .as_ref()
            .is_err_and(|e| e.contains("AlreadyExists")),
        "{done:?}"
    );
    assert_eq!((b.status().epoch, b.session().epoch()), (None, None));
}

/// JoinOrCreate (KDS-ROOM-03 on the service's side) on a room that does not exist (GroupInfo NOT_FOUND) creates it.
#[test]
fn join_or_create_creates_the_room_when_there_is_no_group_info() {
    let mut kds = Kds::new();
    let mut a = member("alice");
    let id = a.command(Command::JoinOrCreate, Duration::ZERO);
    let (rid, req) = one_request(&mut a);
    assert_eq!(req, Request::GroupInfo);
    let (reply, _) = kds.handle("alice", &req);
    assert!(matches!(
        reply,
        Reply::Failed(Failure::Refused {
            code: Code::NotFound,
            ..
        })
    ));
    a.handle_reply(rid, reply, MS);
    let (rid, req) = one_request(&mut a);
    assert_eq!(req, Request::ServiceInfo);
    a.handle_reply(rid, kds.info(), MS);
    let (rid, req) = one_request(&mut a);
    assert!(matches!(req, Request::CreateRoom { .. }));
    let (reply, _) = kds.handle("alice", &req);
    a.handle_reply(rid, reply, MS);
    assert_eq!(dones(&drain(&mut a)), [(id, Ok(Some(0)))]);
    assert_eq!(kds.epoch(), 0);
}

/// MEM-JOIN-02: JoinOrCreate that loses the race to create (ALREADY_EXISTS) joins the
/// winner's room by external commit instead.
#[test]
fn join_or_create_that_loses_the_create_race_joins_the_winners_room() {
    let mut net = Net::room_of(&["alice"]);
    let mut b = member("bob");
    let id = b.command(Command::JoinOrCreate, Duration::ZERO);
    // The room did not exist when bob looked...
    let (rid, req) = one_request(&mut b);
    assert_eq!(req, Request::GroupInfo);
    b.handle_reply(
        rid,
        Reply::Failed(Failure::Refused {
            code: Code::NotFound,
            message: "no room".into(),
        }),
        MS,
    );
    let (rid, req) = one_request(&mut b);
    assert_eq!(req, Request::ServiceInfo);
    b.handle_reply(rid, net.kds.info(), MS);
    // ...but alice's was registered first.
    let (rid, req) = one_request(&mut b);
    let (reply, _) = net.kds.handle("bob", &req);
    assert!(matches!(
        reply,
        Reply::Failed(Failure::Refused {
            code: Code::AlreadyExists,
            ..
        })
    ));
    b.handle_reply(rid, reply, 2 * MS);
    let (rid, req) = one_request(&mut b);
    assert_eq!(req, Request::GroupInfo);
    let (reply, _) = net.kds.handle("bob", &req);
    b.handle_reply(rid, reply, 3 * MS);
    let (rid, req) = one_request(&mut b);
    assert!(matches!(req, Request::SendCommit { .. }));
    let (reply, events) = net.kds.handle("bob", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 1 });
    b.handle_reply(rid, reply, 4 * MS);
    assert_eq!(dones(&drain(&mut b)), [(id, Ok(Some(1)))]);
    net.fan_out(&events, None, 4 * MS);
    net.members.push(b);
    net.pump(5 * MS);
    net.assert_in_step();
    assert_eq!(net.members[0].status().members, ["alice", "bob"]);
}

/// MEM-JOIN-03: an external commit that loses the epoch is dropped and made again from a newer
/// GroupInfo, after a short wait.
#[test]
fn an_external_join_that_loses_the_epoch_fetches_the_group_info_again() {
    let mut net = Net::room_of(&["alice"]);
    let mut b = member("bob");
    let id = b.command(Command::JoinExternal, Duration::ZERO);
    let (rid, req) = one_request(&mut b);
    let (reply, _) = net.kds.handle("bob", &req);
    b.handle_reply(rid, reply, MS);
    let (rid, stale_join) = one_request(&mut b);
    // Alice moves the room on first.
    net.members[0].command(Command::SelfUpdate, MS);
    net.pump(MS);
    let (reply, _) = net.kds.handle("bob", &stale_join);
    assert!(
        matches!(reply, Reply::Failed(Failure::Stale { .. })),
        "{reply:?}"
    );
    b.handle_reply(rid, reply, 2 * MS);
    assert_eq!(b.poll_request(), None, "waits before trying again");
    assert_eq!(b.status().epoch, None, "the lost join's group is gone");
    let at = b.poll_timeout().unwrap();
    assert!(
        at > 2 * MS && at <= 2 * MS + Duration::from_millis(10),
        "{at:?}"
    );
    b.handle_timeout(at);
    let (rid, req) = one_request(&mut b);
    assert_eq!(req, Request::GroupInfo);
    let (reply, _) = net.kds.handle("bob", &req);
    b.handle_reply(rid, reply, at);
    let (rid, req) = one_request(&mut b);
    let (reply, events) = net.kds.handle("bob", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 2 });
    b.handle_reply(rid, reply, at);
    assert_eq!(dones(&drain(&mut b)), [(id, Ok(Some(2)))]);
    net.fan_out(&events, None, at);
    net.members.push(b);
    net.pump(at);
    net.assert_in_step();
}

// ---- retries -----------------------------------------------------------------------------

/// A request the service does not answer is sent again on a doubling back-off, until the
/// command's `retry_for` runs out; then the command fails as unavailable.
#[test]
fn unavailable_requests_are_retried_with_back_off_until_retry_for() {
    let mut c = cfg("alice");
    c.retry_for = Duration::from_secs(3);
    let mut a = Member::new(c, KeyConfig::default(), 7).unwrap();
    let id = a.command(Command::Create, Duration::ZERO);
    let mut now = Duration::ZERO;
    let mut waits = Vec::new();
    let result = loop {
        let (rid, req) = one_request(&mut a);
        assert_eq!(req, Request::ServiceInfo, "the same request again");
        a.handle_reply(rid, Reply::Failed(Failure::Unavailable("down".into())), now);
        let ev = drain(&mut a);
        if let Some((done, result)) = dones(&ev).pop() {
            assert_eq!(done, id);
            break result;
        }
        assert_eq!(a.poll_request(), None, "nothing before the back-off");
        let at = a.poll_timeout().expect("a retry time");
        waits.push(at - now);
        // Early wake-ups send nothing.
        a.handle_timeout(at - MS);
        assert_eq!(a.poll_request(), None);
        now = at;
        a.handle_timeout(now);
    };
    let err = result.unwrap_err();
    assert!(err.contains("unavailable"), "{err}");
    assert!(now >= Duration::from_secs(3), "gave up at {now:?}");
    assert!(now < Duration::from_secs(4), "gave up late, at {now:?}");
    // 50 ms doubling to 1 s, each with jitter in [0.5, 1).
    assert!(waits.len() >= 5, "{waits:?}");
    for (n, w) in waits.iter().enumerate() {
        let full = (Duration::from_millis(50) * (1 << n.min(5))).min(Duration::from_secs(1));
        assert!(*w >= full / 2 && *w <= full, "wait {n}: {w:?} for {full:?}");
    }
}

// ---- commits -----------------------------------------------------------------------------

/// MEM-CMT-02: the room's events that arrive while this member's commit awaits its verdict are
/// held back, so its own commit echoed by the service is not processed as a stranger's; the
/// acceptance merges it.
#[test]
fn events_during_an_own_commit_wait_for_its_verdict() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let id = net.members[0].command(Command::SelfUpdate, t);
    let (rid, req) = one_request(&mut net.members[0]);
    let (reply, events) = net.kds.handle("alice", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 2 });
    // The echo comes first; the reply is slower.
    net.fan_out(&events, None, t);
    assert_eq!(net.members[0].status().epoch, Some(1), "not processed yet");
    assert_eq!(net.members[1].status().epoch, Some(2));
    net.members[0].handle_reply(rid, reply, t + MS);
    let ev = drain(&mut net.members[0]);
    assert_eq!(dones(&ev), [(id, Ok(Some(2)))]);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Resync { .. })),
        "{ev:?}"
    );
    assert_eq!(net.members[0].status().acknowledged, [1]);
    assert_eq!(net.members[0].status().resyncs, 0);
    net.assert_in_step();
}

/// MEM-CMT-03: a commit that another commit beat (ABORTED, Stale) is dropped; the member waits
/// for the winner to arrive, then makes its commit again on top of it, and that one wins.
#[test]
fn a_stale_commit_waits_for_the_winner_and_is_made_again_on_top() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let id = net.members[0].command(Command::SelfUpdate, t);
    let (rid_a, commit_a) = one_request(&mut net.members[0]);
    net.members[1].command(Command::SelfUpdate, t);
    let (rid_b, commit_b) = one_request(&mut net.members[1]);
    // Bob's commit wins epoch 1.
    let (reply_b, events_b) = net.kds.handle("bob", &commit_b);
    assert_eq!(reply_b, Reply::CommitAccepted { epoch: 2 });
    let (reply_a, _) = net.kds.handle("alice", &commit_a);
    assert!(
        matches!(
            reply_a,
            Reply::Failed(Failure::Stale {
                room_epoch: Some(2),
                ..
            })
        ),
        "{reply_a:?}"
    );
    net.members[1].handle_reply(rid_b, reply_b, t);
    net.members[0].handle_reply(rid_a, reply_a, t + MS);
    // Nothing to do until the winner arrives, however long that takes.
    assert_eq!(net.members[0].poll_request(), None);
    net.members[0].handle_timeout(t + Duration::from_millis(400));
    assert_eq!(net.members[0].poll_request(), None);
    assert!(dones(&drain(&mut net.members[0])).is_empty());
    net.fan_out(&events_b, None, t + 2 * MS);
    assert_eq!(net.members[0].status().epoch, Some(2));
    // The rebased commit is made in epoch 2 and sent at once.
    let (rid, req) = one_request(&mut net.members[0]);
    assert_ne!(req, commit_a);
    let (reply, events) = net.kds.handle("alice", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 3 });
    net.members[0].handle_reply(rid, reply, t + 3 * MS);
    assert_eq!(dones(&drain(&mut net.members[0])), [(id, Ok(Some(3)))]);
    assert_eq!(net.members[0].status().acknowledged, [2]);
    net.fan_out(&events, None, t + 3 * MS);
    net.assert_in_step();
}

/// KDS-ORD-03 from the member's side: a commit whose acceptance was lost is sent again with the
/// same bytes, and the service's duplicate answer completes it.
#[test]
fn a_commit_whose_reply_was_lost_is_resent_unchanged_and_completes() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let id = net.members[0].command(Command::SelfUpdate, t);
    let (rid, req) = one_request(&mut net.members[0]);
    let (_, events) = net.kds.handle("alice", &req);
    net.fan_out(&events, None, t);
    net.members[0].handle_reply(rid, Reply::Failed(Failure::Unavailable("lost".into())), t);
    let at = net.members[0].poll_timeout().unwrap();
    net.members[0].handle_timeout(at);
    let (rid, again) = one_request(&mut net.members[0]);
    assert_eq!(again, req, "the same bytes");
    let (reply, events) = net.kds.handle("alice", &again);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 2 });
    assert!(events.is_empty(), "a duplicate logs nothing");
    net.members[0].handle_reply(rid, reply, at);
    assert_eq!(dones(&drain(&mut net.members[0])), [(id, Ok(Some(2)))]);
    net.assert_in_step();
}

// ---- the room's stream -------------------------------------------------------------------

/// MEM-SYNC-01: a commit from an epoch after this member's means it missed some: it
/// resubscribes from its own epoch, and the replay brings it up to date.
#[test]
fn a_gap_in_the_commits_resubscribes_from_the_members_epoch() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let alice_stream = net.streams.remove(&0).unwrap();
    // Alice misses bob's first commit and sees the second.
    net.members[1].command(Command::SelfUpdate, t);
    net.pump(t);
    net.members[1].command(Command::SelfUpdate, t);
    let (rid, req) = one_request(&mut net.members[1]);
    let (reply, events) = net.kds.handle("bob", &req);
    net.members[1].handle_reply(rid, reply, t);
    assert_eq!(net.kds.epoch(), 3);
    let ServiceEvent::Commit { epoch, .. } = service_event(&events[0]) else {
        panic!()
    };
    assert_eq!(epoch, 2);
    net.members[0].handle_event(alice_stream, service_event(&events[0]), t);
    assert_eq!(net.members[0].status().epoch, Some(1));
    let (rid, req) = one_request(&mut net.members[0]);
    assert_eq!(
        req,
        Request::Subscribe {
            from_epoch: Some(1)
        }
    );
    // The replay brings both commits from epoch 1 on.
    let (reply, replay) = net.kds.handle("alice", &req);
    assert_eq!(replay.len(), 2);
    net.members[0].handle_reply(rid, reply, t);
    for e in &replay {
        net.members[0].handle_event(rid, service_event(e), t);
    }
    net.assert_in_step();
    assert_eq!(net.members[0].status().resyncs, 0);
}

/// MEM-SYNC-02: a broken stream is reported lost once, resubscribed on the key-service
/// back-off (100 ms doubling) from the member's epoch, and reported back with its attempts.
#[test]
fn a_lost_stream_is_resubscribed_on_back_off_and_reported_back() {
    let mut net = Net::room_of(&["alice"]);
    let t = net.tick_all(Duration::from_secs(1));
    let sid = net.streams[&0];
    let a = &mut net.members[0];
    a.handle_stream_end(sid, Some(Failure::Unavailable("reset".into())), t);
    let ev = drain(a);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Link(LinkEvent::Lost { reason }) if reason.contains("reset"))
        ),
        "{ev:?}"
    );
    assert!(!a.status().key_service.is_up());
    assert_eq!(a.poll_request(), None);
    let first = a.poll_timeout().unwrap();
    assert!(
        first >= t + Duration::from_millis(50) && first <= t + Duration::from_millis(100),
        "{first:?}"
    );
    a.handle_timeout(first);
    let (rid, req) = one_request(a);
    assert_eq!(
        req,
        Request::Subscribe {
            from_epoch: Some(0)
        }
    );
    a.handle_reply(
        rid,
        Reply::Failed(Failure::Unavailable("refused".into())),
        first,
    );
    let ev = drain(a);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Link(_))),
        "one loss: {ev:?}"
    );
    assert_eq!(a.status().key_service.attempts, 1);
    let second = a.poll_timeout().unwrap();
    assert!(
        second >= first + Duration::from_millis(100)
            && second <= first + Duration::from_millis(200),
        "{second:?}"
    );
    a.handle_timeout(second);
    let (rid, _) = one_request(a);
    a.handle_reply(rid, Reply::Subscribed, second + MS);
    let ev = drain(a);
    let restored: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Link(LinkEvent::Restored { attempts, down_for }) => Some((*attempts, *down_for)),
            _ => None,
        })
        .collect();
    assert_eq!(restored, [(2, second + MS - t)]);
    assert!(a.status().key_service.is_up());
    assert_eq!(a.status().key_service.losses, 1);
    // Events of the old stream are stragglers now.
    a.handle_event(sid, ServiceEvent::Synced { epoch: 0 }, second);
    assert!(drain(a).is_empty());
}

/// MEM-SYNC-04 (KDS-FAN-04): a member refused its replay (PERMISSION_DENIED) was removed while
/// its stream was down: it stops as removed.
#[test]
fn a_replay_refused_as_not_a_member_stops_the_member_as_removed() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let sid = net.streams.remove(&1).unwrap();
    net.members[1].handle_stream_end(sid, Some(Failure::Unavailable("reset".into())), t);
    // Alice removes bob meanwhile.
    net.members[0].command(Command::Remove(vec!["bob".into()]), t);
    net.pump(t);
    assert_eq!(net.kds.epoch(), 2);
    let b = &mut net.members[1];
    let at = b.poll_timeout().unwrap();
    b.handle_timeout(at);
    let (rid, req) = one_request(b);
    assert_eq!(
        req,
        Request::Subscribe {
            from_epoch: Some(1)
        }
    );
    let (reply, _) = net.kds.handle("bob", &req);
    assert!(matches!(
        reply,
        Reply::Failed(Failure::Refused {
            code: Code::PermissionDenied,
            ..
        })
    ));
    b.handle_reply(rid, reply, at);
    let ev = drain(b);
    assert!(
        matches!(
            ev.last(),
            Some(Event::Stopped {
                error: Some(CallError::Removed)
            })
        ),
        "{ev:?}"
    );
    assert!(b.is_stopped());
    assert!(b.status().removed);
    assert_eq!(b.poll_timeout(), None);
    let id = b.command(Command::SelfUpdate, at);
    assert!(matches!(
        drain(b).as_slice(),
        [Event::Done { id: d, result: Err(CallError::Stopped) }] if *d == id
    ));
}

// ---- the service's proposals -------------------------------------------------------------

/// MEM-PROP-01: when the service proposes a departed member's removal, the lowest-ranked
/// member that stays commits it at once, the next after one `proposal_commit_delay`, and so on;
/// once the removal is committed the others' timers are cancelled.
#[test]
fn a_departure_is_committed_at_once_by_the_lowest_rank_and_later_by_the_others() {
    let mut net = Net::room_of(&["alice", "bob", "carol", "dave"]);
    let t = net.tick_all(Duration::from_secs(1));
    // Shorter than the key-expiry tick, so the commit times are the next wake-ups.
    let delay = Duration::from_millis(100);
    for m in &mut net.members {
        m.cfg.proposal_commit_delay = delay;
    }
    // Alice (leaf 0) leaves: bob is the lowest rank that stays.
    net.members[0].command(Command::Leave, t);
    let (rid, req) = one_request(&mut net.members[0]);
    assert_eq!(req, Request::Leave);
    let (reply, events) = net.kds.handle("alice", &req);
    assert_eq!(events.len(), 1);
    net.members[0].handle_reply(rid, reply, t);
    assert!(net.members[0].is_stopped());
    net.streams.remove(&0);
    net.fan_out(&events, None, t);
    let (rid, commit) = one_request(&mut net.members[1]);
    assert!(matches!(commit, Request::SendCommit { .. }));
    assert_eq!(net.members[2].poll_request(), None);
    assert_eq!(net.members[3].poll_request(), None);
    assert_eq!(net.members[2].poll_timeout(), Some(t + delay));
    assert_eq!(net.members[3].poll_timeout(), Some(t + 2 * delay));
    let (reply, events) = net.kds.handle("bob", &commit);
    net.members[1].handle_reply(rid, reply, t + MS);
    net.fan_out(&events, None, t + MS);
    for m in &mut net.members[1..] {
        assert_eq!(m.status().members, ["bob", "carol", "dave"]);
        // The later ranks' timers are cancelled: nothing more is committed.
        m.handle_timeout(t + 2 * delay);
        assert_eq!(m.poll_request(), None, "{m:?}");
    }
    net.members.remove(0);
    net.assert_in_step();
}

/// MEM-LEAVE-01: the commit of a leaver's own removal can reach it before the reply to its
/// `Leave`; it has left all the same, so the leave succeeds (it was `Removed` before).
#[test]
fn a_leave_overtaken_by_the_commit_of_its_removal_succeeds() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    let id = net.members[1].command(Command::Leave, t);
    let (rid, req) = one_request(&mut net.members[1]);
    assert_eq!(req, Request::Leave);
    // The service proposes bob's removal; alice commits it at once; the commit reaches bob
    // while his Leave reply is still on its way.
    let (reply, events) = net.kds.handle("bob", &req);
    net.fan_out(&events, None, t);
    let (crid, commit) = one_request(&mut net.members[0]);
    let (creply, cevents) = net.kds.handle("alice", &commit);
    net.members[0].handle_reply(crid, creply, t + MS);
    net.fan_out(&cevents, None, t + MS);
    let ev = drain(&mut net.members[1]);
    assert_eq!(dones(&ev), [(id, Ok(None))], "{ev:?}");
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Stopped {
            error: Some(CallError::Removed)
        }
    )));
    // The late reply changes nothing.
    net.members[1].handle_reply(rid, reply, t + 2 * MS);
    assert!(drain(&mut net.members[1]).is_empty());
    assert_eq!(net.members[0].status().members, ["alice"]);
}

/// MEM-PROP-01: a member further down the ranks commits the removal itself when the ones before
/// it did not (they are away).
#[test]
fn a_departure_nobody_committed_is_committed_after_the_members_rank_delay() {
    let mut net = Net::room_of(&["alice", "bob", "carol"]);
    let t = net.tick_all(Duration::from_secs(1));
    let delay = net.members[0].cfg.proposal_commit_delay;
    net.members[2].command(Command::Leave, t);
    let (rid, req) = one_request(&mut net.members[2]);
    let (reply, events) = net.kds.handle("carol", &req);
    net.members[2].handle_reply(rid, reply, t);
    // Only bob hears of it (alice's stream is slow).
    let sid = net.streams[&1];
    net.members[1].handle_event(sid, service_event(&events[0]), t);
    assert_eq!(net.members[1].poll_request(), None);
    assert_eq!(net.members[1].poll_timeout(), Some(t + delay));
    net.members[1].handle_timeout(t + delay);
    let (_, req) = one_request(&mut net.members[1]);
    let (reply, _) = net.kds.handle("bob", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 3 });
}

// ---- restart -----------------------------------------------------------------------------

/// MEM-RST-01: a member restored from its stored state resubscribes from its epoch and commits
/// a self-update at once; it sends frames only after that commit is merged (a restored session
/// has no sender key).
#[test]
fn a_restored_member_resubscribes_and_self_updates_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.db");
    let mut net = Net::new();
    let session = CallSession::with_provider(
        SqliteProvider::open(&path).unwrap(),
        b"alice",
        KeyConfig::default(),
    )
    .unwrap();
    let mut alice = Member::with_session(cfg("alice"), session, 1);
    alice.command(Command::Create, Duration::ZERO);
    let mut pending: VecDeque<_> = std::iter::from_fn(|| alice.poll_request()).collect();
    while let Some((rid, req)) = pending.pop_front() {
        let (reply, _) = net.kds.handle("alice", &req);
        alice.handle_reply(rid, reply, Duration::ZERO);
        pending.extend(std::iter::from_fn(|| alice.poll_request()));
    }
    net.members.push(member("bob"));
    net.members[0].command(Command::JoinExternal, Duration::ZERO);
    net.pump(Duration::ZERO);
    assert_eq!(net.kds.epoch(), 1);
    let sig = alice.session().signature_public_key();
    drop(alice);

    let t = Duration::from_secs(5);
    let restored = CallSession::restore(
        SqliteProvider::open(&path).unwrap(),
        b"alice",
        &sig,
        ROOM.as_bytes(),
        KeyConfig::default(),
        t,
    )
    .unwrap();
    // Alice missed bob's join while down: she is still at epoch 0.
    assert_eq!(restored.epoch(), Some(0));
    let mut alice = Member::with_session(cfg("alice"), restored, 2);
    let keys = alice.frame_keys();
    let mut out = [0u8; 64];
    assert!(
        keys.encrypt(b"", b"frame", &mut out).is_err(),
        "no sender key yet"
    );
    assert_eq!(alice.poll_timeout(), Some(Duration::ZERO));
    alice.handle_timeout(t);
    let reqs: Vec<_> = std::iter::from_fn(|| alice.poll_request()).collect();
    assert!(
        reqs.iter()
            .any(|(_, r)| matches!(r, Request::SendCommit { .. })),
        "{reqs:?}"
    );
    let sub = reqs
        .iter()
        .find(|(_, r)| matches!(r, Request::Subscribe { .. }))
        .expect("a subscription");
    assert_eq!(
        sub.1,
        Request::Subscribe {
            from_epoch: Some(0)
        }
    );
    // The self-update, made in epoch 0, loses to bob's join; alice catches up by the replay
    // and makes it again in epoch 1.
    let mut now = t;
    let mut pending: VecDeque<_> = reqs.into();
    let mut stream = None;
    while let Some((rid, req)) = pending.pop_front() {
        let (reply, events) = net.kds.handle("alice", &req);
        let ok = reply == Reply::Subscribed;
        alice.handle_reply(rid, reply, now);
        if ok {
            stream = Some(rid);
            for e in &events {
                alice.handle_event(rid, service_event(e), now);
            }
        } else if let Some(sid) = stream {
            for e in &events {
                alice.handle_event(sid, service_event(e), now);
            }
            net.fan_out(&events, None, now);
        }
        pending.extend(std::iter::from_fn(|| alice.poll_request()));
        if pending.is_empty()
            && let Some(at) = alice.poll_timeout()
            && at <= now + Duration::from_millis(100)
        {
            now = at.max(now);
            alice.handle_timeout(now);
            pending.extend(std::iter::from_fn(|| alice.poll_request()));
        }
    }
    assert_eq!(net.kds.epoch(), 2);
    assert_eq!(alice.status().epoch, Some(2));
    assert_eq!(
        alice.status().epoch_authenticator,
        net.members[0].status().epoch_authenticator
    );
    let n = keys.encrypt(b"", b"frame", &mut out).unwrap();
    let mut d = net.members[0].frame_keys().decryptor();
    let got = d.decrypt_in_place(b"", &mut out[..n], now, 0).unwrap();
    assert!(
        matches!(got, veil_mls::Received::Plaintext { plaintext, .. } if &plaintext[..] == b"frame")
    );
}

/// MEM-CMT-01 (an Add's commit carries the Welcome; KDS-FAN-03 on the service's side): a member waiting for a Welcome publishes a KeyPackage and listens
/// without a replay; an Add claims it, and the Welcome, sent to that member only, brings it in.
#[test]
fn an_added_member_joins_by_the_welcome_sent_to_it_alone() {
    let mut net = Net::room_of(&["alice", "bob"]);
    let t = net.tick_all(Duration::from_secs(1));
    net.members.push(member("carol"));
    let wait = net.members[2].command(Command::AwaitWelcome, t);
    let (rid, req) = one_request(&mut net.members[2]);
    assert!(
        matches!(req, Request::PublishKeyPackages { ref key_packages } if key_packages.len() == 1)
    );
    let (reply, _) = net.kds.handle("carol", &req);
    net.members[2].handle_reply(rid, reply, t);
    assert_eq!(dones(&drain(&mut net.members[2])), [(wait, Ok(None))]);
    let (rid, req) = one_request(&mut net.members[2]);
    assert_eq!(req, Request::Subscribe { from_epoch: None });
    let (reply, _) = net.kds.handle("carol", &req);
    net.members[2].handle_reply(rid, reply, t);
    net.streams.insert(2, rid);
    let add = net.members[0].command(Command::Add(vec!["carol".into()]), t);
    let (rid, req) = one_request(&mut net.members[0]);
    assert_eq!(
        req,
        Request::ClaimKeyPackage {
            identity: "carol".into()
        }
    );
    let (reply, _) = net.kds.handle("alice", &req);
    net.members[0].handle_reply(rid, reply, t);
    let (rid, req) = one_request(&mut net.members[0]);
    let Request::SendCommit { ref welcome, .. } = req else {
        panic!("{req:?}")
    };
    assert!(!welcome.is_empty());
    let (reply, events) = net.kds.handle("alice", &req);
    net.members[0].handle_reply(rid, reply, t);
    assert_eq!(dones(&drain(&mut net.members[0])), [(add, Ok(Some(2)))]);
    net.fan_out(&events, None, t);
    net.assert_in_step();
    assert_eq!(net.members[1].status().members, ["alice", "bob", "carol"]);
}

/// MEM-PROP-01, regression (simulator seed 61): a proposal commit that falls due while a
/// command runs waits for it without asking to be woken in the past (the shell would spin
/// until the command ended), and is made as soon as the command ends.
#[test]
fn a_proposal_commit_due_during_a_command_waits_without_a_past_wake_up() {
    let mut net = Net::room_of(&["alice", "bob", "carol"]);
    let t = net.tick_all(Duration::from_secs(1));
    // Alice's command waits on the service (nobody named dave published a KeyPackage).
    let add = net.members[0].command(Command::Add(vec!["dave".into()]), t);
    let (claim, req) = one_request(&mut net.members[0]);
    assert_eq!(
        req,
        Request::ClaimKeyPackage {
            identity: "dave".into()
        }
    );
    // Carol leaves; alice, rank 0, would commit the removal at once.
    net.members[2].command(Command::Leave, t);
    let (rid, req) = one_request(&mut net.members[2]);
    let (reply, events) = net.kds.handle("carol", &req);
    net.members[2].handle_reply(rid, reply, t);
    let sid = net.streams[&0];
    net.members[0].handle_event(sid, service_event(&events[0]), t);
    assert_eq!(net.members[0].poll_request(), None, "one command at a time");
    for _ in 0..3 {
        let at = net.members[0].poll_timeout().unwrap();
        assert!(at > t, "woken at {at:?}, not after {t:?}");
        net.members[0].handle_timeout(t);
    }
    let (reply, _) = net.kds.handle(
        "alice",
        &Request::ClaimKeyPackage {
            identity: "dave".into(),
        },
    );
    net.members[0].handle_reply(claim, reply, t + MS);
    let ev = drain(&mut net.members[0]);
    assert!(
        matches!(dones(&ev).as_slice(), [(id, Err(_))] if *id == add),
        "{ev:?}"
    );
    let (_, req) = one_request(&mut net.members[0]);
    let (reply, _) = net.kds.handle("alice", &req);
    assert_eq!(reply, Reply::CommitAccepted { epoch: 3 });
}

/// Answer the requests of `m`, a member outside `net`, until it asks nothing more: its stream
/// is `stream`; its commits' events reach `net`'s members too.
fn serve_alone(
    net: &mut Net,
    m: &mut Member<SqliteProvider>,
    stream: &mut Option<RequestId>,
    now: Duration,
) {
    let who = m.cfg.identity.clone();
    while let Some((rid, req)) = m.poll_request() {
        let (reply, events) = net.kds.handle(&who, &req);
        if matches!(req, Request::Subscribe { .. }) && reply == Reply::Subscribed {
            m.handle_reply(rid, reply, now);
            *stream = Some(rid);
            for e in &events {
                m.handle_event(rid, service_event(e), now);
            }
            let epoch = net.kds.epoch();
            m.handle_event(rid, ServiceEvent::Synced { epoch }, now);
        } else {
            m.handle_reply(rid, reply, now);
            if let Some(sid) = *stream {
                for e in events.iter().filter(|e| e.kind != EventKind::Welcome) {
                    m.handle_event(sid, service_event(e), now);
                }
            }
            net.fan_out(&events, None, now);
        }
    }
}

/// MEM-RST-01, regression (simulator seed 162): a process that died after making a commit the
/// service never got leaves it pending in the stored state; the restored member drops it once
/// the replay shows the room still at its epoch, and makes its self-update then, so it sends
/// frames again without waiting for another member's commit.
#[test]
fn a_restored_member_drops_a_commit_the_room_never_got_and_self_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.db");
    let mut net = Net::room_of(&["bob"]);
    let session = CallSession::with_provider(
        SqliteProvider::open(&path).unwrap(),
        b"alice",
        KeyConfig::default(),
    )
    .unwrap();
    let mut alice = Member::with_session(cfg("alice"), session, 1);
    let mut stream = None;
    alice.command(Command::JoinExternal, Duration::ZERO);
    serve_alone(&mut net, &mut alice, &mut stream, Duration::ZERO);
    assert_eq!(net.kds.epoch(), 1);
    net.assert_in_step();
    // Alice's self-update is made, then her process dies before the service gets it.
    let t = Duration::from_secs(1);
    alice.command(Command::SelfUpdate, t);
    let (_, req) = one_request(&mut alice);
    assert!(matches!(req, Request::SendCommit { .. }));
    let sig = alice.session().signature_public_key();
    drop(alice);

    let t = Duration::from_secs(2);
    let restored = CallSession::restore(
        SqliteProvider::open(&path).unwrap(),
        b"alice",
        &sig,
        ROOM.as_bytes(),
        KeyConfig::default(),
        t,
    )
    .unwrap();
    let mut alice = Member::with_session(cfg("alice"), restored, 2);
    let keys = alice.frame_keys();
    alice.handle_timeout(t);
    let mut stream = None;
    serve_alone(&mut net, &mut alice, &mut stream, t);
    assert_eq!(net.kds.epoch(), 2, "alice's new self-update went through");
    assert_eq!(alice.status().epoch, Some(2));
    assert_eq!(
        alice.status().epoch_authenticator,
        net.members[0].status().epoch_authenticator
    );
    let mut out = [0u8; 64];
    let n = keys
        .encrypt(b"", b"frame", &mut out)
        .expect("alice sends again");
    let mut d = net.members[0].frame_keys().decryptor();
    assert!(matches!(
        d.decrypt_in_place(b"", &mut out[..n], t, 0),
        Ok(veil_mls::Received::Plaintext { .. })
    ));
}
