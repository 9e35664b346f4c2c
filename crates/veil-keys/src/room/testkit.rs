//! Test kit for the room's unit tests: real MLS members (openmls, as `veil-mls` makes them:
//! PublicMessage handshakes, the ratchet tree in GroupInfos and Welcomes) and a room backed by
//! a SQLite store in a temporary directory, driven as the service drives it.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::{Accepted, CIPHERSUITE, CommitOutcome, RoomState, SentCommit, ServiceKey};
use crate::error::KdsError;
use crate::store::{Event, KeyPackageRecord, SqliteStore, Store};

/// The room every test uses.
pub(crate) const ROOM: &str = "room";

/// The messages of one commit, as a member sends them to `SendCommit`.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) commit: Vec<u8>,
    /// Empty if the commit adds nobody.
    pub(crate) welcome: Vec<u8>,
    pub(crate) group_info: Vec<u8>,
}

impl Sent {
    /// The request of `identity`'s token.
    pub(crate) fn by<'a>(&'a self, identity: &'a str) -> SentCommit<'a> {
        SentCommit {
            identity,
            commit: &self.commit,
            welcome: &self.welcome,
            group_info: &self.group_info,
        }
    }
}

fn ser(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().unwrap()
}

/// One member: a signature key, a credential and at most one group.
pub(crate) struct Member {
    pub(crate) identity: String,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    suite: Ciphersuite,
    group: Option<MlsGroup>,
}

impl Member {
    pub(crate) fn new(identity: &str) -> Self {
        Self::with_suite(identity, CIPHERSUITE)
    }

