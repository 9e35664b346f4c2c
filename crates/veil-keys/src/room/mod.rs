//! One room's public MLS state and the rules for changing it (specs/key-service.md §3-§4, §8).
//!
//! Synchronous and free of I/O but for the [`Store`] it is handed: the service calls it under
//! the room's lock, from a blocking task. The state is an openmls `PublicGroup` over an
//! in-memory store whose bytes are persisted with every change, so a room reloads after a
//! restart at exactly the epoch the database acknowledged (KDS-DUR-03). No secret of the group
//! is here: `PublicGroup` holds the tree's public keys and the group context only.
//!
//! - [`RoomState::create`]: a room from its creator's epoch-0 GroupInfo (KDS-GI-01,
//!   KDS-ROOM-01/02; `group_info`).
//! - [`RoomState::check_commit`]: a commit, checked step by step in the order of §4 (one
//!   function per check in `validate`, KDS-VAL-*, KDS-ORD-*, KDS-LIM-02, KDS-REM-03,
//!   KDS-ROOM-02, KDS-GI-02), applied to a copy of the state.
//! - [`RoomState::depart`]: the service's Remove proposals for members who left
//!   (KDS-REM-01/02).
//! - [`check_key_package`]: an uploaded KeyPackage (KDS-KP-01).

mod group_info;
mod key;
mod key_package;
mod snapshot;
#[cfg(test)]
pub(crate) mod testkit;
mod validate;

use std::collections::BTreeSet;

use openmls::group::PublicGroup;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use sha2::{Digest, Sha256};

pub use key::{CIPHERSUITE, SERVICE_IDENTITY, ServiceKey};
pub use key_package::check_key_package;

use crate::error::KdsError;
use crate::store::{Event, EventKind, RoomRecord, Store};
use group_info::{public_group_from, validate_group_info, validate_new_room};
use snapshot::{restore_storage, snapshot};
use validate::{
    Adds, Epoch, validate_authenticated_data, validate_committer, validate_external_sender,
    validate_is_commit, validate_one_leaf_per_identity, validate_public_message,
};

fn parse(what: &'static str, bytes: &[u8]) -> Result<MlsMessageIn, KdsError> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| KdsError::malformed_by(what, "not a TLS-encoded MLS message", e))
}

fn identity_of(credential: &Credential) -> Result<String, KdsError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|e| KdsError::invalid_by("credential is not a BasicCredential", e))?;
    String::from_utf8(basic.identity().to_vec())
        .map_err(|_| KdsError::invalid("credential identity is not UTF-8"))
}

/// An openmls or tls_codec failure on the service's own data: a bug, named by the error's type.
fn internal<E: std::error::Error + Send + Sync + 'static>(e: E) -> KdsError {
    KdsError::internal_by(std::any::type_name::<E>(), e)
}

/// The group id of a message is the room's name (KDS-VAL-01, KDS-GI-01/02).
fn check_group(room: &str, group: &GroupId) -> Result<(), KdsError> {
    if group.as_slice() == room.as_bytes() {
        Ok(())
    } else {
        Err(KdsError::WrongGroup {
            room: room.to_owned(),
            group: String::from_utf8_lossy(group.as_slice()).into_owned(),
        })
    }
}

/// A commit the room accepted, not yet written.
#[derive(Debug)]
pub struct Accepted {
    /// The room after the commit.
    pub next: RoomState,
    /// Log entries to append: the commit, Welcomes, re-issued removals.
    pub events: Vec<Event>,
    /// Single-use KeyPackages the commit consumed (hash refs).
    pub consumed: Vec<Vec<u8>>,
}

/// A `SendCommit` request as [`RoomState::check_commit`] validates it.
#[derive(Debug, Clone, Copy)]
pub struct SentCommit<'a> {
    /// The token's identity.
    pub identity: &'a str,
    /// The commit (`MLSMessage` bytes).
    pub commit: &'a [u8],
    /// Its Welcome, empty if it adds nobody.
    pub welcome: &'a [u8],
    /// The GroupInfo of the epoch it makes.
    pub group_info: &'a [u8],
}

/// What [`RoomState::check_commit`] decided.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Accept it (after the write succeeds).
    Accept(Box<Accepted>),
    /// This exact commit by this identity was already accepted in `epoch` (a retry).
    Duplicate {
        /// The room's epoch.
        epoch: u64,
    },
}

