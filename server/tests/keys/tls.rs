//! `veil-server serve`'s TLS flags (SRV-TLS-01, -04; specs/key-service.md §9.3): with
//! `--tls-cert`/`--tls-key` (or their environment variables) it serves over TLS on any address
//! and says `tls=on`; without them it refuses a listener that is not on loopback, and says how
//! to fix it.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use veil_client::endpoint::Security;
use veil_client::keys::KeyClient;
use veil_testkit::server::{ChildServer, TestPki, private};

/// `veil-server serve` on `listen` with a fresh data directory under `dir`, and `extra`.
fn serve(dir: &Path, listen: &str, extra: &[&str]) -> Command {
    private(dir);
    let mut c = Command::new(crate::common::binary());
    c.args(["serve", "--no-metrics", "--sfu-udp", "127.0.0.1:0"])
        .args(["--listen", listen, "--web-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("VEIL_TLS_CERT")
        .env_remove("VEIL_TLS_KEY")
        .env_remove("VEIL_INSECURE_PLAINTEXT");
    c
}

#[test]
fn plaintext_on_a_public_address_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve(dir.path(), "0.0.0.0:0", &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("0.0.0.0:0")
            && err.contains("--tls-cert")
            && err.contains("--insecure-plaintext"),
        "{err}"
    );
    // A certificate without its key is a usage error.
    let pki = TestPki::new("flags");
    let out = serve(dir.path(), "127.0.0.1:0", &["--tls-cert"])
        .arg(&pki.cert)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-key"), "{err}");
    // The opt-out starts it in plaintext.
    let mut child = serve(dir.path(), "0.0.0.0:0", &["--insecure-plaintext"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("tls=off"), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_the_environment_serves_a_client_that_trusts_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("env");
    let mut cmd = serve(dir.path(), "0.0.0.0:0", &[]);
    cmd.env("VEIL_TLS_CERT", &pki.cert)
        .env("VEIL_TLS_KEY", &pki.key);
    let mut child = ChildServer::spawn(cmd, None);
    let port = child.grpc_addr().port();
    let url = format!("https://127.0.0.1:{port}");
    let token = veil_testkit::token::mint(
        &veil_server::embedded_token_key(dir.path()).unwrap(),
        "r",
        "alice",
        std::time::Duration::from_secs(60),
    );
    let trust = Security {
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        ..Security::default()
    };
    let mut c = KeyClient::connect_with(&url, &token, "r", &trust)
        .await
        .unwrap();
    let info = c.service_info().await;
    // Plaintext to the TLS port gets no answer a client could take for the service's.
    let mut plain = KeyClient::connect(&format!("http://127.0.0.1:{port}"), &token, "r")
        .await
        .unwrap();
    let plain = plain.service_info().await;
    child.kill();
    info.unwrap();
    assert!(plain.is_err(), "{plain:?}");
}
