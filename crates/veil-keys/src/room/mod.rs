//! One room's public MLS state and the commit-acceptance rules (specs/key-service.md §3-§4).
//! Synchronous: the service calls it under the room's lock, from a blocking task. The state is
//! an openmls `PublicGroup` over an in-memory store whose bytes are persisted with every change,
//! so a room reloads after a restart at exactly the epoch the database acknowledged. No secret
//! of the group is here: `PublicGroup` holds the tree's public keys and the group context only.

use std::collections::BTreeSet;

use openmls::group::PublicGroup;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use sha2::{Digest, Sha256};

use crate::error::KdsError;
use crate::store::{Event, EventKind, RoomRecord, Store};

/// The MLS cipher suite rooms must use.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The service's MLS identity as external sender.
pub const SERVICE_IDENTITY: &[u8] = b"veil-key-service";

/// The service's own key: its only private key (KDS-SEC-01).
pub struct ServiceKey {
    signer: SignatureKeyPair,
}

impl core::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServiceKey")
            .field("public", &self.signer.public())
            .finish_non_exhaustive()
    }
}

impl ServiceKey {
    /// Load the service's key pair from `store`, creating it on first start.
    ///
    /// # Errors
    /// Storage errors; a stored key that does not parse.
    pub fn load_or_create(store: &dyn Store) -> Result<Self, KdsError> {
        const KEY: &str = "external_sender_key";
        let fresh = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| KdsError::Internal(format!("key generation: {e:?}")))?;
        let fresh = serde_json::to_vec(&fresh).map_err(|e| KdsError::Internal(e.to_string()))?;
        let stored = store.meta_init(KEY, &fresh)?;
        let signer = serde_json::from_slice(&stored)
            .map_err(|e| KdsError::Storage(format!("stored service key: {e}")))?;
        Ok(Self { signer })
    }

    /// The Ed25519 public key rooms list as external sender.
    #[must_use]
    pub fn public(&self) -> &[u8] {
        self.signer.public()
    }

    fn external_sender(&self) -> ExternalSender {
        ExternalSender::new(
            SignaturePublicKey::from(self.signer.public().to_vec()),
            BasicCredential::new(SERVICE_IDENTITY.to_vec()).into(),
        )
    }
}

fn parse(what: &'static str, bytes: &[u8]) -> Result<MlsMessageIn, KdsError> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| KdsError::Malformed {
        what,
        why: e.to_string(),
    })
}

fn identity_of(credential: &Credential) -> Result<String, KdsError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|e| KdsError::Invalid(format!("credential is not a BasicCredential: {e:?}")))?;
    String::from_utf8(basic.identity().to_vec())
        .map_err(|_| KdsError::Invalid("credential identity is not UTF-8".into()))
}

fn internal(e: impl core::fmt::Debug) -> KdsError {
    KdsError::Internal(format!("{e:?}"))
}

/// Parse a GroupInfo with its ratchet tree and build the public group it describes, verifying
/// the signer's signature and the tree (KDS-GI-01).
fn public_group_from(
    crypto: &RustCrypto,
    room: &str,
    group_info: &[u8],
) -> Result<(PublicGroup, MemoryStorage), KdsError> {
    let MlsMessageBodyIn::GroupInfo(vgi) = parse("group_info", group_info)?.extract() else {
        return Err(KdsError::Malformed {
            what: "group_info",
            why: "not a GroupInfo message".into(),
        });
    };
    check_group(room, vgi.group_id())?;
    let tree = vgi
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| KdsError::Malformed {
            what: "group_info",
            why: "no ratchet_tree extension (create groups with use_ratchet_tree_extension)".into(),
        })?
        .ratchet_tree()
        .clone();
    let storage = MemoryStorage::default();
    let (pg, _) = PublicGroup::from_external(crypto, &storage, tree, vgi, ProposalStore::new())
        .map_err(|e| KdsError::Invalid(format!("group_info: {e:?}")))?;
    Ok((pg, storage))
}

