//! Real browsers through the SFU: headless Chromium (Debian's `chromium`, fake camera) publishes
//! three simulcast layers to the SFU over loopback.
//!
//! - A webrtc-rs subscriber asks for h, then q. The SFU's answer to Chromium's own offer
//!   negotiates what it needs (DD, mid/rid, transport-cc, RTX; SFU-NEG-01), it learns the layers
//!   from the rid Chromium sends (SFU-STR-01), and each switch lands on a key frame with a DD on
//!   every packet. Chromium's rid-only RTX is resolved (SFU-RTX-04), and the audio level it
//!   sends for its fake microphone makes it the active speaker (SFU-SPK-01).
//! - A second Chromium views the track: it answers the SFU's offers, and its own `getStats`
//!   shows it decoding 320-wide frames, then 160-wide ones after asking for q. So the SFU's
//!   offers, its per-leg rewriting and its layer switches are what a browser accepts.
//!
//! - The same viewer behind a relay that drops every 15th RTP packet towards it: Chromium NACKs,
//!   the SFU answers with RTX (SFU-RTX-01), and Chromium counts every RTX packet that reached it
//!   as a retransmission received, while it goes on decoding.
//!
//! Chromium is found as `$VEIL_CHROMIUM`, or `chromium` on the PATH (`.ci/run` installs Debian's).
//! Signalling is a few lines of HTTP here: the SFU's own gRPC is for Veil clients.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use veil_sfu::routing::MediaKind;
use veil_sfu::{EdgeSfu, Permissions, SfuConfig, SignalEvent, TrackInfo};

use crate::common::*;

pub(crate) const PUBLISHER: &str = r#"<!doctype html><title>veil sfu publisher</title><script>
(async () => {
  const pc = new RTCPeerConnection();
  const stream = await navigator.mediaDevices.getUserMedia(
    {audio: true, video: {width: 640, height: 360}});
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendonly'});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly', sendEncodings: [
    {rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2}, {rid: 'f'}]});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const res = await fetch('/offer/chromium', {method: 'POST', body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
})().catch(e => fetch('/error', {method: 'POST', body: String(e && e.stack || e)}));
</script>"#;

