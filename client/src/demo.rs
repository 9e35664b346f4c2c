//! `veil demo`: a whole end-to-end encrypted call on this machine. It starts the server (key
//! service + blind SFU, embedded SQLite in a temporary directory) and N participants on
//! loopback; everyone publishes synthetic audio (50 frames/s) and video (30 frames/s, a key
//! frame every 2 s); one participant joins a third of the way in and one leaves at two thirds.
//! At the end it prints one row per participant.
//!
//! `veil demo --browser` ([`browser`]) is the call for a person instead: the server with its
//! page, and one native participant publishing real VP8 and Opus (Chromium's, from
//! `vectors/chromium-media`, which browsers can decode); it prints the links to open.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veil_auth::{Claims, Grants, TokenKey};
use veil_client::room::{Room, RoomConfig};

/// What one participant did.
#[derive(Debug, Default)]
struct Row {
    sent: u64,
    received: u64,
    failures: u64,
    epochs: std::collections::BTreeSet<u64>,
    first_frame: Option<Duration>,
    joined_at: Option<Instant>,
    left: bool,
}

fn frame(who: usize, i: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|j| (who as u32 * 31 + i * 7 + j) as u8)
        .collect()
}

/// What the SFU's tap saw.
#[derive(Debug, Default, Clone)]
struct TapReport {
    packets: u64,
    bytes: u64,
    /// Packets whose payload contains a run of the demo's plaintext.
    plaintext: u64,
    /// Packets the inspector fell behind on.
    lagged: u64,
}

/// Whether `data` holds plaintext of [`frame`]: every 16-byte window of a demo frame counts
/// up by one (mod 256), a run that AES-GCM output shows with probability 2^-120 per offset.
fn has_plaintext(data: &[u8]) -> bool {
    const RUN: usize = 16;
    let mut run = 1;
    for w in data.windows(2) {
        if w[1] == w[0].wrapping_add(1) {
            run += 1;
            if run >= RUN {
                return true;
            }
        } else {
            run = 1;
        }
    }
    false
}

async fn inspect(
    mut tap: tokio::sync::broadcast::Receiver<veil_sfu::TappedPacket>,
    report: std::sync::Arc<std::sync::Mutex<TapReport>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let p = match tap.recv().await {
            Ok(p) => p,
            Err(RecvError::Lagged(n)) => {
                if let Ok(mut r) = report.lock() {
                    r.lagged += n;
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let plain = has_plaintext(&p.payload);
        if let Ok(mut r) = report.lock() {
            r.packets += 1;
            r.bytes += p.payload.len() as u64;
            r.plaintext += u64::from(plain);
        }
    }
}

/// Run the demo.
///
/// # Errors
/// When the server or a participant fails.
pub(crate) async fn run(participants: usize, seconds: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = TokenKey::generate("demo").map_err(|e| e.to_string())?;
    let mut cfg = veil_server::ServerConfig::loopback(dir.path().to_owned(), key.clone());
    cfg.kds.departure_grace = Duration::from_secs(2);
    // What the SFU sees (SFU-TAP-01): every packet, searched for the participants' plaintext.
    let tap = veil_sfu::Tap::new(1 << 14);
    if let Some(sfu) = cfg.sfu.as_mut() {
        sfu.tap = Some(tap.clone());
    }
    let report = std::sync::Arc::new(std::sync::Mutex::new(TapReport::default()));
    let inspector = tokio::spawn(inspect(tap.subscribe(), report.clone()));
    let addr = veil_server::spawn(cfg)
        .await
        .map_err(|e| e.to_string())?
        .grpc;
    let url = format!("http://{addr}");
    let room_cfg = |name: &str| -> Result<RoomConfig, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let token = key
            .mint(&Claims::new(
                name,
                "demo",
                Grants::all(),
                now,
                Duration::from_secs(3600),
            ))
            .map_err(|e| e.to_string())?;
        Ok(RoomConfig::new(&url, &token, "demo", name))
    };
    println!("server (key service + blind SFU) on {url}; {participants} participants, {seconds} s");

    let names: Vec<String> = (0..=participants).map(|i| format!("p{i}")).collect();
    let start = Instant::now();
    let mut rooms: Vec<Option<Room>> = Vec::new();
    let mut rows: Vec<Row> = (0..names.len()).map(|_| Row::default()).collect();
    for (i, name) in names.iter().enumerate().take(participants) {
        rows[i].joined_at = Some(Instant::now());
        rooms.push(Some(
            Room::join(room_cfg(name)?)
                .await
                .map_err(|e| e.to_string())?,
        ));
    }
    rooms.push(None);
    let total = Duration::from_secs(seconds);
    let (join_at, leave_at) = (total / 3, total * 2 / 3);
    let mut joiner = None;
    let mut tick = 0u32;
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    while start.elapsed() < total {
        interval.tick().await;
        tick += 1;
        if joiner.is_none() && start.elapsed() >= join_at && rooms[participants].is_none() {
            let cfg = room_cfg(&names[participants])?;
            rows[participants].joined_at = Some(Instant::now());
            joiner = Some(tokio::spawn(Room::join(cfg)));
        }
        if let Some(h) = joiner.take_if(|h| h.is_finished()) {
            let room = h
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            rooms[participants] = Some(room);
        }
        if start.elapsed() >= leave_at && participants > 1 && !rows[1].left {
            rows[1].left = true;
            if let Some(r) = rooms[1].take() {
                r.leave().await.map_err(|e| e.to_string())?;
            }
        }
        for (w, slot) in rooms.iter().enumerate() {
            let Some(r) = slot else { continue };
            let ts = tick * 960;
            if r.publish_audio(&frame(w, tick, 80), ts, (true, 40))
                .await
                .is_ok()
            {
                rows[w].sent += 1;
            }
            if tick.is_multiple_of(3) {
                let key = tick.is_multiple_of(100) || tick == 3;
                if r.publish_video(&frame(w, tick, 1200), tick * 1800, key)
                    .await
                    .is_ok()
                {
                    rows[w].sent += 1;
                }
            }
        }
        for (w, slot) in rooms.iter_mut().enumerate() {
            let Some(r) = slot else { continue };
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, r.next_frame()).await {
                rows[w].received += 1;
                if rows[w].first_frame.is_none() {
                    rows[w].first_frame = rows[w].joined_at.map(|t| t.elapsed());
                }
            }
            let s = r.stats();
            if let Some(e) = s.group.epoch {
                rows[w].epochs.insert(e);
            }
            rows[w].failures = s
                .received
                .values()
                .map(|t| t.decrypt_failures.values().sum::<u64>())
                .sum();
        }
    }
    println!(
        "\n| participant | frames sent | frames received (decrypted) | decrypt failures | epochs seen | join → first frame |"
    );
    println!("|---|---|---|---|---|---|");
    let mut by_name = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        by_name.insert(names[i].clone(), row);
    }
    for (name, r) in by_name {
        let note = if r.left { " (left at 2/3)" } else { "" };
        println!(
            "| {name}{note} | {} | {} | {} | {:?} | {} |",
            r.sent,
            r.received,
            r.failures,
            r.epochs,
            r.first_frame
                .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
        );
    }
    let failures: u64 = rows.iter().map(|r| r.failures).sum();
    println!("\ndecrypt failures among participants in the call: {failures}");
    inspector.abort();
    let tap = report.lock().map(|r| r.clone()).unwrap_or_default();
    // The control: the same search over the frames as the participants sent them.
    let controls = (1..=200u32).map(|i| frame(i as usize % 7, i, 80 + i));
    let control_hits = controls.filter(|f| has_plaintext(f)).count();
    println!(
        "SFU tap (what the SFU could record): {} packets, {} payload bytes, keys held: 0; \
         packets containing plaintext: {} (the same search finds plaintext in {control_hits} \
         of 200 frames as sent){}",
        tap.packets,
        tap.bytes,
        tap.plaintext,
        if tap.lagged > 0 {
            format!("; {} packets passed uninspected", tap.lagged)
        } else {
            String::new()
        }
    );
    for r in rooms.into_iter().flatten() {
        let _ = r.leave().await;
    }
    if failures > 0 {
        return Err(format!("{failures} frames failed to decrypt"));
    }
    if tap.plaintext > 0 || tap.packets == 0 {
        return Err(format!(
            "the SFU saw {} packets, {} with plaintext",
            tap.packets, tap.plaintext
        ));
    }
    Ok(())
}

