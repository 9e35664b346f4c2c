//! A small headless-Chromium driver over the DevTools protocol (CDP), for tests that open Veil's
//! web page in a real browser, read values from it and take screenshots.
//!
//! [`Chromium::launch`] starts `$VEIL_CHROMIUM`, or `chromium` on the PATH (Debian's package),
//! headless with a fake camera and microphone and a profile directory of its own, and connects
//! one websocket to its browser endpoint. [`Chromium::open`] opens a tab and returns a [`Page`].
//! Every page talks over that one socket in a flattened session (`sessionId` on each message):
//! one I/O task owns the socket, writes the commands, hands each reply to the call that waits
//! for its `id`, and routes events by `sessionId` to their page (its console lines and its
//! lifecycle events).
//!
//! ```no_run
//! # async fn demo() -> Result<(), veil_testkit::browser::BrowserError> {
//! use std::time::Duration;
//! use veil_testkit::browser::Chromium;
//!
//! let chromium = Chromium::launch(&[]).await?;
//! let page = chromium.open("http://127.0.0.1:8080/").await?;
//! assert_eq!(page.eval("1 + 1").await?, 2);
//! page.wait_for("window.joined === true", Duration::from_secs(10)).await?;
//! let png = page.screenshot(1280, 720).await?;
//! # let _ = png;
//! # Ok(()) }
//! ```
//!
//! Each command must be answered within 30 s (an awaited promise in [`Page::eval`] included),
//! and a page must load within 30 s. Dropping the [`Chromium`] kills the browser and removes
//! its profile directory; its pages then answer [`BrowserError::Closed`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::{self, Message};

/// How long Chromium may take to print its DevTools endpoint.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command may wait for its reply, and a page for its `load` event.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Page::wait_for`] evaluates its expression.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How many of Chromium's last stderr lines a launch failure quotes.
const STDERR_TAIL: usize = 20;
/// Events a page keeps for a waiter that has not read them yet.
const EVENT_BACKLOG: usize = 1024;

/// The flags every launch uses; [`Chromium::launch`] adds the profile directory and the
/// caller's own.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    // A camera and a microphone without hardware, and no permission prompt for them.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    // ICE candidates on 127.0.0.1, as loopback tests need, not hidden behind mDNS names.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    // The machines have no outside network: no update, sync or field-trial fetches that fail
    // at every start.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
];

/// What went wrong, grouped by who is at fault: the machine (no Chromium, or one that does not
/// start or goes away), the page under test, or Chromium's answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrowserError {
    /// The Chromium binary could not be started.
    #[error(
        "cannot start {binary} ({source}): install Debian's chromium (apt install chromium) or \
         set VEIL_CHROMIUM to a Chromium binary"
    )]
    Spawn {
        /// The binary tried: `$VEIL_CHROMIUM`, or `chromium`.
        binary: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// Chromium started but gave no DevTools endpoint.
    #[error(
        "{binary} gave no DevTools endpoint: {detail} (set VEIL_CHROMIUM to a working Chromium, \
         or apt install chromium)"
    )]
    Launch {
        /// The binary started.
        binary: String,
        /// What happened instead, with Chromium's last stderr lines.
        detail: String,
    },
    /// The websocket to Chromium's DevTools endpoint could not be opened.
    #[error("cannot connect to Chromium's DevTools endpoint {url}")]
    Connect {
        /// The endpoint Chromium printed.
        url: String,
        /// Why the handshake failed.
        #[source]
        source: tungstenite::Error,
    },
    /// The connection to Chromium is gone: it exited or crashed, or the [`Chromium`] was dropped.
    #[error("the connection to Chromium is gone: {0}")]
    Closed(String),
    /// The page's JavaScript threw, or the awaited promise was rejected: the exception's text
    /// (an `Error`'s message and stack).
    #[error("JavaScript threw: {0}")]
    Js(String),
    /// A page could not be loaded.
    #[error("cannot load {url}: {error}")]
    Navigation {
        /// The page asked for.
        url: String,
        /// Chromium's reason, such as `net::ERR_CONNECTION_REFUSED`.
        error: String,
    },
    /// [`Page::wait_for`]'s expression stayed falsy.
    #[error("`{expr}` was not truthy within {timeout:?}; its last value: {last}")]
    WaitTimeout {
        /// The expression polled.
        expr: String,
        /// How long it was polled.
        timeout: Duration,
        /// Its value at the last poll.
        last: Value,
    },
    /// Chromium answered a command with an error.
    #[error("Chromium refused {method}: {message}")]
    Protocol {
        /// The command, such as `Page.captureScreenshot`.
        method: String,
        /// Chromium's error message, or what was wrong with its reply.
        message: String,
    },
    /// Chromium did not answer a command, or a page did not load, in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
}

