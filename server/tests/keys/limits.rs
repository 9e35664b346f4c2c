//! What one client may make the service hold (issue "Hostile clients and restarts", defects 1
//! and 5): replays read page by page (KDS-LIM-04), replay for members only (KDS-FAN-04),
//! stream caps (KDS-LIM-05), `authenticated_data` capped (KDS-LIM-02), names bounded and
//! echoes clipped (KDS-LIM-03), and rooms that end when everyone has gone (KDS-GC-01..03).

use std::time::{Duration, Instant};

use tonic::Code;
use veil_auth::Grants;
use veil_client::ClientError;
use veil_client::keys::KeyClient;
use veil_proto::keys::v1::room_event::Event as Ev;

use veil_keys::store::{Event, EventKind};

use crate::common::Server;
use crate::race::RawMember;

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn code<T: std::fmt::Debug>(r: &Result<T, ClientError>) -> Option<Code> {
    r.as_ref().err().and_then(ClientError::code)
}

async fn client(server: &Server, token: &str, room: &str) -> KeyClient {
    KeyClient::connect(&server.url, token, room).await.unwrap()
}

const MIB: usize = 1 << 20;

/// A refusal with `want` whose message is short and does not echo a long name.
fn short<T: std::fmt::Debug>(r: &Result<T, ClientError>, want: Code) {
    let e = r.as_ref().unwrap_err();
    assert_eq!(e.code(), Some(want), "{e}");
    let msg = e.to_string();
    assert!(msg.len() < 700, "a {} byte status message", msg.len());
    assert!(!msg.contains(&"x".repeat(200)), "the name is echoed: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_unread_replays_of_a_100_mb_log_hold_under_100_mb() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = Server::start(dir.path(), 600_000);
        RawMember::creator(&server, "ward", "alice").await;
    }
    // A 100 MiB log: 100 one-MiB entries written into the log table as the store writes it.
    // The replay serves rows as stored, so how they got there does not matter here (a member
    // could send as much through SendCommit before KDS-LIM-02 capped authenticated_data).
    {
        let store = crate::common::store(dir.path());
        let mut room = store.room("ward").unwrap().unwrap();
        let events: Vec<Event> = (0..100)
            .map(|i| Event {
                seq: room.next_seq + i,
                kind: EventKind::Proposal,
                epoch: 0,
                actor: "alice".into(),
                recipient: None,
                message: vec![i as u8; MIB],
                hash: None,
            })
            .collect();
        room.next_seq += 100;
        store.append(&room, &events, &[]).unwrap();
    }
    let server = Server::start_with(dir.path(), &["--max-streams-per-identity", "16"], None);
    let pid = server.pid();
    let start_kib = status_kib(pid, "VmRSS");
    let token = server.token("ward", "alice");
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut c = client(&server, &token, "ward").await;
        let s = c.subscribe(Some(0)).await.unwrap();
        streams.push((s, c));
    }
    // Nobody reads; give the server time to fill whatever it would buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, peak) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
    println!(
        "server memory, 10 unread replays of a 100 MiB log: {start_kib} KiB at start, {rss} KiB \
         with the streams open, peak {peak} KiB"
    );
    assert!(
        peak < 100 * 1024,
        "the server peaked at {peak} KiB with 10 unread replay streams"
    );
    // The replay is still whole and in order for a client that reads.
    let (mut s, _c) = streams.pop().unwrap();
    let mut seen = Vec::new();
    loop {
        let ev = s.message().await.unwrap().expect("the stream ended early");
        match ev.event {
            Some(Ev::Proposal(p)) => {
                assert_eq!(p.message.len(), MIB);
                seen.push(p.message[0]);
            }
            Some(Ev::Synced(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (0..100).map(|i| i as u8).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_replay_and_streams_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let _alice = RawMember::creator(&server, "ward", "alice").await;
    // A non-member with the join grant: no replay of the handshake log.
    let join_only = Grants {
        join: true,
        ..Grants::default()
    };
    let mallory = server.token_with("ward", "mallory", join_only, 0, 600);
    let mut m = client(&server, &mallory, "ward").await;
    let r = m.subscribe(Some(0)).await;
    assert_eq!(code(&r), Some(Code::PermissionDenied), "{r:?}");
    // Live events only: it may wait for its Welcome.
    let mut live = m.subscribe(None).await.unwrap();
    let first = live.message().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(Ev::Synced(_))),
        "a non-member is owed nothing before Synced: {first:?}"
    );
    // alice holds one stream (RawMember); three more reach the cap of four.
    let token = server.token("ward", "alice");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = client(&server, &token, "ward").await;
        held.push(c.subscribe(Some(0)).await.unwrap());
    }
    let mut c = client(&server, &token, "ward").await;
    let r = c.subscribe(Some(0)).await;
    assert_eq!(code(&r), Some(Code::ResourceExhausted), "{r:?}");
    // Closing one frees its place once the server sees it go.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.subscribe(Some(0)).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(Code::ResourceExhausted) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_bounded_and_refusals_are_short() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let mut alice = RawMember::creator(&server, "ward", "alice").await;
    let long = "x".repeat(20_000);
    // A 20 kB room name with a token for another room: a short INVALID_ARGUMENT, which a
    // client with default gRPC limits reads (it used to get RESOURCE_EXHAUSTED).
    let mut c = client(&server, &server.token("ward", "alice"), &long).await;
    short(&c.group_info().await, Code::InvalidArgument);
    // A 20 kB identity to claim.
    short(
        &alice.c.claim_key_package(&long).await,
        Code::InvalidArgument,
    );
    // A control character in the request's room name.
    let mut c = client(
        &server,
        &server.token("ward", "alice"),
        "ward
",
    )
    .await;
    short(&c.group_info().await, Code::InvalidArgument);
    // The longest name within the rule, for another room: PERMISSION_DENIED, short enough.
    let mut c = client(&server, &server.token("ward", "alice"), &long[..255]).await;
    let e = c.group_info().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    assert!(e.to_string().len() < 700, "{e}");
    // Nothing long reached the log either.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        !log.contains(&"x".repeat(600)),
        "a refused name was logged whole"
    );
}

