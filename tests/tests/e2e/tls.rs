//! TLS on every endpoint that carries a token (SRV-TLS-01..05, specs/key-service.md §9.3):
//! a call over `https://` end to end, with a CA and server certificate the test makes; clients
//! that do not trust the server's CA refused; plaintext beyond loopback refused by the server
//! and by the client; the browser page served over https.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use veil_client::ClientError;
use veil_client::endpoint::Security;
use veil_client::keys::KeyClient;
use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomConfig};
use veil_e2e::{audio_frame, collect, metric, video_frame, warm_up};
use veil_server::{ServerConfig, ServerError};
use veil_testkit::server::{InProcess, TestPki};

/// The server with TLS from `pki` on both listeners, and a metrics listener.
async fn tls_server(pki: &TestPki) -> InProcess {
    InProcess::start("tls", |cfg| {
        cfg.tls = Some(pki.files());
        cfg.kds.departure_grace = Duration::from_secs(2);
        cfg.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.limits.handshake_timeout = Duration::from_secs(2);
    })
    .await
}

fn trusting(pki: &TestPki) -> Security {
    Security {
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        ..Security::default()
    }
}

fn room_cfg(server: &InProcess, room: &str, who: &str, security: &Security) -> RoomConfig {
    let token = server.token(room, who, Duration::from_secs(600));
    let mut c = RoomConfig::new(&server.url, &token, room, who);
    c.group.proposal_commit_delay = Duration::from_millis(50);
    c.group.security = security.clone();
    c
}