/// A headless Chromium: the child process (killed when this is dropped), its profile directory
/// (removed when this is dropped) and the one websocket to its browser endpoint.
pub struct Chromium {
    conn: Arc<Conn>,
    /// The task that owns the websocket.
    io: JoinHandle<()>,
    child: Child,
    /// The profile directory, removed once `child` is dead (see `Drop`).
    profile: PathBuf,
}

/// Where Chromium runs, when not plainly in this process's network namespace
/// ([`Chromium::launch_with`]).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Words run before the binary, e.g. `["ip", "netns", "exec", "<name>"]`.
    pub prefix: Vec<String>,
    /// Connect to this address instead of the host and port of the endpoint Chromium prints
    /// (in another namespace, its endpoint is on that namespace's loopback: a forwarder there
    /// listens here).
    pub endpoint: Option<std::net::SocketAddr>,
}

impl Chromium {
    /// [`Chromium::launch`], run after `how.prefix` and reached at `how.endpoint`.
    ///
    /// # Errors
    /// As [`Chromium::launch`].
    pub async fn launch_with(how: &Launch, extra_args: &[&str]) -> Result<Chromium, BrowserError> {
        Self::start(how, extra_args).await
    }

    /// Launch `$VEIL_CHROMIUM`, or `chromium` on the PATH, headless: with a fake camera and
    /// microphone and no prompt for them, loopback ICE candidates without mDNS, autoplay, no
    /// background networking, `--remote-debugging-port=0` and a new profile directory, then
    /// `extra_args`. Waits up to 30 s for the DevTools endpoint Chromium prints on stderr and
    /// connects to it. A failure's `Display` says how to get a Chromium (`apt install chromium`,
    /// or `VEIL_CHROMIUM`): panic with it (`panic!("{e}")`) rather than `unwrap`'s `Debug`.
    pub async fn launch(extra_args: &[&str]) -> Result<Chromium, BrowserError> {
        Self::start(&Launch::default(), extra_args).await
    }

    async fn start(how: &Launch, extra_args: &[&str]) -> Result<Chromium, BrowserError> {
        let binary = std::env::var("VEIL_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let launch_error = |detail: String| BrowserError::Launch {
            binary: binary.clone(),
            detail,
        };
        let profile = tempfile::Builder::new()
            .prefix("veil-chromium-")
            .tempdir()
            .map_err(|e| launch_error(format!("cannot make a profile directory: {e}")))?;
        let mut command = match how.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_args)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BrowserError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let Some(stderr) = child.stderr.take() else {
            return Err(launch_error("its stderr was not piped".to_owned()));
        };