/// A room of one member made with openmls directly, so the commit can carry
/// `authenticated_data` (Veil's own clients never set any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_data_over_the_cap_is_refused() {
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let mut c = client(&server, &server.token("ward", "alice"), "ward").await;
    let info = c.service_info().await.unwrap();
    let provider = OpenMlsRustCrypto::default();
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"alice".to_vec()).into(),
        signature_key: signer.public().into(),
    };
    let senders = vec![ExternalSender::new(
        SignaturePublicKey::from(info.external_sender_key),
        BasicCredential::new(info.external_sender_identity).into(),
    )];
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(cs)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .with_group_context_extensions(
            Extensions::from_vec(vec![Extension::ExternalSenders(senders)]).unwrap(),
        )
        .build();
    let mut g = MlsGroup::new_with_group_id(
        &provider,
        &signer,
        &cfg,
        GroupId::from_slice(b"ward"),
        credential,
    )
    .unwrap();
    let gi = g
        .export_group_info(provider.crypto(), &signer, true)
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    c.create_room(gi).await.unwrap();
    let mut commit_with = |aad: usize| {
        g.set_aad(vec![0xAA; aad]);
        let (commit, _, gi) = g
            .self_update(&provider, &signer, LeafNodeParameters::default())
            .unwrap()
            .into_messages();
        let out = (
            commit.tls_serialize_detached().unwrap(),
            gi.unwrap().tls_serialize_detached().unwrap(),
        );
        g.clear_pending_commit(provider.storage()).unwrap();
        out
    };
    let (big, big_gi) = commit_with(4097);
    let r = c.send_commit(big, vec![], big_gi).await;
    assert_eq!(code(&r), Some(Code::InvalidArgument), "{r:?}");
    assert!(
        r.unwrap_err().to_string().contains("authenticated_data"),
        "the refusal names the field"
    );
    let (ok, ok_gi) = commit_with(4096);
    assert_eq!(c.send_commit(ok, vec![], ok_gi).await.unwrap().epoch, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_everyone_left_is_deleted_and_delete_room_ends_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--departure-grace-ms", "200", "--room-idle-ms", "200"],
        None,
    );
    // KDS-GC-02: alice creates "ward", subscribes, and goes. After the grace she is departed;
    // once the room is idle it is over and its rows are gone.
    {
        let alice = RawMember::creator(&server, "ward", "alice").await;
        drop(alice);
    }
    let mut c = client(&server, &server.token("ward", "alice"), "ward").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Looking the room up keeps it in memory, so look only now and then.
        tokio::time::sleep(Duration::from_millis(600)).await;
        match c.group_info().await {
            Err(e) if e.code() == Some(Code::NotFound) => break,
            r => assert!(Instant::now() < deadline, "still there: {r:?}"),
        }
    }
    let store = crate::common::store(dir.path());
    let rows = store.rooms().unwrap().len()
        + store
            .log_page("ward", 0, 0, u64::MAX >> 1, usize::MAX)
            .unwrap()
            .len();
    assert_eq!(rows, 0, "the room's rows outlived it");
    assert!(
        server
            .scrape()
            .await
            .contains("veil_keys_rooms_deleted_total 1")
    );

    // KDS-GC-03: the application backend ends a room with members still in it.
    let mut bob = RawMember::creator(&server, "clinic", "bob").await;
    let join_only = Grants {
        join: true,
        ..Grants::default()
    };
    let mut no_grant = client(
        &server,
        &server.token_with("clinic", "bob", join_only, 0, 600),
        "clinic",
    )
    .await;
    let r = no_grant.delete_room().await;
    assert_eq!(code(&r), Some(Code::PermissionDenied), "{r:?}");
    let mut backend = client(&server, &server.token("clinic", "backend"), "clinic").await;
    backend.delete_room().await.unwrap();
    let ended = bob.next_status().await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    let r = bob.c.group_info().await;
    assert_eq!(code(&r), Some(Code::NotFound), "{r:?}");
    let r = backend.delete_room().await;
    assert_eq!(code(&r), Some(Code::NotFound), "{r:?}");
}

