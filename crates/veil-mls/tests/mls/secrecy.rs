//! Forward secrecy and post-join secrecy (MLS-SEC-01..02): a removed member decrypts nothing of
//! later epochs, a joiner nothing of earlier ones, and old epochs stop decrypting once retired.

use crate::common;

use std::time::Duration;

use common::{NOW, Room, decrypt, decrypt_at, encrypt};

#[test]
fn a_removed_member_decrypts_zero_frames_of_the_new_epoch() {
    let mut room = Room::new("alice");
    room.add(0, &["bob", "carol", "dave"]);
    assert_eq!(room.all_to_all("before"), 12);
    let mut dave = room.remove(0, "dave");
    // Dave keeps receiving packets (he cheats by staying on the SFU) and tries every frame.
    let mut tried = 0;
    for round in 0..20 {
        for from in 0..room.members.len() {
            let pt = format!("secret {round}").into_bytes();
            let frame = encrypt(&mut room.members[from], &pt);
            assert_eq!(
                decrypt(&mut dave, &frame),
                None,
                "dave decrypted a new-epoch frame"
            );
            for to in (0..room.members.len()).filter(|&t| t != from) {
                assert_eq!(decrypt(&mut room.members[to], &frame), Some(pt.clone()));
            }
            tried += 1;
        }
    }
    assert_eq!(tried, 60);
    // Frames Dave held as "maybe a newer epoch" are never released: no commit reaches him,
    // and they age out.
    dave.tick(Duration::from_secs(10));
    assert_eq!(dave.keys().held_frames(), 0);
    assert_eq!(dave.keys().stats().released, 0);
}

#[test]
fn a_joiner_decrypts_zero_frames_from_before_its_join() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    let before: Vec<Vec<u8>> = (0..10)
        .map(|i| encrypt(&mut room.members[i % 2], b"before eve"))
        .collect();
    room.add(1, &["eve"]);
    let eve = room.pos("eve");
    for f in &before {
        assert_eq!(
            decrypt(&mut room.members[eve], f),
            None,
            "eve decrypted a frame from before her join"
        );
    }
    assert_eq!(
        room.members[eve].keys().held_frames(),
        0,
        "old-epoch frames are refused, not held"
    );
    assert_eq!(room.all_to_all("after"), 6);
}

#[test]
fn a_self_update_changes_every_key_and_old_epochs_expire() {
    let mut room = Room::new("alice");
    room.add(0, &["bob", "carol"]);
    let old = encrypt(&mut room.members[1], b"epoch 1");
    let kid_before = room.members[1].keys().sender_kid().unwrap();
    let out = room.members[1].self_update().unwrap();
    room.accept(1, &out, NOW);
    let kid_after = room.members[1].keys().sender_kid().unwrap();
    assert_ne!(
        kid_before, kid_after,
        "the sender moved to the new epoch's KID"
    );
    // Within the retention grace, an in-flight frame of the old epoch still decrypts ...
    assert_eq!(
        decrypt(&mut room.members[0], &old),
        Some(b"epoch 1".to_vec())
    );
    // ... and after it, the old keys are gone (zeroized), so a late copy is refused.
    let late = Duration::from_secs(3);
    assert_eq!(decrypt_at(&mut room.members[2], &old, late), None);
    assert_eq!(room.members[2].keys().installed_epochs(), vec![2]);
    // The new epoch's frames decrypt everywhere.
    assert_eq!(room.all_to_all("after update"), 6);
}

#[test]
fn retention_is_bounded_by_count() {
    let mut room = Room::new("alice");
    room.add(0, &["bob"]);
    let mut frames = Vec::new();
    for _ in 0..6 {
        frames.push(encrypt(&mut room.members[0], b"x"));
        let out = room.members[0].self_update().unwrap();
        room.accept(0, &out, NOW);
    }
    // Epochs 1..=6 sent one frame each; bob is at epoch 7 and keeps 3 previous epochs.
    let bob = &mut room.members[1];
    assert_eq!(bob.keys().installed_epochs(), vec![7, 6, 5, 4]);
    let ok: Vec<bool> = frames.iter().map(|f| decrypt(bob, f).is_some()).collect();
    assert_eq!(ok, vec![false, false, false, true, true, true]);
}