/// Where a subscription's replay starts ([`RoomState::replay_start`]).
#[derive(Debug)]
pub struct ReplayStart {
    /// The subscriber's newest Welcome, to send first.
    pub welcome: Option<Event>,
    /// Then the log from this epoch on, up to `up_to`; `None` for live events only.
    pub from: Option<u64>,
    /// The last log position the replay covers: live events follow it.
    pub up_to: u64,
    /// The room's epoch when the stream opened (`Synced`).
    pub epoch: u64,
}

/// One room: its public group and log position.
pub struct RoomState {
    name: String,
    crypto: RustCrypto,
    pg: PublicGroup,
    storage: MemoryStorage,
    epoch: u64,
    next_seq: u64,
    group_info: Vec<u8>,
    sender_index: u32,
    /// Members the service wants removed (left or timed out), by identity.
    departed: BTreeSet<String>,
    /// Of those, the ones with a Remove proposal in the current epoch.
    proposed: BTreeSet<String>,
}

impl core::fmt::Debug for RoomState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RoomState")
            .field("name", &self.name)
            .field("epoch", &self.epoch)
            .field("members", &self.pg.members().count())
            .field("departed", &self.departed)
            .finish_non_exhaustive()
    }
}

impl RoomState {
    /// Start tracking `room` from its creator's epoch-0 GroupInfo: the GroupInfo verifies and
    /// names the room (KDS-GI-01), the group is at epoch 0 in Veil's cipher suite with
    /// `creator` as its only member (KDS-ROOM-01), and it lists `key` as external sender
    /// (KDS-ROOM-02). One room per name (KDS-ROOM-03) is the store's to enforce.
    ///
    /// # Errors
    /// [`KdsError::Malformed`], [`KdsError::Invalid`], [`KdsError::WrongGroup`],
    /// [`KdsError::ExternalSenderMissing`], [`KdsError::PermissionDenied`].
    pub fn create(
        room: &str,
        group_info: &[u8],
        creator: &str,
        key: &ServiceKey,
    ) -> Result<Self, KdsError> {
        let crypto = RustCrypto::default();
        let (pg, storage) = public_group_from(&crypto, room, group_info)?;
        validate_new_room(&pg, creator)?;
        let sender_index = validate_external_sender(&pg, key)?;
        Ok(Self {
            name: room.to_owned(),
            crypto,
            epoch: pg.group_context().epoch().as_u64(),
            pg,
            storage,
            next_seq: 1,
            group_info: group_info.to_vec(),
            sender_index,
            departed: BTreeSet::new(),
            proposed: BTreeSet::new(),
        })
    }

    /// Reload a room from its stored record (KDS-DUR-03): the stored epoch, its queued
    /// Remove proposals, and their members counted as departed.
    ///
    /// # Errors
    /// [`KdsError::Storage`] if the record does not parse.
    pub fn restore(record: &RoomRecord, key: &ServiceKey) -> Result<Self, KdsError> {
        let storage = restore_storage(&record.public_state)?;
        let pg = PublicGroup::load(&storage, &GroupId::from_slice(record.room.as_bytes()))
            .map_err(|e| KdsError::storage_by(format!("room {}", record.room), e))?
            .ok_or_else(|| KdsError::storage(format!("room {} has no group state", record.room)))?;
        let sender_index = validate_external_sender(&pg, key)?;
        let proposed = pg
            .queued_proposals(&storage)
            .map_err(internal)?
            .into_iter()
            .filter_map(|(_, q)| match q.proposal() {
                Proposal::Remove(r) => pg
                    .leaf(r.removed())
                    .and_then(|l| identity_of(l.credential()).ok()),
                _ => None,
            })
            .collect::<BTreeSet<_>>();
        Ok(Self {
            name: record.room.clone(),
            crypto: RustCrypto::default(),
            departed: proposed.clone(),
            proposed,
            pg,
            storage,
            epoch: record.epoch,
            next_seq: record.next_seq,
            group_info: record.group_info.clone(),
            sender_index,
        })
    }

    /// The record to persist.
    ///
    /// # Errors
    /// Internal errors.
    pub fn record(&self) -> Result<RoomRecord, KdsError> {
        Ok(RoomRecord {
            room: self.name.clone(),
            epoch: self.epoch,
            next_seq: self.next_seq,
            group_info: self.group_info.clone(),
            public_state: snapshot(&self.storage)?,
        })
    }

