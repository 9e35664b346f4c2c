//! GroupInfos: the one a room is created from (KDS-GI-01, KDS-ROOM-01) and the one every
//! commit uploads for the epoch it makes (KDS-GI-02). The service cannot make a GroupInfo
//! itself (it needs a member's signature and the epoch's `external_pub`), so it checks the
//! ones members send.

use openmls::group::PublicGroup;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;

use super::{CIPHERSUITE, check_group, identity_of, internal, parse};
use crate::error::KdsError;

/// KDS-GI-01: parse a GroupInfo with its ratchet tree and build the public group it
/// describes, verifying the signer's signature and the tree (every leaf, the tree hash).
pub(super) fn public_group_from(
    crypto: &RustCrypto,
    room: &str,
    group_info: &[u8],
) -> Result<(PublicGroup, MemoryStorage), KdsError> {
    let MlsMessageBodyIn::GroupInfo(vgi) = parse("group_info", group_info)?.extract() else {
        return Err(KdsError::Malformed {
            what: "group_info",
            why: "not a GroupInfo message".into(),
            source: None,
        });
    };
    check_group(room, vgi.group_id())?;
    let tree = vgi
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| KdsError::Malformed {
            what: "group_info",
            why: "no ratchet_tree extension (create groups with use_ratchet_tree_extension)".into(),
            source: None,
        })?
        .ratchet_tree()
        .clone();
    let storage = MemoryStorage::default();
    let (pg, _) = PublicGroup::from_external(crypto, &storage, tree, vgi, ProposalStore::new())
        .map_err(|e| KdsError::invalid_by("group_info", e))?;
    Ok((pg, storage))
}