        let mut lines = BufReader::new(stderr).lines();
        let mut tail = VecDeque::new();
        let found = timeout(LAUNCH_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            None
        })
        .await;
        let tail = match Vec::from(tail).join("\n") {
            tail if tail.is_empty() => "(none)".to_owned(),
            tail => tail,
        };
        let url = match found {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = timeout(Duration::from_secs(5), child.wait()).await;
                let status = match status {
                    Ok(Ok(status)) => status.to_string(),
                    _ => "still running".to_owned(),
                };
                return Err(launch_error(format!(
                    "it closed stderr ({status}); its last lines:\n{tail}"
                )));
            }
            Err(_) => {
                return Err(launch_error(format!(
                    "none within {LAUNCH_TIMEOUT:?}; its last stderr lines:\n{tail}"
                )));
            }
        };
        // Keep reading, or Chromium blocks once the pipe is full.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let url = match (how.endpoint, url.strip_prefix("ws://")) {
            (Some(at), Some(rest)) => {
                format!("ws://{at}{}", rest.find('/').map_or("", |i| &rest[i..]))
            }
            _ => url,
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|source| BrowserError::Connect { url, source })?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (out, out_rx) = mpsc::unbounded_channel();
        let io = tokio::spawn(pump(ws, out_rx, routes.clone()));
        let conn = Arc::new(Conn {
            out,
            next_id: AtomicU64::new(1),
            routes,
        });
        Ok(Chromium {
            conn,
            io,
            child,
            // From here on removed by hand, once the browser is dead (see `Drop`).
            profile: profile.keep(),
        })
    }

    /// Open `url` in a new tab (`Target.createTarget`, then `Target.attachToTarget` with
    /// `flatten`), with the console recorded from the start, and wait for its `load` event.
    /// A page that cannot be loaded is [`BrowserError::Navigation`], and its tab is closed.
    pub async fn open(&self, url: &str) -> Result<Page, BrowserError> {
        let conn = &self.conn;
        let created = conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = string_field(&created, "targetId", "Target.createTarget")?;
        let attach = json!({"targetId": target_id, "flatten": true});
        let attached = conn.call(None, "Target.attachToTarget", attach).await?;
        let session_id = string_field(&attached, "sessionId", "Target.attachToTarget")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (events, events_rx) = broadcast::channel(EVENT_BACKLOG);
        let route = Route {
            console: console.clone(),
            events,
        };
        lock(&conn.routes)
            .sessions
            .insert(session_id.clone(), route);
        let page = Page {
            conn: conn.clone(),
            target_id,
            session_id,
            console,
        };
        match page.navigate(url, events_rx).await {
            Ok(()) => Ok(page),
            Err(e) => {
                let _ = page.close().await;
                Err(e)
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.io.abort();
        let _ = self.child.start_kill();
        // The browser's helper processes (renderer, GPU, network) outlive it by a moment and
        // write to the profile meanwhile, so one removal can fail or leave files behind: retry
        // until the browser is dead and the directory gone, 2 s at most.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let dead = !matches!(self.child.try_wait(), Ok(None));
            if dead && remove_dir(&self.profile) || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether `dir` is gone (removed now, or before).
fn remove_dir(dir: &Path) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// One tab, attached in its own flattened session on the browser's websocket. It stays usable
/// while its [`Chromium`] lives.
pub struct Page {
    conn: Arc<Conn>,
    target_id: String,
    session_id: String,
    console: Arc<Mutex<Vec<String>>>,
}

impl Page {
    /// Evaluate `expr` in the page (`Runtime.evaluate`), await it if it is a promise, and return
    /// its value as JSON. `undefined` is `null`; numbers JSON cannot hold (`NaN`, `Infinity`,
    /// `-0`) and BigInts are their text, such as `"NaN"` or `"12n"`. An exception, or a rejected
    /// promise, is [`BrowserError::Js`] with the exception's text; a value that cannot be sent
    /// as JSON (a DOM node, a function) is Chromium's [`BrowserError::Protocol`] error.
    pub async fn eval(&self, expr: &str) -> Result<Value, BrowserError> {
        let mut object = self.evaluate(expr).await?;
        Ok(remote_value(&mut object))
    }

    /// Evaluate `expr` as [`Page::eval`] does, every 200 ms, until its value is truthy (as
    /// JavaScript judges it), and return that value. After `timeout` it is
    /// [`BrowserError::WaitTimeout`] with the expression and its last value; an exception stops
    /// the wait at once (write `window.x?.y`, not `window.x.y`, for what is not there yet).
    pub async fn wait_for(&self, expr: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut object = self.evaluate(expr).await?;
            let done = truthy(&object);
            let value = remote_value(&mut object);
            if done {
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BrowserError::WaitTimeout {
                    expr: expr.to_owned(),
                    timeout,
                    last: value,
                });
            }
            sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// A PNG of the page with its viewport set to `width` × `height` CSS pixels at a device
    /// scale of 1 (`Emulation.setDeviceMetricsOverride`, which stays in force for the page),
    /// so the image is `width` × `height` pixels.
    pub async fn screenshot(&self, width: u32, height: u32) -> Result<Vec<u8>, BrowserError> {
        let metrics =
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", metrics)
            .await?;
        const METHOD: &str = "Page.captureScreenshot";
        let shot = self.call(METHOD, json!({"format": "png"})).await?;
        let data = string_field(&shot, "data", METHOD)?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| BrowserError::Protocol {
                method: METHOD.to_owned(),
                message: format!("its data is not base64: {e}"),
            })
    }

    /// What the page said so far, one line each, for test failure messages: its console calls
    /// (`console.log: hello 42`), uncaught exceptions (`uncaught: Error: boom …`) and the
    /// browser's own log entries, such as failed loads (`network error: …`).
    pub fn console(&self) -> Vec<String> {
        lock(&self.console).clone()
    }

    /// Close the tab (`Target.closeTarget`).
    pub async fn close(self) -> Result<(), BrowserError> {
        lock(&self.conn.routes).sessions.remove(&self.session_id);
        let close = json!({"targetId": self.target_id});
        self.conn.call(None, "Target.closeTarget", close).await?;
        Ok(())
    }

    /// Turn on the events the page records, go to `url` and wait for its `load` event.
    /// `events` was subscribed before the navigation, so the event cannot be missed.
    async fn navigate(
        &self,
        url: &str,
        mut events: broadcast::Receiver<Value>,
    ) -> Result<(), BrowserError> {
        for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(method, json!({})).await?;
        }
        self.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))
            .await?;
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = nav.get("errorText").and_then(Value::as_str) {
            return Err(BrowserError::Navigation {
                url: url.to_owned(),
                error: error.to_owned(),
            });
        }
        // A navigation within the document (a new #fragment) has no loader and no load event.
        let Some(loader) = nav.get("loaderId").cloned() else {
            return Ok(());
        };
        let loaded = async {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let params = &event["params"];
                        if event["method"] == "Page.lifecycleEvent"
                            && params["name"] == "load"
                            && params["loaderId"] == loader
                        {
                            return Ok(());
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Err(self.conn.closed()),
                }
            }
        };
        timeout(CALL_TIMEOUT, loaded)
            .await
            .map_err(|_| BrowserError::Timeout {
                what: format!("{url} to load"),
                timeout: CALL_TIMEOUT,
            })?
    }

    /// `Runtime.evaluate`, returning the value's `RemoteObject`.
    async fn evaluate(&self, expr: &str) -> Result<Value, BrowserError> {
        let params = json!({"expression": expr, "awaitPromise": true, "returnByValue": true});
        let mut reply = self.call("Runtime.evaluate", params).await?;
        if let Some(details) = reply.get("exceptionDetails") {
            return Err(BrowserError::Js(exception_text(details)));
        }
        Ok(reply.get_mut("result").map(Value::take).unwrap_or_default())
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.conn.call(Some(&self.session_id), method, params).await
    }
}

