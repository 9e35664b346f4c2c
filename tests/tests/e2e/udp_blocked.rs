//! SFU-TCP-06, SFU-TCP-07: a participant whose network drops every UDP packet joins a call over
//! ICE-TCP: the SDK in a helper process, and Chromium with the browser page.
//!
//! The participant (bob, `veil-e2e-participant`) runs inside a network namespace of the
//! test's own whose nftables rule drops all UDP in and out; the server listens on this side of
//! the veth pair, with `--sfu-tcp`; alice joins from outside. Each publishes numbered audio and
//! video frames, and each checks 40 audio and 20 video frames of the other, decrypted and byte
//! for byte. The control: the same participant, at the same time, against a second server
//! without ICE-TCP, gets no connection at all (its join fails), and the rule's counter shows the
//! UDP it tried. Without root (or without `ip`/`nft`) the test fails and says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use veil_client::media::MediaKind;
use veil_client::room::Room;
use veil_e2e::udp_blocked::{Netns, exchange};
use veil_e2e::{Server, audio_frame, metric, video_frame};
use veil_testkit::browser::{Chromium, Launch, Page};

/// The server on this side of the veth pair (gRPC and the browser page): plaintext off
/// loopback is opted into (the link is the test's own), one SFU worker, ICE-TCP if `tcp`.
async fn server(host: Ipv4Addr, tcp: bool) -> Server {
    Server::start_with(|cfg| {
        cfg.listen = SocketAddr::from((host, 0));
        cfg.web_listen = Some(SocketAddr::from((host, 0)));
        cfg.insecure_plaintext = true;
        let sfu = cfg.sfu.as_mut().expect("the SFU role");
        sfu.udp_addrs = vec![format!("{host}:0")];
        sfu.tcp = tcp.then(|| SocketAddr::from((host, 0)));
        sfu.workers = 1;
    })
    .await
}

/// A participant inside `ns`, and every line it prints, as it prints them.
struct Inside {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    checked: Arc<AtomicBool>,
}

fn inside(ns: &Netns, server: &Server, room: &str) -> Inside {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_veil-e2e-participant"))
        .env("VEIL_E2E_URL", &server.url)
        .env("VEIL_E2E_TOKEN", server.token(room, "bob"))
        .env("VEIL_E2E_ROOM", room)
        .env("VEIL_E2E_IDENTITY", "bob")
        .env("VEIL_E2E_ME", "1")
        .env("VEIL_E2E_OTHER", "alice:0")
        .env("VEIL_E2E_UDP", format!("{}:0", ns.inside))
        .env("VEIL_E2E_TCP", format!("{}:0", ns.inside))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ip netns exec veil-e2e-participant");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let checked = Arc::new(AtomicBool::new(false));
    let out = child.stdout.take().expect("piped");
    let (l, c) = (lines.clone(), checked.clone());
    tokio::spawn(async move {
        let mut out = BufReader::new(out).lines();
        while let Ok(Some(line)) = out.next_line().await {
            if line.starts_with("checked ") {
                c.store(true, Ordering::SeqCst);
            }
            l.lock().await.push(line);
        }
    });
    Inside {
        child,
        lines,
        checked,
    }
}

impl Inside {
    /// Close its stdin (it may stop) and wait for its exit code.
    async fn finish(&mut self, wait: Duration) -> (Option<i32>, Vec<String>) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(wait, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("bob did not exit within {wait:?}"))
            .expect("bob's status");
        // The reader has the last lines once the pipe closed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.code(), self.lines.lock().await.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_network_drops_udp_joins_over_ice_tcp_and_both_decrypt() {
    let ns = Netns::create(true);
    let with_tcp = server(ns.host, true).await;
    let without_tcp = server(ns.host, false).await;
    // The control runs meanwhile: the same participant, against an SFU offering UDP only.
    let mut control = inside(&ns, &without_tcp, "control");
    let mut bob = inside(&ns, &with_tcp, "call");

