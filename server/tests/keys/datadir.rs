//! KDS-SEC-02: the data directory holds the external-sender signature key (`veil.db`) and the
//! token key, so the server creates it private whatever the umask, and refuses to start on one
//! that other users can read (issue 22, defect 2).

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `veil-server <args…>` under `umask 022`, the common default that made `veil.db` 0644.
fn under_umask_022(args: &[&str]) -> Command {
    let mut c = veil_testkit::server::under_shell("umask 022; ", crate::common::binary());
    c.args(args).env("RUST_LOG", "warn");
    c
}

fn serve_args(dir: &Path) -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
        "--no-web",
        "--sfu-udp",
        "127.0.0.1:0",
        "--data-dir",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([dir.display().to_string()])
    .collect()
}

#[test]
fn a_fresh_data_directory_is_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    // Two levels that do not exist yet.
    let dir = tmp.path().join("srv").join("veil-data");
    let args = serve_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = under_umask_022(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("veil-server listening"), "{line:?}");
    // Listening means the store is open: the external-sender key is written, WAL and SHM exist.
    let got: Vec<(String, u32)> = [
        "",
        "veil.db",
        "veil.db-wal",
        "veil.db-shm",
        veil_server::TOKEN_KEY_FILE,
    ]
    .iter()
    .map(|f| ((*f).to_owned(), mode(&dir.join(f))))
    .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        got,
        [
            (String::new(), 0o700),
            ("veil.db".into(), 0o600),
            ("veil.db-wal".into(), 0o600),
            ("veil.db-shm".into(), 0o600),
            ("token.key".into(), 0o600),
        ]
    );
    assert_eq!(mode(&tmp.path().join("srv")), 0o700, "a created parent");

    // The mint CLI on the same directory works and changes nothing.
    let out = under_umask_022(&[
        "token",
        "--data-dir",
        dir.to_str().unwrap(),
        "--room",
        "r",
        "--identity",
        "a",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&dir), 0o700);
}

/// Run `veil-server <args>` to its end: it must fail, and say what to run.
fn refused(args: &[&str], want: &str) {
    let out = under_umask_022(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(stderr.contains(want), "no {want:?} in: {stderr}");
    assert!(stderr.contains("other users can access"), "{stderr}");
}

#[test]
fn a_data_directory_others_can_read_is_refused_once_it_holds_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("veil-data");
    fs::create_dir(&dir).unwrap();
    // An empty directory others may read, like a fresh temporary one: made private.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let out = under_umask_022(&[
        "token",
        "--data-dir",
        dir.to_str().unwrap(),
        "--room",
        "r",
        "--identity",
        "a",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&dir), 0o700);

    // Once it holds the token key, a readable directory is refused, not tightened.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let args = serve_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fix = format!("chmod 700 {}", dir.display());
    refused(&args, &fix);
    // No database was created in it.
    assert!(!dir.join("veil.db").exists());
    // The mint CLI refuses it too: it would write the token key there.
    refused(
        &[
            "token",
            "--data-dir",
            dir.to_str().unwrap(),
            "--room",
            "r",
            "--identity",
            "a",
        ],
        &fix,
    );

    // Fixed as told, the server starts.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = under_umask_022(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("veil-server listening"), "{line:?}");
}

#[test]
fn a_key_file_or_database_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("veil-data");
    let args = serve_args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A first start creates everything private.
    let mut child = under_umask_022(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();

    for file in [veil_server::TOKEN_KEY_FILE, "veil.db"] {
        let path = dir.join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        refused(&args, &format!("chmod 600 {}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
}
