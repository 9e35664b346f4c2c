//! Hostile input (KDS-LIM-*, KDS-VAL-*, KDS-AUTH-*): each bad request gets its documented gRPC
//! status (specs/key-service.md §6) and leaves the database byte-for-byte unchanged.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use tonic::Code;
use veil_auth::{Grants, TokenKey};
use veil_client::ClientError;
use veil_client::keys::KeyClient;
use veil_mls::{CallSession, KeyConfig};

use crate::common::Server;
use crate::race::RawMember;

/// A digest of every row of every table.
fn db_digest(dir: &Path) -> Vec<u8> {
    if crate::POSTGRES {
        return pg_digest(crate::common::database(dir));
    }
    let c = rusqlite::Connection::open_with_flags(
        dir.join("veil.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut h = Sha256::new();
    for t in ["meta", "rooms", "events", "key_packages"] {
        let mut st = c
            .prepare(&format!("SELECT * FROM {t} ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i).unwrap();
                h.update(format!("{t}:{i}:{v:?};").as_bytes());
            }
        }
    }
    h.finalize().to_vec()
}

/// [`db_digest`] of a PostgreSQL database: every row as text, in a stable order. On a thread
/// of its own: the blocking client may not run inside the test's runtime.
fn pg_digest(url: String) -> Vec<u8> {
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut h = Sha256::new();
        for t in ["meta", "rooms", "events", "key_packages"] {
            let rows: String = c
                .query_one(
                    &format!(
                        "SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {t} x"
                    ),
                    &[],
                )
                .unwrap()
                .get(0);
            h.update(format!("{t}:{rows};").as_bytes());
        }
        h.finalize().to_vec()
    })
    .join()
    .unwrap()
}

struct Table<'a> {
    dir: &'a Path,
    rows: Vec<String>,
}

impl Table<'_> {
    /// Check one case: its outcome is `want` (`None` = OK) and the database did not change.
    fn check<T: std::fmt::Debug>(
        &mut self,
        name: &str,
        want: Option<Code>,
        before: &[u8],
        got: Result<T, ClientError>,
    ) {
        let code = got
            .as_ref()
            .err()
            .map(|e| e.code().unwrap_or(Code::Unknown));
        let msg = got
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(code, want, "{name}: {got:?}");
        assert_eq!(db_digest(self.dir), before, "{name}: the database changed");
        self.rows
            .push(format!("{name:<48} {:<20} {msg}", format!("{code:?}")));
    }
}