    let mut cfg = with_tcp.room("call", "alice");
    cfg.group.security.insecure_plaintext = true;
    cfg.udp_addrs = vec![format!("{}:0", ns.host)];
    let mut alice = Room::join(cfg).await.expect("alice joins from outside");
    let bob_checked = bob.checked.clone();
    let got = exchange(
        &mut alice,
        0,
        ("bob", 1),
        40,
        Duration::from_secs(45),
        |_| {},
        || bob_checked.load(Ordering::SeqCst),
    )
    .await;
    let lines = bob.lines.lock().await.clone();
    let got = got.unwrap_or_else(|e| panic!("alice: {e}; bob said {lines:?}"));
    assert!(got.audio >= 40 && got.video >= 20, "{got:?}");
    // Bob's media crossed one ICE-TCP stream; the SFU without ICE-TCP has none.
    let text = with_tcp.metrics_text().await;
    assert_eq!(metric(&text, "veil_sfu_tcp_streams"), Some(1.0), "{text}");
    let (code, lines) = bob.finish(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "bob: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("checked ")), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");

    // The control never connected: its join fails once the SDK's wait for the connection
    // (15 s) runs out.
    let (code, lines) = control.finish(Duration::from_secs(45)).await;
    assert_eq!(code, Some(2), "the control should fail to join: {lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("join failed")),
        "{lines:?}"
    );
    let text = without_tcp.metrics_text().await;
    assert_eq!(metric(&text, "veil_sfu_tcp_streams"), Some(0.0), "{text}");
    // The rule dropped what both participants inside tried over UDP.
    let dropped = ns.udp_dropped();
    assert!(dropped > 0, "no UDP was dropped: the rule tested nothing");
    println!(
        "udp_blocked: alice checked {got:?} of bob's frames; {dropped} UDP packets dropped in the namespace"
    );
    let _ = alice.leave().await;
}

