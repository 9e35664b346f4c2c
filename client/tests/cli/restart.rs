//! A server restart mid-call (issue 22, defect 3). Alice and bob (the SDK) and carol
//! (`veil join`) publish; `veil server` is SIGKILLed and started again 2 s later on the same
//! port and data directory. Every participant must notice, say so, and reconnect by itself:
//! alice and bob receive and decrypt new frames from both others within 5 s of the server
//! answering again, on the epoch they had (the SFU resumes without a new MLS epoch); carol's
//! `veil join` prints the loss and the return and receives again (SFU-CLI-01..04 in
//! specs/sfu.md; the key service's side in specs/key-service.md §7).

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veil_client::link::Link;
use veil_client::room::{Room, RoomConfig};
use veil_testkit::peer::Peer;

use crate::common::{Kill, Server, veil};

const ROOM: &str = "restart";

async fn join(server: &Server, identity: &str) -> Peer {
    let token = server.token(ROOM, identity);
    let room = Room::join(RoomConfig::new(&server.url(), &token, ROOM, identity))
        .await
        .unwrap();
    Peer::start(room)
}

/// A child's stdout, line by line.
type Lines = Arc<Mutex<Vec<String>>>;

/// `veil join` as carol, its stdout collected line by line.
fn carol(server: &Server) -> (Kill, Lines) {
    let token = server.token(ROOM, "carol");
    let mut child = Kill(
        veil()
            .args(["join", "--room", ROOM, "--seconds", "60", "--url"])
            .arg(server.url())
            .args(["--token", &token])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = BufReader::new(child.0.stdout.take().unwrap());
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// The `in N` count of a `veil join` status line.
fn frames_in(line: &str) -> Option<u64> {
    line.split(" | ")
        .find_map(|f| f.strip_prefix("in "))
        .and_then(|n| n.parse().ok())
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[test]
fn media_resumes_within_5_s_of_a_server_restart_on_the_same_epoch() {
    let mut server = Server::start(ROOM);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = join(&server, "alice").await;
        let bob = join(&server, "bob").await;
        let (_carol, carol_out) = carol(&server);
        let t0 = Instant::now();
        let setup = wait_until(t0 + Duration::from_secs(20), || {
            alice.heard_all_since(&["bob", "carol"], t0)
                && bob.heard_all_since(&["alice", "carol"], t0)
        })
        .await;
        assert!(setup, "the call never got going:\n{}", server.log());
        let epoch = alice.epoch();
        assert!(epoch.is_some());
        assert_eq!(bob.epoch(), epoch);
        assert_eq!(alice.members(), 3);

        server.kill();
        let killed = Instant::now();
        let before: u64 = carol_out
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| frames_in(l))
            .max()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.restart();
        let answered = Instant::now();

        // Media: new frames from every other participant, within 5 s of the server answering.
        let resumed = wait_until(answered + Duration::from_secs(5), || {
            alice.heard_all_since(&["bob", "carol"], killed)
                && bob.heard_all_since(&["alice", "carol"], killed)
        })
        .await;
        let took = answered.elapsed();
        assert!(
            resumed,
            "media did not resume within 5 s of the restart: alice heard {:?}, bob heard {:?} \
             (killed at {killed:?}); alice's events {:?}; bob's {:?}",
            alice.heard(),
            bob.heard(),
            alice.events(),
            bob.events(),
        );
        // ... decrypted under the keys of the epoch they had: no commit was needed.
        assert_eq!(alice.epoch(), epoch, "alice's epoch moved");
        assert_eq!(bob.epoch(), epoch, "bob's epoch moved");
        eprintln!("media resumed {took:?} after the server answered again");

        // Both links were reported lost and back. The key service's stream is back within
        // its back-off (≤ 2 s) of the server answering.
        let reported = wait_until(Instant::now() + Duration::from_secs(3), || {
            [&alice, &bob].iter().all(|p| {
                p.saw(Link::Sfu) == (true, true) && p.saw(Link::KeyService) == (true, true)
            })
        })
        .await;
        assert!(
            reported,
            "alice's events {:?}; bob's {:?}",
            alice.events(),
            bob.events()
        );
        assert!(alice.status().key_service.is_up());

        // Carol's `veil join` said so, and counts frames in again.
        let carol_ok = wait_until(Instant::now() + Duration::from_secs(3), || {
            let out = carol_out.lock().unwrap();
            let lost = out
                .iter()
                .position(|l| l.starts_with("connection to the SFU lost"));
            let back = out
                .iter()
                .position(|l| l.starts_with("reconnected to the SFU after"));
            matches!((lost, back), (Some(a), Some(b)) if a < b)
                && out
                    .iter()
                    .skip(back.unwrap_or(0))
                    .filter_map(|l| frames_in(l))
                    .any(|n| n > before)
        })
        .await;
        let out = carol_out.lock().unwrap().join("\n");
        assert!(carol_ok, "carol's output:\n{out}");

        alice.leave().await;
        bob.leave().await;
    });
}
