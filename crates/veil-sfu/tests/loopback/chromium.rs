//! A real browser through the SFU: headless Chromium (Debian's `chromium`, fake camera) publishes
//! three simulcast layers to the SFU over loopback, and a webrtc-rs subscriber receives them.
//!
//! What only a browser can show: the SFU's answer to Chromium's own offer negotiates what the
//! SFU needs (DD, mid/rid, transport-cc, RTX; SFU-NEG-01), the SFU learns Chromium's layers from
//! the rid it sends (SFU-STR-01), and forwards one of them to the subscriber with a DD on every
//! packet. Chromium's RTX (rid-only, SFU-RTX-02) is counted on the SFU's metrics.
//!
//! Chromium is found as `$VEIL_CHROMIUM`, or `chromium` on the PATH (`.ci/run` installs Debian's).
//! Signalling is a few lines of HTTP here: the SFU's own gRPC is for Veil clients.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use veil_sfu::routing::MediaKind;
use veil_sfu::{Sfu, SfuConfig};

use crate::common::*;

const PAGE: &str = r#"<!doctype html><title>veil sfu publisher</title><script>
(async () => {
  const pc = new RTCPeerConnection();
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 360}});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly', sendEncodings: [
    {rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2}, {rid: 'f'}]});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const res = await fetch('/offer', {method: 'POST', body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
})().catch(e => fetch('/error', {method: 'POST', body: String(e)}));
</script>"#;

/// Serve the page and take its offer: the answer comes from `sfu.join`.
async fn serve(listener: TcpListener, sfu: Sfu, room: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let sfu = sfu.clone();
        tokio::spawn(async move { handle(stream, &sfu, room).await });
    }
}

async fn handle(stream: TcpStream, sfu: &Sfu, room: &str) {
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
    let body = String::from_utf8_lossy(&body).into_owned();
    let (status, kind, reply) = match path.as_str() {
        "/offer" => match sfu.join(room, "chromium", &body).await {
            Ok(mut session) => {
                let answer = std::mem::take(&mut session.answer);
                // Read its events (a publisher needs no renegotiation).
                tokio::spawn(async move { while session.events.recv().await.is_some() {} });
                ("200 OK", "application/sdp", answer)
            }
            Err(e) => ("400 Bad Request", "text/plain", e.to_string()),
        },
        "/error" => {
            eprintln!("the page failed: {body}");
            ("200 OK", "text/plain", String::new())
        }
        _ => ("200 OK", "text/html", PAGE.to_owned()),
    };
    let mut stream = r.into_inner();
    let _ = stream
        .write_all(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .as_bytes(),
        )
        .await;
}

fn chromium() -> String {
    std::env::var("VEIL_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// The SFU learns Chromium's three layers and switches a subscriber between them at key frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast_reaches_a_subscriber_through_the_sfu() {
    init_tracing();
    let room = "browser";
    let sfu = Sfu::new(SfuConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, sfu.clone(), room));
    let profile = std::env::temp_dir().join(format!("veil-chromium-{}", std::process::id()));
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): install Debian's chromium (apt install chromium) or set \
                 VEIL_CHROMIUM to a Chromium binary",
                chromium()
            )
        });

    // Chromium's video track, with the three rids it offered.
    let mut video = None;
    for _ in 0..200 {
        video = sfu
            .tracks(room)
            .into_iter()
            .find(|t| t.publisher == "chromium" && t.kind == MediaKind::Video);
        if video.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let video = video.expect("Chromium published a video track");
    assert_eq!(video.rids, ["q", "h", "f"], "the layers Chromium offered");

    let mut bob = Peer::new(room, "bob", false).await;
    bob.join(&sfu).await;
    let track = bob.track_named("chromium", &video.publisher_track_id).await;
    bob.subscribe(&sfu, &track).await;
    let dd = remote_ext_ids(&bob.pc).await.dd.expect("DD towards bob");

    // Ask for each layer in turn and wait for a key frame whose template structure has that
    // layer's resolution (the fake camera at 640×360; q and h are scaled by 4 and 2). Chromium
    // turns its upper layers on as its own estimate grows and off when its CPU is short, which
    // a loaded machine can make take a while: up to a minute per switch.
    let mut rx = Received::default();
    for (rid, width) in [("q", 160), ("h", 320), ("q", 160)] {
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
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let m = sfu.metrics();
    eprintln!(
        "bob: {rx:?}; SFU: rtx in unwrapped {}, probe {}, unresolved {}",
        m.rtx("in", "unwrapped"),
        m.rtx("in", "probe"),
        m.rtx("in", "unresolved")
    );
    assert_eq!(rx.switches, [160, 320, 160]);
    assert_eq!(rx.with_dd, rx.packets, "a DD on every forwarded packet");
    assert_eq!(
        rx.unreadable, 0,
        "every DD reads against the latched structure"
    );
    // One continuous stream across the switches: no gap, no repeat (loopback loses nothing).
    assert_eq!(rx.seqs.len(), rx.packets, "no packet twice");
    let (lo, hi) = (rx.seqs.iter().min().unwrap(), rx.seqs.iter().max().unwrap());
    let missing: Vec<u16> = (*lo..=*hi).filter(|q| !rx.seqs.contains(q)).collect();
    eprintln!(
        "seqs {lo}..={hi}, missing {missing:?}; SFU drops: padding {}, repair {}, not_selected {}, waiting {}",
        m.drops(veil_sfu::shell::DropKind::Padding),
        m.drops(veil_sfu::shell::DropKind::Repair),
        m.drops(veil_sfu::shell::DropKind::NotSelected),
        m.drops(veil_sfu::shell::DropKind::WaitingForKeyFrame),
    );
    assert_eq!(
        usize::from(hi - lo) + 1,
        rx.packets,
        "contiguous sequence numbers"
    );
    assert_eq!(m.rtx("in", "unresolved"), 0, "Chromium's RTX all resolved");
    assert_eq!(m.drops(veil_sfu::shell::DropKind::SpoofedSsrc), 0);
}

/// What bob received, read as a browser would.
#[derive(Default)]
struct Received {
    packets: usize,
    with_dd: usize,
    unreadable: usize,
    seqs: std::collections::BTreeSet<u16>,
    latch: veil_wire::dd::DdLatch,
    /// The width of the last template structure seen.
    width: Option<u32>,
    /// The widths reached, in order.
    switches: Vec<u32>,
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
    fn restart(&mut self) {
        let last = self.seqs.last().copied();
        self.seqs.clear();
        self.seqs.extend(last);
        self.packets = self.seqs.len();
        self.with_dd = self.packets;
    }

    fn add(&mut self, p: &rtc::rtp::Packet, dd: u8) {
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