    /// Room name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last log position used.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Newest GroupInfo.
    #[must_use]
    pub fn group_info(&self) -> &[u8] {
        &self.group_info
    }

    /// Members' identities, by leaf index.
    #[must_use]
    pub fn members(&self) -> Vec<(u32, String)> {
        self.pg
            .members()
            .filter_map(|m| Some((m.index.u32(), identity_of(&m.credential).ok()?)))
            .collect()
    }

    /// Plan the replay of a `Subscribe` by `identity` resuming after `from_epoch`
    /// (KDS-FAN-02..04): a member replays from the epoch it names; a member that names none
    /// gets its newest Welcome and the log from that Welcome's epoch; a non-member gets live
    /// events only, and may not name an epoch. Call it under the room's lock, so that the
    /// replay ends exactly where live events begin.
    ///
    /// # Errors
    /// [`KdsError::Malformed`] for an epoch ahead of the room's; [`KdsError::NotMember`] for a
    /// non-member naming one; storage errors.
    pub fn replay_start(
        &self,
        store: &dyn Store,
        identity: &str,
        from_epoch: Option<u64>,
    ) -> Result<ReplayStart, KdsError> {
        let up_to = self.last_seq();
        let member = self.is_member(identity);
        let (welcome, from) = match from_epoch {
            Some(e) if e > self.epoch => {
                return Err(KdsError::Malformed {
                    what: "from_epoch",
                    why: format!("{e} is ahead of the room's epoch {}", self.epoch),
                    source: None,
                });
            }
            // KDS-FAN-04: the log is the members' to replay.
            Some(_) if !member => {
                return Err(KdsError::NotMember {
                    identity: identity.to_owned(),
                });
            }
            Some(e) => (None, Some(e)),
            None if member => match store.latest_welcome(&self.name, identity, up_to)? {
                Some(w) => {
                    let from = w.epoch;
                    (Some(w), Some(from))
                }
                None => (None, None),
            },
            None => (None, None),
        };
        Ok(ReplayStart {
            welcome,
            from,
            up_to,
            epoch: self.epoch,
        })
    }

    /// Whether every member has departed (left, or gone past the grace): nobody is left to
    /// commit, so the room is over (KDS-GC-02).
    #[must_use]
    pub fn all_departed(&self) -> bool {
        self.pg
            .members()
            .all(|m| identity_of(&m.credential).is_ok_and(|id| self.departed.contains(&id)))
    }

    /// Whether `identity` is a member.
    #[must_use]
    pub fn is_member(&self, identity: &str) -> bool {
        self.leaf_of(identity).is_some()
    }

    fn leaf_of(&self, identity: &str) -> Option<LeafNodeIndex> {
        self.pg
            .members()
            .find(|m| identity_of(&m.credential).is_ok_and(|id| id == identity))
            .map(|m| m.index)
    }

    fn clone_state(&self) -> Result<(PublicGroup, MemoryStorage), KdsError> {
        let storage = restore_storage(&snapshot(&self.storage)?)?;
        let pg = PublicGroup::load(&storage, self.pg.group_id())
            .map_err(internal)?
            .ok_or_else(|| KdsError::internal("cloned room state has no group"))?;
        Ok((pg, storage))
    }