    pub(crate) fn with_suite(identity: &str, suite: Ciphersuite) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(suite.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            identity: identity.to_owned(),
            provider,
            signer,
            credential,
            suite,
            group: None,
        }
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build()
    }

    fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("in a group")
    }

    pub(crate) fn key_package(&self, last_resort: bool) -> Vec<u8> {
        let mut b = KeyPackage::builder();
        if last_resort {
            b = b.mark_as_last_resort().leaf_node_capabilities(
                Capabilities::builder()
                    .extensions(vec![ExtensionType::LastResort])
                    .build(),
            );
        }
        let bundle = b
            .build(
                self.suite,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap();
        ser(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    /// Create group `room` at epoch 0 listing `senders` as external senders; returns its
    /// GroupInfo (with the ratchet tree).
    pub(crate) fn create(&mut self, room: &str, senders: &[ExternalSender]) -> Vec<u8> {
        let mut b = MlsGroupCreateConfig::builder()
            .ciphersuite(self.suite)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true);
        if !senders.is_empty() {
            let ext =
                Extensions::from_vec(vec![Extension::ExternalSenders(senders.to_vec())]).unwrap();
            b = b.with_group_context_extensions(ext);
        }
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &b.build(),
            GroupId::from_slice(room.as_bytes()),
            self.credential.clone(),
        )
        .unwrap();
        self.group = Some(group);
        self.group_info()
    }

    pub(crate) fn group_info(&mut self) -> Vec<u8> {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let g = group.as_ref().unwrap();
        ser(&g
            .export_group_info(provider.crypto(), signer, true)
            .unwrap())
    }

    /// Authenticated data for the next message.
    pub(crate) fn set_aad(&mut self, aad: &[u8]) {
        self.group().set_aad(aad.to_vec());
    }

    fn out(
        commit: &MlsMessageOut,
        welcome: Option<&MlsMessageOut>,
        gi: Option<MlsMessageOut>,
    ) -> Sent {
        Sent {
            commit: ser(commit),
            welcome: welcome.map(ser).unwrap_or_default(),
            group_info: gi.as_ref().map(ser).unwrap_or_default(),
        }
    }

    /// A commit with a fresh leaf secret (pending until [`confirm`](Self::confirm)).
    pub(crate) fn self_update(&mut self) -> Sent {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let bundle = group
            .as_mut()
            .unwrap()
            .self_update(provider, signer, LeafNodeParameters::default())
            .unwrap();
        let (c, w, gi) = bundle.into_messages();
        Self::out(&c, w.as_ref(), gi)
    }

    pub(crate) fn add(&mut self, key_packages: &[Vec<u8>]) -> Sent {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let kps: Vec<KeyPackage> = key_packages
            .iter()
            .map(
                |b| match MlsMessageIn::tls_deserialize_exact(b).unwrap().extract() {
                    MlsMessageBodyIn::KeyPackage(kp) => kp
                        .validate(provider.crypto(), ProtocolVersion::Mls10)
                        .unwrap(),
                    _ => panic!("not a KeyPackage"),
                },
            )
            .collect();
        let (c, w, gi) = group
            .as_mut()
            .unwrap()
            .add_members(provider, signer, &kps)
            .unwrap();
        Self::out(&c, Some(&w), gi.map(Into::into))
    }

    /// A commit of every stored proposal (the service's Removes).
    pub(crate) fn commit_pending(&mut self) -> Sent {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let (c, w, gi) = group
            .as_mut()
            .unwrap()
            .commit_to_pending_proposals(provider, signer)
            .unwrap();
        Self::out(&c, w.as_ref(), gi.map(Into::into))
    }

    /// A commit that replaces the group context's extensions with none: it drops the
    /// service as external sender.
    pub(crate) fn drop_external_senders(&mut self) -> Sent {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let (c, w, gi) = group
            .as_mut()
            .unwrap()
            .update_group_context_extensions(provider, Extensions::empty(), signer)
            .unwrap();
        Self::out(&c, w.as_ref(), gi.map(Into::into))
    }

    /// An Update proposal, sent on its own (not inside a commit).
    pub(crate) fn propose_update(&mut self) -> Vec<u8> {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        let (m, _) = group
            .as_mut()
            .unwrap()
            .propose_self_update(provider, signer, LeafNodeParameters::default())
            .unwrap();
        ser(&m)
    }

    /// An application message: always a PrivateMessage.
    pub(crate) fn application(&mut self, text: &[u8]) -> Vec<u8> {
        let Self {
            group,
            provider,
            signer,
            ..
        } = self;
        ser(&group
            .as_mut()
            .unwrap()
            .create_message(provider, signer, text)
            .unwrap())
    }

    /// Join by external commit from `group_info`.
    pub(crate) fn join_external(&mut self, group_info: &[u8]) -> Sent {
        let MlsMessageBodyIn::GroupInfo(vgi) = MlsMessageIn::tls_deserialize_exact(group_info)
            .unwrap()
            .extract()
        else {
            panic!("not a GroupInfo")
        };
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(Self::join_config())
            .build_group(&self.provider, vgi, self.credential.clone())
            .unwrap()
            .load_psks(self.provider.storage())
            .unwrap()
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .unwrap()
            .finalize(&self.provider)
            .unwrap();
        self.group = Some(group);
        let (c, w, gi) = bundle.into_messages();
        Self::out(&c, w.as_ref(), gi)
    }

    pub(crate) fn join_welcome(&mut self, welcome: &[u8]) {
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome)
            .unwrap()
            .extract()
        else {
            panic!("not a Welcome")
        };
        let group = StagedWelcome::new_from_welcome(&self.provider, &Self::join_config(), w, None)
            .unwrap()
            .into_group(&self.provider)
            .unwrap();
        self.group = Some(group);
    }

    /// The room accepted this member's pending commit.
    pub(crate) fn confirm(&mut self) {
        let Self {
            group, provider, ..
        } = self;
        group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    /// The room refused this member's pending commit.
    pub(crate) fn discard(&mut self) {
        let Self {
            group, provider, ..
        } = self;
        group
            .as_mut()
            .unwrap()
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    /// Process another member's commit, or the service's proposal (stored for a later commit).
    pub(crate) fn process(&mut self, message: &[u8]) {
        let Self {
            group, provider, ..
        } = self;
        let g = group.as_mut().unwrap();
        let pm = MlsMessageIn::tls_deserialize_exact(message)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        match g.process_message(provider, pm).unwrap().into_content() {
            ProcessedMessageContent::ProposalMessage(q) => {
                g.store_pending_proposal(provider.storage(), *q).unwrap();
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                g.merge_staged_commit(provider, *sc).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The service's side: a store, its key, and rooms driven as the tonic shell drives them.
pub(crate) struct Service {
    _dir: tempfile::TempDir,
    pub(crate) store: SqliteStore,
    pub(crate) key: ServiceKey,
}

/// The authenticated-data cap the tests use (the service's default, KDS-LIM-02).
pub(crate) const MAX_AAD: usize = 4096;

impl Service {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("veil.db")).unwrap();
        let key = ServiceKey::load_or_create(&store).unwrap();
        Self {
            _dir: dir,
            store,
            key,
        }
    }

    /// The service as the external sender rooms list.
    pub(crate) fn sender(&self) -> ExternalSender {
        self.key.external_sender()
    }

    /// `creator` creates [`ROOM`] listing the service; the room is created and stored.
    pub(crate) fn room(&self, creator: &mut Member) -> RoomState {
        let gi = creator.create(ROOM, &[self.sender()]);
        let room = RoomState::create(ROOM, &gi, &creator.identity, &self.key).unwrap();
        self.store.create_room(&room.record().unwrap()).unwrap();
        room
    }

    /// `check_commit` with the default cap.
    pub(crate) fn check(
        &self,
        room: &RoomState,
        sent: &SentCommit<'_>,
    ) -> Result<CommitOutcome, KdsError> {
        room.check_commit(&self.store, &self.key, sent, MAX_AAD)
    }

    /// Check `sent` and expect it accepted.
    pub(crate) fn accepted(&self, room: &RoomState, sent: &SentCommit<'_>) -> Accepted {
        match self.check(room, sent) {
            Ok(CommitOutcome::Accept(a)) => *a,
            other => panic!("expected the commit accepted, got {other:?}"),
        }
    }

    /// Accept `sent` and adopt it as the service does after the write (KDS-DUR-01); returns
    /// the events written.
    pub(crate) fn commit(&self, room: &mut RoomState, sent: &SentCommit<'_>) -> Vec<Event> {
        let Accepted {
            next,
            events,
            consumed,
        } = self.accepted(room, sent);
        self.store
            .append(&next.record().unwrap(), &events, &consumed)
            .unwrap();
        *room = next;
        events
    }

    /// Persist the events of a departure, as the service does.
    pub(crate) fn depart(&self, room: &mut RoomState, identity: &str) -> Vec<Event> {
        let events = room.depart(&self.key, identity).unwrap();
        if !events.is_empty() {
            self.store
                .append(&room.record().unwrap(), &events, &[])
                .unwrap();
        }
        events
    }

    /// `joiner` publishes a KeyPackage and `claimer` claims it (`ClaimKeyPackage`).
    pub(crate) fn claim(&self, joiner: &Member, claimer: &str) -> Vec<u8> {
        let kp = joiner.key_package(false);
        let (hash_ref, last_resort) = super::check_key_package(&kp, &joiner.identity).unwrap();
        let rec = KeyPackageRecord {
            hash_ref,
            last_resort,
            message: kp,
        };
        self.store
            .add_key_packages(ROOM, &joiner.identity, &[rec], 64)
            .unwrap();
        self.store
            .claim_key_package(ROOM, &joiner.identity, claimer)
            .unwrap()
            .unwrap()
    }

    /// A room of `alice` and `bob`, bob added by Welcome, at epoch 1.
    pub(crate) fn room_of_two(&self) -> (RoomState, Member, Member) {
        let (mut alice, mut bob) = (Member::new("alice"), Member::new("bob"));
        let mut room = self.room(&mut alice);
        let kp = self.claim(&bob, "alice");
        let add = alice.add(&[kp]);
        self.commit(&mut room, &add.by("alice"));
        alice.confirm();
        bob.join_welcome(&add.welcome);
        (room, alice, bob)
    }
}