/// KDS-ROOM-01: a new room is the creator's group at epoch 0, in Veil's cipher suite, with
/// the creator (the token's identity) as its only member.
pub(super) fn validate_new_room(pg: &PublicGroup, creator: &str) -> Result<(), KdsError> {
    if pg.ciphersuite() != CIPHERSUITE {
        return Err(KdsError::invalid(format!(
            "cipher suite {:?}; rooms use {CIPHERSUITE:?}",
            pg.ciphersuite()
        )));
    }
    let epoch = pg.group_context().epoch().as_u64();
    if epoch != 0 {
        return Err(KdsError::invalid(format!(
            "a room is created from its epoch-0 GroupInfo, this one is of epoch {epoch}"
        )));
    }
    let members: Vec<Member> = pg.members().collect();
    let [only] = members.as_slice() else {
        return Err(KdsError::invalid(format!(
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
    Ok(())
}

/// KDS-GI-02: `group_info` describes exactly `pg` (group context and ratchet tree, byte for
/// byte), carries `external_pub`, and is signed by the leaf it names. `pg`'s tree was validated
/// commit by commit, so this equals rebuilding a `PublicGroup` from the GroupInfo (KDS-GI-01)
/// without verifying every leaf's signature again.
pub(super) fn validate_group_info(
    crypto: &RustCrypto,
    room: &str,
    pg: &PublicGroup,
    group_info: &[u8],
) -> Result<(), KdsError> {
    let malformed = |why: &str| KdsError::Malformed {
        what: "group_info",
        why: why.to_owned(),
        source: None,
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
        return Err(KdsError::invalid(
            "the GroupInfo's group context is not the one the commit creates",
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
        return Err(KdsError::invalid(
            "the GroupInfo's ratchet tree is not the one the commit creates",
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
        KdsError::invalid(format!("the GroupInfo's signer {signer} is not a member"))
    })?;
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        leaf.signature_key().clone(),
        CIPHERSUITE.signature_algorithm(),
    );
    vgi.verify(crypto, &key)
        .map_err(|_| KdsError::invalid("the GroupInfo's signature does not verify"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testkit::{Member, ROOM, Sent, Service};
    use crate::room::{RoomState, SentCommit};

    fn refused(svc: &Service, room: &RoomState, sent: &SentCommit<'_>) -> KdsError {
        match svc.check(room, sent) {
            Err(e) => e,
            Ok(o) => panic!("expected a refusal, got {o:?}"),
        }
    }

    // --- KDS-GI-01, KDS-ROOM-01 (RoomState::create) -------------------------------------------

    #[test]
    fn kds_gi_01_a_verified_group_info_builds_the_public_group() {
        let mut alice = Member::new("alice");
        let gi = alice.create(ROOM, &[]);
        let (pg, _) = public_group_from(&RustCrypto::default(), ROOM, &gi).unwrap();
        assert_eq!(pg.members().count(), 1);
        validate_new_room(&pg, "alice").unwrap();
    }

    #[test]
    fn kds_gi_01_bytes_that_are_no_verified_group_info_are_refused() {
        let crypto = RustCrypto::default();
        let e = public_group_from(&crypto, ROOM, b"garbage").unwrap_err();
        assert!(
            matches!(
                e,
                KdsError::Malformed {
                    what: "group_info",
                    ..
                }
            ),
            "{e}"
        );
        let kp = Member::new("alice").key_package(false);
        let e = public_group_from(&crypto, ROOM, &kp).unwrap_err();
        assert!(
            matches!(&e, KdsError::Malformed { why, .. } if why.contains("not a GroupInfo")),
            "{e}"
        );
        let mut gi = Member::new("alice").create(ROOM, &[]);
        *gi.last_mut().unwrap() ^= 1; // the signature closes the message
        let e = public_group_from(&crypto, ROOM, &gi).unwrap_err();
        assert!(matches!(e, KdsError::Invalid { .. }), "{e}");
    }

    #[test]
    fn kds_room_01_another_rooms_group_info_is_refused() {
        let gi = Member::new("alice").create("other", &[]);
        let e = public_group_from(&RustCrypto::default(), ROOM, &gi).unwrap_err();
        assert!(matches!(e, KdsError::WrongGroup { .. }), "{e}");
    }

    #[test]
    fn kds_room_01_the_creator_is_the_tokens_identity() {
        let gi = Member::new("alice").create(ROOM, &[]);
        let (pg, _) = public_group_from(&RustCrypto::default(), ROOM, &gi).unwrap();
        let e = validate_new_room(&pg, "mallory").unwrap_err();
        assert!(
            matches!(&e, KdsError::PermissionDenied(m) if m.contains("creator is \"alice\"")),
            "{e}"
        );
    }

    #[test]
    fn kds_room_01_a_group_past_epoch_0_is_refused() {
        let mut alice = Member::new("alice");
        alice.create(ROOM, &[]);
        alice.self_update();
        alice.confirm();
        let (pg, _) = public_group_from(&RustCrypto::default(), ROOM, &alice.group_info()).unwrap();
        let e = validate_new_room(&pg, "alice").unwrap_err();
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("this one is of epoch 1")),
            "{e}"
        );
    }

    #[test]
    fn kds_room_01_another_cipher_suite_is_refused() {
        let mut alice = Member::with_suite(
            "alice",
            Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
        );
        let gi = alice.create(ROOM, &[]);
        let (pg, _) = public_group_from(&RustCrypto::default(), ROOM, &gi).unwrap();
        let e = validate_new_room(&pg, "alice").unwrap_err();
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("rooms use")),
            "{e}"
        );
    }

    // --- KDS-GI-02 ----------------------------------------------------------------------------

    #[test]
    fn kds_gi_02_the_group_info_of_the_new_epoch_passes() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let mut room = svc.room(&mut alice);
        // The room's own GroupInfo describes the room's state.
        validate_group_info(&room.crypto, ROOM, &room.pg, room.group_info()).unwrap();
        let up = alice.self_update();
        svc.commit(&mut room, &up.by("alice"));
        assert_eq!(room.group_info(), up.group_info);
        validate_group_info(&room.crypto, ROOM, &room.pg, &up.group_info).unwrap();
    }

    #[test]
    fn kds_gi_02_a_commit_without_its_group_info_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let up = alice.self_update();
        let malformed = |sent: &Sent| match refused(&svc, &room, &sent.by("alice")) {
            KdsError::Malformed {
                what: "group_info",
                why,
                ..
            } => why,
            e => panic!("{e}"),
        };
        let none = Sent {
            group_info: Vec::new(),
            ..up.clone()
        };
        assert!(malformed(&none).contains("must come with the new epoch's GroupInfo"));
        let commit_instead = Sent {
            group_info: up.commit.clone(),
            ..up.clone()
        };
        assert!(malformed(&commit_instead).contains("not a GroupInfo"));
    }

    #[test]
    fn kds_gi_02_a_group_info_of_another_state_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let up = alice.self_update();
        // The epoch the commit leaves.
        let stale = Sent {
            group_info: room.group_info().to_vec(),
            ..up.clone()
        };
        let e = refused(&svc, &room, &stale.by("alice"));
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("group context")),
            "{e}"
        );
        // Another room's.
        let other = Sent {
            group_info: Member::new("alice").create("other", &[]),
            ..up.clone()
        };
        let e = refused(&svc, &room, &other.by("alice"));
        assert!(matches!(e, KdsError::WrongGroup { .. }), "{e}");
    }

    #[test]
    fn kds_gi_02_a_group_info_with_a_bad_signature_is_refused() {
        let svc = Service::new();
        let mut alice = Member::new("alice");
        let room = svc.room(&mut alice);
        let mut up = alice.self_update();
        *up.group_info.last_mut().unwrap() ^= 1;
        let e = refused(&svc, &room, &up.by("alice"));
        assert!(
            matches!(&e, KdsError::Invalid { why: m, .. } if m.contains("signature does not verify")),
            "{e}"
        );
    }
}