/// LIM-RATE-01 (specs/limits.md): requests per second per token holder. Over its burst, alice
/// is refused with RESOURCE_EXHAUSTED and a message that says to slow down; bob, in the same
/// room at the same moment, and alice in another room are served; a second later alice is
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_refused_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &["--max-requests-per-second", "2", "--request-burst", "3"],
        None,
    );
    let mut alice = client(&server, &server.token("ward", "alice"), "ward").await;
    let mut bob = client(&server, &server.token("ward", "bob"), "ward").await;
    let mut alice_elsewhere = client(&server, &server.token("hall", "alice"), "hall").await;
    // No room yet: each call is a NOT_FOUND, counted all the same.
    for _ in 0..3 {
        let r = alice.group_info().await;
        assert_eq!(code(&r), Some(Code::NotFound), "{r:?}");
    }
    let r = alice.group_info().await;
    let e = r.as_ref().unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("slow down"), "{e}");
    // The same moment: the others have their own buckets.
    let r = bob.group_info().await;
    assert_eq!(code(&r), Some(Code::NotFound), "bob is unaffected: {r:?}");
    let r = alice_elsewhere.group_info().await;
    assert_eq!(
        code(&r),
        Some(Code::NotFound),
        "another room's token: {r:?}"
    );
    // Two per second: served again after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = alice.group_info().await;
    assert_eq!(code(&r), Some(Code::NotFound), "alice after a pause: {r:?}");
    let metrics = server.scrape().await;
    assert!(
        metrics.contains("reason=\"rate_limited\""),
        "the refusal is counted"
    );
}
