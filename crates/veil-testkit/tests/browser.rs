//! The headless-Chromium driver in real Chromium (`$VEIL_CHROMIUM`, or Debian's `chromium`;
//! `.ci/run` installs it), against a page served from loopback by a few lines of HTTP here:
//! values and awaited promises, the fake camera, exceptions, screenshots, failed loads and a
//! browser that goes away.
#![cfg(feature = "browser")]

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use veil_testkit::browser::{BrowserError, Chromium, Page};

const PAGE: &str = r#"<!doctype html><title>veil testkit</title>
<body style="margin:0;background:#0080ff">
<script>console.log('page says', 42); window.loaded = true;</script>"#;

/// Serve [`PAGE`] at `/` (and 404 elsewhere) on a loopback port; returns the page's URL.
async fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if request.starts_with(b"GET / ") {
                    ("200 OK", PAGE)
                } else {
                    ("404 Not Found", "")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

/// Chromium, or a panic whose text says how to get one (`BrowserError`'s `Display`, where
/// `unwrap` would print its `Debug`).
async fn launch() -> Chromium {
    Chromium::launch(&[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn open() -> (Chromium, Page) {
    let chromium = launch().await;
    let page = chromium.open(&serve().await).await.unwrap();
    (chromium, page)
}

#[tokio::test]
async fn eval_returns_values_and_awaits_promises() {
    let (_chromium, page) = open().await;
    // `open` waited for the load: the page's script has run.
    assert_eq!(page.eval("window.loaded").await.unwrap(), true);
    assert_eq!(page.eval("1+1").await.unwrap(), 2);
    let later = "new Promise(r => setTimeout(() => r('later'), 50))";
    assert_eq!(page.eval(later).await.unwrap(), "later");
    let object = "({a: [1, 'x'], b: null, c: document.title})";
    assert_eq!(
        page.eval(object).await.unwrap(),
        json!({"a": [1, "x"], "b": null, "c": "veil testkit"})
    );
    assert_eq!(page.eval("undefined").await.unwrap(), json!(null));
    assert_eq!(page.eval("0/0").await.unwrap(), "NaN");
    let console = page.console();
    assert!(
        console.contains(&"console.log: page says 42".to_owned()),
        "{console:?}"
    );
}

#[tokio::test]
async fn wait_for_polls_until_truthy_or_names_the_last_value() {
    let (_chromium, page) = open().await;
    page.eval("setTimeout(() => { window.late = 'here'; }, 300); null")
        .await
        .unwrap();
    let late = page.wait_for("window.late", Duration::from_secs(5)).await;
    assert_eq!(late.unwrap(), "here");

    let err = page
        .wait_for("window.never ?? 0", Duration::from_millis(500))
        .await
        .unwrap_err();
    match &err {
        BrowserError::WaitTimeout { expr, last, .. } => {
            assert_eq!(expr, "window.never ?? 0");
            assert_eq!(*last, 0);
        }
        other => panic!("expected a wait timeout, got {other}"),
    }
    assert!(err.to_string().contains("window.never ?? 0"), "{err}");
}

#[tokio::test]
async fn the_fake_camera_gives_a_live_video_track() {
    let (_chromium, page) = open().await;
    // Not awaited: the track arrives later, and `wait_for` sees it.
    let ask = "navigator.mediaDevices.getUserMedia({video: true})\
               .then(s => { window.track = s.getVideoTracks()[0]; }); null";
    page.eval(ask).await.unwrap();
    let live = "window.track?.readyState === 'live' && window.track.kind";
    let kind = page.wait_for(live, Duration::from_secs(10)).await;
    assert_eq!(kind.unwrap(), "video", "console: {:?}", page.console());
    let width = page.eval("window.track.getSettings().width").await.unwrap();
    assert!(width.as_u64().is_some_and(|w| w > 0), "width {width}");
}

#[tokio::test]
async fn exceptions_and_rejections_are_js_errors() {
    let (_chromium, page) = open().await;
    match page.eval("throw new Error('boom')").await {
        Err(BrowserError::Js(text)) => assert!(text.contains("Error: boom"), "{text}"),
        other => panic!("expected a JS error, got {other:?}"),
    }
    match page.eval("Promise.reject(new TypeError('nope'))").await {
        Err(BrowserError::Js(text)) => assert!(text.contains("TypeError: nope"), "{text}"),
        other => panic!("expected a JS error, got {other:?}"),
    }
    match page.eval("throw 'a string'").await {
        Err(BrowserError::Js(text)) => assert_eq!(text, "a string"),
        other => panic!("expected a JS error, got {other:?}"),
    }
    // An exception stops a wait at once.
    let wait = page.wait_for("window.missing.thing", Duration::from_secs(30));
    assert!(matches!(wait.await, Err(BrowserError::Js(_))));

    // An uncaught exception outside any eval lands in the console.
    page.eval("setTimeout(() => { throw new Error('later boom'); }); null")
        .await
        .unwrap();
    let seen = |console: &[String]| console.iter().any(|l| l.contains("Error: later boom"));
    for _ in 0..50 {
        if seen(&page.console()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let console = page.console();
    assert!(seen(&console), "{console:?}");
    assert!(
        console.iter().any(|l| l.starts_with("uncaught: ")),
        "{console:?}"
    );
}

/// The width and height in a PNG's IHDR chunk, which follows the 8-byte signature.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24, "{} bytes are no PNG", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn a_screenshot_is_a_png_of_the_size_asked_for() {
    let (_chromium, page) = open().await;
    assert_eq!(
        png_size(&page.screenshot(320, 200).await.unwrap()),
        (320, 200)
    );
    assert_eq!(
        png_size(&page.screenshot(641, 367).await.unwrap()),
        (641, 367)
    );
    assert_eq!(page.eval("innerWidth").await.unwrap(), 641);
}

#[tokio::test]
async fn failed_loads_closed_tabs_and_a_dropped_browser_are_errors() {
    let chromium = launch().await;
    // A loopback port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    match chromium.open(&refused).await {
        Err(BrowserError::Navigation { url, error }) => {
            assert_eq!(url, refused);
            assert!(error.contains("ERR_CONNECTION_REFUSED"), "{error}");
        }
        Err(other) => panic!("expected a navigation error, got {other}"),
        Ok(_) => panic!("{refused} loaded"),
    }

    // Two tabs on the one socket, each in its own session.
    let url = serve().await;
    let (one, two) = (
        chromium.open(&url).await.unwrap(),
        chromium.open(&url).await.unwrap(),
    );
    one.eval("window.name = 'one'").await.unwrap();
    two.eval("window.name = 'two'").await.unwrap();
    assert_eq!(one.eval("window.name").await.unwrap(), "one");
    one.close().await.unwrap();
    assert_eq!(two.eval("window.name").await.unwrap(), "two");

    drop(chromium);
    match two.eval("1").await {
        Err(BrowserError::Closed(why)) => assert!(why.contains("dropped"), "{why}"),
        other => panic!("expected a closed connection, got {other:?}"),
    }
}