/// A viewer: joins with a data channel, answers the SFU's offers, plays what arrives and posts
/// its `inbound-rtp` video stats every 300 ms.
const VIEWER: &str = r#"<!doctype html><title>veil sfu viewer</title><body><script>
(async () => {
  const pc = new RTCPeerConnection();
  pc.createDataChannel('signal');
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; document.body.appendChild(video);
  pc.ontrack = e => { video.srcObject = new MediaStream([e.track]); video.play().catch(() => {}); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const res = await fetch('/offer/viewer', {method: 'POST', body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
  setInterval(async () => {
    let v = null;
    (await pc.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') v = s; });
    if (v) fetch('/stats', {method: 'POST', body: JSON.stringify({
      framesDecoded: v.framesDecoded || 0, frameWidth: v.frameWidth || 0,
      packetsLost: v.packetsLost || 0, nackCount: v.nackCount || 0, pliCount: v.pliCount || 0,
      packetsReceived: v.packetsReceived || 0, framesReceived: v.framesReceived || 0,
      retransmittedPacketsReceived: v.retransmittedPacketsReceived || 0,
      framesDropped: v.framesDropped || 0, freezeCount: v.freezeCount || 0})});
  }, 300);
  for (;;) {
    const r = await fetch('/events/viewer');
    if (r.status !== 200) continue;
    await pc.setRemoteDescription({type: 'offer', sdp: await r.text()});
    await pc.setLocalDescription(await pc.createAnswer());
    await fetch('/answer/viewer', {method: 'POST', body: pc.localDescription.sdp});
  }
})().catch(e => fetch('/error', {method: 'POST', body: String(e && e.stack || e)}));
</script>"#;

/// A few lines of HTTP between the pages and the SFU (the SFU's gRPC is for Veil clients).
struct Shim {
    sfu: EdgeSfu,
    room: &'static str,
    /// The viewer's events, polled by its page.
    viewer: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<SignalEvent>>>,
    /// The viewer page's latest stats (JSON).
    stats: tokio::sync::watch::Sender<String>,
    /// Whether the viewer's subscription is live (its answer is in).
    subscribed: tokio::sync::watch::Sender<bool>,
    /// Put the viewer behind a relay that drops every `n`th RTP packet towards it (0: direct).
    lossy: u64,
    /// That relay, once the viewer joined, with the SFU's candidate port it stands for.
    relay: tokio::sync::Mutex<Option<(u16, Arc<Relay>)>>,
}

impl Shim {
    /// `sdp` from the viewer to the SFU. Behind the relay it names no candidate, so that the SFU
    /// learns the viewer only from the relay's checks and cannot open a direct path around it.
    fn viewer_to_sfu(&self, sdp: &str) -> String {
        if self.lossy == 0 {
            return sdp.to_owned();
        }
        sdp.split_inclusive('\n')
            .filter(|l| !l.starts_with("a=candidate:"))
            .collect()
    }

    /// `sdp` from the SFU to the viewer, with the relay in the SFU's place if there is one.
    async fn sfu_to_viewer(&self, sdp: String) -> String {
        match &*self.relay.lock().await {
            Some((sfu_port, relay)) => via(&sdp, *sfu_port, relay.port()),
            None => sdp,
        }
    }
}

/// Serve the pages and their signalling.
async fn serve(listener: TcpListener, shim: Arc<Shim>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let shim = shim.clone();
        tokio::spawn(async move { handle(stream, &shim).await });
    }
}

/// One HTTP request from a page: its path, its body, and the stream to answer on.
pub(crate) async fn read_request(stream: TcpStream) -> (String, String, TcpStream) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let _ = r.read_line(&mut line).await;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    let _ = r.read_exact(&mut body).await;
    (
        path,
        String::from_utf8_lossy(&body).into_owned(),
        r.into_inner(),
    )
}

/// Answer a request and close.
pub(crate) async fn respond(mut stream: TcpStream, status: &str, kind: &str, reply: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(reply.as_bytes()).await;
}

async fn handle(stream: TcpStream, shim: &Shim) {
    let (path, body, stream) = read_request(stream).await;
    let (sfu, room) = (&shim.sfu, shim.room);
    let ok = |kind: &'static str, reply: String| ("200 OK", kind, reply);
    let (status, kind, reply) = match path.as_str() {
        "/pub" => ok("text/html", PUBLISHER.to_owned()),
        "/view" => ok("text/html", VIEWER.to_owned()),
        p if p.starts_with("/offer/") => {
            let who = &p["/offer/".len()..];
            let body = if who == "viewer" {
                shim.viewer_to_sfu(&body)
            } else {
                body
            };
            match sfu.join_with(room, who, &body, Permissions::ALL).await {
                Ok(mut session) => {
                    let mut answer = std::mem::take(&mut session.answer);
                    if who == "viewer" {
                        *shim.viewer.lock().await = Some(session.events);
                        if shim.lossy > 0 {
                            let sfu_port = candidate_port(&answer);
                            let to = std::net::SocketAddr::from(([127, 0, 0, 1], sfu_port));
                            let relay = Relay::start(to, shim.lossy, false).await;
                            *shim.relay.lock().await = Some((sfu_port, Arc::new(relay)));
                        }
                        answer = shim.sfu_to_viewer(answer).await;
                    } else {
                        // A publisher needs no renegotiation: read and drop its events.
                        tokio::spawn(async move { while session.events.recv().await.is_some() {} });
                    }
                    ok("application/sdp", answer)
                }
                Err(e) => ("400 Bad Request", "text/plain", e.to_string()),
            }
        }
        "/events/viewer" => {
            // Long poll: the next offer within 5 s, or nothing.
            let mut guard = shim.viewer.lock().await;
            let offer = match guard.as_mut() {
                Some(events) => tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match events.recv().await {
                            Some(SignalEvent::Offer { sdp }) => return Some(sdp),
                            Some(SignalEvent::Subscribed { .. }) => {
                                let _ = shim.subscribed.send(true);
                            }
                            Some(_) => {}
                            None => return None,
                        }
                    }
                })
                .await
                .ok()
                .flatten(),
                None => None,
            };
            drop(guard);
            match offer {
                Some(sdp) => ok("application/sdp", shim.sfu_to_viewer(sdp).await),
                None => ("204 No Content", "text/plain", String::new()),
            }
        }
        "/answer/viewer" => match sfu.answer(room, "viewer", &shim.viewer_to_sfu(&body)).await {
            Ok(()) => ok("text/plain", String::new()),
            Err(e) => ("400 Bad Request", "text/plain", e.to_string()),
        },
        "/stats" => {
            let _ = shim.stats.send(body);
            ok("text/plain", String::new())
        }
        "/error" => {
            eprintln!("a page failed: {body}");
            ok("text/plain", String::new())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    };
    respond(stream, status, kind, &reply).await;
}

