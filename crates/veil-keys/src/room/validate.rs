//! The steps of accepting a commit (specs/key-service.md §4), one function per check, in the
//! order [`RoomState::check_commit`] runs them. Each names the check it implements; the tests
//! below show each one accepting and refusing real MLS messages.
//!
//! | step | check |
//! |---|---|
//! | [`validate_public_message`] | KDS-VAL-01 |
//! | [`RoomState::validate_epoch`] | KDS-ORD-01, KDS-ORD-03 |
//! | [`RoomState::validate_with_openmls`] | KDS-VAL-02 |
//! | [`validate_authenticated_data`] | KDS-LIM-02 |
//! | [`validate_committer`] | KDS-VAL-03 |
//! | [`validate_is_commit`] | KDS-VAL-02 (a commit, not a bare proposal) |
//! | [`RoomState::validate_adds`] | KDS-VAL-04 |
//! | [`RoomState::validate_removals`] | KDS-REM-03 |
//! | [`validate_one_leaf_per_identity`] | KDS-VAL-05 |
//! | [`validate_external_sender`] | KDS-ROOM-02 |
//! | [`validate_group_info`](super::group_info::validate_group_info) | KDS-GI-02 |

use std::collections::BTreeSet;

use openmls::group::PublicGroup;
use openmls::prelude::*;
use sha2::{Digest, Sha256};

use super::{RoomState, ServiceKey, check_group, identity_of, internal, parse};
use crate::error::KdsError;
use crate::store::Store;

/// KDS-VAL-01: the bytes are one `MLSMessage` holding a **PublicMessage** of this room's
/// group (the service can validate nothing else).
pub(super) fn validate_public_message(
    room: &str,
    commit: &[u8],
) -> Result<ProtocolMessage, KdsError> {
    let pm = parse("commit", commit)?
        .try_into_protocol_message()
        .map_err(|e| KdsError::malformed_by("commit", "not a handshake message", e))?;
    check_group(room, pm.group_id())?;
    if !matches!(pm, ProtocolMessage::PublicMessage(_)) {
        return Err(KdsError::invalid(
            "commits must be PublicMessages (PURE_PLAINTEXT wire format policy) so the service can validate them",
        ));
    }
    Ok(pm)
}

/// What [`RoomState::validate_epoch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Epoch {
    /// The commit is for the room's epoch: validate it.
    Current,
    /// The identical commit by the same identity was accepted before (KDS-ORD-03).
    Duplicate,
}

impl RoomState {
    /// KDS-ORD-01: exactly one commit per epoch. A commit of an older epoch lost a race
    /// ([`KdsError::StaleEpoch`]), unless it is the identical bytes of the commit accepted in
    /// that epoch, sent by the same identity: a retry after a lost reply, acknowledged again
    /// (KDS-ORD-03). A newer epoch is one nobody can be in ([`KdsError::Invalid`]).
    pub(super) fn validate_epoch(
        &self,
        store: &dyn Store,
        pm: &ProtocolMessage,
        identity: &str,
        commit: &[u8],
    ) -> Result<Epoch, KdsError> {
        let message_epoch = pm.epoch().as_u64();
        if message_epoch < self.epoch {
            if let Some(won) = store.commit_at(&self.name, message_epoch)?
                && won.actor == identity
                && won.hash.as_deref() == Some(&Sha256::digest(commit)[..])
            {
                return Ok(Epoch::Duplicate);
            }
            return Err(KdsError::StaleEpoch {
                message_epoch,
                room_epoch: self.epoch,
            });
        }
        if message_epoch > self.epoch {
            return Err(KdsError::invalid(format!(
                "the commit claims epoch {message_epoch}, but the room is only at epoch {}",
                self.epoch
            )));
        }
        Ok(Epoch::Current)
    }

    /// KDS-VAL-02: openmls `PublicGroup::process_message` validates signature, sender,
    /// membership, the proposal list, the update path and the external-commit rules.
    pub(super) fn validate_with_openmls(
        &self,
        pm: ProtocolMessage,
    ) -> Result<ProcessedMessage, KdsError> {
        self.pg
            .process_message(&self.crypto, pm)
            .map_err(|e| KdsError::invalid_by("openmls refused the commit", e))
    }

