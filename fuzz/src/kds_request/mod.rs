//! The `kds_request` target: every gRPC request of the key service, decoded from bytes and
//! served by a real [`KeyService`] over a fresh in-memory SQLite store, through the generated
//! trait's methods, as tonic would call them (the size caps, access tokens, names, and the
//! MLS validation of KeyPackages, GroupInfos and commits against a real room).
//!
//! Asserts, besides "no panic": no request is answered with `INTERNAL`. That code means "the
//! service or its database failed" (specs/key-service.md §6); bad input must get another one.
//!
//! Input: one scene byte (bit 0: the room `fuzz` exists, created by Alice; bit 1: Bob has
//! published KeyPackages), then requests, each `[op][len: u16 LE][len bytes]`:
//! - `op & 0x0F` 0..=8: a request message (protobuf) of GetServiceInfo, PublishKeyPackages,
//!   ClaimKeyPackage, CreateRoom, GetGroupInfo, SendCommit, Leave, DeleteRoom, Subscribe;
//!   9..=15: a request made of the fixture's MLS messages (CreateRoom, PublishKeyPackages,
//!   the commits adding Bob, updating Alice, Carol's external join, a claim of Bob's
//!   KeyPackage, a Subscribe replaying from epoch 0), whose main MLS message the bytes then
//!   mutate as `[offset: u16 LE][xor]` triples;
//! - `op >> 4 & 3`: the caller: Alice, Bob, Carol, or a token taken from the bytes (a length
//!   byte, then the token);
//! - `op & 0x40`: the request's room is set to `fuzz` (the tokens' room) after decoding.

mod fixture;

use std::time::Duration;

use prost::Message;
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use veil_keys::{Config, KeyService, Metrics};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::key_service_server::KeyService as _;

pub use fixture::{Fixture, ROOM};

/// Bytes of the input, read front to back.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A fresh service over a fresh store, set up as `scene` says.
async fn setup(f: &Fixture, scene: u8) -> KeyService {
    let cfg = Config {
        // Small enough that the fuzzer reaches the caps; the fixture's messages fit.
        max_message_bytes: 16 * 1024,
        max_key_packages_per_request: 4,
        key_package_cap: 8,
        // No departure timer fires while an input runs.
        departure_grace: Duration::from_secs(3600),
        ..Config::default()
    };
    let svc = KeyService::new(
        f.store(),
        f.verifier.clone(),
        cfg,
        Metrics::default().into(),
    )
    .expect("a service over an in-memory store");
    if scene & 1 != 0 {
        let r = pb::CreateRoomRequest {
            room: ROOM.into(),
            group_info: f.group_info.clone(),
        };
        svc.create_room(authorized(r, &f.tokens[0]).expect("ASCII"))
            .await
            .expect("the fixture room is created (did veil-keys's service-key format change?)");
    }
    if scene & 2 != 0 {
        let r = pb::PublishKeyPackagesRequest {
            room: ROOM.into(),
            key_packages: f.bob_key_packages.to_vec(),
        };
        svc.publish_key_packages(authorized(r, &f.tokens[1]).expect("ASCII"))
            .await
            .expect("Bob's KeyPackages are stored");
    }
    svc
}

fn authorized<T>(msg: T, token: &str) -> Option<Request<T>> {
    let mut req = Request::new(msg);
    let value = MetadataValue::try_from(format!("Bearer {token}")).ok()?;
    req.metadata_mut().insert("authorization", value);
    Some(req)
}

/// The refusal of bad input, checked: never `INTERNAL` (specs/key-service.md §6).
fn check(rpc: &str, res: Result<(), Status>) {
    if let Err(s) = res {
        assert_ne!(
            s.code(),
            Code::Internal,
            "{rpc} answered INTERNAL: {}",
            s.message()
        );
    }
}

/// `bytes` as `[offset: u16 LE][xor]` triples applied to `msg`.
fn flip(mut msg: Vec<u8>, bytes: &[u8]) -> Vec<u8> {
    for t in bytes.chunks_exact(3) {
        if !msg.is_empty() {
            let i = usize::from(u16::from_le_bytes([t[0], t[1]])) % msg.len();
            msg[i] ^= t[2];
        }
    }
    msg
}

/// A room field, set to the tokens' room when asked.
fn room(r: &mut String, set: bool) {
    if set {
        ROOM.clone_into(r);
    }
}