/// The SFU, the signalling shim on a loopback port, and the base URL of its pages.
async fn start(room: &'static str) -> (EdgeSfu, Arc<Shim>, String) {
    start_with(room, 0).await
}

/// [`start`], with the viewer behind a relay that drops every `lossy`th RTP packet to it.
async fn start_with(room: &'static str, lossy: u64) -> (EdgeSfu, Arc<Shim>, String) {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shim = Arc::new(Shim {
        sfu: sfu.clone(),
        room,
        viewer: tokio::sync::Mutex::new(None),
        stats: tokio::sync::watch::channel(String::new()).0,
        subscribed: tokio::sync::watch::channel(false).0,
        lossy,
        relay: tokio::sync::Mutex::new(None),
    });
    tokio::spawn(serve(listener, shim.clone()));
    (sfu, shim, url)
}

/// A headless Chromium on `url`, killed when dropped, with its own profile directory.
pub(crate) struct Browser {
    child: tokio::process::Child,
    profile: std::path::PathBuf,
}

impl Browser {
    /// `name` must be unique in the test binary: two Chromiums on one profile directory are one
    /// browser (the second hands its URL to the first and exits).
    pub(crate) fn open(url: &str, name: &str) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("veil-chromium-{}-{name}", std::process::id()));
        let child = tokio::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Debian's chromium (apt install chromium) or \
                     set VEIL_CHROMIUM to a Chromium binary",
                    chromium()
                )
            });
        Browser { child, profile }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Chromium's published video track, as `watcher` (in the room before Chromium) hears of it.
