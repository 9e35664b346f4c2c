//! The embedded default key file: created once, atomically, owner-only, then shared.

use std::fs;
use std::sync::Barrier;

use veil_auth::{AuthError, DEFAULT_KEY_FILE, DEFAULT_KEY_ID, TokenKey, Verifier};

use crate::common::{self, NOW};

#[test]
fn creates_once_then_reads_back_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_KEY_FILE);
    assert!(!path.exists());

    let created = TokenKey::load_or_create(&path, DEFAULT_KEY_ID).unwrap();
    assert_eq!(created.id(), DEFAULT_KEY_ID);
    let contents = fs::read_to_string(&path).unwrap();
    let (id, secret) = contents
        .strip_suffix('\n')
        .unwrap()
        .split_once(':')
        .unwrap();
    assert_eq!(id, DEFAULT_KEY_ID);
    assert_eq!(common::unb64(secret).len(), 32);

    // A second start (say, the `mint` CLI) gets the same key, whatever id it passes,
    // and the file is left as it was.
    let loaded = TokenKey::load_or_create(&path, "ignored").unwrap();
    assert_eq!(loaded, created);
    assert_eq!(fs::read_to_string(&path).unwrap(), contents);
    // The file's content is a valid `TokenKey::parse` value for application backends.
    assert_eq!(TokenKey::parse(&contents).unwrap(), created);

    let token = loaded.mint(&common::claims()).unwrap();
    Verifier::new([created])
        .unwrap()
        .verify(&token, NOW)
        .unwrap();

    // Only the key file is left behind: no temporary files.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [DEFAULT_KEY_FILE]);
}

#[test]
fn different_files_get_different_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = TokenKey::load_or_create(dir.path().join("a.key"), "k").unwrap();
    let b = TokenKey::load_or_create(dir.path().join("b.key"), "k").unwrap();
    assert_ne!(a, b);
}

#[cfg(unix)]
#[test]
fn key_file_is_owner_only_and_missing_directories_are_created_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data").join("veil");
    let path = data_dir.join(DEFAULT_KEY_FILE);
    TokenKey::load_or_create(&path, DEFAULT_KEY_ID).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&data_dir), 0o700);
}

#[test]
fn concurrent_first_starts_agree_on_one_key() {
    const THREADS: usize = 4;
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE);
        let barrier = Barrier::new(THREADS);
        let keys: Vec<TokenKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (path, barrier) = (&path, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        TokenKey::load_or_create(path, &format!("t{i}")).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let stored = TokenKey::parse(&fs::read_to_string(&path).unwrap()).unwrap();
        for key in &keys {
            assert_eq!(key, &stored, "round {round}");
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "round {round}"
        );
    }
}

#[test]
fn unusable_key_files_are_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_KEY_FILE);

    fs::write(&path, "").unwrap();
    let err = TokenKey::load_or_create(&path, "k").unwrap_err();
    assert!(
        matches!(err, AuthError::InvalidKey(ref m) if m.contains("delete the file")),
        "{err}"
    );
    assert!(err.to_string().contains(DEFAULT_KEY_FILE), "{err}");

    fs::write(&path, "k:00112233").unwrap();
    assert!(matches!(
        TokenKey::load_or_create(&path, "k"),
        Err(AuthError::WeakSecret { len: 4, .. })
    ));

    fs::write(&path, "k:".to_owned() + &"0".repeat(2000)).unwrap();
    assert!(matches!(
        TokenKey::load_or_create(&path, "k"),
        Err(AuthError::InvalidKey(_))
    ));
    // None of these was overwritten.
    assert_eq!(fs::read(&path).unwrap().len(), 2002);
}

#[test]
fn a_hand_written_key_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_KEY_FILE);
    let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    fs::write(&path, format!("ops-2025:{hex}\n")).unwrap();
    let key = TokenKey::load_or_create(&path, DEFAULT_KEY_ID).unwrap();
    assert_eq!(
        key,
        TokenKey::new("ops-2025", (0u8..32).collect::<Vec<_>>()).unwrap()
    );
}