/// KDS-GI-02: `group_info` describes exactly `pg` (group context and ratchet tree, byte for
/// byte), carries `external_pub`, and is signed by the leaf it names. `pg`'s tree was validated
/// commit by commit, so this equals rebuilding a `PublicGroup` from the GroupInfo (KDS-GI-01)
/// without verifying every leaf's signature again.
fn check_group_info(
    crypto: &RustCrypto,
    room: &str,
    pg: &PublicGroup,
    group_info: &[u8],
) -> Result<(), KdsError> {
    let malformed = |why: &str| KdsError::Malformed {
        what: "group_info",
        why: why.to_owned(),
    };
    if group_info.is_empty() {
        return Err(malformed(
            "every commit must come with the new epoch's GroupInfo",
        ));
    }
    let MlsMessageBodyIn::GroupInfo(vgi) = parse("group_info", group_info)?.extract() else {
        return Err(malformed("not a GroupInfo message"));
    };
    check_group(room, vgi.group_id())?;
    if vgi.group_context() != pg.group_context() {
        return Err(KdsError::Invalid(
            "the GroupInfo's group context is not the one the commit creates".into(),
        ));
    }
    let tree = vgi
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| malformed("no ratchet_tree extension"))?
        .ratchet_tree()
        .tls_serialize_detached()
        .map_err(internal)?;
    let ours = pg
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(internal)?;
    if tree != ours {
        return Err(KdsError::Invalid(
            "the GroupInfo's ratchet tree is not the one the commit creates".into(),
        ));
    }
    if vgi.extensions().external_pub().is_none() {
        return Err(malformed(
            "no external_pub extension: external joiners could not use it",
        ));
    }
    // GroupInfoTBS ends with the signer's leaf index (RFC 9420 §12.4.3).
    let tbs = vgi.unsigned_payload().map_err(internal)?;
    let signer = tbs
        .len()
        .checked_sub(4)
        .and_then(|at| tbs.get(at..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| malformed("truncated"))?;
    let leaf = pg.leaf(LeafNodeIndex::new(signer)).ok_or_else(|| {
        KdsError::Invalid(format!("the GroupInfo's signer {signer} is not a member"))
    })?;
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        leaf.signature_key().clone(),
        CIPHERSUITE.signature_algorithm(),
    );
    vgi.verify(crypto, &key)
        .map_err(|_| KdsError::Invalid("the GroupInfo's signature does not verify".into()))?;
    Ok(())
}

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

/// The public group's storage as bytes: `count:u32` then, sorted by key, `len:u32 key len:u32
/// value` (big-endian). Sorting makes equal states serialise equally.
fn snapshot(storage: &MemoryStorage) -> Result<Vec<u8>, KdsError> {
    let values = storage
        .values
        .read()
        .map_err(|_| KdsError::Internal("room storage lock poisoned".into()))?;
    let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().collect();
    entries.sort();
    let len = |n: usize| u32::try_from(n).map_err(|_| KdsError::Internal("entry too big".into()));
    let mut out = Vec::new();
    out.extend_from_slice(&len(entries.len())?.to_be_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&len(k.len())?.to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&len(v.len())?.to_be_bytes());
        out.extend_from_slice(v);
    }
    Ok(out)
}

