//! A call member's MLS session over openmls (checks MLS-SES-01..06). Messages go in and out as
//! bytes (TLS-serialised `MlsMessage`s); the key-distribution service and the client SDK move
//! them. No I/O here: time enters as `now`.

use std::time::Duration;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::error::MlsError;

/// The openmls provider bound: crypto, randomness and a storage backend.
pub trait Provider: openmls::storage::OpenMlsProvider {}
impl<T: openmls::storage::OpenMlsProvider> Provider for T {}
use crate::keys::{EpochKeys, KeyConfig, Received, Released};

/// The MLS cipher suite of Veil groups.
pub const MLS_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The RFC 9605 §5.2 exporter label.
pub const SFRAME_EXPORTER_LABEL: &str = veil_sframe::MLS_EXPORTER_LABEL;

fn internal(e: impl core::fmt::Debug) -> MlsError {
    MlsError::Internal(format!("{e:?}"))
}

fn rejected(e: impl core::fmt::Debug) -> MlsError {
    MlsError::Rejected(format!("{e:?}"))
}

fn serialize(m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.tls_serialize_detached().map_err(internal)
}

fn parse(bytes: &[u8]) -> Result<MlsMessageIn, MlsError> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| MlsError::Malformed(e.to_string()))
}

/// The handshake messages a commit produces, as bytes for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOut {
    /// The commit (a PublicMessage, so the service can validate it).
    pub commit: Vec<u8>,
    /// The Welcome for added members, if any.
    pub welcome: Option<Vec<u8>>,
    /// The new epoch's GroupInfo (with the ratchet tree) for external joiners.
    pub group_info: Option<Vec<u8>>,
}

/// What processing a handshake message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// A commit moved the group to `epoch`; `released` are frames that were held for it.
    EpochChanged {
        /// The new epoch.
        epoch: u64,
        /// Frames held for this epoch, now decrypted.
        released: Vec<Released>,
    },
    /// This member's own pending commit came back from the service: it won and is merged.
    OwnCommitMerged {
        /// The new epoch.
        epoch: u64,
        /// Frames held for this epoch, now decrypted.
        released: Vec<Released>,
    },
    /// A proposal was stored; a member will commit it.
    ProposalStored,
    /// This member was removed. Its keys of the current epoch stay for the retention grace;
    /// it receives no later epoch.
    Removed,
}

/// One member of a call: identity, MLS group state and SFrame keys. `P` is the openmls provider:
/// in memory by default, or [`SqliteProvider`](crate::SqliteProvider) (feature `sqlite`) for a
/// member that must survive a restart.
pub struct CallSession<P = OpenMlsRustCrypto> {
    provider: P,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    identity: Vec<u8>,
    group: Option<MlsGroup>,
    keys: EpochKeys,
}

impl<P: Provider> core::fmt::Debug for CallSession<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CallSession")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("epoch", &self.epoch())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl CallSession<OpenMlsRustCrypto> {
    /// A member with a fresh signature key bound to `identity`, state in memory (MLS-SES-01).
    ///
    /// # Errors
    /// [`MlsError::Config`] for an impossible key configuration; internal errors.
    pub fn new(identity: &[u8], keys: KeyConfig) -> Result<Self, MlsError> {
        Self::with_provider(OpenMlsRustCrypto::default(), identity, keys)
    }
}

