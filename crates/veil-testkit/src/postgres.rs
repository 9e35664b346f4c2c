//! A real PostgreSQL server for tests (issue 25): Debian's `postgresql` package, initialised
//! in a temporary directory and listening only on a Unix socket in it, so test binaries
//! running at once never fight over a port.
//!
//! `initdb` refuses to run as root, so as root the server runs as the `postgres` system user
//! (`runuser`), on a directory that user owns. A small shell script owns the server's life: it
//! starts it, says `ready`, and waits on its standard input; when that closes (this value is
//! dropped, or the test process ends in any way, a panic or a SIGKILL included) it stops the
//! server (`pg_ctl stop -m fast`) and removes the directory. [`TempPostgres::shared`] is one
//! server per test binary; [`TempPostgres::database`] gives each test its own database.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The script run as the server's owner: `$1` the binaries, `$2` the directory, `$3` more
/// server options. A `pg_hba.conf` in the directory replaces the one initdb wrote.
const SCRIPT: &str = r#"set -e
B="$1"; D="$2"; O="$3"
"$B/initdb" -D "$D/data" -U postgres --auth=trust -E UTF8 >"$D/initdb.log" 2>&1
if [ -f "$D/pg_hba.conf" ]; then cp "$D/pg_hba.conf" "$D/data/pg_hba.conf"; fi
"$B/pg_ctl" -D "$D/data" -l "$D/server.log" -w \
    -o "-k $D -c listen_addresses= -c max_connections=200 $O" start >/dev/null
echo ready
read _ || true
"$B/pg_ctl" -D "$D/data" -m fast -w stop >/dev/null 2>&1 || true
rm -rf "$D"
"#;

/// A PostgreSQL server in a temporary directory, stopped and removed when dropped.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    /// The TCP port and the CA of the server's certificate, for a server started with
    /// [`TempPostgres::start_tls`].
    tls: Option<(u16, String)>,
    child: Child,
    /// Closing it tells the script to stop the server.
    stdin: Option<ChildStdin>,
}

/// The newest Debian PostgreSQL's binaries (`/usr/lib/postgresql/<major>/bin`).
///
/// # Panics
/// If no PostgreSQL server is installed (`apt-get install postgresql`; `.ci/run` does).
#[must_use]
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<major>/bin/initdb: install Debian's postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Percent-encode a socket directory for a URL's host (`/` and anything not plain).
fn encode(path: &Path) -> String {
    path.to_str()
        .expect("a UTF-8 temporary path")
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl TempPostgres {
    /// Initialise and start a server; returns once it accepts connections.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start (its logs are quoted).
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Initialise and start a server that also listens on a TCP port of 127.0.0.1 and there
    /// accepts only TLS connections (`hostssl`), with a certificate for `localhost` and
    /// `127.0.0.1` from a fresh test CA ([`TempPostgres::ca_pem`]); the Unix socket stays as
    /// in [`start`](Self::start).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    #[must_use]
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("veil-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let mut options = String::new();
        let mut tls_info = None;
        let mut files = Vec::new();
        if tls {
            let pki = crate::pki::TestPki::new("postgres");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            for (from, to) in [(&pki.cert, "server.crt"), (&pki.key, "server.key")] {
                let to = dir.join(to);
                std::fs::copy(from, &to).unwrap();
                files.push(to);
            }
            let hba = dir.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            files.push(hba);
            options = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on \
                 -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
                d = dir.display()
            );
            tls_info = Some((port, pki.ca_pem.clone()));
        }
        for f in &files {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut cmd = if is_root() {
            let owner = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(owner.success(), "chown postgres {}", dir.display());
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", SCRIPT, "sh"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", SCRIPT, "sh"]);
            c
        };
        let mut child = cmd
            .arg(&bin)
            .arg(&dir)
            .arg(&options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The script outlives the test process for as long as the server takes to stop; it
            // must not hold the test's stderr open meanwhile (nextest counts that as a leak).
            // Its commands write to log files in the directory.
            .stderr(Stdio::null())
            .spawn()
            .expect("run the PostgreSQL script");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let _ = child.wait();
            let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            panic!(
                "PostgreSQL did not start in {}:\n{}\n{}",
                dir.display(),
                log("initdb.log"),
                log("server.log")
            );
        }
        Self {
            stdin: child.stdin.take(),
            dir,
            bin,
            tls: tls_info,
            child,
        }
    }

    /// One server for the whole test binary, started on first use. It is never dropped; the
    /// script stops it when the process ends and its standard input closes.
    pub fn shared() -> &'static Self {
        static PG: OnceLock<TempPostgres> = OnceLock::new();
        PG.get_or_init(Self::start)
    }

    /// The directory of the server's Unix socket.
    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `name` (`postgres://postgres@<socket dir>/<name>`).
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@{}:{}/{name}",
            encode(&self.dir),
            self.port()
        )
    }

    /// The server's port: its socket's name, and its TCP port if it has one.
    fn port(&self) -> u16 {
        self.tls.as_ref().map_or(5432, |(p, _)| *p)
    }

    /// The URL of database `name` over TCP and TLS (`sslmode=require`), for a server started
    /// with [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    /// If the server was started without TLS.
    #[must_use]
    pub fn tls_url(&self, name: &str) -> String {
        let (port, _) = self.tls.as_ref().expect("a server started with start_tls");
        format!("postgres://postgres@localhost:{port}/{name}?sslmode=require")
    }

    /// The PEM certificate of the CA that issued the TLS certificate of a server started
    /// with [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    /// If the server was started without TLS.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self
            .tls
            .as_ref()
            .expect("a server started with start_tls")
            .1
    }

    /// Create a fresh, empty database and return its name; every call gets a new one.
    ///
    /// # Panics
    /// If `createdb` fails.
    #[must_use]
    pub fn database_name(&self) -> String {
        let url = self.database();
        url.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// Create a fresh, empty database and return its URL; every call gets a new one.
    ///
    /// # Panics
    /// If `createdb` fails.
    #[must_use]
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "veil_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", "postgres", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