async fn published_video(watcher: &mut Peer) -> TrackInfo {
    let published = async {
        loop {
            let ev = watcher
                .events
                .recv()
                .await
                .expect("the watcher's events ended");
            match ev {
                SignalEvent::TrackPublished(t)
                    if t.publisher == "chromium" && t.kind == MediaKind::Video =>
                {
                    return t;
                }
                other => watcher.backlog.push(other),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), published)
        .await
        .expect("Chromium published no video track in 30 s")
}

fn chromium() -> String {
    std::env::var("VEIL_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// The SFU learns Chromium's three layers and switches a subscriber between them at key frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast_reaches_a_subscriber_through_the_sfu() {
    init_tracing();
    let room = "browser";
    let (sfu, _shim, url) = start(room).await;
    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let browser = Browser::open(&format!("{url}/pub"), "browser-pub");
    let video = published_video(&mut bob).await;
    assert_eq!(video.rids, ["q", "h", "f"], "the layers Chromium offered");
    let track = video.track;
    bob.subscribe(&sfu, &track).await;
    let dd = remote_ext_ids(&bob.pc).await.dd.expect("DD towards bob");

    // Ask for each layer in turn and wait for a key frame whose template structure has that
    // layer's resolution (the fake camera at 640×360; q and h are scaled by 4 and 2). Chromium
    // turns its upper layers on as its own estimate grows and off when its CPU is short, which
    // a loaded machine can make take a while: up to a minute per switch. h first, then q: a
    // step down is the subscriber's to take, while a step up also waits for the SFU's estimate of
    // its leg (SFU-BWE-02), which delay on a loaded machine keeps low; ramp-up has its own tests.
    let mut rx = Received::default();
    for (rid, width) in [("h", 320), ("q", 160)] {
        sfu.set_layer_preference(room, "bob", &track, Some(rid))
            .await
            .unwrap();
        tokio::time::timeout(3 * WAIT, async {
            while rx.width != Some(width) {
                let r = bob.received.recv().await.expect("bob's track ended");
                rx.add(&r.packet, dd);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {width}-wide key frame after asking for {rid}: {rx:?}"));
        rx.switches.push(width);
        if rx.switches.len() == 1 {
            // The packets before the first key frame of the subscription may have reached bob
            // before its side of the renegotiation knew the SSRC; count from here.
            rx.restart();
        }
    }
    // And a second more on that layer.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(r)) = tokio::time::timeout_at(until, bob.received.recv()).await {
        rx.add(&r.packet, dd);
    }
    drop(browser);
    let m = sfu.metrics();
    eprintln!(
        "bob: {rx:?}; SFU: rtx in unwrapped {}, probe {}, unresolved {}",
        m.rtx("in", "unwrapped"),
        m.rtx("in", "probe"),
        m.rtx("in", "unresolved")
    );
    assert_eq!(rx.switches, [320, 160]);
    // Chromium's fake microphone beeps, and the audio level it sends (RFC 6464) makes it the
    // active speaker (SFU-SPK).
    bob.next_event("ActiveSpeaker", |e| match e {
        SignalEvent::ActiveSpeaker { identity } if identity == "chromium" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(rx.with_dd, rx.packets, "a DD on every forwarded packet");
    assert_eq!(
        rx.unreadable, 0,
        "every DD reads against the latched structure"
    );
    // One continuous stream across the switches: no gap, no repeat (loopback loses nothing).
    assert_eq!(rx.seqs.len(), rx.packets, "no packet twice");
    let (lo, hi) = (rx.seqs.first().unwrap(), rx.seqs.last().unwrap());
    let missing: Vec<u16> = (*lo..=*hi).filter(|q| !rx.seqs.contains(q)).collect();
    assert_eq!(
        usize::from(hi - lo) + 1,
        rx.packets,
        "contiguous sequence numbers: {lo}..={hi} lacks {missing:?}"
    );
    assert_eq!(m.rtx("in", "unresolved"), 0, "Chromium's RTX all resolved");
    assert_eq!(m.drops(veil_sfu::session::DropKind::SpoofedSsrc), 0);
}

/// Browser to browser through the SFU: one Chromium publishes three layers, another views one,
/// and the viewer's own `getStats` shows it decoding the layer it asked for at each switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_decodes_what_a_browser_publishes_through_the_sfu() {
    init_tracing();
    let room = "browsers";
    let (sfu, shim, url) = start(room).await;
    let mut watcher = Peer::new(room, "watcher", false).await;
    watcher.join(&sfu).await;
    let _publisher = Browser::open(&format!("{url}/pub"), "browsers-pub");
    let video = published_video(&mut watcher).await;
    let _viewer = Browser::open(&format!("{url}/view"), "browsers-view");
    for _ in 0..300 {
        if sfu.participants(room).await.iter().any(|p| p == "viewer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut subscribed = shim.subscribed.subscribe();
    sfu.subscribe(room, "viewer", &video.track).await.unwrap();
    // A layer is chosen for a live subscription: once the viewer has answered.
    tokio::time::timeout(WAIT, subscribed.wait_for(|s| *s))
        .await
        .expect("the viewer never answered the SFU's offer")
        .unwrap();

    // The viewer's stats: frames decoded and the width of the last one.
    let mut stats = shim.stats.subscribe();
    let mut decoded_at = Vec::new();
    // h, then q: see the first test for why a step down.
    for (rid, width) in [("h", 320), ("q", 160)] {
        sfu.set_layer_preference(room, "viewer", &video.track, Some(rid))
            .await
            .unwrap();
        let decoded = tokio::time::timeout(3 * WAIT, async {
            loop {
                stats.changed().await.unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(&stats.borrow_and_update()).unwrap_or_default();
                if v["frameWidth"].as_u64() == Some(width) && v["framesDecoded"].as_u64() > Some(0)
                {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the viewer never decoded {width}-wide frames after asking for {rid}: {}",
                *stats.borrow()
            )
        });
        eprintln!("viewer on {rid}: {decoded}");
        decoded_at.push(decoded["framesDecoded"].as_u64().unwrap());
    }
    assert!(
        decoded_at[1] > decoded_at[0],
        "decoding went on across the switch: {decoded_at:?}"
    );
}

/// SFU-RTX-01 towards a browser: the viewer's leg drops every 15th RTP packet. Chromium NACKs,
/// the SFU answers with RTX carrying the original's extensions, and Chromium counts each one
/// as a retransmission received while it goes on decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_behind_a_lossy_hop_is_repaired_with_rtx() {
    init_tracing();
    let room = "browsers-lossy";
    let (sfu, shim, url) = start_with(room, 15).await;
    let mut watcher = Peer::new(room, "watcher", false).await;
    watcher.join(&sfu).await;
    let _publisher = Browser::open(&format!("{url}/pub"), "lossy-pub");
    let video = published_video(&mut watcher).await;
    let _viewer = Browser::open(&format!("{url}/view"), "lossy-view");
    for _ in 0..300 {
        if sfu.participants(room).await.iter().any(|p| p == "viewer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut subscribed = shim.subscribed.subscribe();
    sfu.subscribe(room, "viewer", &video.track).await.unwrap();
    tokio::time::timeout(WAIT, subscribed.wait_for(|s| *s))
        .await
        .expect("the viewer never answered the SFU's offer")
        .unwrap();
    sfu.set_layer_preference(room, "viewer", &video.track, Some("h"))
        .await
        .unwrap();
    let relay = shim
        .relay
        .lock()
        .await
        .as_ref()
        .map(|(_, r)| r.clone())
        .expect("the viewer is behind the relay");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let d = &relay.dropped;
    // What reached the viewer as RTX, by the relay's count.
    let passed = || load(&d.rtx) - load(&d.rtx_dropped);
    let mut stats = shim.stats.subscribe();
    let m = sfu.metrics();
    // Decoding goes on, Chromium NACKed and the SFU resent; and at one of the viewer's stats
    // snapshots (every 300 ms, while losses and repairs go on), Chromium had taken every RTX
    // packet that reached it as a retransmission (its `packetsLost` still counts the originals).
    // Its PLIs are no signal here: it sends some at the start of a stream and at a layer switch
    // either way.
    let last = tokio::time::timeout(3 * WAIT, async {
        loop {
            stats.changed().await.unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&stats.borrow_and_update()).unwrap_or_default();
            if v["framesDecoded"].as_u64() >= Some(90)
                && v["nackCount"].as_u64() > Some(0)
                && m.rtx("out", "resent") > 0
                && v["retransmittedPacketsReceived"].as_u64() == Some(passed())
            {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let dump: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && ["viewer", "dropped", "rtx", "forwarded"]
                        .iter()
                        .any(|w| l.contains(w))
            })
            .map(str::to_owned)
            .collect();
        panic!(
            "no repaired stream at the viewer: {}; the relay passed {} RTX; SFU: {dump:#?}",
            *stats.borrow(),
            passed(),
        )
    });
    let (dropped, repeats) = (load(&d.dropped), load(&d.repeats));
    eprintln!(
        "viewer: {last}; the relay dropped {dropped} and passed {} RTX packets, {repeats} \
         repeats on the media SSRC; SFU rtx out resent {}; from the publisher: rtx unwrapped {}, \
         redundant {}, probes {}",
        passed(),
        m.rtx("out", "resent"),
        m.rtx("in", "unwrapped"),
        m.rtx("in", "redundant"),
        m.rtx("in", "probe"),
    );
    assert!(dropped > 0);
    assert_eq!(repeats, 0, "repairs go as RTX");
}

/// What bob received, read as a browser would.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) packets: usize,
    pub(crate) with_dd: usize,
    pub(crate) unreadable: usize,
    pub(crate) seqs: std::collections::BTreeSet<u16>,
    latch: veil_wire::dd::DdLatch,
    /// The width of the last template structure seen.
    pub(crate) width: Option<u32>,
    /// The widths reached, in order.
    pub(crate) switches: Vec<u32>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets, {} with DD, {} unreadable, width {:?}, switches {:?}",
            self.packets, self.with_dd, self.unreadable, self.width, self.switches
        )
    }
}

impl Received {
    /// Count afresh from the packet that completed a switch (it stays counted).
    pub(crate) fn restart(&mut self) {
        let last = self.seqs.last().copied();
        self.seqs.clear();
        self.seqs.extend(last);
        self.packets = self.seqs.len();
        self.with_dd = self.packets;
    }

    pub(crate) fn add(&mut self, p: &rtc::rtp::Packet, dd: u8) {
        self.packets += 1;
        self.seqs.insert(p.header.sequence_number);
        let Some(d) = p.header.get_extension(dd) else {
            return;
        };
        self.with_dd += 1;
        match self.latch.parse(&d) {
            Ok(desc) => {
                if let Some(s) = desc.structure() {
                    self.width = s
                        .resolutions
                        .as_ref()
                        .and_then(|r| r.last())
                        .map(|r| r.width);
                }
            }
            Err(_) => self.unreadable += 1,
        }
    }
}