async fn client(server: &Server, token: &str, room: &str) -> KeyClient {
    KeyClient::connect(&server.url, token, room).await.unwrap()
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let room = "ward";
    let mut alice = RawMember::creator(&server, room, "alice").await;
    let gi0 = alice.s.group_info().unwrap();
    // A commit made in epoch 0 that will be stale once bob joins.
    let stale = alice.s.self_update().unwrap();
    alice.s.discard_commit().unwrap();
    let bob = RawMember::external(&server, room, "bob").await;
    let (bob_commit_epoch0, _) = (bob.s.epoch().unwrap() - 1, ());
    alice.catch_up(1).await;
    let mut carol = RawMember::creator(&server, "other", "carol").await;
    let foreign = carol.s.self_update().unwrap();
    // Setup that itself writes: erin publishes two KeyPackages, alice claims one.
    let erin = CallSession::new(b"erin", KeyConfig::default()).unwrap();
    let mut erin_c = client(&server, &server.token(room, "erin"), room).await;
    erin_c
        .publish_key_packages(vec![
            erin.key_package(false).unwrap(),
            erin.key_package(false).unwrap(),
        ])
        .await
        .unwrap();
    let claimed_kp = alice.c.claim_key_package("erin").await.unwrap();
    let unclaimed_kp = erin.key_package(false).unwrap();

    let (_, gi_now) = alice.c.group_info().await.unwrap();
    let valid = alice.s.self_update().unwrap();
    let (commit, gi) = (valid.commit.clone(), valid.group_info.clone().unwrap());
    let before = db_digest(dir.path());
    let mut t = Table {
        dir: dir.path(),
        rows: Vec::new(),
    };
    let mut a = alice.c.clone();
    let send = |mut c: KeyClient, commit: Vec<u8>, welcome: Vec<u8>, gi: Vec<u8>| async move {
        c.send_commit(commit, welcome, gi).await
    };

    // --- malformed and oversized -------------------------------------------------------------
    let r = send(a.clone(), b"\x00\x01garbage".to_vec(), vec![], gi.clone()).await;
    t.check("garbage commit", Some(Code::InvalidArgument), &before, r);
    let r = send(
        a.clone(),
        commit[..commit.len() - 7].to_vec(),
        vec![],
        gi.clone(),
    )
    .await;
    t.check("truncated commit", Some(Code::InvalidArgument), &before, r);
    let r = send(a.clone(), vec![], vec![], gi.clone()).await;
    t.check("empty commit", Some(Code::InvalidArgument), &before, r);
    let r = send(a.clone(), gi.clone(), vec![], gi.clone()).await;
    t.check(
        "a GroupInfo sent as commit",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = send(a.clone(), vec![7; (1 << 20) + 1], vec![], gi.clone()).await;
    t.check(
        "commit over the 1 MiB field cap",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = send(a.clone(), vec![7; 4 << 20], vec![], gi.clone()).await;
    t.check(
        "request over the 3 MiB message cap",
        Some(Code::OutOfRange),
        &before,
        r,
    );
    let sig_byte = commit.len() - 33 - 33 - 10;
    let r = send(a.clone(), flip(&commit, sig_byte), vec![], gi.clone()).await;
    t.check(
        "commit with a flipped signature byte",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = send(a.clone(), commit.clone(), vec![], b"junk".to_vec()).await;
    t.check("garbage GroupInfo", Some(Code::InvalidArgument), &before, r);
    let r = send(a.clone(), commit.clone(), vec![], gi0.clone()).await;
    t.check(
        "GroupInfo of another epoch",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = send(a.clone(), commit.clone(), vec![], flip(&gi, gi.len() - 1)).await;
    t.check(
        "GroupInfo with a flipped signature byte",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = send(a.clone(), commit.clone(), vec![], vec![]).await;
    t.check("no GroupInfo", Some(Code::InvalidArgument), &before, r);
    let r = send(a.clone(), commit.clone(), commit.clone(), gi.clone()).await;
    t.check(
        "Welcome on a commit that adds nobody",
        Some(Code::InvalidArgument),
        &before,
        r,
    );

    // --- wrong group, wrong identity, stale ---------------------------------------------------
    let r = send(
        a.clone(),
        foreign.commit.clone(),
        vec![],
        foreign.group_info.clone().unwrap(),
    )
    .await;
    t.check(
        "commit of another room's group",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let wrong_room = client(&server, &server.token(room, "alice"), "other").await;
    let r = send(wrong_room, commit.clone(), vec![], gi.clone()).await;
    t.check(
        "token for another room",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = send(bob.c.clone(), commit.clone(), vec![], gi.clone()).await;
    t.check(
        "alice's commit sent with bob's token",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = send(
        a.clone(),
        stale.commit.clone(),
        vec![],
        stale.group_info.clone().unwrap(),
    )
    .await;
    t.check("stale commit (epoch 0)", Some(Code::Aborted), &before, r);
    let bob_join = {
        crate::common::store(dir.path())
            .commit_at("ward", bob_commit_epoch0)
            .unwrap()
            .unwrap()
            .message
    };
    let r = send(a.clone(), bob_join.clone(), vec![], gi.clone()).await;
    t.check(
        "bob's accepted commit replayed by alice",
        Some(Code::Aborted),
        &before,
        r,
    );
    let r = send(bob.c.clone(), bob_join.clone(), vec![], gi.clone()).await;
    let dup = r.as_ref().map(|x| x.duplicate).unwrap_or(false);
    t.check("bob's accepted commit retried by bob", None, &before, r);
    assert!(dup, "a retry is acknowledged as a duplicate");

    let mut dave = CallSession::new(b"dave", KeyConfig::default()).unwrap();
    let ext = dave
        .join_external(&gi_now, std::time::Duration::ZERO)
        .unwrap();
    let r = send(
        client(&server, &server.token(room, "erin"), room).await,
        ext.commit.clone(),
        vec![],
        ext.group_info.clone().unwrap(),
    )
    .await;
    t.check(
        "external join by dave with erin's token",
        Some(Code::PermissionDenied),
        &before,
        r,
    );

    // --- tokens -------------------------------------------------------------------------------
    let expired = server.token_with(room, "alice", Grants::all(), 7200, 3600);
    let r = send(
        client(&server, &expired, room).await,
        commit.clone(),
        vec![],
        gi.clone(),
    )
    .await;
    t.check("expired token", Some(Code::Unauthenticated), &before, r);
    let r = send(
        client(&server, "", room).await,
        commit.clone(),
        vec![],
        gi.clone(),
    )
    .await;
    t.check("empty token", Some(Code::Unauthenticated), &before, r);
    let forged = {
        let k = TokenKey::generate("embedded").unwrap();
        veil_testkit::token::mint(&k, room, "alice", std::time::Duration::from_secs(600))
    };
    let r = send(
        client(&server, &forged, room).await,
        commit.clone(),
        vec![],
        gi.clone(),
    )
    .await;
    t.check(
        "token signed by another key",
        Some(Code::Unauthenticated),
        &before,
        r,
    );
    let no_join = server.token_with(
        room,
        "alice",
        Grants {
            join: false,
            ..Grants::all()
        },
        0,
        600,
    );
    let r = send(
        client(&server, &no_join, room).await,
        commit.clone(),
        vec![],
        gi.clone(),
    )
    .await;
    t.check(
        "token without the join grant",
        Some(Code::PermissionDenied),
        &before,
        r,
    );

    // --- rooms --------------------------------------------------------------------------------
    let no_create = server.token_with(
        "new",
        "dave",
        Grants {
            create: false,
            ..Grants::all()
        },
        0,
        600,
    );
    let r = client(&server, &no_create, "new")
        .await
        .create_room(gi0.clone())
        .await;
    t.check(
        "CreateRoom without the create grant",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = a.create_room(gi0.clone()).await;
    t.check(
        "CreateRoom of an existing room",
        Some(Code::AlreadyExists),
        &before,
        r,
    );
    let r = client(&server, &server.token("new", "dave"), "new")
        .await
        .create_room(gi0.clone())
        .await;
    t.check(
        "CreateRoom with another room's GroupInfo",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = client(&server, &server.token("ward2", "dave"), "ward2")
        .await
        .create_room(b"x".to_vec())
        .await;
    t.check(
        "CreateRoom with a garbage GroupInfo",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let mut eve = CallSession::new(b"eve", KeyConfig::default()).unwrap();
    eve.create_group(b"ward3", std::time::Duration::ZERO)
        .unwrap();
    let r = client(&server, &server.token("ward3", "dave"), "ward3")
        .await
        .create_room(eve.group_info().unwrap())
        .await;
    t.check(
        "CreateRoom with someone else's group",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = client(&server, &server.token("ward3", "eve"), "ward3")
        .await
        .create_room(eve.group_info().unwrap())
        .await;
    t.check(
        "CreateRoom without the service as external sender",
        Some(Code::FailedPrecondition),
        &before,
        r,
    );
    let r = client(&server, &server.token("nope", "dave"), "nope")
        .await
        .group_info()
        .await;
    t.check(
        "GetGroupInfo of an unknown room",
        Some(Code::NotFound),
        &before,
        r,
    );

    // --- KeyPackages --------------------------------------------------------------------------
    let mut bob_c = bob.c.clone();
    let r = bob_c
        .publish_key_packages(vec![erin.key_package(false).unwrap()])
        .await;
    t.check(
        "KeyPackage of another identity",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = bob_c.publish_key_packages(vec![b"junk".to_vec()]).await;
    t.check(
        "garbage KeyPackage",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let bob_kp = bob.s.key_package(false).unwrap();
    let r = bob_c.publish_key_packages(vec![bob_kp; 33]).await;
    t.check(
        "33 KeyPackages in one request",
        Some(Code::InvalidArgument),
        &before,
        r,
    );
    let r = bob_c.publish_key_packages(vec![]).await;
    t.check("no KeyPackage", Some(Code::InvalidArgument), &before, r);
    let r = erin_c.claim_key_package("erin").await;
    t.check(
        "ClaimKeyPackage by a non-member",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    let r = a.claim_key_package("zed").await;
    t.check(
        "ClaimKeyPackage of someone without any",
        Some(Code::NotFound),
        &before,
        r,
    );

    // --- adds ---------------------------------------------------------------------------------
    alice.s.discard_commit().unwrap();
    let add = alice.s.add_members(&[unclaimed_kp]).unwrap();
    let r = send(
        a.clone(),
        add.commit.clone(),
        add.welcome.clone().unwrap(),
        add.group_info.clone().unwrap(),
    )
    .await;
    t.check(
        "add with a KeyPackage never handed out",
        Some(Code::PermissionDenied),
        &before,
        r,
    );
    alice.s.discard_commit().unwrap();
    let add = alice.s.add_members(&[claimed_kp]).unwrap();
    let r = send(
        a.clone(),
        add.commit.clone(),
        vec![],
        add.group_info.clone().unwrap(),
    )
    .await;
    t.check(
        "add without its Welcome",
        Some(Code::InvalidArgument),
        &before,
        r,
    );

    // The same room still takes a valid commit, and that one does change the database.
    let r = send(
        a.clone(),
        add.commit.clone(),
        add.welcome.clone().unwrap(),
        add.group_info.clone().unwrap(),
    )
    .await;
    assert_eq!(r.unwrap().epoch, 2);
    assert_ne!(db_digest(dir.path()), before);
    eprintln!("{}", t.rows.join("\n"));
    let m = server.scrape().await;
    assert!(
        m.contains(r#"veil_keys_rejected_total{rpc="SendCommit",reason="stale_epoch"} 2"#),
        "{m}"
    );
}
