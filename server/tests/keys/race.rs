//! Commit ordering under contention (KDS-ORD-01): 20 members commit on one epoch at the same
//! moment, 50 times; the service accepts exactly one each time and everyone converges.

use std::time::Duration;

use tokio_stream::StreamExt as _;
use tonic::Code;
use veil_client::ClientError;
use veil_client::keys::KeyClient;
use veil_mls::{CallSession, KeyConfig, Processed};
use veil_proto::keys::v1::RoomEvent;
use veil_proto::keys::v1::room_event::Event as Ev;

use crate::common::Server;

const NOW: Duration = Duration::ZERO;

/// A member driven by hand: its session, its client and its event stream.
pub struct RawMember {
    pub s: CallSession,
    pub c: KeyClient,
    events: tonic::Streaming<RoomEvent>,
}

impl RawMember {
    pub async fn parts(server: &Server, room: &str, name: &str) -> (CallSession, KeyClient) {
        let c = KeyClient::connect(&server.url, &server.token(room, name), room)
            .await
            .unwrap();
        (
            CallSession::new(name.as_bytes(), KeyConfig::default()).unwrap(),
            c,
        )
    }

    pub async fn creator(server: &Server, room: &str, name: &str) -> Self {
        let (mut s, mut c) = Self::parts(server, room, name).await;
        let info = c.service_info().await.unwrap();
        s.create_group_with_external_senders(
            room.as_bytes(),
            &[(info.external_sender_key, info.external_sender_identity)],
            NOW,
        )
        .unwrap();
        c.create_room(s.group_info().unwrap()).await.unwrap();
        let events = c.subscribe(Some(0)).await.unwrap();
        Self { s, c, events }
    }

    pub async fn external(server: &Server, room: &str, name: &str) -> Self {
        let (mut s, mut c) = Self::parts(server, room, name).await;
        let (_, gi) = c.group_info().await.unwrap();
        let out = s.join_external(&gi, NOW).unwrap();
        c.send_commit(out.commit, vec![], out.group_info.unwrap())
            .await
            .unwrap();
        let events = c.subscribe(s.epoch()).await.unwrap();
        Self { s, c, events }
    }

    /// Read the room's stream until it ends with an error status.
    pub async fn next_status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.events.next())
                .await
                .expect("no event in 30 s")
            {
                Some(Ok(_)) => {}
                Some(Err(s)) => return s,
                None => panic!("the stream ended without a status"),
            }
        }
    }

    /// Process the room's commits until this member is at `epoch`.
    pub async fn catch_up(&mut self, epoch: u64) {
        while self.s.epoch().unwrap() < epoch {
            let ev = tokio::time::timeout(Duration::from_secs(30), self.events.next())
                .await
                .expect("no event in 30 s")
                .unwrap()
                .unwrap();
            if let Some(Ev::Commit(c)) = ev.event
                && c.epoch == self.s.epoch().unwrap()
            {
                match self.s.process(&c.message, NOW).unwrap() {
                    Processed::EpochChanged { .. } | Processed::OwnCommitMerged { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_commits_one_winner_fifty_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 600_000);
    let room = "race";
    let mut members = vec![RawMember::creator(&server, room, "m00").await];
    for i in 1..20 {
        let m = RawMember::external(&server, room, &format!("m{i:02}")).await;
        let epoch = m.s.epoch().unwrap();
        for other in &mut members {
            other.catch_up(epoch).await;
        }
        members.push(m);
    }
    let mut epoch = members[0].s.epoch().unwrap();
    assert_eq!(epoch, 19);

    for trial in 0..50 {
        epoch = one_round(&mut members, epoch, trial).await;
    }
}

/// Every member builds a self-update on `epoch` and all are sent at once: exactly one is
/// accepted (the others get `ABORTED`), every member processes the winner from its own stream
/// and all end in `epoch + 1` with one authenticator. Returns the new epoch.
pub async fn one_round(members: &mut [RawMember], epoch: u64, trial: usize) -> u64 {
    let outs: Vec<_> = members
        .iter_mut()
        .map(|m| m.s.self_update().unwrap())
        .collect();
    let sends = members.iter().zip(outs).map(|(m, out)| {
        let mut c = m.c.clone();
        tokio::spawn(async move {
            c.send_commit(out.commit, vec![], out.group_info.unwrap())
                .await
        })
    });
    let results: Vec<Result<_, ClientError>> = futures_join(sends.collect()).await;
    let won: Vec<usize> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().map(|_| i))
        .collect();
    assert_eq!(won.len(), 1, "trial {trial}: {results:?}");
    for r in &results {
        match r {
            Ok(resp) => assert_eq!(resp.epoch, epoch + 1),
            Err(e) => assert_eq!(e.code(), Some(Code::Aborted), "trial {trial}: {e}"),
        }
    }
    let w = won[0];
    members[w].s.confirm_commit(NOW).unwrap();
    let epoch = epoch + 1;
    for (i, m) in members.iter_mut().enumerate() {
        if i != w {
            m.s.discard_commit().unwrap();
        }
        m.catch_up(epoch).await;
    }
    let auth = members[0].s.epoch_authenticator().unwrap();
    for m in members.iter() {
        assert_eq!(m.s.epoch(), Some(epoch));
        assert_eq!(m.s.epoch_authenticator().unwrap(), auth, "trial {trial}");
    }
    epoch
}

async fn futures_join<T: Send + 'static>(hs: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}
