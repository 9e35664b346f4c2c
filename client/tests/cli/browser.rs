//! Browsers in a Veil call (specs/browser.md): the server in this process serves the page, two
//! headless Chromiums with fake camera and microphone open it, and a native `veil join`
//! publishes real VP8 and Opus (vectors/chromium-media), all in one room.
//!
//! Checked: each browser decodes the other browser's and the native participant's video and
//! audio with no decrypt failure in its worker; the native participant decrypts both
//! browsers' frames (and saves their VP8); when one browser leaves, the others reach the new
//! epoch without a failure and show the same safety code; a browser that joins late cannot
//! decrypt anything the SFU recorded before it joined; and the SFU's tap finds none of the
//! plaintext the browsers encrypted. The test also takes the screenshot shown in the README
//! (`VEIL_SCREENSHOT=docs/browser-call.png` writes it there).
//!
//! Chromium is `$VEIL_CHROMIUM` or `chromium` on the PATH (`.ci/run` installs Debian's).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use veil_sfu::Tap;
use veil_sfu::routing::MediaKind;
use veil_testkit::browser::{Chromium, Page};
use veil_testkit::server::InProcess;

use crate::common::{Kill, veil};

pub(crate) const ROOM: &str = "browsers";
const WAIT: Duration = Duration::from_secs(60);

/// `veil join` as alice, its stdout lines collected as they come.
pub(crate) struct Native {
    child: Kill,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Native {
    fn start(url: &str, token: &str, save: &std::path::Path) -> Self {
        Self::start_with(url, token, save, &[])
    }

    /// [`start`](Self::start) with more `veil join` arguments (tls.rs: `--ca-file`).
    pub(crate) fn start_with(
        url: &str,
        token: &str,
        save: &std::path::Path,
        extra: &[&std::ffi::OsStr],
    ) -> Self {
        // Real VP8 and Opus (Chromium's, vectors/chromium-media): browsers must decode them.
        let media =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors/chromium-media");
        let mut child = veil()
            .args(["join", "--room", ROOM, "--url", url, "--token", token])
            .arg("--video")
            .arg(media.join("camera-160x90.ivf"))
            .arg("--audio")
            .arg(media.join("microphone.ogg"))
            .arg("--save")
            .arg(save)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Self {
            child: Kill(child),
            lines,
        }
    }

    pub(crate) fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The last status line's value after `key ` (e.g. `safety`).
    pub(crate) fn last(&self, key: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().rev().find_map(|l| {
            l.split(" | ")
                .find_map(|part| part.strip_prefix(&format!("{key} ")))
                .map(str::to_owned)
        })
    }

    /// Ctrl-C, as a person ends `veil join`; the whole output once it has left (within 30 s).
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "veil join did not leave within 30 s of Ctrl-C:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let out = self.output();
        assert!(status.success(), "veil join failed: {status}\n{out}");
        out
    }
}

pub(crate) async fn open(browser: &Chromium, web: std::net::SocketAddr, token: &str) -> Page {
    open_link(browser, &veil_server::web::room_link(web, ROOM, token)).await
}

