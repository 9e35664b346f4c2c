//! Groups of 2, 3 and 50: every member derives the same SFrame keys per epoch, so a frame from
//! any member decrypts at every other member (MLS-KEY-01, MLS-SES-02, MLS-SES-06).

use crate::common;

use common::Room;

fn assert_same_epoch(room: &Room) {
    let auth = room.members[0].epoch_authenticator().unwrap();
    for m in &room.members {
        assert_eq!(m.epoch(), Some(room.epoch));
        assert_eq!(
            m.epoch_authenticator().unwrap(),
            auth,
            "epoch authenticators differ"
        );
        assert_eq!(m.members().len(), room.members.len());
    }
}

#[test]
fn two_members_share_keys() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    assert_same_epoch(&room);
    assert_eq!(room.all_to_all("e1"), 2);
    // Identities are visible to every member.
    let ids: Vec<Vec<u8>> = room.members[1]
        .members()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids, vec![b"alice".to_vec(), b"bob".to_vec()]);
}

#[test]
fn three_members_through_several_epochs() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    room.add(1, &["carol"]);
    assert_same_epoch(&room);
    assert_eq!(room.all_to_all("e2"), 6);
    let out = room.members[2].self_update().unwrap();
    room.accept(2, &out, common::NOW);
    assert_same_epoch(&room);
    assert_eq!(room.all_to_all("e3"), 6);
    // The KIDs carry the sender index and the epoch's low bits.
    for m in &room.members {
        let kid = m.keys().sender_kid().unwrap();
        let (ctx, idx, epoch) = m.keys().layout().split(kid);
        assert_eq!((ctx, idx, epoch), (0, u64::from(m.own_index().unwrap()), 3));
    }
}

#[test]
fn fifty_members_all_decrypt_each_other() {
    let mut room = Room::new("m0");
    let names: Vec<String> = (1..50).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Half join in one commit, the rest in commits by different members.
    room.add(0, &refs[..24]);
    for (k, chunk) in refs[24..].chunks(5).enumerate() {
        room.add(k + 1, chunk);
    }
    assert_eq!(room.members.len(), 50);
    assert_same_epoch(&room);
    assert_eq!(room.all_to_all("fifty"), 50 * 49);
}

/// A last-resort KeyPackage survives use: the service can hand it out when single-use ones run
/// out, and the member joins two rooms with it (MLS-SES-01). A single-use one works once.
#[test]
fn last_resort_key_packages_are_reusable_and_single_use_ones_are_not() {
    use veil_mls::{CallSession, KeyConfig};
    let join = |kp: &[u8], creator: &str, member: &mut CallSession| {
        let mut room = Room::with_id(creator, format!("room of {creator}").as_bytes());
        let out = room.members[0].add_members(&[kp.to_vec()]).unwrap();
        room.members[0].confirm_commit(common::NOW).unwrap();
        member.join_welcome(out.welcome.as_deref().unwrap(), common::NOW)
    };
    let mut bob = CallSession::new(b"bob", KeyConfig::default()).unwrap();
    let last_resort = bob.key_package(true).unwrap();
    join(&last_resort, "alice", &mut bob).unwrap();
    join(&last_resort, "carol", &mut bob).unwrap();
    assert_eq!(
        bob.members()[0].1,
        b"carol".to_vec(),
        "bob is in carol's room now"
    );

    let mut eve = CallSession::new(b"eve", KeyConfig::default()).unwrap();
    let single = eve.key_package(false).unwrap();
    join(&single, "dave", &mut eve).unwrap();
    // The same single-use KeyPackage again: the Welcome finds no key package to open it with.
    assert!(join(&single, "frank", &mut eve).is_err());
}