    /// KDS-VAL-04: every added KeyPackage was handed out by `ClaimKeyPackage` in this room
    /// for its own identity, and a Welcome comes if and only if the commit adds.
    pub(super) fn validate_adds(
        &self,
        store: &dyn Store,
        staged: &StagedCommit,
        welcome: &[u8],
    ) -> Result<Adds, KdsError> {
        let mut adds = Adds::default();
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
            adds.consumed.push(hash.as_slice().to_vec());
            adds.recipients.push(id);
        }
        if adds.recipients.is_empty() != welcome.is_empty() {
            return Err(KdsError::Malformed {
                what: "welcome",
                why: if adds.recipients.is_empty() {
                    "the commit adds nobody but a Welcome was sent".into()
                } else {
                    "the commit adds members but no Welcome was sent".into()
                },
                source: None,
            });
        }
        if !welcome.is_empty() {
            let MlsMessageBodyIn::Welcome(_) = parse("welcome", welcome)?.extract() else {
                return Err(KdsError::Malformed {
                    what: "welcome",
                    why: "not a Welcome message".into(),
                    source: None,
                });
            };
        }
        Ok(adds)
    }

    /// KDS-REM-03: a member's commit removes every departed member still in the group (the
    /// service's pending Removes, §8). External commits are exempt: RFC 9420 forbids
    /// proposals by reference in them.
    pub(super) fn validate_removals(&self, commit: &Commit) -> Result<(), KdsError> {
        if commit.external {
            return Ok(());
        }
        let removed: BTreeSet<u32> = commit
            .staged
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
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KdsError::RemovalsPending(missing))
        }
    }
}

/// KDS-LIM-02: the commit's `authenticated_data` is at most `max` bytes. Every byte of an
/// accepted commit is stored and replayed to every member who resubscribes, so signed bytes
/// nobody reads are refused.
pub(super) fn validate_authenticated_data(
    processed: &ProcessedMessage,
    max: usize,
) -> Result<(), KdsError> {
    let len = processed.aad().len();
    if len > max {
        return Err(KdsError::TooLarge {
            what: "commit authenticated_data",
            len,
            cap: max,
        });
    }
    Ok(())
}

/// KDS-VAL-03: the committer's credential identity (the sender leaf's, or the joiner's for an
/// external commit) is the token's identity. Returns it.
pub(super) fn validate_committer(
    processed: &ProcessedMessage,
    identity: &str,
) -> Result<String, KdsError> {
    let committer = identity_of(processed.credential())?;
    if committer != identity {
        return Err(KdsError::PermissionDenied(format!(
            "the commit is signed by {committer:?} but the token is for {identity:?}"
        )));
    }
    Ok(committer)
}

/// A validated message that is a commit.
pub(super) struct Commit {
    /// The commit, staged against the room's public group.
    pub(super) staged: Box<StagedCommit>,
    /// Sent by a joiner (an external commit), not a member.
    pub(super) external: bool,
}

/// KDS-VAL-02, the rest of it: `SendCommit` takes commits. Members send proposals only inside
/// commits; the service is the only one that sends proposals on their own.
pub(super) fn validate_is_commit(processed: ProcessedMessage) -> Result<Commit, KdsError> {
    let external = matches!(processed.sender(), Sender::NewMemberCommit);
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(KdsError::invalid(
            "not a commit: members send proposals only inside commits",
        ));
    };
    Ok(Commit { staged, external })
}

/// What a commit adds, once [`RoomState::validate_adds`] accepted it.
#[derive(Debug, Default)]
pub(super) struct Adds {
    /// Who gets the Welcome, one entry per added member.
    pub(super) recipients: Vec<String>,
    /// The single-use KeyPackages it consumes (hash refs).
    pub(super) consumed: Vec<Vec<u8>>,
}

/// KDS-VAL-05: after the commit no identity holds two leaves (a rejoin with a new key while
/// the old leaf's removal is pending).
pub(super) fn validate_one_leaf_per_identity(pg: &PublicGroup) -> Result<(), KdsError> {
    let mut seen = BTreeSet::new();
    for m in pg.members() {
        let id = identity_of(&m.credential)?;
        if !seen.insert(id.clone()) {
            return Err(KdsError::StillMember(id));
        }
    }
    Ok(())
}

