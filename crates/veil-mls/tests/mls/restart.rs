//! A member keeps its MLS state in SQLite, restarts mid-call, and continues (MLS-SES-09).

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{NOW, Room, cross_check, decrypt, encrypt};
use veil_mls::{CallSession, KeyConfig, MlsError, Processed, SqliteProvider};

/// A fresh state file under the system temp dir, removed on drop.
struct StateFile(PathBuf);

impl StateFile {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(std::env::temp_dir().join(format!(
            "veil-mls-{tag}-{}-{nanos}.sqlite",
            std::process::id()
        )))
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
        }
    }
}

/// Bob joins `room` (added by its first member), keeping his state in the SQLite file `path`.
fn join_on_sqlite(room: &mut Room, path: &std::path::Path) -> CallSession<SqliteProvider> {
    let mut bob = CallSession::with_provider(
        SqliteProvider::open(path).unwrap(),
        b"bob",
        KeyConfig::default(),
    )
    .unwrap();
    let out = room.members[0]
        .add_members(&[bob.key_package(false).unwrap()])
        .unwrap();
    room.accept(0, &out, NOW);
    bob.join_welcome(out.welcome.as_deref().unwrap(), NOW)
        .unwrap();
    bob
}

#[test]
fn a_member_restarts_from_sqlite_and_continues_in_the_current_epoch() {
    let file = StateFile::new("restart");
    let mut room = Room::new("alice");
    room.add(0, &["carol"]);

    // Bob keeps his state in SQLite.
    let mut bob = join_on_sqlite(&mut room, &file.0);
    let bob_key = bob.signature_public_key();
    let epoch = room.epoch;
    let frame = encrypt(&mut room.members[0], b"before the crash");
    assert_eq!(
        decrypt(&mut bob, &frame),
        Some(b"before the crash".to_vec())
    );

    // Bob's process dies. Nothing is saved explicitly: openmls wrote every change as it happened.
    drop(bob);

    // While he is down, Alice sends; then Carol commits a self-update he misses.
    let during = encrypt(&mut room.members[0], b"while bob was down");
    let missed = room.members[1].self_update().unwrap();
    room.accept(1, &missed, NOW);

    // Bob restarts from the file: same identity, same group, same epoch as before the crash.
    let later = Duration::from_millis(100);
    let mut bob = CallSession::restore(
        SqliteProvider::open(&file.0).unwrap(),
        b"bob",
        &bob_key,
        b"room",
        KeyConfig::default(),
        later,
    )
    .unwrap();
    assert_eq!(bob.epoch(), Some(epoch));
    assert_eq!(bob.members().len(), 3);
    // Frames of the current epoch decrypt again, including one sent while he was down.
    assert_eq!(
        decrypt(&mut bob, &during),
        Some(b"while bob was down".to_vec())
    );
    // He cannot send yet: his counter position died with the process, and reusing a counter
    // under the same key would reuse a nonce.
    assert!(matches!(
        bob.encrypt_frame(b"", b"x", &mut [0u8; 64]),
        Err(MlsError::NotSending)
    ));

    // The service resumes his stream from his last epoch: he processes the missed commit.
    assert!(matches!(
        bob.process(&missed.commit, later).unwrap(),
        Processed::EpochChanged { .. }
    ));
    assert_eq!(bob.epoch(), Some(room.epoch));
    assert_eq!(
        bob.epoch_authenticator(),
        room.members[0].epoch_authenticator()
    );
    // The missed commit moved him to an epoch his old process never had: that key has never
    // been used, so he may send again at once.
    assert_eq!(cross_check(&mut room, &mut bob, "after restart"), 4);

    // A second restart with no commit missed: he receives at once, but sends only after a
    // commit of his own gives him a fresh key.
    drop(bob);
    let mut bob = CallSession::restore(
        SqliteProvider::open(&file.0).unwrap(),
        b"bob",
        &bob_key,
        b"room",
        KeyConfig::default(),
        later,
    )
    .unwrap();
    assert_eq!(bob.epoch(), Some(room.epoch));
    let from_alice = encrypt(&mut room.members[0], b"after the second restart");
    assert_eq!(
        decrypt(&mut bob, &from_alice),
        Some(b"after the second restart".to_vec())
    );
    assert!(matches!(
        bob.encrypt_frame(b"", b"x", &mut [0u8; 64]),
        Err(MlsError::NotSending)
    ));
    let out = bob.self_update().unwrap();
    bob.confirm_commit(later).unwrap();
    for m in &mut room.members {
        m.process(&out.commit, later).unwrap();
    }
    room.epoch += 1;
    assert_eq!(cross_check(&mut room, &mut bob, "second restart"), 4);
    assert_eq!(
        bob.epoch_authenticator(),
        room.members[0].epoch_authenticator()
    );
}

