//! `veil demo`: a whole end-to-end encrypted call on this machine. It starts the server (key
//! service + blind SFU, embedded SQLite in a temporary directory) and N participants on
//! loopback; everyone publishes synthetic audio (50 frames/s) and video (30 frames/s, a key
//! frame every 2 s); one participant joins a third of the way in and one leaves at two thirds.
//! At the end it prints one row per participant.

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

/// Run the demo.
///
/// # Errors
/// When the server or a participant fails.
pub(crate) async fn run(participants: usize, seconds: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = TokenKey::generate("demo").map_err(|e| e.to_string())?;
    let mut cfg = veil_server::ServerConfig::loopback(dir.path().to_owned(), key.clone());
    cfg.kds.departure_grace = Duration::from_secs(2);
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
    for r in rooms.into_iter().flatten() {
        let _ = r.leave().await;
    }
    if failures > 0 {
        return Err(format!("{failures} frames failed to decrypt"));
    }
    Ok(())
}