/// SFU-TCP-07: Chromium inside a network namespace that drops every UDP packet joins with the
/// browser page over ICE-TCP (its own active TCP candidates; nothing in the page asks for it),
/// and it and a native participant outside decrypt each other. Chromium's DevTools endpoint is
/// on the namespace's loopback, so a forwarder inside (`veil-e2e-forward`) opens it on the
/// namespace's veth address; the page is served over plaintext on the host's veth address,
/// which Chromium is told to treat as a secure origin (as it treats loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_whose_udp_is_dropped_joins_over_ice_tcp_and_decrypts() {
    let ns = Netns::create(true);
    let host = ns.host;
    let with_tcp = server(host, true).await;
    let without_tcp = server(host, false).await;
    let mut cfg = with_tcp.room("browser", "alice");
    cfg.group.security.insecure_plaintext = true;
    cfg.udp_addrs = vec![format!("{host}:0")];
    let mut alice = Room::join(cfg).await.expect("alice joins from outside");

    let devtools = SocketAddr::from((ns.inside, 9222));
    let mut forward = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_veil-e2e-forward"))
        .arg(devtools.to_string())
        .arg("127.0.0.1:9222")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ip netns exec veil-e2e-forward");
    let mut up = BufReader::new(forward.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), up.next_line())
        .await
        .expect("the forwarder starts");
    assert_eq!(line.ok().flatten().as_deref(), Some("listening"));
    let (web, plain_web) = (with_tcp.web(), without_tcp.web());
    let browser = Chromium::launch_with(
        &Launch {
            prefix: ["ip", "netns", "exec", &ns.name]
                .map(str::to_owned)
                .to_vec(),
            endpoint: Some(devtools),
        },
        &[
            "--remote-debugging-port=9222",
            &format!("--unsafely-treat-insecure-origin-as-secure=http://{web},http://{plain_web}"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The control, meanwhile: the same browser, another tab, an SFU without ICE-TCP.
    let control = joined(&browser, plain_web, &without_tcp).await;
    let control_since = tokio::time::Instant::now();
    let page = joined(&browser, web, &with_tcp).await;

    // Alice publishes; each side counts what it decrypted of the other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let (mut audio, mut video) = (0usize, 0usize);
    let mut i = 0u32;
    let mut next_stats = tokio::time::Instant::now();
    let stats = loop {
        alice
            .publish_audio(&audio_frame(0, i), i * 960, (true, 30))
            .await
            .unwrap();
        if i.is_multiple_of(2) {
            let v = i / 2;
            alice
                .publish_video(&video_frame(0, v), v * 3000, v.is_multiple_of(10))
                .await
                .unwrap();
        }
        i += 1;
        let tick = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = &mut tick => break,
                f = alice.next_frame() => {
                    let f = f.expect("alice's room open");
                    if f.participant == "bob" {
                        match f.kind {
                            MediaKind::Audio => audio += 1,
                            MediaKind::Video => video += 1,
                        }
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= next_stats {
            next_stats += Duration::from_millis(500);
            let s = page.eval("window.veil.stats()").await.unwrap();
            if audio >= 50 && video >= 10 && decrypted(&s) >= 50 {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alice decrypted {audio} audio and {video} video frames of bob's; bob's page: \
                 {s:#}\nconsole: {:#?}\nSFU: {}",
                page.console(),
                with_tcp.metrics_text().await
            );
        }
    };
    assert_eq!(failures(&stats), Vec::<(String, u64)>::new(), "{stats:#}");
    for (track, t) in &alice.stats().received {
        assert!(
            t.decrypt_failures.is_empty(),
            "{track}: {:?}",
            t.decrypt_failures
        );
    }
    // Chromium's connection is an ICE-TCP stream (it opens one from each of its active
    // candidates; one it does not use would be closed unclaimed after 10 s, SFU-TCP-03); the
    // UDP it tried was dropped.
    let text = with_tcp.metrics_text().await;
    let streams = metric(&text, "veil_sfu_tcp_streams").unwrap_or(0.0);
    assert!(streams >= 1.0, "{text}");
    let dropped = ns.udp_dropped();
    assert!(dropped > 0, "no UDP was dropped: the rule tested nothing");
    println!(
        "udp_blocked: chromium decrypted {} frames of alice's, alice {audio} audio and {video} \
         video frames of bob's; {streams} TCP streams open; {dropped} UDP packets dropped",
        decrypted(&stats)
    );
    // The control's connection never came up (the call above took seconds), and the SFU
    // without ICE-TCP saw no stream.
    tokio::time::sleep_until(control_since + CONTROL_WAIT).await;
    let state = control
        .eval("window.veil.state.pc.connectionState")
        .await
        .unwrap();
    assert_ne!(state.as_str(), Some("connected"), "the control connected");
    let text = without_tcp.metrics_text().await;
    assert_eq!(metric(&text, "veil_sfu_tcp_streams"), Some(0.0), "{text}");
    println!("udp_blocked: the control page's connection after {CONTROL_WAIT:?}: {state}");
    let _ = alice.leave().await;
}

/// How long the control page is given to connect without ICE-TCP (the page over ICE-TCP
/// connects and decrypts in about 3 s).
const CONTROL_WAIT: Duration = Duration::from_secs(12);

/// The room link of `server`'s page at `web` for bob, opened in a new tab, once the page has
/// joined (signalling done; the media connection may still be coming up).
async fn joined(browser: &Chromium, web: SocketAddr, server: &Server) -> Page {
    let link = veil_server::web::room_link(web, "browser", &server.token("browser", "bob"));
    let page = browser.open(&format!("{link}&probe=1")).await.unwrap();
    if let Err(e) = page
        .wait_for("window.veil && window.veil.ready", Duration::from_secs(30))
        .await
    {
        panic!(
            "the page did not join: {e}\nerrors: {:?}\nconsole: {:#?}",
            page.eval("window.veil && window.veil.state.errors").await,
            page.console()
        );
    }
    page
}

fn transforms<'a>(
    s: &'a serde_json::Value,
    side: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    s["transforms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |t| t["side"].as_str() == Some(side))
}

/// Frames the page's receive transforms decrypted.
fn decrypted(s: &serde_json::Value) -> u64 {
    transforms(s, "recv")
        .map(|t| t["decrypted"].as_u64().unwrap_or(0))
        .sum()
}

/// Every decrypt failure of the page's receive transforms, by reason.
fn failures(s: &serde_json::Value) -> Vec<(String, u64)> {
    transforms(s, "recv")
        .flat_map(|t| t["failures"].as_object().cloned().unwrap_or_default())
        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
