//! One participant of `tests/e2e/udp_blocked.rs` (SFU-TCP-06), run in its own process so that
//! it can run inside a network namespace (`ip netns exec … veil-e2e-participant`): it joins a
//! room through the SDK, then publishes numbered frames and checks the other participant's
//! ([`veil_e2e::udp_blocked::exchange`]) until that one is done too.
//!
//! Configured by environment: `VEIL_E2E_URL`, `VEIL_E2E_TOKEN`, `VEIL_E2E_ROOM`,
//! `VEIL_E2E_IDENTITY`, `VEIL_E2E_ME` (this participant's number), `VEIL_E2E_OTHER` (the
//! other's identity and number, `bob:1`), `VEIL_E2E_UDP` (local UDP address) and, for ICE-TCP,
//! `VEIL_E2E_TCP` (local TCP address). The server is reached over plaintext `http://` (the
//! test's own veth link).
//!
//! Output, one line each on stdout: `joined`, `checked audio=A video=V`, `done`. It stops
//! publishing when its stdin closes (the other side is done). Exit status: 0 when done, 2 when
//! the join failed (`join failed: …`), 1 for anything else.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use veil_client::room::{Room, RoomConfig};
use veil_e2e::udp_blocked::exchange;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn participant() -> Result<(), (u8, String)> {
    let cfg = |e: String| (1, e);
    let url = var("VEIL_E2E_URL").map_err(cfg)?;
    let identity = var("VEIL_E2E_IDENTITY").map_err(cfg)?;
    let me: usize = var("VEIL_E2E_ME")
        .map_err(cfg)?
        .parse()
        .map_err(|_| (1, "VEIL_E2E_ME is not a number".to_owned()))?;
    let other = var("VEIL_E2E_OTHER").map_err(cfg)?;
    let (other, other_index) = other
        .split_once(':')
        .and_then(|(o, n)| Some((o.to_owned(), n.parse::<usize>().ok()?)))
        .ok_or((1, "VEIL_E2E_OTHER is not identity:number".to_owned()))?;
    let mut c = RoomConfig::new(
        &url,
        &var("VEIL_E2E_TOKEN").map_err(cfg)?,
        &var("VEIL_E2E_ROOM").map_err(cfg)?,
        &identity,
    );
    c.group.proposal_commit_delay = Duration::from_millis(50);
    c.group.security.insecure_plaintext = true;
    c.udp_addrs = vec![var("VEIL_E2E_UDP").map_err(cfg)?];
    c.tcp_addrs = std::env::var("VEIL_E2E_TCP").into_iter().collect();
    let mut room = Room::join(c)
        .await
        .map_err(|e| (2, format!("join failed: {e}")))?;
    say("joined");
    let stdin_closed = Arc::new(AtomicBool::new(false));
    let closed = stdin_closed.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        closed.store(true, Ordering::SeqCst);
    });
    exchange(
        &mut room,
        me,
        (&other, other_index),
        40,
        Duration::from_secs(40),
        |c| say(&format!("checked audio={} video={}", c.audio, c.video)),
        || stdin_closed.load(Ordering::SeqCst),
    )
    .await
    .map_err(|e| (1, e))?;
    let _ = room.leave().await;
    say("done");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match participant().await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            say(&e);
            eprintln!("veil-e2e-participant: {e}");
            ExitCode::from(code)
        }
    }
}