#[test]
fn restoring_an_unknown_member_or_group_is_a_typed_error() {
    let file = StateFile::new("unknown");
    let mut bob = CallSession::with_provider(
        SqliteProvider::open(&file.0).unwrap(),
        b"bob",
        KeyConfig::default(),
    )
    .unwrap();
    bob.create_group(b"room", NOW).unwrap();
    let key = bob.signature_public_key();
    drop(bob);
    let open = || SqliteProvider::open(&file.0).unwrap();
    assert!(matches!(
        CallSession::restore(
            open(),
            b"bob",
            &key,
            b"other-room",
            KeyConfig::default(),
            NOW
        ),
        Err(MlsError::NotInGroup)
    ));
    assert!(matches!(
        CallSession::restore(
            open(),
            b"bob",
            &[7u8; 32],
            b"room",
            KeyConfig::default(),
            NOW
        ),
        Err(MlsError::NotInGroup)
    ));
    assert!(CallSession::restore(open(), b"bob", &key, b"room", KeyConfig::default(), NOW).is_ok());
}

/// Post-compromise security (MLS-SEC-04): an attacker who stole a copy of Bob's whole state
/// (his SQLite file) before Bob's self-update cannot follow the group past it. It cannot process
/// the update commit, and it decrypts no frame of the new epoch.
#[test]
fn a_stolen_state_copy_cannot_follow_a_self_update() {
    let file = StateFile::new("pcs");
    let stolen = StateFile::new("pcs-stolen");
    let mut room = Room::new("alice");
    let mut bob = join_on_sqlite(&mut room, &file.0);
    let key = bob.signature_public_key();

    // The attacker copies Bob's state (database and write-ahead log) as it is now.
    for ext in ["", "-wal"] {
        let from = format!("{}{ext}", file.0.display());
        if std::path::Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{ext}", stolen.0.display())).unwrap();
        }
    }
    let mut thief = CallSession::restore(
        SqliteProvider::open(&stolen.0).unwrap(),
        b"bob",
        &key,
        b"room",
        KeyConfig::default(),
        NOW,
    )
    .unwrap();
    // The copy is complete: it reads the current epoch.
    let now_frame = encrypt(&mut room.members[0], b"current epoch");
    assert_eq!(
        decrypt(&mut thief, &now_frame),
        Some(b"current epoch".to_vec())
    );

    // Bob heals: a self-update with fresh leaf and path secrets.
    let update = bob.self_update().unwrap();
    bob.confirm_commit(NOW).unwrap();
    room.members[0].process(&update.commit, NOW).unwrap();
    room.epoch += 1;

    // The thief sees the commit (handshakes are visible to the service) but cannot process it.
    assert!(matches!(
        thief.process(&update.commit, NOW),
        Err(MlsError::Rejected(_))
    ));
    // No frame of the new epoch decrypts from the stolen state, now or later.
    for i in 0..20 {
        let pt = format!("healed {i}").into_bytes();
        let f = encrypt(&mut room.members[0], &pt);
        assert_eq!(decrypt(&mut bob, &f), Some(pt));
        assert_eq!(decrypt(&mut thief, &f), None);
    }
    thief.tick(Duration::from_secs(10));
    assert_eq!(thief.keys().stats().released, 0);
}
