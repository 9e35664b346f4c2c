//! Secrets never leave the client (issue 23, MLS-LEAK-02 in specs/key-schedule.md).
//!
//! A call at TRACE log level on the real server (key service and blind SFU in this process):
//! alice and bob talk, carol joins, bob leaves, alice updates her keys, so the participants go
//! through several epochs, and every frame is encrypted and decrypted. The hazard recorder
//! (MLS-LEAK-01) hands the test every secret the participants derived; the tokens it minted
//! itself. Then it searches, for every secret in every encoding (raw, hex, base64, `Debug`)
//! and for windows of every plaintext frame sent:
//!
//! - every log line of every component of this process (server, clients, their libraries);
//! - every packet the SFU received (its tap, SFU-TAP-01);
//! - every byte the clients sent to the gRPC listener (key service and SFU signalling), also
//!   reassembled into gRPC messages (the tokens are left out here: they are sent on purpose);
//! - every file in the server's data directory after the call (SQLite database and its WAL).
//!
//! Zero matches are required. The counts of what was searched are printed and checked to be
//! non-zero, and a secret planted on purpose in a log line must be found.

mod capture;
mod scan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomConfig};
use veil_e2e::{collect, warm_up};
use veil_sframe::hazard::{self, SecretKind};
use veil_testkit::postgres::TempPostgres;
use veil_testkit::server::InProcess;

use capture::{Logs, Proxy};
use scan::Needles;

