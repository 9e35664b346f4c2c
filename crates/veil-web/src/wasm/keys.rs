//! The key service over gRPC-Web: the RPCs the member asks for, made with the same generated
//! client a native participant uses, over `fetch` instead of HTTP/2.

use tonic::{Code as GrpcCode, Request as GrpcRequest, Status};
use tonic_web_wasm_client::Client;
use veil_call::{Code, Failure, Reply, Request, RequestId, ServiceEvent};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::key_service_client::KeyServiceClient;
use veil_proto::keys::v1::room_event::Event as Ev;

/// Metadata the service sets on ABORTED replies: the room's epoch (specs/key-service.md §6).
const EPOCH_METADATA: &str = "veil-room-epoch";
/// Largest reply accepted (a GroupInfo with its ratchet tree, a Welcome).
const MAX_MESSAGE: usize = 16 << 20;

/// One room's key-service client with its token.
#[derive(Clone)]
pub(crate) struct Keys {
    rpc: KeyServiceClient<Client>,
    token: String,
    room: String,
}

/// A request finished: its reply, or the event stream it opened.
pub(crate) enum Completed {
    Reply(RequestId, Reply),
    Stream(RequestId, Result<tonic::Streaming<pb::RoomEvent>, Failure>),
}

impl Keys {
    pub(crate) fn new(base_url: &str, token: &str, room: &str) -> Self {
        Self {
            rpc: KeyServiceClient::new(Client::new(base_url.to_owned()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            token: token.to_owned(),
            room: room.to_owned(),
        }
    }

    fn req<T>(&self, msg: T) -> GrpcRequest<T> {
        let mut r = GrpcRequest::new(msg);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// Make one RPC the member asked for.
    pub(crate) async fn execute(mut self, id: RequestId, req: Request) -> Completed {
        let room = self.room.clone();
        let reply = |r: Result<Reply, Status>| {
            Completed::Reply(id, r.unwrap_or_else(|s| Reply::Failed(failure(&s))))
        };
        match req {
            Request::ServiceInfo => {
                let r = self.req(pb::GetServiceInfoRequest {});
                reply(self.rpc.get_service_info(r).await.map(|i| {
                    let i = i.into_inner();
                    Reply::ServiceInfo {
                        external_sender_key: i.external_sender_key,
                        external_sender_identity: i.external_sender_identity,
                    }
                }))
            }
            Request::CreateRoom { group_info } => {
                let r = self.req(pb::CreateRoomRequest { room, group_info });
                reply(self.rpc.create_room(r).await.map(|_| Reply::Ok))
            }
            Request::GroupInfo => {
                let r = self.req(pb::GetGroupInfoRequest { room });
                reply(self.rpc.get_group_info(r).await.map(|g| {
                    let g = g.into_inner();
                    Reply::GroupInfo {
                        epoch: g.epoch,
                        group_info: g.group_info,
                    }
                }))
            }
            Request::PublishKeyPackages { key_packages } => {
                let r = self.req(pb::PublishKeyPackagesRequest { room, key_packages });
                reply(self.rpc.publish_key_packages(r).await.map(|_| Reply::Ok))
            }
            Request::ClaimKeyPackage { identity } => {
                let r = self.req(pb::ClaimKeyPackageRequest { room, identity });
                reply(
                    self.rpc
                        .claim_key_package(r)
                        .await
                        .map(|k| Reply::KeyPackage(k.into_inner().key_package)),
                )
            }
            Request::SendCommit {
                commit,
                welcome,
                group_info,
            } => {
                let r = self.req(pb::SendCommitRequest {
                    room,
                    commit,
                    welcome,
                    group_info,
                });
                reply(
                    self.rpc
                        .send_commit(r)
                        .await
                        .map(|c| Reply::CommitAccepted {
                            epoch: c.into_inner().epoch,
                        }),
                )
            }
            Request::Leave => {
                let r = self.req(pb::LeaveRequest { room });
                reply(self.rpc.leave(r).await.map(|_| Reply::Ok))
            }
            Request::Subscribe { from_epoch } => {
                let r = self.req(pb::SubscribeRequest { room, from_epoch });
                Completed::Stream(
                    id,
                    self.rpc
                        .subscribe(r)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| failure(&s)),
                )
            }
        }
    }
}

/// A gRPC status in the member's terms (as the native SDK maps it).
pub(crate) fn failure(s: &Status) -> Failure {
    match s.code() {
        GrpcCode::Aborted => Failure::Stale {
            room_epoch: s
                .metadata()
                .get(EPOCH_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            message: s.message().to_owned(),
        },
        GrpcCode::Unavailable
        | GrpcCode::Unknown
        | GrpcCode::Cancelled
        | GrpcCode::DeadlineExceeded
        | GrpcCode::Internal => Failure::Unavailable(super::status_text(s)),
        code => Failure::Refused {
            code: Code::from_i32(code as i32),
            message: s.message().to_owned(),
        },
    }
}

/// A room event in the member's terms.
pub(crate) fn service_event(ev: pb::RoomEvent) -> Option<ServiceEvent> {
    Some(match ev.event? {
        Ev::Commit(c) => ServiceEvent::Commit {
            epoch: c.epoch,
            message: c.message,
        },
        Ev::Proposal(p) => ServiceEvent::Proposal {
            epoch: p.epoch,
            message: p.message,
            removes: p.removes,
        },
        Ev::Welcome(w) => ServiceEvent::Welcome { message: w.message },
        Ev::Synced(s) => ServiceEvent::Synced { epoch: s.epoch },
    })
}