    /// Validate a commit from `sent.identity` against the room, running the checks of
    /// specs/key-service.md §4 in order (the functions of `validate`, one per check). Nothing
    /// changes until the caller persists [`Accepted`] and adopts `next` (KDS-DUR-01).
    ///
    /// # Errors
    /// The first check that fails; see specs/key-service.md §4 for each check and its error.
    pub fn check_commit(
        &self,
        store: &dyn Store,
        key: &ServiceKey,
        sent: &SentCommit<'_>,
        max_authenticated_data: usize,
    ) -> Result<CommitOutcome, KdsError> {
        let pm = validate_public_message(&self.name, sent.commit)?;
        let message_epoch = pm.epoch().as_u64();
        if self.validate_epoch(store, &pm, sent.identity, sent.commit)? == Epoch::Duplicate {
            return Ok(CommitOutcome::Duplicate { epoch: self.epoch });
        }
        let processed = self.validate_with_openmls(pm)?;
        validate_authenticated_data(&processed, max_authenticated_data)?;
        let committer = validate_committer(&processed, sent.identity)?;
        let commit = validate_is_commit(processed)?;
        let adds = self.validate_adds(store, &commit.staged, sent.welcome)?;
        self.validate_removals(&commit)?;
        // Apply to a copy; the room changes only after the write.
        let (mut pg, storage) = self.clone_state()?;
        pg.merge_commit(&storage, *commit.staged)
            .map_err(internal)?;
        validate_one_leaf_per_identity(&pg)?;
        let sender_index = validate_external_sender(&pg, key)?;
        validate_group_info(&self.crypto, &self.name, &pg, sent.group_info)?;
        let next = Self {
            name: self.name.clone(),
            crypto: RustCrypto::default(),
            epoch: pg.group_context().epoch().as_u64(),
            pg,
            storage,
            next_seq: self.next_seq,
            group_info: sent.group_info.to_vec(),
            sender_index,
            departed: self.departed.clone(),
            proposed: BTreeSet::new(),
        };
        next.accept(key, sent, message_epoch, committer, adds)
            .map(|a| CommitOutcome::Accept(Box::new(a)))
    }