/// KDS-ROOM-02: the group context lists the service in its `external_senders` extension, so
/// it can propose removals. Returns the service's index in that list.
pub(super) fn validate_external_sender(
    pg: &PublicGroup,
    key: &ServiceKey,
) -> Result<u32, KdsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testkit::{Member, ROOM, Sent, Service};
    use crate::room::{CommitOutcome, SentCommit};
    use crate::store::EventKind;
    use tonic::Code;

    fn refused(svc: &Service, room: &RoomState, sent: &SentCommit<'_>) -> KdsError {
        match svc.check(room, sent) {
            Err(e) => e,
            Ok(o) => panic!("expected a refusal, got {o:?}"),
        }
    }

    // --- KDS-VAL-01 ---------------------------------------------------------------------------

    #[test]
    fn kds_val_01_a_public_message_of_the_room_passes() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let _room = svc.room(&mut alice);
        let pm = validate_public_message(ROOM, &alice.self_update().commit).unwrap();
        assert!(matches!(pm, ProtocolMessage::PublicMessage(_)));
        assert_eq!(pm.epoch().as_u64(), 0);
    }

    #[test]
    fn kds_val_01_bytes_that_are_no_handshake_message_are_malformed() {
        let e = validate_public_message(ROOM, b"\x00\x01\x00\x01garbage").unwrap_err();
        assert!(
            matches!(e, KdsError::Malformed { what: "commit", .. }),
            "{e}"
        );
        let e = validate_public_message(ROOM, &Member::new("bob").key_package(false)).unwrap_err();
        assert!(
            matches!(&e, KdsError::Malformed { why, .. } if why.contains("not a handshake message")),
            "{e}"
        );
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn kds_val_01_another_groups_commit_is_refused() {
        let mut eve = Member::new("eve");
        eve.create("other", &[]);
        let e = validate_public_message(ROOM, &eve.self_update().commit).unwrap_err();
        assert!(
            matches!(&e, KdsError::WrongGroup { room, group } if room == ROOM && group == "other"),
            "{e}"
        );
    }

    #[test]
    fn kds_val_01_a_private_message_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let private = Sent {
            commit: alice.application(b"hello"),
            welcome: Vec::new(),
            group_info: Vec::new(),
        };
        let e = refused(&svc, &room, &private.by("alice"));
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("must be PublicMessages")),
            "{e}"
        );
    }

    // --- KDS-ORD-01, KDS-ORD-03 ---------------------------------------------------------------

    #[test]
    fn kds_ord_01_a_commit_of_the_rooms_epoch_is_current() {
        let svc = Service::new();
        let (room, mut alice, _bob) = svc.room_of_two();
        let up = alice.self_update();
        let pm = validate_public_message(ROOM, &up.commit).unwrap();
        let found = room.validate_epoch(&svc.store, &pm, "alice", &up.commit);
        assert_eq!(found.unwrap(), Epoch::Current);
    }

    #[test]
    fn kds_ord_01_the_loser_of_a_race_is_stale() {
        let svc = Service::new();
        let (mut room, mut alice, mut bob) = svc.room_of_two();
        let (a, b) = (alice.self_update(), bob.self_update());
        svc.commit(&mut room, &a.by("alice"));
        let e = refused(&svc, &room, &b.by("bob"));
        assert!(
            matches!(
                e,
                KdsError::StaleEpoch {
                    message_epoch: 1,
                    room_epoch: 2
                }
            ),
            "{e}"
        );
        assert_eq!(e.code(), Code::Aborted);
        // The loser processes the winner and commits again.
        bob.discard();
        bob.process(&a.commit);
        let again = bob.self_update();
        svc.commit(&mut room, &again.by("bob"));
        assert_eq!(room.epoch(), 3);
    }

    #[test]
    fn kds_ord_01_a_commit_of_an_epoch_nobody_is_in_is_invalid() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        // Alice merges a commit the room never saw, then commits on top of it.
        alice.self_update();
        alice.confirm();
        let ahead = alice.self_update();
        let e = refused(&svc, &room, &ahead.by("alice"));
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("claims epoch 1, but the room is only at epoch 0")),
            "{e}"
        );
    }

    #[test]
    fn kds_ord_03_an_identical_retry_is_acknowledged_and_changes_nothing() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let mut room = svc.room(&mut alice);
        let up = alice.self_update();
        svc.commit(&mut room, &up.by("alice"));
        let before = room.record().unwrap();
        match svc.check(&room, &up.by("alice")).unwrap() {
            CommitOutcome::Duplicate { epoch } => assert_eq!(epoch, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(room.record().unwrap(), before);
        // Only the identity that sent it, and only the identical bytes.
        let e = refused(&svc, &room, &up.by("mallory"));
        assert!(matches!(e, KdsError::StaleEpoch { .. }), "{e}");
        let mut other = up.clone();
        // The membership tag closes the message; the service cannot check it, but the bytes
        // are no longer the accepted ones.
        *other.commit.last_mut().unwrap() ^= 1;
        let e = refused(&svc, &room, &other.by("alice"));
        assert!(matches!(e, KdsError::StaleEpoch { .. }), "{e}");
    }

    // --- KDS-VAL-02 ---------------------------------------------------------------------------

    #[test]
    fn kds_val_02_a_commit_no_member_signed_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        // Eve builds her own group with the room's name and alice's identity: her commit
        // claims alice's leaf, but alice's key did not sign it.
        let mut eve = Member::new("alice");
        eve.create(ROOM, &[svc.sender()]);
        let forged = eve.self_update();
        let e = refused(&svc, &room, &forged.by("alice"));
        assert!(matches!(e, KdsError::Invalid { .. }), "{e}");
        assert_eq!(e.code(), Code::InvalidArgument);
        // The openmls error is kept as the source, and the message names it.
        let source = std::error::Error::source(&e).expect("openmls's error is kept");
        assert!(
            source.is::<openmls::prelude::PublicProcessMessageError>(),
            "{source:?}"
        );
        assert!(e.to_string().ends_with(&source.to_string()), "{e}");
    }

    #[test]
    fn kds_val_02_a_proposal_on_its_own_is_not_a_commit() {
        let svc = Service::new();
        let (room, mut alice, _bob) = svc.room_of_two();
        let proposal = Sent {
            commit: alice.propose_update(),
            welcome: Vec::new(),
            group_info: Vec::new(),
        };
        let e = refused(&svc, &room, &proposal.by("alice"));
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("not a commit")),
            "{e}"
        );
    }

    // --- KDS-LIM-02 ---------------------------------------------------------------------------

    #[test]
    fn kds_lim_02_authenticated_data_up_to_the_cap_passes_and_no_more() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        alice.set_aad(&[7; 16]);
        let up = alice.self_update();
        let e = room
            .check_commit(&svc.store, &svc.key, &up.by("alice"), 15)
            .unwrap_err();
        assert!(
            matches!(
                e,
                KdsError::TooLarge {
                    what: "commit authenticated_data",
                    len: 16,
                    cap: 15
                }
            ),
            "{e}"
        );
        let ok = room.check_commit(&svc.store, &svc.key, &up.by("alice"), 16);
        assert!(matches!(ok, Ok(CommitOutcome::Accept(_))), "{ok:?}");
    }

    // --- KDS-VAL-03 ---------------------------------------------------------------------------

    #[test]
    fn kds_val_03_the_committer_is_the_tokens_identity() {
        let svc = Service::new();
        let (room, mut alice, _bob) = svc.room_of_two();
        let up = alice.self_update();
        let e = refused(&svc, &room, &up.by("bob"));
        assert!(
            matches!(&e, KdsError::PermissionDenied(m) if m.contains("signed by \"alice\"")),
            "{e}"
        );
        svc.accepted(&room, &up.by("alice"));
    }

    #[test]
    fn kds_val_03_an_external_committer_is_the_tokens_identity() {
        let svc = Service::new();
        let (room, _alice, _bob) = svc.room_of_two();
        let join = Member::new("carol").join_external(room.group_info());
        let e = refused(&svc, &room, &join.by("dave"));
        assert!(matches!(e, KdsError::PermissionDenied(_)), "{e}");
        svc.accepted(&room, &join.by("carol"));
    }

    // --- KDS-VAL-04 ---------------------------------------------------------------------------

    #[test]
    fn kds_val_04_an_add_of_a_claimed_key_package_with_its_welcome_passes() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let bob = Member::new("bob");
        let add = alice.add(&[svc.claim(&bob, "alice")]);
        let a = svc.accepted(&room, &add.by("alice"));
        assert_eq!(a.consumed.len(), 1);
        let welcomes: Vec<_> = a
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Welcome)
            .collect();
        assert_eq!(welcomes.len(), 1);
        assert_eq!(welcomes[0].recipient.as_deref(), Some("bob"));
        assert_eq!(welcomes[0].message, add.welcome);
    }

    #[test]
    fn kds_val_04_a_key_package_this_room_never_handed_out_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let bob = Member::new("bob");
        let e = refused(
            &svc,
            &room,
            &alice.add(&[bob.key_package(false)]).by("alice"),
        );
        assert!(
            matches!(&e, KdsError::PermissionDenied(m) if m.contains("never handed out")),
            "{e}"
        );
        alice.discard();
        // Handed out in another room is not handed out here.
        let kp = bob.key_package(false);
        let (hash_ref, _) = crate::room::check_key_package(&kp, "bob").unwrap();
        let rec = crate::store::KeyPackageRecord {
            hash_ref,
            last_resort: false,
            message: kp,
        };
        svc.store
            .add_key_packages("elsewhere", "bob", &[rec], 64)
            .unwrap();
        let kp = svc
            .store
            .claim_key_package("elsewhere", "bob", "alice")
            .unwrap()
            .unwrap();
        let e = refused(&svc, &room, &alice.add(&[kp]).by("alice"));
        assert!(matches!(e, KdsError::PermissionDenied(_)), "{e}");
    }

    #[test]
    fn kds_val_04_a_welcome_comes_if_and_only_if_the_commit_adds() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let add = alice.add(&[svc.claim(&Member::new("bob"), "alice")]);
        let why = |sent: &Sent| match refused(&svc, &room, &sent.by("alice")) {
            KdsError::Malformed {
                what: "welcome",
                why,
                ..
            } => why,
            e => panic!("{e}"),
        };
        let no_welcome = Sent {
            welcome: Vec::new(),
            ..add.clone()
        };
        assert!(why(&no_welcome).contains("no Welcome was sent"));
        let not_a_welcome = Sent {
            welcome: add.group_info.clone(),
            ..add.clone()
        };
        assert!(why(&not_a_welcome).contains("not a Welcome message"));
        alice.discard();
        let stray = Sent {
            welcome: add.welcome.clone(),
            ..alice.self_update()
        };
        assert!(why(&stray).contains("adds nobody"));
    }

    // --- KDS-REM-03 ---------------------------------------------------------------------------

    #[test]
    fn kds_rem_03_a_members_commit_carries_the_pending_removals() {
        let svc = Service::new();
        let (mut room, mut alice, _bob) = svc.room_of_two();
        let proposal = svc.depart(&mut room, "bob");
        // Alice commits before the service's Remove reached her.
        let e = refused(&svc, &room, &alice.self_update().by("alice"));
        assert!(
            matches!(&e, KdsError::RemovalsPending(ids) if ids == &["bob".to_owned()]),
            "{e}"
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        alice.discard();
        alice.process(&proposal[0].message);
        let removal = alice.commit_pending();
        svc.commit(&mut room, &removal.by("alice"));
        assert!(!room.is_member("bob"));
        assert!(
            !room.all_departed(),
            "bob's departure is over with his leaf"
        );
    }

    #[test]
    fn kds_rem_03_an_external_commit_is_exempt() {
        let svc = Service::new();
        let (mut room, _alice, _bob) = svc.room_of_two();
        svc.depart(&mut room, "bob");
        let mut carol = Member::new("carol");
        let join = carol.join_external(room.group_info());
        let events = svc.commit(&mut room, &join.by("carol"));
        assert!(room.is_member("carol") && room.is_member("bob"));
        // KDS-REM-02: the removal, bound to the old epoch, is proposed again for the new one.
        let last = events.last().unwrap();
        assert_eq!(
            (last.kind, last.epoch, last.actor.as_str()),
            (EventKind::Proposal, 2, "bob")
        );
        // The joiner commits it.
        carol.process(&last.message);
        svc.commit(&mut room, &carol.commit_pending().by("carol"));
        assert!(!room.is_member("bob"));
    }

    // --- KDS-VAL-05 ---------------------------------------------------------------------------

    #[test]
    fn kds_val_05_one_identity_holds_one_leaf() {
        let svc = Service::new();
        let (room, _alice, _bob) = svc.room_of_two();
        validate_one_leaf_per_identity(&room.pg).unwrap();
        // Bob rejoins with a new key while his old leaf is still there.
        let join = Member::new("bob").join_external(room.group_info());
        let e = refused(&svc, &room, &join.by("bob"));
        assert!(
            matches!(&e, KdsError::StillMember(id) if id == "bob"),
            "{e}"
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
    }

    // --- KDS-ROOM-02 --------------------------------------------------------------------------

    #[test]
    fn kds_room_02_the_service_stays_external_sender() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        assert_eq!(validate_external_sender(&room.pg, &svc.key).unwrap(), 0);
        let other = Service::new();
        let e = validate_external_sender(&room.pg, &other.key).unwrap_err();
        assert!(matches!(e, KdsError::ExternalSenderMissing(_)), "{e}");
        // A commit that drops it, with the GroupInfo it makes: refused before the GroupInfo.
        let drop = alice.drop_external_senders();
        let e = refused(&svc, &room, &drop.by("alice"));
        assert!(matches!(e, KdsError::ExternalSenderMissing(_)), "{e}");
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
}
