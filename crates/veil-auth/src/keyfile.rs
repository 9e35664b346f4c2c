//! The embedded default key: one key file shared by a server and the `mint` CLI.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

use rand::TryRngCore as _;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::error::{AuthError, Result};
use crate::key::TokenKey;

/// A key file is one short line; anything longer is not ours.
const MAX_KEY_FILE_LEN: u64 = 1024;

impl TokenKey {
    /// Reads the key in the file at `path`, or, if there is none, generates a key with id `id`
    /// and stores it there.
    ///
    /// The file holds one line, `id:secret` with the secret in base64url, the format
    /// [`TokenKey::parse`] reads, so its content can be handed to an application backend as
    /// configuration. An existing file wins: `id` is used only when creating it.
    ///
    /// Creation is atomic: the key is written and synced to a temporary file in the same
    /// directory (mode `0600` on Unix), which is then hard-linked to `path`. Linking fails if
    /// `path` already exists, so when a server and the `mint` CLI start at the same moment both
    /// end up with the key that was stored first. On file systems without hard links the
    /// temporary file is renamed instead, which narrows but does not close that race.
    /// Missing parent directories are created (mode `0700` on Unix).
    pub fn load_or_create(path: impl AsRef<Path>, id: &str) -> Result<Self> {
        // AUTH-KEY-03: use an existing file, else publish a new one atomically.
        let path = path.as_ref();
        match read_key_file(path) {
            Err(AuthError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::generate(id)?;
        create_key_file(path, &key)?;
        // Read back what is stored: another process may have won the race.
        read_key_file(path)
    }
}

fn io_error(what: &str, path: &Path, source: io::Error) -> AuthError {
    AuthError::Io {
        what: format!("{what} key file {}", path.display()),
        source,
    }
}

fn read_key_file(path: &Path) -> Result<TokenKey> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut contents = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut contents)
        .map_err(|e| io_error("read", path, e))?;
    if contents.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(AuthError::InvalidKey(format!(
            "key file {} is longer than {MAX_KEY_FILE_LEN} bytes; it is not a Veil key file",
            path.display()
        )));
    }
    TokenKey::parse(&contents).map_err(|e| match e {
        AuthError::InvalidKey(why) => AuthError::InvalidKey(format!(
            "key file {}: {why} (delete the file to have a new key generated; tokens minted \
             with the old key then stop verifying)",
            path.display()
        )),
        other => other,
    })
}

fn create_key_file(path: &Path, key: &TokenKey) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error("create the directory of", path, e))?;

    let name = path.file_name().ok_or_else(|| {
        AuthError::InvalidKey(format!("key file path {} has no file name", path.display()))
    })?;
    let suffix = OsRng.try_next_u64().map_err(|e| AuthError::Io {
        what: "read the operating system's random generator".into(),
        source: io::Error::other(e),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{suffix:016x}.tmp"));
    let temp = dir.join(temp_name);

    let result = write_new(&temp, key).and_then(|()| publish(&temp, path));
    // The temporary name is gone after a rename; after a link or a failure it is removed.
    let _ = fs::remove_file(&temp);
    result?;
    #[cfg(unix)]
    if let Ok(dir) = File::open(dir) {
        // Make the new directory entry durable; best effort, as not every file system can.
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes the key to a new file that only the owner can read, and syncs it.
fn write_new(temp: &Path, key: &TokenKey) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(temp)
        .map_err(|e| io_error("create temporary", temp, e))?;
    #[cfg(unix)]
    {
        // The umask can only clear bits of 0600, but set it anyway in case it cleared ours.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("set the mode of temporary", temp, e))?;
    }
    file.write_all(key.to_file_contents().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write temporary", temp, e))
}

/// Makes the complete temporary file appear at `path`, unless a key file is already there.
fn publish(temp: &Path, path: &Path) -> Result<()> {
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) if path.exists() => Ok(()),
        Err(_) => fs::rename(temp, path).map_err(|e| io_error("create", path, e)),
    }
}