async fn one(svc: &KeyService, f: &Fixture, op: u8, token: &str, body: &[u8]) {
    let set = op & 0x40 != 0;
    macro_rules! call {
        ($rpc:literal, $method:ident, $msg:expr) => {{
            let Some(r) = authorized($msg, token) else {
                return;
            };
            check($rpc, svc.$method(r).await.map(drop));
        }};
    }
    macro_rules! decode {
        ($t:ty) => {{
            let Ok(mut m) = <$t>::decode(body) else {
                return;
            };
            room(&mut m.room, set);
            m
        }};
    }
    let fixed = |i: usize| [&f.add_bob, &f.self_update, &f.carol_joins][i];
    match op & 0x0F {
        0 => {
            let Ok(m) = pb::GetServiceInfoRequest::decode(body) else {
                return;
            };
            call!("GetServiceInfo", get_service_info, m);
        }
        1 => call!(
            "PublishKeyPackages",
            publish_key_packages,
            decode!(pb::PublishKeyPackagesRequest)
        ),
        2 => call!(
            "ClaimKeyPackage",
            claim_key_package,
            decode!(pb::ClaimKeyPackageRequest)
        ),
        3 => call!("CreateRoom", create_room, decode!(pb::CreateRoomRequest)),
        4 => call!(
            "GetGroupInfo",
            get_group_info,
            decode!(pb::GetGroupInfoRequest)
        ),
        5 => call!("SendCommit", send_commit, decode!(pb::SendCommitRequest)),
        6 => call!("Leave", leave, decode!(pb::LeaveRequest)),
        7 => call!("DeleteRoom", delete_room, decode!(pb::DeleteRoomRequest)),
        8 => subscribe(svc, authorized(decode!(pb::SubscribeRequest), token)).await,
        9 => {
            let m = pb::CreateRoomRequest {
                room: ROOM.into(),
                group_info: flip(f.group_info.clone(), body),
            };
            call!("CreateRoom", create_room, m);
        }
        10 => {
            let mut kps = f.bob_key_packages.to_vec();
            kps[0] = flip(kps[0].clone(), body);
            let m = pb::PublishKeyPackagesRequest {
                room: ROOM.into(),
                key_packages: kps,
            };
            call!("PublishKeyPackages", publish_key_packages, m);
        }
        i @ 11..=13 => {
            let [commit, welcome, group_info] = fixed(usize::from(i - 11)).clone();
            let m = pb::SendCommitRequest {
                room: ROOM.into(),
                commit: flip(commit, body),
                welcome,
                group_info,
            };
            call!("SendCommit", send_commit, m);
        }
        14 => {
            let m = pb::ClaimKeyPackageRequest {
                room: ROOM.into(),
                identity: "bob".into(),
            };
            call!("ClaimKeyPackage", claim_key_package, m);
        }
        _ => {
            let m = pb::SubscribeRequest {
                room: ROOM.into(),
                from_epoch: Some(0),
            };
            subscribe(svc, authorized(m, token)).await;
        }
    }
}

/// Subscribe, and read the stream up to `Synced` (the replay is where a stream's work is).
async fn subscribe(svc: &KeyService, req: Option<Request<pb::SubscribeRequest>>) {
    let Some(req) = req else { return };
    let mut stream = match svc.subscribe(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return check("Subscribe", Err(s)),
    };
    let read = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(pb::RoomEvent {
                    event: Some(pb::room_event::Event::Synced(_)),
                    ..
                }) => break,
                Ok(_) => {}
                Err(s) => return check("Subscribe (stream)", Err(s)),
            }
        }
    };
    // Synced follows the replay at once; a stream that never gets there is a hang to report.
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a Subscribe stream reaches Synced");
}

/// The target.
pub fn kds_request(data: &[u8]) {
    let f = Fixture::get();
    let mut inp = Input(data);
    let Some(scene) = inp.u8() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let svc = setup(f, scene).await;
        while let (Some(op), Some(lo), Some(hi)) = (inp.u8(), inp.u8(), inp.u8()) {
            let mut len = usize::from(u16::from_le_bytes([lo, hi]));
            let token = match op >> 4 & 3 {
                3 => {
                    let n = usize::from(inp.u8().unwrap_or(0));
                    len = len.saturating_sub(n + 1);
                    String::from_utf8_lossy(inp.bytes(n)).into_owned()
                }
                who => f.tokens[usize::from(who)].clone(),
            };
            let body = inp.bytes(len);
            one(&svc, f, op, &token, body).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's messages get past every check: the target reaches the service's success
    /// paths, not only its refusals.
    #[test]
    fn the_fixture_commits_are_accepted() {
        let f = Fixture::get();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let svc = setup(f, 3).await;
            let claim = pb::ClaimKeyPackageRequest {
                room: ROOM.into(),
                identity: "bob".into(),
            };
            let kp = svc
                .claim_key_package(authorized(claim, &f.tokens[0]).unwrap())
                .await
                .unwrap();
            assert_eq!(kp.into_inner().key_package, f.bob_key_packages[0]);
            let [commit, welcome, group_info] = f.add_bob.clone();
            let m = pb::SendCommitRequest {
                room: ROOM.into(),
                commit,
                welcome,
                group_info,
            };
            let r = svc
                .send_commit(authorized(m, &f.tokens[0]).unwrap())
                .await
                .unwrap();
            assert_eq!(r.into_inner().epoch, 1);
            let svc = setup(f, 1).await;
            let [commit, welcome, group_info] = f.carol_joins.clone();
            let m = pb::SendCommitRequest {
                room: ROOM.into(),
                commit,
                welcome,
                group_info,
            };
            let r = svc
                .send_commit(authorized(m, &f.tokens[2]).unwrap())
                .await
                .unwrap();
            assert_eq!(r.into_inner().epoch, 1);
        });
    }
}
