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
    _child: Kill,
}

impl Server {
    pub(crate) fn start(room: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Kill(
            veil()
                .args(["server", "--room", room, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir.path())
                .env("RUST_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
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
        Self {
            dir,
            port,
            join_line: join_line.expect("veil server prints a join command"),
            _child: child,
        }
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
