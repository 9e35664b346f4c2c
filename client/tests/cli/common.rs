//! Running the `veil` binary: a server on a free loopback port with a temporary data
//! directory, tokens, and children that are killed if a test fails part-way.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub(crate) fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

/// A child process that is killed when dropped.
pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `veil server` on loopback, with its state in a temporary directory.
pub(crate) struct Server {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    /// The `veil join ...` line the server printed.
    pub(crate) join_line: String,
    room: String,
    _child: Kill,
}

impl Server {
    pub(crate) fn start(room: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The server refuses a data directory others can read (it holds private keys).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (child, join_line) = Self::spawn(dir.path(), port, room);
        Self {
            dir,
            port,
            join_line,
            room: room.to_owned(),
            _child: child,
        }
    }

    /// SIGKILL the server, as a crash would: no shutdown of any kind.
    pub(crate) fn kill(&mut self) {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
    }

    /// Start the server again on the same port and data directory; returns once it listens.
    pub(crate) fn restart(&mut self) {
        let (child, join_line) = Self::spawn(self.dir.path(), self.port, &self.room);
        self._child = child;
        self.join_line = join_line;
    }

    /// `veil server` on `port` with its state in `dir`, its log appended to `server.log`;
    /// returns once it printed the join line (it listens then).
    fn spawn(dir: &std::path::Path, port: u16, room: &str) -> (Kill, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut child = Kill(
            veil()
                .args([
                    "server",
                    "--room",
                    room,
                    "--web-listen",
                    "127.0.0.1:0",
                    "--listen",
                ])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        // The server prints the exact join command for alice.
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut join_line = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.trim_start().starts_with("veil join ") {
                join_line = Some(line.trim().to_owned());
                break;
            }
        }
        // Close the server's stdout now, as a script that took the join line would: the
        // server must keep serving (it once died of the broken pipe writing its next line).
        drop(lines);
        let join_line = join_line.unwrap_or_else(|| {
            panic!(
                "veil server prints a join command; its log:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            )
        });
        (child, join_line)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A token from `veil token`, signed with the server's key.
    pub(crate) fn token(&self, room: &str, identity: &str) -> String {
        let out = veil()
            .args([
                "token",
                "--room",
                room,
                "--identity",
                identity,
                "--data-dir",
            ])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A file under the data directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