fn restore_storage(mut bytes: &[u8]) -> Result<MemoryStorage, KdsError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], KdsError> {
        if b.len() < n {
            return Err(KdsError::Storage("room state is truncated".into()));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn take_len(b: &mut &[u8]) -> Result<usize, KdsError> {
        let raw: [u8; 4] = take(b, 4)?.try_into().unwrap_or_default();
        Ok(u32::from_be_bytes(raw) as usize)
    }
    let count = take_len(&mut bytes)?;
    let mut map = std::collections::HashMap::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let k = take_len(&mut bytes)?;
        let k = take(&mut bytes, k)?.to_vec();
        let v = take_len(&mut bytes)?;
        let v = take(&mut bytes, v)?.to_vec();
        map.insert(k, v);
    }
    if !bytes.is_empty() {
        return Err(KdsError::Storage("room state has trailing bytes".into()));
    }
    Ok(MemoryStorage {
        values: std::sync::RwLock::new(map),
    })
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
    /// Start tracking `room` from its creator's epoch-0 GroupInfo (KDS-ROOM-01..03): the
    /// GroupInfo verifies, names the room, lists `key` as external sender, and its only member
    /// is `creator`.
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
        if pg.ciphersuite() != CIPHERSUITE {
            return Err(KdsError::Invalid(format!(
                "cipher suite {:?}; rooms use {CIPHERSUITE:?}",
                pg.ciphersuite()
            )));
        }
        let epoch = pg.group_context().epoch().as_u64();
        if epoch != 0 {
            return Err(KdsError::Invalid(format!(
                "a room is created from its epoch-0 GroupInfo, this one is of epoch {epoch}"
            )));
        }
        let members: Vec<Member> = pg.members().collect();
        let [only] = members.as_slice() else {
            return Err(KdsError::Invalid(format!(
                "a new room has exactly one member (its creator), this GroupInfo has {}",
                members.len()
            )));
        };
        let id = identity_of(&only.credential)?;
        if id != creator {
            return Err(KdsError::PermissionDenied(format!(
                "the group's creator is {id:?} but the token is for {creator:?}"
            )));
        }
        let sender_index = Self::find_sender_index(&pg, key)?;
        Ok(Self {
            name: room.to_owned(),
            crypto,
            pg,
            storage,
            epoch,
            next_seq: 1,
            group_info: group_info.to_vec(),
            sender_index,
            departed: BTreeSet::new(),
            proposed: BTreeSet::new(),
        })
    }

    fn find_sender_index(pg: &PublicGroup, key: &ServiceKey) -> Result<u32, KdsError> {
        let ours = key.external_sender();
        pg.group_context()
            .extensions()
            .external_senders()
            .and_then(|senders| senders.iter().position(|s| *s == ours))
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                KdsError::ExternalSenderMissing(
                    "the group context must list the key service as external sender (GetServiceInfo gives its key and identity)".into(),
                )
            })
    }

    /// Reload a room from its stored record.
    ///
    /// # Errors
    /// [`KdsError::Storage`] if the record does not parse.
    pub fn restore(record: &RoomRecord, key: &ServiceKey) -> Result<Self, KdsError> {
        let storage = restore_storage(&record.public_state)?;
        let pg = PublicGroup::load(&storage, &GroupId::from_slice(record.room.as_bytes()))
            .map_err(|e| KdsError::Storage(format!("room {}: {e:?}", record.room)))?
            .ok_or_else(|| KdsError::Storage(format!("room {} has no group state", record.room)))?;
        let sender_index = Self::find_sender_index(&pg, key)?;
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
            .ok_or_else(|| KdsError::Internal("cloned room state has no group".into()))?;
        Ok((pg, storage))
    }

    /// Validate a commit from `identity` against the room (KDS-ORD-*, KDS-VAL-*). Nothing
    /// changes until the caller persists [`Accepted`] and adopts `next`.
    ///
    /// # Errors
    /// See specs/key-service.md §4 for each check and its error.
    pub fn check_commit(
        &self,
        store: &dyn Store,
        key: &ServiceKey,
        sent: &SentCommit<'_>,
        max_authenticated_data: usize,
    ) -> Result<CommitOutcome, KdsError> {
        let SentCommit {
            identity,
            commit,
            welcome,
            group_info,
        } = *sent;
        // KDS-VAL-01: a PublicMessage of this group.
        let pm = parse("commit", commit)?
            .try_into_protocol_message()
            .map_err(|e| KdsError::Malformed {
                what: "commit",
                why: format!("not a handshake message: {e:?}"),
            })?;
        check_group(&self.name, pm.group_id())?;
        if !matches!(pm, ProtocolMessage::PublicMessage(_)) {
            return Err(KdsError::Invalid(
                "commits must be PublicMessages (PURE_PLAINTEXT wire format policy) so the service can validate them".into(),
            ));
        }
        // KDS-ORD-01: exactly one commit per epoch; an identical retry is acknowledged.
        let message_epoch = pm.epoch().as_u64();
        if message_epoch < self.epoch {
            if let Some(won) = store.commit_at(&self.name, message_epoch)?
                && won.actor == identity
                && won.hash.as_deref() == Some(&Sha256::digest(commit)[..])
            {
                return Ok(CommitOutcome::Duplicate { epoch: self.epoch });
            }
            return Err(KdsError::StaleEpoch {
                message_epoch,
                room_epoch: self.epoch,
            });
        }
        if message_epoch > self.epoch {
            return Err(KdsError::Invalid(format!(
                "the commit claims epoch {message_epoch}, but the room is only at epoch {}",
                self.epoch
            )));
        }
        // KDS-VAL-02: openmls validates signature, sender, proposals and path.
        let processed = self
            .pg
            .process_message(&self.crypto, pm)
            .map_err(|e| KdsError::Invalid(format!("{e:?}")))?;
        // KDS-LIM-02: signed bytes nobody needs are not kept in the log for every replay.
        if processed.aad().len() > max_authenticated_data {
            return Err(KdsError::TooLarge {
                what: "commit authenticated_data",
                len: processed.aad().len(),
                cap: max_authenticated_data,
            });
        }
        // KDS-VAL-03: the committer is the token's identity.
        let committer = identity_of(processed.credential())?;
        if committer != identity {
            return Err(KdsError::PermissionDenied(format!(
                "the commit is signed by {committer:?} but the token is for {identity:?}"
            )));
        }
        let external = matches!(processed.sender(), Sender::NewMemberCommit);
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(KdsError::Invalid(
                "not a commit: members send proposals only inside commits".into(),
            ));
        };
        // KDS-VAL-04: every added KeyPackage was handed out by this service for this room.
        let mut recipients = Vec::new();
        let mut consumed = Vec::new();
        for add in staged.add_proposals() {
            let kp = add.add_proposal().key_package();
            let id = identity_of(kp.leaf_node().credential())?;
            let hash = kp.hash_ref(&self.crypto).map_err(internal)?;
            match store.claimed_key_package(&self.name, hash.as_slice())? {
                Some(owner) if owner == id => {}
                _ => {
                    return Err(KdsError::PermissionDenied(format!(
                        "the commit adds {id:?} with a KeyPackage this room never handed out (ClaimKeyPackage)"
                    )));
                }
            }
            consumed.push(hash.as_slice().to_vec());
            recipients.push(id);
        }
        if recipients.is_empty() != welcome.is_empty() {
            return Err(KdsError::Malformed {
                what: "welcome",
                why: if recipients.is_empty() {
                    "the commit adds nobody but a Welcome was sent".into()
                } else {
                    "the commit adds members but no Welcome was sent".into()
                },
            });
        }
        if !welcome.is_empty() {
            let MlsMessageBodyIn::Welcome(_) = parse("welcome", welcome)?.extract() else {
                return Err(KdsError::Malformed {
                    what: "welcome",
                    why: "not a Welcome message".into(),
                });
            };
        }
        // KDS-REM-03: a member's commit carries the service's pending removals.
        if !external {
            let removed: BTreeSet<u32> = staged
                .remove_proposals()
                .map(|r| r.remove_proposal().removed().u32())
                .collect();
            let missing: Vec<String> = self
                .departed
                .iter()
                .filter(|id| {
                    self.leaf_of(id)
                        .is_some_and(|l| !removed.contains(&l.u32()))
                })
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(KdsError::RemovalsPending(missing));
            }
        }

        // Apply to a copy; the room changes only after the write.
        let (mut pg, storage) = self.clone_state()?;
        pg.merge_commit(&storage, *staged).map_err(internal)?;
        // KDS-VAL-05: one leaf per identity.
        let mut seen = BTreeSet::new();
        for m in pg.members() {
            let id = identity_of(&m.credential)?;
            if !seen.insert(id.clone()) {
                return Err(KdsError::StillMember(id));
            }
        }
        // KDS-ROOM-02: the service stays external sender.
        let sender_index = Self::find_sender_index(&pg, key)?;
        // KDS-GI-02: the GroupInfo verifies and describes the new epoch.
        check_group_info(&self.crypto, &self.name, &pg, group_info)?;

        let new_epoch = pg.group_context().epoch().as_u64();
        let mut next = Self {
            name: self.name.clone(),
            crypto: RustCrypto::default(),
            pg,
            storage,
            epoch: new_epoch,
            next_seq: self.next_seq,
            group_info: group_info.to_vec(),
            sender_index,
            departed: self.departed.clone(),
            proposed: BTreeSet::new(),
        };
        let mut events = vec![Event {
            seq: next.take_seq(),
            kind: EventKind::Commit,
            epoch: message_epoch,
            actor: committer,
            recipient: None,
            message: commit.to_vec(),
            hash: Some(Sha256::digest(commit).to_vec()),
        }];
        for r in recipients {
            events.push(Event {
                seq: next.take_seq(),
                kind: EventKind::Welcome,
                epoch: new_epoch,
                actor: identity.to_owned(),
                recipient: Some(r),
                message: welcome.to_vec(),
                hash: None,
            });
        }
        // KDS-REM-02: external proposals are bound to one epoch: re-issue the ones still due.
        let still_members: BTreeSet<String> =
            next.members().into_iter().map(|(_, id)| id).collect();
        next.departed.retain(|id| still_members.contains(id));
        events.extend(next.propose_due(key)?);
        Ok(CommitOutcome::Accept(Box::new(Accepted {
            next,
            events,
            consumed,
        })))
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
                return Err(KdsError::Internal("own proposal did not process".into()));
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

