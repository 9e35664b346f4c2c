//! Joining by external commit from a published GroupInfo (MLS-SES-08), and the key service as
//! an MLS external sender proposing the removal of a participant who left (MLS-SES-07).

use crate::common;

use common::{NOW, Room};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use veil_mls::{CallSession, KeyConfig, MlsError, Processed};

#[test]
fn a_joiner_enters_by_external_commit_without_waiting_for_a_member() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    // The service holds the GroupInfo that came with the last commit; any member can export one.
    let gi = room.members[1].group_info().unwrap();
    let mut carol = CallSession::new(b"carol", KeyConfig::default()).unwrap();
    let out = carol.join_external(&gi, NOW).unwrap();
    assert!(out.welcome.is_none());
    for m in &mut room.members {
        assert!(matches!(
            m.process(&out.commit, NOW).unwrap(),
            Processed::EpochChanged { epoch: 2, .. }
        ));
    }
    room.members.push(carol);
    room.epoch += 1;
    assert_eq!(room.members[2].epoch(), Some(2));
    assert_eq!(
        room.members[2].epoch_authenticator(),
        room.members[0].epoch_authenticator()
    );
    assert_eq!(room.all_to_all("after external join"), 6);
}

#[test]
fn a_stale_group_info_gives_a_commit_members_refuse() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    let stale = room.members[0].group_info().unwrap();
    let out = room.members[0].self_update().unwrap();
    room.accept(0, &out, NOW);
    let mut carol = CallSession::new(b"carol", KeyConfig::default()).unwrap();
    let late = carol.join_external(&stale, NOW).unwrap();
    assert!(matches!(
        room.members[1].process(&late.commit, NOW),
        Err(MlsError::WrongEpoch {
            message_epoch: 1,
            group_epoch: 2
        })
    ));
    // Carol retries from the current GroupInfo and gets in.
    carol.leave_locally();
    let out = carol
        .join_external(&room.members[1].group_info().unwrap(), NOW)
        .unwrap();
    for m in &mut room.members {
        m.process(&out.commit, NOW).unwrap();
    }
    room.members.push(carol);
    assert_eq!(room.all_to_all("retried"), 6);
}

#[test]
fn the_service_proposes_a_removal_and_a_member_commits_it() {
    // The key service's own signature key: its only key, never a group secret.
    let ds = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let mut alice = CallSession::new(b"alice", KeyConfig::default()).unwrap();
    alice
        .create_group_with_external_senders(
            b"room",
            &[(ds.public().to_vec(), b"veil-key-service".to_vec())],
            NOW,
        )
        .unwrap();
    let mut room = Room {
        members: vec![alice],
        epoch: 0,
    };
    room.add(0, &["bob", "carol", "dave"]);
    let dave_leaf = room.members[0]
        .members()
        .into_iter()
        .find(|(_, id)| id == b"dave")
        .unwrap()
        .0;

    // Dave's stream timed out: the service proposes his removal for the current epoch.
    let proposal = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
        LeafNodeIndex::new(dave_leaf),
        GroupId::from_slice(b"room"),
        GroupEpoch::from(room.epoch),
        &ds,
        SenderExtensionIndex::new(0),
    )
    .unwrap()
    .tls_serialize_detached()
    .unwrap();
    for m in &mut room.members {
        assert_eq!(
            m.process(&proposal, NOW).unwrap(),
            Processed::ProposalStored
        );
    }
    // Bob commits it; everyone, Dave included, processes the commit.
    let out = room.members[1].commit_pending_proposals().unwrap();
    room.members[1].confirm_commit(NOW).unwrap();
    for i in [0, 2] {
        assert!(matches!(
            room.members[i].process(&out.commit, NOW).unwrap(),
            Processed::EpochChanged { .. }
        ));
    }
    assert_eq!(
        room.members[3].process(&out.commit, NOW).unwrap(),
        Processed::Removed
    );
    let mut dave = room.members.remove(3);
    // Dave can no longer send, not even under the epoch he was removed from (MLS-SEC-03).
    assert!(matches!(
        dave.encrypt_frame(b"", b"x", &mut [0u8; 64]),
        Err(MlsError::NotSending)
    ));
    room.epoch += 1;
    assert_eq!(room.members[0].members().len(), 3);
    // Dave cannot read the new epoch.
    let frame = common::encrypt(&mut room.members[0], b"after dave");
    assert_eq!(common::decrypt(&mut dave, &frame), None);
    assert_eq!(room.all_to_all("without dave"), 6);

    // A proposal signed by a key that is not the group's external sender is refused.
    let rogue = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let forged = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
        LeafNodeIndex::new(0),
        GroupId::from_slice(b"room"),
        GroupEpoch::from(room.epoch),
        &rogue,
        SenderExtensionIndex::new(0),
    )
    .unwrap()
    .tls_serialize_detached()
    .unwrap();
    assert!(matches!(
        room.members[1].process(&forged, NOW),
        Err(MlsError::Rejected(_))
    ));
}