/// Chromium's VP8 and Opus (vectors/chromium-media): what a browser can decode.
const CAMERA: &[u8] = include_bytes!("../../vectors/chromium-media/camera-160x90.ivf");
const MICROPHONE: &[u8] = include_bytes!("../../vectors/chromium-media/microphone.ogg");

/// `veil demo --browser`: the server (with its web listener on `web`), a native participant
/// ("alice") publishing real media, and links for two people to open in browsers. Runs for
/// `seconds`, or until Ctrl-C.
pub(crate) async fn browser(web: std::net::SocketAddr, seconds: Option<u64>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = TokenKey::generate("demo").map_err(|e| e.to_string())?;
    let mut cfg = veil_server::ServerConfig::loopback(dir.path().to_owned(), key.clone());
    cfg.kds.departure_grace = Duration::from_secs(2);
    cfg.web_listen = Some(web);
    let bound = veil_server::spawn(cfg).await.map_err(|e| e.to_string())?;
    let web = bound.web.ok_or("the web listener did not start")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let token = |name: &str| {
        key.mint(&Claims::new(
            name,
            "demo",
            Grants::all(),
            now,
            Duration::from_secs(86_400),
        ))
        .map_err(|e| e.to_string())
    };
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).map_err(|e| e.to_string())?;
    let (video, audio) = (media.join("camera.ivf"), media.join("microphone.ogg"));
    std::fs::write(&video, CAMERA).map_err(|e| e.to_string())?;
    std::fs::write(&audio, MICROPHONE).map_err(|e| e.to_string())?;

    crate::join::say!(
        "Veil demo for browsers: server on http://{}, page on http://{web}\n",
        bound.grpc
    );
    crate::join::say!(
        "Open one of these in a browser (Chromium or Chrome), allow camera and microphone:\n"
    );
    for who in ["bob", "carol"] {
        crate::join::say!(
            "  as {who}: {}",
            veil_server::web::room_link(web, "demo", &token(who)?)
        );
    }
    crate::join::say!(
        "\nalice, a native participant, publishes a looping clip; everyone shows the same safety code.\n"
    );
    crate::join::run(crate::join::Join {
        url: format!("http://{}", bound.grpc),
        room: "demo".into(),
        token: token("alice")?,
        identity: "alice".into(),
        seconds,
        publish: crate::join::Publish::Files {
            video: Some(video),
            audio: Some(audio),
        },
        save: None,
        // Loopback: plaintext by default (SRV-TLS-04).
        security: Default::default(),
        media_ip: None,
        tcp: false,
    })
    .await
}
