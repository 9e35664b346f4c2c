//! The data directory holds the service's private keys (the external-sender signature key in
//! `veil.db`, the embedded token key in `token.key`), so only its owner may read it
//! (KDS-SEC-02, specs/key-service.md §5.1).
//!
//! - A missing directory is created with mode `0700` (missing parents too), and a missing
//!   `veil.db` with mode `0600` before SQLite opens it; SQLite gives `-wal` and `-shm` the
//!   database file's mode. Modes are set explicitly, so the umask does not matter.
//! - An existing directory that others may read or enter but not write, and that holds no key
//!   yet (a fresh temporary directory under `umask 022`), is made `0700`.
//! - Start-up is refused when the directory grants group or others any permission once it
//!   holds a key, or write permission at any time (they could plant files), or when any of
//!   those files grants any permission to group or others: the error names the paths and the
//!   `chmod` that fixes them. A key that others could read may have been read; the operator
//!   should know, so nothing that holds one is tightened silently.
//!
//! Modes are a Unix notion: elsewhere the directory and files take the parent's ACL and
//! nothing is checked.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::{ServerError, TOKEN_KEY_FILE};

/// The SQLite database under the data directory.
pub const DB_FILE: &str = "veil.db";

/// The files under the data directory that hold secrets or their pages.
const SECRET_FILES: [&str; 4] = [DB_FILE, "veil.db-wal", "veil.db-shm", TOKEN_KEY_FILE];

/// Permission bits that let someone other than the owner in.
const NOT_OWNER: u32 = 0o077;

/// A path whose mode lets other users in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// The path.
    pub path: PathBuf,
    /// Its permission bits (`0o755`, …).
    pub mode: u32,
    /// A directory (fixed with `chmod 700`) or a file (`chmod 600`).
    pub dir: bool,
}

/// The permission bits of `meta` (none outside Unix).
fn mode_of(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    return meta.permissions().mode() & 0o777;
    #[cfg(not(unix))]
    return 0;
}

/// The `chmod` commands that make every path of `exposed` private.
#[must_use]
pub fn fix_command(exposed: &[Exposed]) -> String {
    let list = |dir: bool| {
        exposed
            .iter()
            .filter(|e| e.dir == dir)
            .map(|e| e.path.display().to_string())
            .collect::<Vec<_>>()
    };
    let mut cmds = Vec::new();
    for (dir, mode) in [(true, "700"), (false, "600")] {
        let paths = list(dir);
        if !paths.is_empty() {
            cmds.push(format!("chmod {mode} {}", paths.join(" ")));
        }
    }
    cmds.join(" && ")
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Create `dir` (mode `0700`, parents included) if it is missing, then check that it is
/// private.
///
/// # Errors
/// [`ServerError::Io`]; [`ServerError::DataDirExposed`] if the directory lets other users in.
pub fn prepare_dir(dir: &Path) -> Result<(), ServerError> {
    // KDS-SEC-02: `recursive` gives every directory it creates the mode, and an existing
    // directory is left as it is (and checked below).
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .map_err(io_err(format!("create data directory {}", dir.display())))?;
    let meta = fs::metadata(dir).map_err(io_err(format!("inspect {}", dir.display())))?;
    let mode = mode_of(&meta);
    if mode & NOT_OWNER == 0 {
        // Every directory this call created: `mkdir` applies the umask, which only clears bits.
        return Ok(());
    }
    let holds_keys = SECRET_FILES.iter().any(|f| dir.join(f).exists());
    if mode & 0o022 == 0 && !holds_keys {
        #[cfg(unix)]
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("make {} private", dir.display())))?;
        tracing::info!(dir = %dir.display(), from = format!("{mode:04o}"), "data directory made private (0700)");
        return Ok(());
    }
    Err(exposed_error(vec![Exposed {
        path: dir.to_owned(),
        mode,
        dir: true,
    }]))
}

/// Create `veil.db` with mode `0600` if it is missing, so SQLite never creates it (or its
/// `-wal`/`-shm`, which take the database file's mode) with the umask's mode; returns its
/// path.
///
/// # Errors
/// [`ServerError::Io`].
pub fn create_db_file(dir: &Path) -> Result<PathBuf, ServerError> {
    let db = dir.join(DB_FILE);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(&db) {
        #[cfg(unix)]
        Ok(f) => {
            // The umask can only clear bits of 0600; set it anyway in case it cleared ours.
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!("set the mode of {}", db.display())))?;
        }
        #[cfg(not(unix))]
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(format!("create {}", db.display()))(e)),
    }
    Ok(db)
}

/// Every path among the data directory and its secret files that lets other users in.
///
/// # Errors
/// [`ServerError::Io`] when a path exists but cannot be inspected.
pub fn exposed(dir: &Path) -> Result<Vec<Exposed>, ServerError> {
    let mut out = Vec::new();
    let mut check = |path: PathBuf, dir: bool| -> Result<(), ServerError> {
        match fs::metadata(&path) {
            Ok(m) if mode_of(&m) & NOT_OWNER != 0 => out.push(Exposed {
                mode: mode_of(&m),
                path,
                dir,
            }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("inspect {}", path.display()))(e)),
        }
        Ok(())
    };
    check(dir.to_owned(), true)?;
    for f in SECRET_FILES {
        check(dir.join(f), false)?;
    }
    Ok(out)
}

/// Refuse to go on if [`exposed`] finds anything (KDS-SEC-02).
///
/// # Errors
/// [`ServerError::DataDirExposed`], [`ServerError::Io`].
pub fn check_private(dir: &Path) -> Result<(), ServerError> {
    let found = exposed(dir)?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(exposed_error(found))
    }
}

fn exposed_error(paths: Vec<Exposed>) -> ServerError {
    ServerError::DataDirExposed {
        fix: fix_command(&paths),
        paths,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_directories_and_database_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("veil-data");
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        let db = create_db_file(&dir).unwrap();
        assert_eq!(mode(&db), 0o600);
        check_private(&dir).unwrap();
        // A second start leaves both as they are.
        prepare_dir(&dir).unwrap();
        assert_eq!(create_db_file(&dir).unwrap(), db);
    }

    #[test]
    fn a_fresh_readable_directory_is_made_private_a_writable_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("0777"), "{e}");
    }

    #[test]
    fn refuses_what_others_can_read_and_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(TOKEN_KEY_FILE), "k").unwrap();
        fs::set_permissions(dir.join(TOKEN_KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare_dir(&dir).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ServerError::DataDirExposed { .. }), "{e:?}");
        assert!(
            msg.contains(&format!("chmod 700 {}", dir.display())),
            "{msg}"
        );
        assert!(msg.contains("0755"), "{msg}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let key = dir.join(TOKEN_KEY_FILE);
        fs::write(&key, "k").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let db = create_db_file(&dir).unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let found = exposed(&dir).unwrap();
        assert_eq!(
            found.iter().map(|e| (e.mode, e.dir)).collect::<Vec<_>>(),
            [(0o644, false), (0o640, false)]
        );
        let msg = check_private(&dir).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("chmod 600 {} {}", db.display(), key.display())),
            "{msg}"
        );
    }
}
