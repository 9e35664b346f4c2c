//! A browser that stays while native guests come and go one after another (specs/sfu.md
//! SFU-EDGE-16, SFU-FWD-07; specs/browser.md §4): each guest's audio and video reach the page on
//! the transceivers the previous guest's used, so its session keeps the same number of
//! transceivers; the page's worker decrypts every guest's frames under the guest's own track
//! names, with no failure.
//!
//! Chromium is `$VEIL_CHROMIUM` or `chromium` on the PATH (`.ci/run` installs Debian's).

use std::time::Duration;

use serde_json::Value;
use veil_testkit::browser::Chromium;
use veil_testkit::server::InProcess;

use crate::browser::{Native, ROOM, failures, open, stats, transforms};

const WAIT: Duration = Duration::from_secs(60);

/// The SFU track names the page knows `publisher` by.
async fn tracks_of(page: &veil_testkit::browser::Page, publisher: &str) -> Vec<String> {
    let v = page
        .eval(&format!(
            "[...window.veil.state.tracks].filter(([, t]) => t.publisher === {publisher:?}).map(([n]) => n)"
        ))
        .await
        .unwrap();
    serde_json::from_value(v).unwrap_or_default()
}

/// Frames of `kind` the page's receive transforms decrypted on `tracks`.
fn decrypted_on(s: &Value, tracks: &[String], kind: &str) -> u64 {
    transforms(s, "recv")
        .filter(|t| t["kind"].as_str() == Some(kind))
        .filter(|t| tracks.iter().any(|n| t["track"].as_str() == Some(n)))
        .map(|t| t["decrypted"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_decrypts_every_guest_on_the_transceivers_the_previous_ones_used() {
    let server = InProcess::start("guests", |cfg| {
        cfg.kds.departure_grace = Duration::from_secs(2);
    })
    .await;
    let web = server.bound.web.expect("the web listener");
    let token = |who: &str| server.token(ROOM, who, Duration::from_secs(600));
    let browser = Chromium::launch(&[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let page = open(&browser, web, &token("bob")).await;
    let saved = tempfile::tempdir().unwrap();
    let mut transceivers = Vec::new();
    for round in 0..3 {
        let guest = format!("guest{round}");
        let native = Native::start_with(&server.url, &token(&guest), saved.path(), &[]);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let names = tracks_of(&page, &guest).await;
            let s = stats(&page).await;
            let (video, audio) = (
                decrypted_on(&s, &names, "video"),
                decrypted_on(&s, &names, "audio"),
            );
            if video >= 20 && audio >= 20 {
                assert_eq!(failures(&s), vec![], "round {round}: {s:#}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {guest}'s tracks {names:?} gave {video} video and {audio} \
                 audio frames\nstats: {s:#}\nconsole: {:#?}\n{guest}: {}",
                page.console(),
                native.output()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        transceivers.push(
            page.eval("window.veil.state.pc.getTransceivers().length")
                .await
                .unwrap()
                .as_u64()
                .unwrap(),
        );
        native.stop();
        // The guest is gone for the page too before the next one comes.
        page.wait_for(
            "window.veil.state.status && window.veil.state.status.members.length === 1",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: {guest} did not leave: {e}"));
    }
    // bob's camera and microphone, and one audio and one video transceiver for whoever visits.
    assert_eq!(transceivers, [4, 4, 4]);
}