/// Open the room link `link` and wait until the page has joined.
pub(crate) async fn open_link(browser: &Chromium, link: &str) -> Page {
    let page = browser.open(&format!("{link}&probe=1")).await.unwrap();
    if let Err(e) = page
        .wait_for("window.veil && window.veil.ready", WAIT)
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

pub(crate) async fn stats(page: &Page) -> Value {
    page.eval("window.veil.stats()").await.unwrap()
}

/// Wait until `page` decodes video and audio from each of `from` and its worker decrypted
/// them with no failure; the stats then.
pub(crate) async fn decoding(
    page: &Page,
    from: &[&str],
    metrics: Option<std::net::SocketAddr>,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = stats(page).await;
        let ok = from.iter().all(|who| {
            let video = inbound(&s, who, "video");
            let audio = inbound(&s, who, "audio");
            video.is_some_and(|v| v["framesDecoded"].as_u64().unwrap_or(0) >= 20)
                && audio.is_some_and(|a| a["totalSamplesReceived"].as_u64().unwrap_or(0) > 0)
        });
        if ok && decrypted(&s) > 0 {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no media from {from:?} in {WAIT:?}; stats: {s:#}\nconsole: {:#?}\nSFU: {}",
            page.console(),
            sfu_metrics(metrics).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The SFU's routing counters, for a failure's message.
async fn sfu_metrics(addr: Option<std::net::SocketAddr>) -> String {
    let Some(addr) = addr else {
        return "(no metrics listener)".into();
    };
    match veil_testkit::server::scrape_metrics(addr).await {
        Ok(text) => text
            .lines()
            .filter(|l| l.starts_with("veil_sfu_") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(GET /metrics: {e})"),
    }
}

fn inbound<'a>(s: &'a Value, publisher: &str, kind: &str) -> Option<&'a Value> {
    s["inbound"]
        .as_array()?
        .iter()
        .find(|i| i["publisher"].as_str() == Some(publisher) && i["kind"].as_str() == Some(kind))
}

/// Frames the page's receive transforms decrypted.
fn decrypted(s: &Value) -> u64 {
    transforms(s, "recv")
        .map(|t| t["decrypted"].as_u64().unwrap_or(0))
        .sum()
}

pub(crate) fn transforms<'a>(s: &'a Value, side: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    s["transforms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |t| t["side"].as_str() == Some(side))
}

/// Every decrypt failure of the page's receive transforms, by reason.
pub(crate) fn failures(s: &Value) -> Vec<(String, u64)> {
    transforms(s, "recv")
        .flat_map(|t| t["failures"].as_object().cloned().unwrap_or_default())
        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_a_native_participant_share_an_encrypted_call() {
    // RUST_LOG=veil_sfu=debug shows the server's side of a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tap = Tap::new(1 << 17);
    let server = InProcess::start("browser", |cfg| {
        cfg.kds.departure_grace = Duration::from_secs(2);
        cfg.sfu.as_mut().expect("loopback runs the SFU").tap = Some(tap.clone());
        cfg.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let web = server.bound.web.expect("the web listener");
    let metrics = server.bound.metrics;
    let token = |who: &str| server.token(ROOM, who, Duration::from_secs(600));

    // Every packet the SFU receives, from before anyone joins.
    let mut taps = tap.subscribe();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    tokio::spawn(async move {
        loop {
            match taps.recv().await {
                Ok(p) => rec.lock().unwrap().push(p),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the tap recorder lagged by {n} packets")
                }
                Err(_) => return,
            }
        }
    });

    let saved = tempfile::tempdir().unwrap();
    let alice = Native::start(&server.url, &token("alice"), saved.path());
    let (b1, b2) = tokio::join!(Chromium::launch(&[]), Chromium::launch(&[]));
    let (b1, b2) = (
        b1.unwrap_or_else(|e| panic!("{e}")),
        b2.unwrap_or_else(|e| panic!("{e}")),
    );
    let bob = open(&b1, web, &token("bob")).await;
    let carol = open(&b2, web, &token("carol")).await;

    // Each browser decodes the other browser and the native participant.
    let bob_stats = decoding(&bob, &["alice", "carol"], metrics).await;
    let carol_stats = decoding(&carol, &["alice", "bob"], metrics).await;
    for (who, s) in [("bob", &bob_stats), ("carol", &carol_stats)] {
        assert_eq!(
            failures(s),
            vec![],
            "{who}'s worker failed to decrypt: {s:#}"
        );
        let sent: u64 = transforms(s, "send")
            .map(|t| t["encrypted"].as_u64().unwrap_or(0))
            .sum();
        assert!(sent > 0, "{who} encrypted nothing: {s:#}");
        assert_eq!(
            s["status"]["members"].as_array().map(Vec::len),
            Some(3),
            "{s:#}"
        );
    }
    let code = bob_stats["status"]["safetyCode"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        carol_stats["status"]["safetyCode"].as_str(),
        Some(code.as_str())
    );

    // The screenshot of a three-party call (README).
    bob.eval("document.querySelector('#toggle-stats').click()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let png = bob.screenshot(1280, 720).await.unwrap();
    let shot = std::env::var("VEIL_SCREENSHOT").map_or_else(
        |_| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-call.png"),
        std::path::PathBuf::from,
    );
    std::fs::write(&shot, png).unwrap();

    // Carol leaves: bob and alice reach the next epoch, with one code, and no failure.
    let epoch_before = bob_stats["status"]["epoch"].as_u64().unwrap();
    carol.eval("window.veil.leave()").await.unwrap();
    let after = bob
        .wait_for(
            &format!(
                "window.veil.state.status && window.veil.state.status.epoch > {epoch_before} \
                 && window.veil.state.status.members.length === 2"
            ),
            WAIT,
        )
        .await;
    after.unwrap_or_else(|e| panic!("bob did not see carol leave: {e}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bob_after = stats(&bob).await;
    assert_eq!(failures(&bob_after), vec![], "{bob_after:#}");
    let new_code = bob_after["status"]["safetyCode"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_code, code, "the safety code changes with the epoch");
    let deadline = tokio::time::Instant::now() + WAIT;
    while alice.last("safety").as_deref() != Some(new_code.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never showed bob's safety code {new_code}:\n{}",
            alice.output()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Bob keeps decoding alice after the switch.
    let alice_frames = inbound(&bob_after, "alice", "video").unwrap()["framesDecoded"]
        .as_u64()
        .unwrap();
    bob.wait_for(
        &format!(
            "window.veil.stats().then(s => s.inbound.some(i => i.publisher === 'alice' \
             && i.kind === 'video' && i.framesDecoded > {alice_frames} + 20))"
        ),
        WAIT,
    )
    .await
    .unwrap();

    // Bob's audio as the SFU recorded it before dave joins: whole SFrame frames (Opus is one
    // frame per packet).
    let before_dave: Vec<String> = recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.publisher == "bob" && p.kind == MediaKind::Audio)
        .map(|p| hex(&p.payload))
        .take(100)
        .collect();
    assert!(
        before_dave.len() >= 50,
        "the tap recorded {} of bob's audio packets",
        before_dave.len()
    );
    let b3 = Chromium::launch(&[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dave = open(&b3, web, &token("dave")).await;
    decoding(&dave, &["alice", "bob"], metrics).await;
    let tried = dave
        .eval(&format!(
            "window.veil.tryDecrypt({})",
            serde_json::to_string(&before_dave).unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(
        tried["decrypted"].as_u64(),
        Some(0),
        "dave decrypted the past: {tried}"
    );
    let dave_stats = stats(&dave).await;
    assert_eq!(failures(&dave_stats), vec![], "{dave_stats:#}");

    // Simulcast from browsers (SFU-NEG-03): bob publishes three layers, and renegotiated since
    // (carol's tracks came and went, dave's came), yet dave, who came last, decodes his video,
    // and bob decodes dave's. Dave starts on the first layer (q) and can choose another: h.
    let bob_now = decoding(&bob, &["alice", "dave"], metrics).await;
    assert_eq!(failures(&bob_now), vec![], "{bob_now:#}");
    // Chromium turns its upper layers on as its estimate allows: wait for two.
    let by_rid = |s: &Value| -> Vec<(String, u64)> {
        transforms(s, "send")
            .filter(|t| t["kind"].as_str() == Some("video"))
            .flat_map(|t| t["byRid"].as_object().cloned().unwrap_or_default())
            .map(|(rid, n)| (rid, n.as_u64().unwrap_or(0)))
            // "": frames encrypted before the page's first getStats told the worker the rids.
            .filter(|(rid, n)| *n > 0 && !rid.is_empty())
            .collect()
    };
    let mut layers = by_rid(&bob_now);
    let deadline = tokio::time::Instant::now() + WAIT;
    while layers.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's worker encrypted fewer than two layers: {layers:?}; outbound: {:#}",
            stats(&bob).await["outbound"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        layers = by_rid(&stats(&bob).await);
    }
    assert!(
        layers
            .iter()
            .all(|(rid, _)| ["q", "h", "f"].contains(&rid.as_str())),
        "bob's worker counts frames by rid: {layers:?}"
    );
    // The page asks for h (half the camera's size) on every subscription; asking for q then
    // narrows what dave decodes.
    let h = dave
        .wait_for(
            "window.veil.stats().then(s => s.inbound.find(i => i.publisher === 'bob' \
             && i.kind === 'video' && i.width > 160 && i.framesDecoded > 0))",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("dave never decoded bob's h layer, the page's choice: {e}"));
    let h_width = h["width"].as_u64().unwrap();
    dave.eval("window.veil.setLayer('bob', 'q')").await.unwrap();
    let q = dave
        .wait_for(
            &format!(
                "window.veil.stats().then(s => s.inbound.find(i => i.publisher === 'bob' \
                 && i.kind === 'video' && i.width > 0 && i.width < {h_width}))"
            ),
            WAIT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!("dave never decoded a narrower layer of bob after asking for q: {e}")
        });
    eprintln!(
        "dave decodes bob at {h_width} wide on h, {}×{} on q; bob encrypts {layers:?}",
        q["width"], q["height"]
    );

    // The SFU saw none of the plaintext the browsers encrypted.
    let mut samples = Vec::new();
    for page in [&bob, &dave] {
        let s = stats(page).await;
        for x in s["samples"].as_array().unwrap() {
            samples.push(x.as_str().unwrap().to_owned());
        }
    }
    let carol_samples = carol_stats["samples"].as_array().unwrap().len();
    assert!(
        samples.len() + carol_samples > 20,
        "too few plaintext samples: {}",
        samples.len()
    );
    let payloads: Vec<String> = recorded
        .lock()
        .unwrap()
        .iter()
        .map(|p| hex(&p.payload))
        .collect();
    assert!(
        payloads.len() > 1000,
        "the tap recorded {} packets",
        payloads.len()
    );
    for s in &samples {
        assert!(
            !payloads.iter().any(|p| p.contains(s.as_str())),
            "the SFU saw plaintext {s}"
        );
    }

    // The native participant decrypted both browsers' frames and saved their VP8.
    let out = alice.stop();
    assert!(out.contains("decrypt failures 0"), "{out}");
    for who in ["bob", "carol"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("saved {who}:")))
            .unwrap_or_else(|| panic!("alice saved nothing of {who}:\n{out}"));
        assert!(line.contains("video frames"), "{line}");
        let ivf = std::fs::read(saved.path().join(format!("{who}.ivf"))).unwrap();
        // An IVF of VP8 whose first frame is a key frame (start code 9d 01 2a).
        assert_eq!(&ivf[..4], b"DKIF", "{who}.ivf");
        assert_eq!(&ivf[8..12], b"VP80", "{who}.ivf");
        assert_eq!(
            &ivf[32 + 12 + 3..32 + 12 + 6],
            &[0x9d, 0x01, 0x2a],
            "{who}.ivf"
        );
    }
    let final_line = out.lines().rev().find(|l| l.starts_with("room ")).unwrap();
    assert!(final_line.contains("decrypt failures 0"), "{final_line}");
}

/// `veil demo --browser` prints links a person opens; from one, a browser joins the call and
/// decodes the native participant's video and audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_demo_prints_a_link_that_joins_its_call() {
    let mut child = veil()
        .args([
            "demo",
            "--browser",
            "--web-listen",
            "127.0.0.1:0",
            "--seconds",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Kill)
        .unwrap();
    let out = child.0.stdout.take().unwrap();
    // Read the link, then stop reading: the demo keeps running with nobody reading its output.
    let link = tokio::task::spawn_blocking(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.trim().strip_prefix("as bob: ").map(str::to_owned))
    })
    .await
    .unwrap()
    .expect("veil demo --browser prints a link for bob");
    assert!(link.contains("/room/demo#token="), "{link}");
    let browser = Chromium::launch(&[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = browser.open(&format!("{link}&probe=1")).await.unwrap();
    page.wait_for("window.veil && window.veil.ready", WAIT)
        .await
        .unwrap_or_else(|e| panic!("the demo page did not join: {e}\n{:#?}", page.console()));
    let s = decoding(&page, &["alice"], None).await;
    assert_eq!(failures(&s), vec![], "{s:#}");
    assert_eq!(
        s["status"]["members"].as_array().map(Vec::len),
        Some(2),
        "{s:#}"
    );
}