/// The sending half of the websocket, shared by the browser and its pages.
struct Conn {
    /// Commands for the I/O task, as JSON text.
    out: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    routes: Arc<Mutex<Routes>>,
}

/// Where the I/O task delivers what Chromium sends.
#[derive(Default)]
struct Routes {
    /// Replies awaited, by command id.
    pending: HashMap<u64, oneshot::Sender<Value>>,
    /// Pages, by session id.
    sessions: HashMap<String, Route>,
    /// Why the socket is gone, once it is.
    closed: Option<String>,
}

/// A page's share of the events.
struct Route {
    console: Arc<Mutex<Vec<String>>>,
    events: broadcast::Sender<Value>,
}

impl Conn {
    /// Send `method` (to a page's session, or to the browser) and wait for its result.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if let Some(why) = &routes.closed {
                return Err(BrowserError::Closed(why.clone()));
            }
            routes.pending.insert(id, tx);
        }
        if self.out.send(command.to_string()).is_err() {
            lock(&self.routes).pending.remove(&id);
            return Err(self.closed());
        }
        let mut reply = match timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(self.closed()),
            Err(_) => {
                lock(&self.routes).pending.remove(&id);
                return Err(BrowserError::Timeout {
                    what: format!("Chromium to answer {method}"),
                    timeout: CALL_TIMEOUT,
                });
            }
        };
        if let Some(error) = reply.get("error") {
            let mut message = error["message"].as_str().unwrap_or("").to_owned();
            if let Some(data) = error.get("data").and_then(Value::as_str) {
                message = format!("{message} ({data})");
            }
            return Err(BrowserError::Protocol {
                method: method.to_owned(),
                message,
            });
        }
        Ok(reply.get_mut("result").map(Value::take).unwrap_or_default())
    }

    fn closed(&self) -> BrowserError {
        let why = lock(&self.routes).closed.clone();
        BrowserError::Closed(why.unwrap_or_else(|| "the I/O task ended".to_owned()))
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The I/O task: write the commands, deliver what Chromium sends, until either side ends.
async fn pump(
    mut ws: Socket,
    mut out: mpsc::UnboundedReceiver<String>,
    routes: Arc<Mutex<Routes>>,
) {
    // Runs also when the task is aborted (the `Chromium` dropped): every waiter then fails.
    let mut guard = CloseOnDrop {
        routes: routes.clone(),
        why: "the Chromium was dropped".to_owned(),
    };
    guard.why = loop {
        tokio::select! {
            command = out.recv() => match command {
                Some(text) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break format!("cannot write to Chromium: {e}");
                    }
                }
                None => break "the Chromium was dropped".to_owned(),
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => deliver(&routes, text.as_str()),
                Some(Ok(Message::Close(_))) | None => {
                    break "Chromium closed the connection (did it exit or crash?)".to_owned();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("cannot read from Chromium: {e}"),
            },
        }
    };
}