impl<P: Provider> CallSession<P> {
    /// A member with a fresh signature key bound to `identity`, state in `provider`'s storage.
    ///
    /// # Errors
    /// [`MlsError::Config`] for an impossible key configuration; internal errors.
    pub fn with_provider(provider: P, identity: &[u8], keys: KeyConfig) -> Result<Self, MlsError> {
        let signer =
            SignatureKeyPair::new(MLS_CIPHERSUITE.signature_algorithm()).map_err(internal)?;
        signer.store(provider.storage()).map_err(internal)?;
        #[cfg(feature = "hazard-export-secrets")]
        crate::hazard::signer(identity, &signer);
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            provider,
            signer,
            credential,
            identity: identity.to_vec(),
            group: None,
            keys: EpochKeys::new(keys)?,
        })
    }

    /// Resume a member from `provider`'s storage after a restart (MLS-SES-09): its signature key
    /// (by public key) and its group `room`. The current epoch's receive keys are reinstalled, so
    /// frames of the current epoch decrypt again. **No sender key is installed**: the counter
    /// position of the old process is unknown, and reusing a counter under the same key would
    /// reuse an AES-GCM nonce. Sending resumes after this member's next commit is merged (call
    /// [`self_update`](Self::self_update)).
    ///
    /// # Errors
    /// [`MlsError::NotInGroup`] if the storage has no such signature key or group.
    pub fn restore(
        provider: P,
        identity: &[u8],
        signature_public_key: &[u8],
        room: &[u8],
        keys: KeyConfig,
        now: Duration,
    ) -> Result<Self, MlsError> {
        let signer = SignatureKeyPair::read(
            provider.storage(),
            signature_public_key,
            MLS_CIPHERSUITE.signature_algorithm(),
        )
        .ok_or(MlsError::NotInGroup)?;
        #[cfg(feature = "hazard-export-secrets")]
        crate::hazard::signer(identity, &signer);
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(room))
            .map_err(internal)?
            .ok_or(MlsError::NotInGroup)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let mut s = Self {
            provider,
            signer,
            credential,
            identity: identity.to_vec(),
            group: Some(group),
            keys: EpochKeys::new(keys)?,
        };
        s.install_keys(now, false)?;
        Ok(s)
    }

    /// This member's identity.
    #[must_use]
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// This member's signature public key (what [`restore`](Self::restore) looks up).
    #[must_use]
    pub fn signature_public_key(&self) -> Vec<u8> {
        self.signer.public().to_vec()
    }

    /// A KeyPackage for others to add this member with: single use, or last resort (kept after
    /// use, for when the service runs out of single-use ones).
    ///
    /// # Errors
    /// Internal errors only.
    pub fn key_package(&self, last_resort: bool) -> Result<Vec<u8>, MlsError> {
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
                MLS_CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(internal)?;
        #[cfg(feature = "hazard-export-secrets")]
        crate::hazard::key_package(&self.identity, &bundle);
        serialize(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    fn join_config() -> MlsGroupJoinConfig {
        // PublicMessage handshakes, or the service's PublicGroup can validate nothing
        // (specs/key-schedule.md §6); the tree travels in Welcomes and GroupInfos.
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build()
    }

    /// Create the room's group at epoch 0 with this member alone (MLS-SES-02).
    ///
    /// # Errors
    /// Internal errors (e.g. a group with this id already exists in this session).
    pub fn create_group(&mut self, room: &[u8], now: Duration) -> Result<Vec<Released>, MlsError> {
        self.create_group_with_external_senders(room, &[], now)
    }

    /// Create the room's group with `external_senders` (signature public key, identity) in its
    /// context: the key service, which may then propose removing members who left (MLS-SES-07).
    /// It never becomes a member.
    ///
    /// # Errors
    /// [`MlsError::Config`] for an invalid extension; internal errors.
    pub fn create_group_with_external_senders(
        &mut self,
        room: &[u8],
        external_senders: &[(Vec<u8>, Vec<u8>)],
        now: Duration,
    ) -> Result<Vec<Released>, MlsError> {
        let mut b = MlsGroupCreateConfig::builder()
            .ciphersuite(MLS_CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true);
        if !external_senders.is_empty() {
            let senders = external_senders
                .iter()
                .map(|(key, id)| {
                    ExternalSender::new(
                        SignaturePublicKey::from(key.clone()),
                        BasicCredential::new(id.clone()).into(),
                    )
                })
                .collect();
            let ext = Extensions::from_vec(vec![Extension::ExternalSenders(senders)])
                .map_err(|e| MlsError::Config(format!("external senders: {e:?}")))?;
            b = b.with_group_context_extensions(ext);
        }
        let cfg = b.build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &cfg,
            GroupId::from_slice(room),
            self.credential.clone(),
        )
        .map_err(internal)?;
        self.group = Some(group);
        self.install_current(now)
    }

    fn group(&self) -> Result<&MlsGroup, MlsError> {
        self.group
            .as_ref()
            .filter(|g| g.is_active())
            .ok_or(MlsError::NotInGroup)
    }

    /// The group, ready for a new commit: active, and no commit of ours pending. A free
    /// function over the field so the provider and signer can be borrowed alongside.
    fn ready(group: &mut Option<MlsGroup>) -> Result<&mut MlsGroup, MlsError> {
        let g = group
            .as_mut()
            .filter(|g| g.is_active())
            .ok_or(MlsError::NotInGroup)?;
        if g.pending_commit().is_some() {
            return Err(MlsError::CommitPending);
        }
        Ok(g)
    }

    /// Export the epoch's SFrame base key and install every member's keys (MLS-KEY-01).
    fn install_current(&mut self, now: Duration) -> Result<Vec<Released>, MlsError> {
        self.install_keys(now, true)
    }

    fn install_keys(&mut self, now: Duration, sending: bool) -> Result<Vec<Released>, MlsError> {
        let g = self.group.as_ref().ok_or(MlsError::NotInGroup)?;
        let secret = zeroize::Zeroizing::new(
            g.export_secret(
                self.provider.crypto(),
                SFRAME_EXPORTER_LABEL,
                b"",
                self.keys.config().suite.key_len(),
            )
            .map_err(internal)?,
        );
        #[cfg(feature = "hazard-export-secrets")]
        crate::hazard::epoch(&self.identity, g, &secret);
        let members: Vec<u32> = g.members().map(|m| m.index.u32()).collect();
        let own = sending.then(|| g.own_leaf_index().u32());
        let epoch = g.epoch().as_u64();
        self.keys.install_epoch(epoch, &secret, &members, own, now)
    }

    fn commit_out(
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
        gi: Option<MlsMessageOut>,
    ) -> Result<CommitOut, MlsError> {
        Ok(CommitOut {
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: gi.as_ref().map(serialize).transpose()?,
        })
    }

    /// Commit adding the members whose KeyPackages are given (MLS-SES-02). The commit stays
    /// pending until [`confirm_commit`](Self::confirm_commit) (the service accepted it) or
    /// [`discard_commit`](Self::discard_commit) (another commit won the epoch).
    ///
    /// # Errors
    /// [`MlsError::Malformed`]/[`MlsError::Rejected`] for a bad KeyPackage;
    /// [`MlsError::CommitPending`]; [`MlsError::NotInGroup`].
    pub fn add_members(&mut self, key_packages: &[Vec<u8>]) -> Result<CommitOut, MlsError> {
        let kps = key_packages
            .iter()
            .map(|b| match parse(b)?.extract() {
                MlsMessageBodyIn::KeyPackage(kp) => kp
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(rejected),
                _ => Err(MlsError::Malformed("expected a KeyPackage".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let g = Self::ready(&mut self.group)?;
        let (commit, welcome, gi) = g
            .add_members(&self.provider, &self.signer, &kps)
            .map_err(rejected)?;
        Self::commit_out(commit, Some(welcome), gi.map(Into::into))
    }

    /// Commit removing the members with these identities (MLS-SES-02).
    ///
    /// # Errors
    /// [`MlsError::NoSuchMember`]; as [`add_members`](Self::add_members).
    pub fn remove_members(&mut self, identities: &[&[u8]]) -> Result<CommitOut, MlsError> {
        let idx = identities
            .iter()
            .map(|id| {
                self.leaf_of(id)
                    .ok_or_else(|| MlsError::NoSuchMember(String::from_utf8_lossy(id).into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let g = Self::ready(&mut self.group)?;
        let (commit, welcome, gi) = g
            .remove_members(&self.provider, &self.signer, &idx)
            .map_err(rejected)?;
        Self::commit_out(commit, welcome, gi.map(Into::into))
    }

    /// Commit a fresh leaf secret (post-compromise security, MLS-SES-03).
    ///
    /// # Errors
    /// As [`add_members`](Self::add_members).
    pub fn self_update(&mut self) -> Result<CommitOut, MlsError> {
        let g = Self::ready(&mut self.group)?;
        let bundle = g
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .map_err(rejected)?;
        let (c, w, gi) = bundle.into_messages();
        Self::commit_out(c, w, gi)
    }

    /// The service accepted this member's pending commit: merge it and switch to the new epoch's
    /// keys (MLS-KEY-04: the sender switches only now).
    ///
    /// # Errors
    /// [`MlsError::NotInGroup`] if nothing is pending.
    pub fn confirm_commit(&mut self, now: Duration) -> Result<Vec<Released>, MlsError> {
        let g = self.group.as_mut().ok_or(MlsError::NotInGroup)?;
        if g.pending_commit().is_none() {
            return Err(MlsError::Internal("no pending commit to confirm".into()));
        }
        g.merge_pending_commit(&self.provider).map_err(internal)?;
        self.install_current(now)
    }

    /// Another commit won the epoch: drop this member's pending commit (MLS-SES-04). Process the
    /// winner next, then re-propose.
    ///
    /// # Errors
    /// Internal storage errors.
    pub fn discard_commit(&mut self) -> Result<(), MlsError> {
        if let Some(g) = self.group.as_mut() {
            g.clear_pending_commit(self.provider.storage())
                .map_err(internal)?;
        }
        Ok(())
    }

    /// A signed GroupInfo with the ratchet tree, for the service to hand to external joiners.
    ///
    /// # Errors
    /// [`MlsError::NotInGroup`]; internal errors.
    pub fn group_info(&self) -> Result<Vec<u8>, MlsError> {
        let g = self.group()?;
        let gi = g
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(internal)?;
        serialize(&gi)
    }

    /// Join from a published GroupInfo by external commit, without waiting for a member
    /// (MLS-SES-08). The new group is merged at once (openmls finalises external commits), so
    /// if the service refuses the commit (another commit won the epoch), call
    /// [`leave_locally`](Self::leave_locally) and join again from the newer GroupInfo.
    ///
    /// # Errors
    /// [`MlsError::Malformed`] or [`MlsError::Rejected`].
    pub fn join_external(
        &mut self,
        group_info: &[u8],
        now: Duration,
    ) -> Result<CommitOut, MlsError> {
        let MlsMessageBodyIn::GroupInfo(vgi) = parse(group_info)?.extract() else {
            return Err(MlsError::Malformed("expected a GroupInfo".into()));
        };
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(Self::join_config())
            .build_group(&self.provider, vgi, self.credential.clone())
            .map_err(rejected)?
            .load_psks(self.provider.storage())
            .map_err(internal)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(rejected)?
            .finalize(&self.provider)
            .map_err(rejected)?;
        self.group = Some(group);
        self.install_current(now)?;
        let (c, w, gi) = bundle.into_messages();
        Self::commit_out(c, w, gi)
    }

    /// Forget the local group state (after an external commit the service refused, or when the
    /// call ends). Keys already installed stay until they expire.
    pub fn leave_locally(&mut self) {
        self.group = None;
    }

    /// Commit every stored proposal, e.g. the service's Remove of a participant who left
    /// (MLS-SES-07).
    ///
    /// # Errors
    /// As [`add_members`](Self::add_members).
    pub fn commit_pending_proposals(&mut self) -> Result<CommitOut, MlsError> {
        let g = Self::ready(&mut self.group)?;
        let (commit, welcome, gi) = g
            .commit_to_pending_proposals(&self.provider, &self.signer)
            .map_err(rejected)?;
        Self::commit_out(commit, welcome, gi.map(Into::into))
    }

    /// The group id (the room), if in a group.
    #[must_use]
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.group().ok().map(|g| g.group_id().as_slice().to_vec())
    }

    /// Join from a Welcome (MLS-SES-02).
    ///
    /// # Errors
    /// [`MlsError::Malformed`] or [`MlsError::Rejected`].
    pub fn join_welcome(
        &mut self,
        welcome: &[u8],
        now: Duration,
    ) -> Result<Vec<Released>, MlsError> {
        let MlsMessageBodyIn::Welcome(w) = parse(welcome)?.extract() else {
            return Err(MlsError::Malformed("expected a Welcome".into()));
        };
        let group = StagedWelcome::new_from_welcome(&self.provider, &Self::join_config(), w, None)
            .map_err(rejected)?
            .into_group(&self.provider)
            .map_err(rejected)?;
        self.group = Some(group);
        self.install_current(now)
    }

    /// Process one handshake message from the service, in order (MLS-SES-04/05).
    ///
    /// # Errors
    /// [`MlsError::WrongEpoch`] for a message of another epoch (a commit that lost the race, or
    /// one this member is missing); [`MlsError::Malformed`]; [`MlsError::Rejected`].
    pub fn process(&mut self, message: &[u8], now: Duration) -> Result<Processed, MlsError> {
        let pm = parse(message)?
            .try_into_protocol_message()
            .map_err(|e| MlsError::Malformed(format!("{e:?}")))?;
        let g = self
            .group
            .as_mut()
            .filter(|g| g.is_active())
            .ok_or(MlsError::NotInGroup)?;
        let (message_epoch, group_epoch) = (pm.epoch().as_u64(), g.epoch().as_u64());
        if message_epoch != group_epoch {
            return Err(MlsError::WrongEpoch {
                message_epoch,
                group_epoch,
            });
        }
        let processed = g.process_message(&self.provider, pm).map_err(rejected)?;
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(q)
            | ProcessedMessageContent::ExternalJoinProposalMessage(q) => {
                g.store_pending_proposal(self.provider.storage(), *q)
                    .map_err(internal)?;
                Ok(Processed::ProposalStored)
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                let removed = sc.self_removed();
                // Another commit won: a pending commit of ours is obsolete (MLS-SES-04).
                if g.pending_commit().is_some() {
                    g.clear_pending_commit(self.provider.storage())
                        .map_err(internal)?;
                }
                g.merge_staged_commit(&self.provider, *sc)
                    .map_err(rejected)?;
                if removed {
                    self.keys.removed();
                    return Ok(Processed::Removed);
                }
                let released = self.install_current(now)?;
                Ok(Processed::EpochChanged {
                    epoch: group_epoch + 1,
                    released,
                })
            }
            ProcessedMessageContent::OwnPendingCommit => {
                let released = self.confirm_commit(now)?;
                Ok(Processed::OwnCommitMerged {
                    epoch: group_epoch + 1,
                    released,
                })
            }
            ProcessedMessageContent::ApplicationMessage(_)
            | ProcessedMessageContent::OwnPrivateMessage => Err(MlsError::Rejected(
                "Veil sends media with SFrame, never as MLS application messages".into(),
            )),
        }
    }

    /// The group's epoch, if this member is in one.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.group().ok().map(|g| g.epoch().as_u64())
    }

    /// The epoch authenticator (for "safety numbers" in a UI; equal at every member, MLS-SES-06).
    #[must_use]
    pub fn epoch_authenticator(&self) -> Option<Vec<u8>> {
        self.group()
            .ok()
            .map(|g| g.epoch_authenticator().as_slice().to_vec())
    }

    /// This member's leaf index (its SFrame sender index).
    #[must_use]
    pub fn own_index(&self) -> Option<u32> {
        self.group().ok().map(|g| g.own_leaf_index().u32())
    }

    /// Every member's leaf index and identity.
    #[must_use]
    pub fn members(&self) -> Vec<(u32, Vec<u8>)> {
        self.group()
            .map(|g| {
                g.members()
                    .map(|m| {
                        let id = BasicCredential::try_from(m.credential)
                            .map(|c| c.identity().to_vec())
                            .unwrap_or_default();
                        (m.index.u32(), id)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn leaf_of(&self, identity: &[u8]) -> Option<LeafNodeIndex> {
        self.members()
            .into_iter()
            .find(|(_, id)| id == identity)
            .map(|(i, _)| LeafNodeIndex::new(i))
    }

    /// The SFrame key schedule.
    #[must_use]
    pub fn keys(&self) -> &EpochKeys {
        &self.keys
    }

    /// The frame path's handle on this member's keys: every epoch this session installs is
    /// published to it with one atomic swap, so frames are encrypted and decrypted (with a
    /// [`FrameKeys::decryptor`](crate::ring::FrameKeys::decryptor) per receiver) without
    /// touching the session (MLS-KEY-07).
    #[must_use]
    pub fn frame_keys(&self) -> crate::ring::FrameKeys {
        self.keys.frames()
    }

    /// Encrypt a frame as this member in the current epoch.
    ///
    /// # Errors
    /// [`MlsError::NotSending`]; SFrame errors.
    pub fn encrypt_frame(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, MlsError> {
        self.keys.encrypt(metadata, plaintext, out)
    }

    /// Decrypt a frame in place, or hold it for an epoch not known yet.
    ///
    /// # Errors
    /// SFrame errors for frames that can be neither decrypted nor held.
    pub fn decrypt_frame<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
        now: Duration,
    ) -> Result<Received<'a>, MlsError> {
        self.keys.decrypt_in_place(metadata, buf, now)
    }

    /// [`decrypt_frame`](Self::decrypt_frame) with a tag that comes back in [`Released`] if the
    /// frame is held.
    ///
    /// # Errors
    /// As [`decrypt_frame`](Self::decrypt_frame).
    pub fn decrypt_frame_tagged<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
        now: Duration,
        tag: u64,
    ) -> Result<Received<'a>, MlsError> {
        self.keys.decrypt_in_place_tagged(metadata, buf, now, tag)
    }

    /// Retire expired keys and held frames (call periodically).
    pub fn tick(&mut self, now: Duration) {
        self.keys.expire(now);
    }
}