/// SRV-TLS-01, -05: two native participants join through `https://` (key service and SFU
/// signalling over TLS, verified against the test's CA), and each decrypts every frame the
/// other publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_call_over_tls_and_decrypt_each_other() {
    let pki = TestPki::new("call");
    let server = tls_server(&pki).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let security = trusting(&pki);
    let names = ["alice", "bob"];
    let mut rooms = Vec::new();
    for who in names {
        rooms.push(
            Room::join(room_cfg(&server, "tls", who, &security))
                .await
                .unwrap(),
        );
    }
    for r in &rooms {
        r.group()
            .wait(Duration::from_secs(20), |s| s.members.len() == 2)
            .await
            .unwrap();
    }
    warm_up(&mut rooms, 2).await;
    let base = 1_000_000u32;
    for i in 0..20u32 {
        for (w, r) in rooms.iter().enumerate() {
            r.publish_audio(&audio_frame(w, i), base + i * 960, (true, 30))
                .await
                .unwrap();
            r.publish_video(&video_frame(w, i), base + i * 3000, i == 0)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (me, r) in rooms.iter_mut().enumerate() {
        let other = 1 - me;
        let peer = names[other].to_owned();
        let got = collect(r, |g| {
            [MediaKind::Audio, MediaKind::Video].iter().all(|k| {
                g.get(&(peer.clone(), *k))
                    .is_some_and(|m| m.range(base..).count() >= 20)
            })
        })
        .await;
        for i in 0..20u32 {
            let audio = &got[&(peer.clone(), MediaKind::Audio)];
            let video = &got[&(peer.clone(), MediaKind::Video)];
            assert_eq!(audio.get(&(base + i * 960)), Some(&audio_frame(other, i)));
            assert_eq!(video.get(&(base + i * 3000)), Some(&video_frame(other, i)));
        }
        for (t, s) in &r.stats().received {
            assert!(s.decrypt_failures.is_empty(), "{t}: {s:?}");
        }
    }
    for r in rooms {
        r.leave().await.unwrap();
    }
}

/// SRV-TLS-03, -05: a client that does not trust the server's CA (the system's roots, or
/// another CA) is refused at the handshake with an error that names the certificate, and the
/// server counts the failed handshake; a connection that never starts TLS is closed after the
/// handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_servers_ca_is_refused() {
    let pki = TestPki::new("server");
    let server = tls_server(&pki).await;
    let token = server.token("r", "mallory", Duration::from_secs(600));
    let other_ca = trusting(&TestPki::new("other"));
    for security in [Security::default(), other_ca.clone()] {
        let mut c = KeyClient::connect_with(&server.url, &token, "r", &security)
            .await
            .unwrap();
        let e = c.service_info().await.unwrap_err();
        let msg = e.to_string();
        eprintln!("refused: {msg}");
        assert!(matches!(e, ClientError::Unavailable(_)), "{e:?}");
        assert!(msg.contains("certificate"), "{msg}");
    }
    // The SDK's join says the same, and gives up within its retry budget.
    let mut cfg = room_cfg(&server, "r", "mallory", &other_ca);
    cfg.group.retry_for = Duration::from_secs(1);
    let e = Room::join(cfg).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // With the CA, the same call succeeds.
    let mut c = KeyClient::connect_with(&server.url, &token, "r", &trusting(&pki))
        .await
        .unwrap();
    c.service_info().await.unwrap();

    // A TCP connection that never sends a ClientHello is closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(server.bound.grpc)
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("closed within the timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    let text = server.metrics_text().await;
    let refused = |reason: &str| {
        metric(
            &text,
            &format!(
                "veil_server_connections_refused_total{{listener=\"grpc\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(refused("tls_handshake") >= 2.0, "{text}");
    assert!(refused("handshake_timeout") >= 1.0, "{text}");
}

/// SRV-TLS-04: the server refuses plaintext gRPC or web listeners off loopback unless the
/// operator opts out; the SDK refuses to send a token over `http://` to a host that is not
/// loopback unless opted out, before any connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_beyond_loopback_is_refused_without_the_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = veil_auth::TokenKey::generate("p").unwrap();
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut cfg = ServerConfig::loopback(dir.path().to_owned(), key.clone());
    cfg.listen = any;
    let e = veil_server::spawn(cfg.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::PlaintextNotLoopback {
                listener: "gRPC",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
    let mut web_only = ServerConfig::loopback(dir.path().to_owned(), key.clone());
    web_only.web_listen = Some(any);
    let e = veil_server::spawn(web_only).await.unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::PlaintextNotLoopback {
                listener: "web",
                ..
            }
        ),
        "{e:?}"
    );
    cfg.insecure_plaintext = true;
    let bound = veil_server::spawn(cfg).await.unwrap();
    assert!(bound.grpc.ip().is_unspecified() && !bound.tls);

    let token = veil_testkit::token::mint(&key, "r", "alice", Duration::from_secs(60));
    // TEST-NET-1: nothing is sent there; the refusal comes first.
    let far = "http://192.0.2.1:7443";
    let e = KeyClient::connect(far, &token, "r").await.unwrap_err();
    assert!(matches!(e, ClientError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("plaintext"), "{e}");
    let e = Room::join(RoomConfig::new(far, &token, "r", "alice"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Config { .. }), "{e:?}");
    let opted_out = Security {
        insecure_plaintext: true,
        ..Security::default()
    };
    // Lazy: the opt-out only lets the channel be made.
    KeyClient::connect_with(far, &token, "r", &opted_out)
        .await
        .unwrap();
}

/// SRV-TLS-02: unusable certificate or key files stop the server with an error naming the
/// file and what to give instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_or_key_files_are_named() {
    let pki = TestPki::new("a");
    let other = TestPki::new("b");
    let dir = tempfile::tempdir().unwrap();
    let key = veil_auth::TokenKey::generate("f").unwrap();
    let start = |cert: &std::path::Path, k: &std::path::Path| {
        let mut cfg = ServerConfig::loopback(dir.path().to_owned(), key.clone());
        cfg.tls = Some(veil_server::tls::TlsFiles {
            cert: cert.to_owned(),
            key: k.to_owned(),
        });
        veil_server::spawn(cfg)
    };
    let e = start(&pki.cert, &other.key).await.unwrap_err();
    assert!(matches!(e, ServerError::TlsKeyMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("issued for"), "{e}");
    let missing = pki.dir.path().join("missing.pem");
    let e = start(&missing, &pki.key).await.unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::TlsFile {
                file: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("missing.pem") && e.to_string().contains("--tls-cert"),
        "{e}"
    );
    let e = start(&pki.key, &pki.key).await.unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    let e = start(&pki.cert, &pki.ca).await.unwrap_err();
    assert!(e.to_string().contains("no PEM private key"), "{e}");
}

/// SRV-TLS-01: the web listener serves the browser page over https (HTTP/1.1 by ALPN), to a
/// client that trusts the test's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_over_https() {
    let pki = TestPki::new("web");
    let server = tls_server(&pki).await;
    let web = server.bound.web.expect("a web listener");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /room/tls HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap_or_default();
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{head}"
    );
    assert!(body.contains("<title>Veil call</title>"), "{body}");
}