/// Marks the connection closed and drops every waiter's sender.
struct CloseOnDrop {
    routes: Arc<Mutex<Routes>>,
    why: String,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        routes.closed.get_or_insert(std::mem::take(&mut self.why));
        routes.pending.clear();
        routes.sessions.clear();
    }
}

/// Hand a reply to its waiter, or an event to its page.
fn deliver(routes: &Mutex<Routes>, text: &str) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mut routes = lock(routes);
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        if let Some(waiter) = routes.pending.remove(&id) {
            let _ = waiter.send(message);
        }
        return;
    }
    if message["method"] == "Target.detachedFromTarget" {
        if let Some(session) = message["params"]["sessionId"].as_str() {
            routes.sessions.remove(session);
        }
        return;
    }
    let Some(route) = message["sessionId"]
        .as_str()
        .and_then(|session| routes.sessions.get(session))
    else {
        return;
    };
    match console_line(&message) {
        Some(line) => lock(&route.console).push(line),
        None => {
            let _ = route.events.send(message);
        }
    }
}

/// The console line an event makes, if it makes one.
fn console_line(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let args = params["args"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let args: Vec<String> = args.iter().map(remote_text).collect();
            let kind = params["type"].as_str().unwrap_or("log");
            Some(format!("console.{kind}: {}", args.join(" ")))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            exception_text(&params["exceptionDetails"])
        )),
        "Log.entryAdded" => {
            let entry = &params["entry"];
            let (source, level) = (text_of(&entry["source"]), text_of(&entry["level"]));
            let mut line = format!("{source} {level}: {}", text_of(&entry["text"]));
            if let Some(url) = entry["url"].as_str() {
                line = format!("{line} ({url})");
            }
            Some(line)
        }
        "Inspector.targetCrashed" => Some("the page crashed".to_owned()),
        _ => None,
    }
}

/// The text of an exception: an `Error`'s description (message and stack), a thrown value, or
/// Chromium's summary (`Uncaught`).
fn exception_text(details: &Value) -> String {
    match details.get("exception") {
        Some(exception) => remote_text(exception),
        None => text_of(&details["text"]).to_owned(),
    }
}

