//! What the service cannot check (specs/key-service.md §4): a commit whose membership tag was
//! tampered with passes `PublicGroup` validation but no member can process it. Members recover
//! by rejoining with an external commit under their own signature key, which replaces their old
//! leaf; the room converges with nobody lost and no identity twice.

use veil_client::group::Group;

use crate::common::{Server, WAIT};
use crate::race::RawMember;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_rejoin_after_an_accepted_commit_they_cannot_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let room = "tamper";
    let mut mallory = RawMember::creator(&server, room, "mallory").await;
    let mut members = Vec::new();
    for name in ["alice", "bob"] {
        let g = Group::join_external(server.config(room, name))
            .await
            .unwrap();
        members.push(g);
        let epoch = members.last().unwrap().status().epoch.unwrap();
        mallory.catch_up(epoch).await;
    }
    for g in &members {
        g.wait(WAIT, |s| s.epoch == Some(2)).await.unwrap();
    }

    // Mallory's self-update with the last byte (inside the membership tag) flipped.
    let out = mallory.s.self_update().unwrap();
    let mut bad = out.commit.clone();
    *bad.last_mut().unwrap() ^= 1;
    let resp = mallory
        .c
        .send_commit(bad, vec![], out.group_info.unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.epoch, 3,
        "the service cannot see the tag and accepts it"
    );
    mallory.s.confirm_commit(std::time::Duration::ZERO).unwrap();

    // Alice and Bob refuse it and rejoin by external commit (epochs 4 and 5); everyone, Mallory
    // included, ends on one epoch with the same three members.
    for g in &members {
        g.wait(WAIT, |s| s.resyncs == 1 && s.epoch == Some(5))
            .await
            .unwrap();
    }
    mallory.catch_up(5).await;
    let auth = mallory.s.epoch_authenticator().unwrap();
    let mut names: Vec<String> = mallory
        .s
        .members()
        .into_iter()
        .map(|(_, id)| String::from_utf8(id).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob", "mallory"]);
    for g in &members {
        let s = g.status();
        assert_eq!(s.epoch_authenticator.as_deref(), Some(&auth[..]));
        let mut m = s.members.clone();
        m.sort();
        assert_eq!(m, names);
    }
}
