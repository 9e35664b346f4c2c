//! `veil join` and a browser in one call over TLS (SRV-TLS-01, -05, specs/key-service.md
//! §9.3): the server has a certificate from a CA the test makes; `veil join --ca-file` trusts
//! that CA, headless Chromium opens the page over `https://` (told to accept the test CA's
//! certificate), and each decrypts the other. `veil join` refuses to send its token over
//! `http://` to a host that is not loopback.

use std::ffi::OsStr;
use std::time::Duration;

use veil_testkit::browser::Chromium;
use veil_testkit::server::{InProcess, TestPki};

use crate::browser::{Native, ROOM, decoding, failures, open_link};
use crate::common::veil;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veil_join_and_a_browser_call_over_https() {
    let pki = TestPki::new("cli");
    let server = InProcess::start("tls", |cfg| {
        cfg.tls = Some(pki.files());
        cfg.kds.departure_grace = Duration::from_secs(2);
    })
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let web = server.bound.web.expect("the web listener");
    let token = |who: &str| server.token(ROOM, who, Duration::from_secs(600));

    let saved = tempfile::tempdir().unwrap();
    let alice = Native::start_with(
        &server.url,
        &token("alice"),
        saved.path(),
        &[OsStr::new("--ca-file"), pki.ca.as_os_str()],
    );
    let browser = Chromium::launch(&["--ignore-certificate-errors"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let link = veil_server::web::room_link(web, ROOM, &token("bob"));
    let link = link.replacen("http://", "https://", 1);
    let bob = open_link(&browser, &link).await;
    let origin = bob.eval("location.origin").await.unwrap();
    assert_eq!(origin.as_str(), Some(format!("https://{web}").as_str()));

    // Bob decodes alice's video and audio, decrypted by his worker without a failure.
    let s = decoding(&bob, &["alice"], None).await;
    assert_eq!(failures(&s), vec![], "{s:#}");
    // Alice decrypts bob's frames.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let frames_in: u64 = alice.last("in").and_then(|v| v.parse().ok()).unwrap_or(0);
        if frames_in > 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice received no frames over TLS:\n{}",
            alice.output()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        alice.last("decrypt failures").as_deref(),
        Some("0"),
        "{}",
        alice.output()
    );
    alice.stop();
    let bob_video = std::fs::metadata(saved.path().join("bob.ivf")).unwrap();
    assert!(bob_video.len() > 1000, "{bob_video:?}");
}

#[test]
fn veil_join_refuses_plaintext_to_a_host_that_is_not_loopback() {
    // TEST-NET-1: the refusal comes before any connection.
    let out = veil()
        .args(["join", "--room", "r", "--url", "http://192.0.2.1:7443"])
        .args([
            "--token",
            &veil_testkit::token::mint(
                &veil_auth::TokenKey::generate("k").unwrap(),
                "r",
                "alice",
                Duration::from_secs(60),
            ),
        ])
        .args(["--seconds", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("plaintext") && err.contains("--insecure-plaintext"),
        "{err}"
    );
}