/// Validate an uploaded KeyPackage (KDS-KP-01): it parses, verifies, uses the room's cipher
/// suite, and its credential is `identity`. Returns its hash reference and whether it is a
/// last-resort KeyPackage.
///
/// # Errors
/// [`KdsError::Malformed`], [`KdsError::Invalid`], [`KdsError::PermissionDenied`].
pub fn check_key_package(bytes: &[u8], identity: &str) -> Result<(Vec<u8>, bool), KdsError> {
    let crypto = RustCrypto::default();
    let MlsMessageBodyIn::KeyPackage(kp) = parse("key_package", bytes)?.extract() else {
        return Err(KdsError::Malformed {
            what: "key_package",
            why: "not a KeyPackage message".into(),
        });
    };
    let kp = kp
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| KdsError::Invalid(format!("key_package: {e:?}")))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(KdsError::Invalid(format!(
            "key_package uses {:?}; rooms use {CIPHERSUITE:?}",
            kp.ciphersuite()
        )));
    }
    let id = identity_of(kp.leaf_node().credential())?;
    if id != identity {
        return Err(KdsError::PermissionDenied(format!(
            "the KeyPackage is for {id:?} but the token is for {identity:?}"
        )));
    }
    let hash = kp.hash_ref(&crypto).map_err(internal)?;
    Ok((hash.as_slice().to_vec(), kp.last_resort()))
}
