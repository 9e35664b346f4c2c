//! The key service of the simulation: `veil_keys`' synchronous room state and SQLite store,
//! handling each [`Request`] as the real service's RPC of the same name does
//! (crates/veil-keys/src/service.rs), without the network, tokens or tasks.

use veil_call::{Code, Failure, Reply, Request, ServiceEvent};
use veil_keys::KdsError;
use veil_keys::room::{
    CommitOutcome, RoomState, SERVICE_IDENTITY, SentCommit, ServiceKey, check_key_package,
};
use veil_keys::store::{Event, EventKind, KeyPackageRecord, SqliteStore, Store as _};

/// The simulated call's room.
pub(crate) const ROOM: &str = "sim";
/// The real service's defaults (veil_keys::Config).
const MAX_AAD: usize = 4096;
const KEY_PACKAGE_CAP: u32 = 64;

/// The service: one room, its store and key.
pub(crate) struct SimService {
    store: SqliteStore,
    key: ServiceKey,
    room: Option<RoomState>,
    /// Commits sent again after their acceptance (a lost reply) and answered as accepted.
    pub(crate) duplicates: u64,
}

/// What a request did, for the network to deliver.
pub(crate) struct Handled {
    /// The reply.
    pub(crate) reply: Reply,
    /// Log entries appended (commits, Welcomes, proposals), to fan out to the open streams.
    pub(crate) appended: Vec<Event>,
    /// For a `Subscribe` that opened: the replay, in order, then `Synced` at this epoch.
    pub(crate) replay: Option<(Vec<Event>, u64)>,
}

/// A `KdsError` as a shell turns its gRPC status into a [`Failure`]: `ABORTED` is a lost epoch
/// (with the room's epoch, as the real service's `veil-room-epoch` metadata says).
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

/// A log entry as the stream carries it.
pub(crate) fn service_event(e: &Event) -> ServiceEvent {
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

/// Whether `identity`'s stream carries `e` (Welcomes go to their recipient only).
pub(crate) fn visible(e: &Event, identity: &str) -> bool {
    e.kind != EventKind::Welcome || e.recipient.as_deref() == Some(identity)
}

impl SimService {
    pub(crate) fn open(path: &std::path::Path) -> Self {
        let store = SqliteStore::open(path).expect("the service's store");
        let key = ServiceKey::load_or_create(&store).expect("the service's key");
        Self {
            store,
            key,
            room: None,
            duplicates: 0,
        }
    }

    pub(crate) fn epoch(&self) -> Option<u64> {
        self.room.as_ref().map(RoomState::epoch)
    }

    /// Members' identities, by leaf.
    pub(crate) fn members(&self) -> Vec<String> {
        self.room
            .as_ref()
            .map(|r| r.members().into_iter().map(|(_, id)| id).collect())
            .unwrap_or_default()
    }

    pub(crate) fn handle(&mut self, who: &str, req: &Request) -> Handled {
        match self.try_handle(who, req) {
            Ok(h) => h,
            Err(e) => Handled {
                reply: Reply::Failed(failure(&e, self.epoch())),
                appended: Vec::new(),
                replay: None,
            },
        }
    }

    fn room(&self) -> Result<&RoomState, KdsError> {
        self.room
            .as_ref()
            .ok_or_else(|| KdsError::NoSuchRoom(ROOM.into()))
    }

    fn reply(reply: Reply) -> Handled {
        Handled {
            reply,
            appended: Vec::new(),
            replay: None,
        }
    }

    fn try_handle(&mut self, who: &str, req: &Request) -> Result<Handled, KdsError> {
        Ok(match req {
            Request::ServiceInfo => Self::reply(Reply::ServiceInfo {
                external_sender_key: self.key.public().to_vec(),
                external_sender_identity: SERVICE_IDENTITY.to_vec(),
            }),
            Request::CreateRoom { group_info } => {
                if self.room.is_some() {
                    return Err(KdsError::RoomExists(ROOM.into()));
                }
                let st = RoomState::create(ROOM, group_info, who, &self.key)?;
                self.store.create_room(&st.record()?)?;
                self.room = Some(st);
                Self::reply(Reply::Ok)
            }
            Request::GroupInfo => {
                let st = self.room()?;
                Self::reply(Reply::GroupInfo {
                    epoch: st.epoch(),
                    group_info: st.group_info().to_vec(),
                })
            }
            Request::PublishKeyPackages { key_packages } => {
                let records = key_packages
                    .iter()
                    .map(|m| {
                        let (hash_ref, last_resort) = check_key_package(m, who)?;
                        Ok(KeyPackageRecord {
                            hash_ref,
                            last_resort,
                            message: m.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, KdsError>>()?;
                self.store
                    .add_key_packages(ROOM, who, &records, KEY_PACKAGE_CAP)?;
                Self::reply(Reply::Ok)
            }
            Request::ClaimKeyPackage { identity } => {
                // KDS-KP-02: only members claim.
                if !self.room()?.is_member(who) {
                    return Err(KdsError::PermissionDenied(
                        "only members of the room can claim KeyPackages".into(),
                    ));
                }
                let kp = self
                    .store
                    .claim_key_package(ROOM, identity, who)?
                    .ok_or_else(|| KdsError::NoKeyPackage(identity.clone()))?;
                Self::reply(Reply::KeyPackage(kp))
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
                    .check_commit(&self.store, &self.key, &sent, MAX_AAD)?
                {
                    CommitOutcome::Duplicate { epoch } => {
                        self.duplicates += 1;
                        Self::reply(Reply::CommitAccepted { epoch })
                    }
                    CommitOutcome::Accept(a) => {
                        // Nothing changes unless the write succeeded (KDS-DUR-01).
                        self.store
                            .append(&a.next.record()?, &a.events, &a.consumed)?;
                        self.room = Some(a.next);
                        Handled {
                            reply: Reply::CommitAccepted {
                                epoch: self.epoch().unwrap_or_default(),
                            },
                            appended: a.events,
                            replay: None,
                        }
                    }
                }
            }
            Request::Leave => {
                let st = self
                    .room
                    .as_mut()
                    .ok_or_else(|| KdsError::NoSuchRoom(ROOM.into()))?;
                let events = st.depart(&self.key, who)?;
                if !events.is_empty() {
                    self.store.append(&st.record()?, &events, &[])?;
                }
                Handled {
                    reply: Reply::Ok,
                    appended: events,
                    replay: None,
                }
            }
            Request::Subscribe { from_epoch } => {
                // KDS-FAN-02/03/04, as the service's `subscribe` plans its replay.
                let start = self.room()?.replay_start(&self.store, who, *from_epoch)?;
                let mut replay: Vec<Event> = start.welcome.into_iter().collect();
                if let Some(from) = start.from {
                    replay.extend(
                        self.store
                            .log_page(ROOM, from, 0, start.up_to, usize::MAX)?,
                    );
                }
                Handled {
                    reply: Reply::Subscribed,
                    appended: Vec::new(),
                    replay: Some((replay, start.epoch)),
                }
            }
        })
    }
}