/// A frame of pseudo-random bytes (xorshift), distinct for every (who, n), so that a window of
/// it found anywhere can only have come from it.
fn frame(who: usize, n: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((who as u64) << 32 | u64::from(n));
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The frames sent: (publisher, kind, timestamp) → frame.
type Sent = BTreeMap<(String, MediaKind, u32), Vec<u8>>;

/// `talkers` (indices into `rooms`, with names) each publish `n` audio and `n` video frames
/// from timestamp number `from`; every other room in `listeners` receives them all, decrypted.
async fn talk(rooms: &mut [(String, Room)], talkers: &[usize], from: u32, n: u32, sent: &mut Sent) {
    for i in from..from + n {
        for &w in talkers {
            let (name, room) = &rooms[w];
            let audio = frame(w, 2 * i, 60 + (i as usize * 37) % 100);
            let video = frame(w, 2 * i + 1, 300 + (i as usize * 211) % 1200);
            room.publish_audio(&audio, i * 960, (true, 30))
                .await
                .unwrap();
            room.publish_video(&video, i * 3000, i == from)
                .await
                .unwrap();
            sent.insert((name.clone(), MediaKind::Audio, i * 960), audio);
            sent.insert((name.clone(), MediaKind::Video, i * 3000), video);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names: Vec<String> = rooms.iter().map(|(n, _)| n.clone()).collect();
    for me in 0..rooms.len() {
        let from_talkers: Vec<&String> = talkers
            .iter()
            .filter(|&&w| w != me)
            .map(|&w| &names[w])
            .collect();
        let got = collect(&mut rooms[me].1, |g| {
            from_talkers.iter().all(|p| {
                [(MediaKind::Audio, 960), (MediaKind::Video, 3000)]
                    .iter()
                    .all(|&(k, step)| {
                        g.get(&((*p).clone(), k))
                            .is_some_and(|m| m.range(from * step..).count() >= n as usize)
                    })
            })
        })
        .await;
        for p in &from_talkers {
            for (k, step) in [(MediaKind::Audio, 960), (MediaKind::Video, 3000)] {
                for i in from..from + n {
                    assert_eq!(
                        got[&((*p).clone(), k)].get(&(i * step)),
                        sent.get(&((*p).clone(), k, i * step)),
                        "{}: {p}'s {k:?} frame {i}",
                        names[me]
                    );
                }
            }
        }
    }
}

async fn wait_members(rooms: &[(String, Room)], n: usize) {
    for (_, r) in rooms {
        r.group()
            .wait(Duration::from_secs(30), |s| s.members.len() == n)
            .await
            .unwrap();
    }
}

fn room_config(url: &str, token: &str, name: &str) -> RoomConfig {
    let mut c = RoomConfig::new(url, token, "leaks", name);
    // The SFU's signalling through the recording proxy too, not to the node the key service
    // would place the room on (the same server, reached directly).
    c.sfu_url = url.to_owned();
    c.group.proposal_commit_delay = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_plaintext_reaches_logs_servers_or_storage_sqlite() {
    leak_scan(None).await;
}

/// The same with the key service's store in PostgreSQL: its content is searched as `pg_dump`
/// prints it and as the cluster's files hold it (tables and WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_plaintext_reaches_logs_servers_or_storage_postgresql() {
    leak_scan(Some(TempPostgres::start())).await;
}

/// The recorder and the subscriber are the process's: one scan at a time (nextest runs each
/// test in its own process anyway).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn leak_scan(pg: Option<TempPostgres>) {
    let _one = ONE_AT_A_TIME.lock().await;
    let logs = Logs::install();
    hazard::start();

    let tap = veil_sfu::Tap::new(1 << 16);
    let pg_database = pg.as_ref().map(TempPostgres::database);
    let server = InProcess::start("leaks", |cfg| {
        cfg.kds.departure_grace = Duration::from_secs(1);
        cfg.sfu.as_mut().expect("loopback runs the SFU").tap = Some(tap.clone());
        if let Some(url) = &pg_database {
            cfg.database = veil_server::database::Database::Postgres(url.clone());
        }
    })
    .await;
    let (packets, lagged) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tapped = tap.subscribe();
    let (store, lost) = (packets.clone(), lagged.clone());
    tokio::spawn(async move {
        loop {
            match tapped.recv().await {
                Ok(p) => store.lock().unwrap().push(p.payload),
                Err(RecvError::Lagged(n)) => _ = lost.fetch_add(n, Ordering::Relaxed),
                Err(RecvError::Closed) => break,
            }
        }
    });
    let (proxy, url) = Proxy::start(server.bound.grpc).await;
    let tokens: Vec<(String, String)> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| {
            let t = server.token("leaks", n, Duration::from_secs(600));
            ((*n).to_owned(), t)
        })
        .collect();
    let join = |i: usize| Room::join(room_config(&url, &tokens[i].1, &tokens[i].0));

    // Alice and bob talk (epoch 1), carol joins (epoch 2) and all three talk.
    let mut sent = Sent::new();
    let mut rooms = vec![
        ("alice".to_owned(), join(0).await.unwrap()),
        ("bob".to_owned(), join(1).await.unwrap()),
    ];
    wait_members(&rooms, 2).await;
    warm_up_rooms(&mut rooms).await;
    talk(&mut rooms, &[0, 1], 1_000, 10, &mut sent).await;
    rooms.push(("carol".to_owned(), join(2).await.unwrap()));
    wait_members(&rooms, 3).await;
    warm_up_rooms(&mut rooms).await;
    talk(&mut rooms, &[0, 1, 2], 2_000, 10, &mut sent).await;

    // Bob leaves (a member commits his removal), alice updates her keys; the two talk.
    let (_, bob) = rooms.remove(1);
    bob.leave().await.unwrap();
    wait_members(&rooms, 2).await;
    rooms[0].1.group().self_update().await.unwrap();
    let epoch = rooms[0].1.group().status().epoch.unwrap();
    rooms[1]
        .1
        .group()
        .wait(Duration::from_secs(30), |s| s.epoch == Some(epoch))
        .await
        .unwrap();
    talk(&mut rooms, &[0, 1], 3_000, 10, &mut sent).await;
    for (_, r) in rooms {
        r.leave().await.unwrap();
    }

    // The positive control: a fake secret, registered as one, logged in two encodings.
    let planted: Vec<u8> = frame(99, 0, 16);
    tracing::info!(planted = %hex::encode(&planted), "positive control");
    tracing::trace!(planted = ?planted, "positive control");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secrets = hazard::stop();

    let packets = packets.lock().unwrap().clone();
    assert_eq!(lagged.load(Ordering::Relaxed), 0, "the tap lost packets");

    // What is searched for: every secret; in logs, packets and storage also the tokens.
    let mut needles = Needles::default();
    let mut kinds: BTreeMap<SecretKind, usize> = BTreeMap::new();
    for s in &secrets {
        *kinds.entry(s.kind).or_default() += 1;
        needles.secret(&format!("{:?} {}", s.kind, s.label), &s.bytes);
    }
    needles.secret("the planted control", &planted);
    let mut windows = 0;
    for ((p, k, ts), f) in &sent {
        windows += needles.plaintext(&format!("{p}'s {k:?} frame at {ts}"), f);
    }
    let in_requests = needles.clone().build();
    for (name, token) in &tokens {
        needles.text(&format!("{name}'s token"), token);
        let signature = token.rsplit('.').next().unwrap();
        needles.text(&format!("{name}'s token signature"), signature);
    }
    let patterns = needles.len();
    let everywhere = needles.build();

    // The scanner finds a real secret in each of its encodings.
    let key = secrets
        .iter()
        .find(|s| s.kind == SecretKind::SframeKey)
        .expect("SFrame keys recorded");
    for (enc, p) in scan::encodings(&key.bytes) {
        let hay = [&b"<<"[..], &p, b">>"].concat();
        assert!(!everywhere.find(&hay).is_empty(), "{enc} not found");
    }

    let mut leaks: Vec<String> = Vec::new();
    let mut report = |place: &str, hay: &[u8], scanner: &scan::Scanner| {
        for (what, at) in scanner.find(hay) {
            if !what.starts_with("the planted control") {
                leaks.push(format!("{what} in {place}: …{}…", scan::context(hay, at)));
            }
        }
    };

    // (a) The logs; the planted control must be found there, in both encodings.
    let log = logs.bytes();
    if let Some(path) = std::env::var_os("VEIL_LEAK_LOG") {
        // For a person reading what was searched: the captured log, as searched.
        std::fs::write(path, &log).unwrap();
    }
    let planted_hits: Vec<String> = everywhere
        .find(&log)
        .into_iter()
        .map(|(w, _)| w)
        .filter(|w| w.starts_with("the planted control"))
        .collect();
    assert!(
        planted_hits.iter().any(|w| w.ends_with("(hex)"))
            && planted_hits.iter().any(|w| w.ends_with("(Debug)")),
        "the planted secret was not found in the logs: {planted_hits:?}"
    );
    report("the logs", &log, &everywhere);
    // (b) What the SFU received, and what the gRPC listener received.
    let payload_bytes: usize = packets.iter().map(|p| p.len()).sum();
    for p in &packets {
        report("a packet the SFU received", p, &everywhere);
    }
    let conns = proxy.connections();
    let (mut streams, mut messages, mut request_bytes) = (0, 0, 0);
    for c in &conns {
        request_bytes += c.len();
        report("a gRPC connection's bytes", c, &in_requests);
        let (n, msgs) = capture::grpc_messages(c);
        streams += n;
        messages += msgs.len();
        for m in &msgs {
            report("a gRPC request message", m, &in_requests);
        }
    }
    // (c) The server's storage after the call: every file of its data directory.
    let mut files = Vec::new();
    collect_files(server.dir.path(), &mut files);
    let mut stored = 0;
    for (path, bytes) in &files {
        stored += bytes.len();
        report(&format!("{}", path.display()), bytes, &everywhere);
    }
    if let (Some(pg), Some(url)) = (&pg, &pg_database) {
        let name = url.rsplit('/').next().unwrap();
        let dump = std::process::Command::new(veil_testkit::postgres::bin_dir().join("pg_dump"))
            .arg("-h")
            .arg(pg.socket_dir())
            .args(["-U", "postgres", "--data-only", name])
            .output()
            .unwrap();
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            text.contains("COPY ") && text.contains("leaks"),
            "pg_dump printed no row of the room"
        );
        let before = files.len();
        collect_files(pg.socket_dir(), &mut files);
        for (path, bytes) in &files[before..] {
            stored += bytes.len();
            report(&format!("{}", path.display()), bytes, &everywhere);
        }
        stored += dump.stdout.len();
        report("pg_dump", &dump.stdout, &everywhere);
        files.push(("pg_dump".into(), dump.stdout));
    }

    let lines = log.iter().filter(|&&b| b == b'\n').count();
    println!(
        "searched for {} secrets ({kinds:?}), {} tokens and {windows} plaintext windows of \
         {} frames ({patterns} patterns) in: {} log bytes ({lines} lines); {} SFU packets \
         ({payload_bytes} payload bytes); {} gRPC connections ({request_bytes} bytes, \
         {streams} streams, {messages} messages); {} stored files ({stored} bytes)",
        secrets.len(),
        tokens.len(),
        sent.len(),
        log.len(),
        packets.len(),
        conns.len(),
        files.len(),
    );
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );

    // Non-vacuous: something of each kind was searched, everywhere.
    for k in [
        SecretKind::SframeBaseKey,
        SecretKind::SframeSecret,
        SecretKind::SframeKey,
        SecretKind::SframeSalt,
        SecretKind::MlsExporterSecret,
        SecretKind::MlsResumptionPsk,
    ] {
        assert!(kinds.get(&k).copied().unwrap_or(0) >= 4, "{k:?}: {kinds:?}");
    }
    assert!(kinds[&SecretKind::SignaturePrivateKey] >= 3, "{kinds:?}");
    assert!(
        windows > 1_000 && lines > 1_000,
        "{windows} windows, {lines} lines"
    );
    // Every component logged: the key service, the SFU, MLS (openmls), WebRTC (webrtc-rs,
    // through `log`), HTTP/2 and gRPC.
    let text = String::from_utf8_lossy(&log);
    for target in [
        " veil_keys::",
        " veil_sfu::",
        " openmls::",
        " rtc",
        " h2::",
        " tonic::",
    ] {
        assert!(text.contains(target), "nothing logged by{target}");
    }
    assert!(packets.len() >= sent.len(), "{} packets", packets.len());
    assert!(
        streams > 0 && messages > 0,
        "{streams} streams, {messages} messages"
    );
    let db = if pg.is_some() { "pg_dump" } else { "veil.db" };
    assert!(stored > 0 && files.iter().any(|(p, _)| p.ends_with(db)));
}

/// Every regular file under `dir` (sockets and files that vanish while it walks are skipped).
fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&p, out);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&p)
        {
            out.push((p, bytes));
        }
    }
}

/// [`warm_up`] for named rooms.
async fn warm_up_rooms(rooms: &mut Vec<(String, Room)>) {
    let names: Vec<String> = rooms.iter().map(|(n, _)| n.clone()).collect();
    let mut plain: Vec<Room> = rooms.drain(..).map(|(_, r)| r).collect();
    warm_up(&mut plain, 2).await;
    rooms.extend(names.into_iter().zip(plain));
}