    /// The log entries of a commit that passed every check, `self` being the state it makes:
    /// the commit, a Welcome per added member, and the removals still due (KDS-REM-02).
    fn accept(
        mut self,
        key: &ServiceKey,
        sent: &SentCommit<'_>,
        message_epoch: u64,
        committer: String,
        adds: Adds,
    ) -> Result<Accepted, KdsError> {
        let mut events = vec![Event {
            seq: self.take_seq(),
            kind: EventKind::Commit,
            epoch: message_epoch,
            actor: committer,
            recipient: None,
            message: sent.commit.to_vec(),
            hash: Some(Sha256::digest(sent.commit).to_vec()),
        }];
        for r in adds.recipients {
            events.push(Event {
                seq: self.take_seq(),
                kind: EventKind::Welcome,
                epoch: self.epoch,
                actor: sent.identity.to_owned(),
                recipient: Some(r),
                message: sent.welcome.to_vec(),
                hash: None,
            });
        }
        // KDS-REM-02: external proposals are bound to one epoch: re-issue the ones still due.
        let still_members: BTreeSet<String> =
            self.members().into_iter().map(|(_, id)| id).collect();
        self.departed.retain(|id| still_members.contains(id));
        events.extend(self.propose_due(key)?);
        Ok(Accepted {
            next: self,
            events,
            consumed: adds.consumed,
        })
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Mark `identity` as departed and create Remove proposals for every departed member not yet
    /// proposed in this epoch (KDS-REM-01). The returned events must be persisted with
    /// [`record`](Self::record); if that write fails, reload the room from the store.
    ///
    /// # Errors
    /// Internal errors.
    pub fn depart(&mut self, key: &ServiceKey, identity: &str) -> Result<Vec<Event>, KdsError> {
        if self.leaf_of(identity).is_some() {
            self.departed.insert(identity.to_owned());
        }
        self.propose_due(key)
    }

    /// KDS-REM-01/02: sign, queue and log a Remove for each departed member without one in
    /// this epoch.
    fn propose_due(&mut self, key: &ServiceKey) -> Result<Vec<Event>, KdsError> {
        let due: Vec<(String, LeafNodeIndex)> = self
            .departed
            .iter()
            .filter(|id| !self.proposed.contains(*id))
            .filter_map(|id| Some((id.clone(), self.leaf_of(id)?)))
            .collect();
        let mut events = Vec::new();
        for (id, leaf) in due {
            let msg = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
                leaf,
                self.pg.group_id().clone(),
                self.pg.group_context().epoch(),
                &key.signer,
                SenderExtensionIndex::new(self.sender_index),
            )
            .map_err(internal)?;
            let bytes = msg.tls_serialize_detached().map_err(internal)?;
            let pm = MlsMessageIn::from(msg)
                .try_into_protocol_message()
                .map_err(internal)?;
            let processed = self
                .pg
                .process_message(&self.crypto, pm)
                .map_err(internal)?;
            let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
                return Err(KdsError::internal("own proposal did not process"));
            };
            self.pg
                .add_proposal(&self.storage, *queued)
                .map_err(internal)?;
            self.proposed.insert(id.clone());
            events.push(Event {
                seq: self.take_seq(),
                kind: EventKind::Proposal,
                epoch: self.epoch,
                actor: id,
                recipient: None,
                message: bytes,
                hash: None,
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{Member, ROOM, Service};
    use tonic::Code;

    // --- create (KDS-ROOM-01/02, KDS-GI-01) ---------------------------------------------------

    #[test]
    fn kds_room_01_a_room_starts_from_its_creators_epoch_0_group_info() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let gi = alice.create(ROOM, &[svc.sender()]);
        let room = RoomState::create(ROOM, &gi, "alice", &svc.key).unwrap();
        assert_eq!(room.name(), ROOM);
        assert_eq!(room.epoch(), 0);
        assert_eq!(room.last_seq(), 0);
        assert_eq!(room.group_info(), gi);
        assert_eq!(room.members(), vec![(0, "alice".to_owned())]);
        assert!(room.is_member("alice") && !room.is_member("bob"));
        assert!(!room.all_departed());
    }

    #[test]
    fn kds_room_01_create_refuses_what_is_not_the_creators_new_group() {
        let svc = Service::new();
        let key = &svc.key;
        let e = RoomState::create(ROOM, b"garbage", "alice", key).unwrap_err();
        assert!(matches!(e, KdsError::Malformed { .. }), "{e}");
        let gi = Member::new("alice").create("other", &[svc.sender()]);
        let e = RoomState::create(ROOM, &gi, "alice", key).unwrap_err();
        assert!(matches!(e, KdsError::WrongGroup { .. }), "{e}");
        let gi = Member::new("alice").create(ROOM, &[svc.sender()]);
        let e = RoomState::create(ROOM, &gi, "mallory", key).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    }

    #[test]
    fn kds_room_02_a_group_without_the_service_as_external_sender_is_refused() {
        let svc = Service::new();
        let gi = Member::new("alice").create(ROOM, &[]);
        let e = RoomState::create(ROOM, &gi, "alice", &svc.key).unwrap_err();
        assert!(matches!(e, KdsError::ExternalSenderMissing(_)), "{e}");
        assert_eq!(e.code(), Code::FailedPrecondition);
        // Another service's key is not this one's.
        let gi = Member::new("alice").create(ROOM, &[Service::new().sender()]);
        let e = RoomState::create(ROOM, &gi, "alice", &svc.key).unwrap_err();
        assert!(matches!(e, KdsError::ExternalSenderMissing(_)), "{e}");
    }

    // --- check_commit ---------------------------------------------------------------------------

    #[test]
    fn an_accepted_commit_logs_the_commit_then_its_welcomes_and_changes_nothing_yet() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let bob = Member::new("bob");
        let add = alice.add(&[svc.claim(&bob, "alice")]);
        let before = room.record().unwrap();
        let Accepted { next, events, .. } = svc.accepted(&room, &add.by("alice"));
        assert_eq!(
            room.record().unwrap(),
            before,
            "the room waits for the write"
        );
        assert_eq!(next.epoch(), 1);
        assert_eq!(next.last_seq(), 2);
        assert_eq!(next.group_info(), add.group_info);
        assert_eq!(
            next.members(),
            vec![(0, "alice".to_owned()), (1, "bob".to_owned())]
        );
        let shape: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.seq,
                    e.kind,
                    e.epoch,
                    e.actor.as_str(),
                    e.recipient.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, EventKind::Commit, 0, "alice", None),
                (2, EventKind::Welcome, 1, "alice", Some("bob")),
            ]
        );
        assert_eq!(events[0].message, add.commit);
        assert_eq!(
            events[0].hash.as_deref(),
            Some(&Sha256::digest(&add.commit)[..])
        );
    }

    // --- departures (KDS-REM-01/02, KDS-GC-02) ------------------------------------------------

    #[test]
    fn kds_rem_01_a_departure_is_proposed_once_per_epoch() {
        let svc = Service::new();
        let (mut room, mut alice, _bob) = svc.room_of_two();
        let events = svc.depart(&mut room, "bob");
        let shape: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.kind, e.epoch, e.actor.as_str()))
            .collect();
        assert_eq!(shape, [(3, EventKind::Proposal, 1, "bob")]);
        // A member processes the service's Remove: it is valid MLS from the external sender.
        alice.process(&events[0].message);
        assert!(svc.depart(&mut room, "bob").is_empty(), "already proposed");
        assert!(svc.depart(&mut room, "nobody").is_empty(), "not a member");
        assert_eq!(room.last_seq(), 3);
    }

    #[test]
    fn kds_rem_02_removals_still_due_are_proposed_again_in_the_next_epoch() {
        let svc = Service::new();
        let (mut room, _alice, _bob) = svc.room_of_two();
        svc.depart(&mut room, "bob");
        // A joiner's external commit may not carry the removal (KDS-REM-03 exempts it).
        let join = Member::new("carol").join_external(room.group_info());
        let Accepted { next, events, .. } = svc.accepted(&room, &join.by("carol"));
        let shape: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.kind, e.epoch, e.actor.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                (4, EventKind::Commit, 1, "carol"),
                (5, EventKind::Proposal, 2, "bob"),
            ]
        );
        assert_eq!(next.proposed, next.departed);
    }

    #[test]
    fn kds_gc_02_a_room_is_over_once_every_member_departed() {
        let svc = Service::new();
        let (mut room, _alice, _bob) = svc.room_of_two();
        assert!(!room.all_departed());
        svc.depart(&mut room, "bob");
        assert!(!room.all_departed(), "alice is still here");
        svc.depart(&mut room, "alice");
        assert!(room.all_departed());

        let mut solo = svc_room_of_one(&svc);
        assert!(!solo.all_departed());
        svc.depart(&mut solo, "zoe");
        assert!(solo.all_departed(), "a creator who never came back");
    }

    fn svc_room_of_one(svc: &Service) -> RoomState {
        let mut zoe = Member::new("zoe");
        let gi = zoe.create("solo", &[svc.sender()]);
        let room = RoomState::create("solo", &gi, "zoe", &svc.key).unwrap();
        svc.store.create_room(&room.record().unwrap()).unwrap();
        room
    }

    // --- restore (KDS-DUR-03) -----------------------------------------------------------------

    #[test]
    fn kds_dur_03_a_restored_room_is_the_room_that_was_stored() {
        let svc = Service::new();
        let (mut room, mut alice, _bob) = svc.room_of_two();
        let proposal = svc.depart(&mut room, "bob");

        let stored = svc.store.room(ROOM).unwrap().unwrap();
        assert_eq!(stored, room.record().unwrap());
        let restored = RoomState::restore(&stored, &svc.key).unwrap();
        assert_eq!(restored.record().unwrap(), stored);
        assert_eq!(restored.epoch(), 1);
        assert_eq!(restored.last_seq(), 3);
        assert_eq!(restored.members(), room.members());
        assert_eq!(restored.group_info(), room.group_info());
        // The queued Remove came back with its departure.
        assert_eq!(restored.departed, room.departed);
        assert_eq!(restored.proposed, room.proposed);
        let mut restored = restored;
        assert!(
            svc.depart(&mut restored, "bob").is_empty(),
            "not proposed twice"
        );

        // It goes on where the old one stopped: the removal is still owed, by a commit that
        // carries the proposal the old room sent.
        let e = svc
            .check(&restored, &alice.self_update().by("alice"))
            .unwrap_err();
        assert!(matches!(e, KdsError::RemovalsPending(_)), "{e}");
        alice.discard();
        alice.process(&proposal[0].message);
        svc.commit(&mut restored, &alice.commit_pending().by("alice"));
        assert_eq!(restored.members(), vec![(0, "alice".to_owned())]);
        assert_eq!(restored.epoch(), 2);
    }

    #[test]
    fn kds_dur_03_a_damaged_record_does_not_load() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let mut rec = room.record().unwrap();
        rec.public_state.pop();
        let e = RoomState::restore(&rec, &svc.key).unwrap_err();
        assert!(matches!(e, KdsError::Storage { .. }), "{e}");
        // A record of another room's name finds no group in the state.
        let rec = RoomRecord {
            room: "other".into(),
            ..room.record().unwrap()
        };
        let e = RoomState::restore(&rec, &svc.key).unwrap_err();
        assert!(matches!(e, KdsError::Storage { .. }), "{e}");
    }
}