/// A `RemoteObject` as a console shows it: a string as itself, another value as JSON, anything
/// else by its description.
fn remote_text(object: &Value) -> String {
    match object.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(value) => value.to_string(),
        None => ["unserializableValue", "description", "type"]
            .iter()
            .find_map(|key| object[key].as_str())
            .unwrap_or("?")
            .to_owned(),
    }
}

/// A `RemoteObject`'s value as JSON (see [`Page::eval`]).
fn remote_value(object: &mut Value) -> Value {
    if let Some(value) = object.get_mut("value") {
        return value.take();
    }
    match object["unserializableValue"].as_str() {
        Some(text) => Value::String(text.to_owned()),
        None => Value::Null,
    }
}

/// Whether JavaScript finds a `RemoteObject`'s value truthy.
fn truthy(object: &Value) -> bool {
    match object["type"].as_str() {
        Some("undefined") => false,
        Some("object") => object["subtype"] != "null",
        Some("boolean") => object["value"] == true,
        Some("number") => match object["value"].as_f64() {
            Some(n) => n != 0.0,
            None => !matches!(object["unserializableValue"].as_str(), Some("NaN" | "-0")),
        },
        Some("string") => object["value"].as_str().is_some_and(|s| !s.is_empty()),
        Some("bigint") => object["unserializableValue"] != "0n",
        _ => true,
    }
}

fn string_field(reply: &Value, field: &str, method: &str) -> Result<String, BrowserError> {
    match reply[field].as_str() {
        Some(value) => Ok(value.to_owned()),
        None => Err(BrowserError::Protocol {
            method: method.to_owned(),
            message: format!("its reply has no {field}: {reply}"),
        }),
    }
}

fn text_of(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        let falsy = [
            json!({"type": "undefined"}),
            json!({"type": "object", "subtype": "null", "value": null}),
            json!({"type": "boolean", "value": false}),
            json!({"type": "number", "value": 0}),
            json!({"type": "number", "unserializableValue": "NaN"}),
            json!({"type": "number", "unserializableValue": "-0"}),
            json!({"type": "string", "value": ""}),
            json!({"type": "bigint", "unserializableValue": "0n"}),
        ];
        for o in falsy {
            assert!(!truthy(&o), "{o} is falsy");
        }
        let truthy_ = [
            json!({"type": "object", "value": {}}),
            json!({"type": "object", "subtype": "array", "value": []}),
            json!({"type": "boolean", "value": true}),
            json!({"type": "number", "value": -1.5}),
            json!({"type": "number", "unserializableValue": "Infinity"}),
            json!({"type": "string", "value": "0"}),
            json!({"type": "bigint", "unserializableValue": "2n"}),
            json!({"type": "function"}),
        ];
        for o in truthy_ {
            assert!(truthy(&o), "{o} is truthy");
        }
    }

    #[test]
    fn values_json_cannot_hold_are_their_text() {
        let mut nan = json!({"type": "number", "unserializableValue": "NaN"});
        assert_eq!(remote_value(&mut nan), "NaN");
        assert_eq!(remote_value(&mut json!({"type": "undefined"})), Value::Null);
        assert_eq!(remote_value(&mut json!({"type": "number", "value": 2})), 2);
    }

    #[test]
    fn console_lines_name_their_kind() {
        let log = json!({"method": "Runtime.consoleAPICalled", "params": {"type": "warn", "args": [
            {"type": "string", "value": "hello"}, {"type": "number", "value": 42},
            {"type": "object", "description": "Object"}]}});
        assert_eq!(console_line(&log).unwrap(), "console.warn: hello 42 Object");
        let thrown = json!({"method": "Runtime.exceptionThrown", "params": {"exceptionDetails": {
            "text": "Uncaught", "exception": {"type": "object", "description": "Error: boom"}}}});
        assert_eq!(console_line(&thrown).unwrap(), "uncaught: Error: boom");
        let other = json!({"method": "Page.lifecycleEvent", "params": {}});
        assert_eq!(console_line(&other), None);
    }
}
