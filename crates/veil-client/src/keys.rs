//! A thin client of the key-distribution service (`veil.keys.v1`): one method per RPC, the
//! access token on every call, and gRPC statuses turned into [`ClientError`]s a caller can act
//! on (rebase, retry, give up).
//!
//! A deployment with several replicas of the key service (specs/key-service.md §5.2) gives the
//! client their URLs as one comma-separated list. The client uses one replica at a time and
//! moves to the next when a call finds its replica unreachable (KDS-REP-04); the caller's
//! retry then goes to the next one. Every replica serves the same rooms from the same
//! database, so a member resubscribing from its epoch on another replica keeps its place in
//! the room's history.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use veil_proto::keys::v1 as pb;
use veil_proto::keys::v1::key_service_client::KeyServiceClient;

use crate::endpoint::Security;
use crate::error::ClientError;

/// Metadata key the service sets on ABORTED replies: the room's epoch.
const EPOCH_METADATA: &str = "veil-room-epoch";

/// Map a gRPC status to a [`ClientError`].
pub(crate) fn from_status(s: Status) -> ClientError {
    match s.code() {
        Code::Aborted => ClientError::Stale {
            room_epoch: s
                .metadata()
                .get(EPOCH_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            message: s.message().to_owned(),
        },
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            ClientError::Unavailable(s)
        }
        code => ClientError::Refused {
            code,
            message: s.message().to_owned(),
        },
    }
}

/// A connection to the key service, bound to one room and one access token.
#[derive(Debug, Clone)]
pub struct KeyClient {
    /// One client per replica, in the order the URL list gave them.
    replicas: Arc<[KeyServiceClient<Channel>]>,
    /// The replica in use (shared by clones, so a failover holds for all of them).
    current: Arc<AtomicUsize>,
    auth: MetadataValue<tonic::metadata::Ascii>,
    room: String,
}

impl KeyClient {
    /// A client of the service at `url` (e.g. `http://127.0.0.1:7443`) for `room` with `token`,
    /// with the default [`Security`]: plaintext to loopback only, `https://` verified against
    /// the system's roots. The connection is made on first use.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad URL or token.
    pub async fn connect(url: &str, token: &str, room: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, token, room, &Security::default()).await
    }

    /// [`connect`](Self::connect) with `security` (a private CA, or plaintext opted into).
    /// `url` may list replicas, comma-separated (KDS-REP-04).
    ///
    /// # Errors
    /// [`ClientError::Config`] for a bad URL or token, or a URL `security` refuses
    /// ([`crate::endpoint::endpoint`]).
    pub async fn connect_with(
        url: &str,
        token: &str,
        room: &str,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let replicas = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                // Lazy: an unreachable service shows up as UNAVAILABLE on the first call,
                // which callers retry, and the channel reconnects by itself after the service
                // restarts.
                let channel = crate::endpoint::endpoint(u, security)?.connect_lazy();
                Ok(KeyServiceClient::new(channel)
                    .max_decoding_message_size(16 << 20)
                    .max_encoding_message_size(16 << 20))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        if replicas.is_empty() {
            return Err(ClientError::config("the service URL is empty"));
        }
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::config("the token is not ASCII"))?;
        Ok(Self {
            replicas: replicas.into(),
            current: Arc::new(AtomicUsize::new(0)),
            auth,
            room: room.to_owned(),
        })
    }

    /// The replica in use: its index and a client of it.
    fn rpc(&self) -> (usize, KeyServiceClient<Channel>) {
        let i = self.current.load(Ordering::Relaxed) % self.replicas.len();
        (i, self.replicas[i].clone())
    }

    /// The error of a call to replica `i`; if that replica could not be reached, the next
    /// call goes to the next one (KDS-REP-04).
    fn failed(&self, i: usize, s: Status) -> ClientError {
        let e = from_status(s);
        if matches!(e, ClientError::Unavailable(_)) && self.replicas.len() > 1 {
            let next = (i + 1) % self.replicas.len();
            if self
                .current
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(from = i, to = next, error = %e, "key service replica unreachable; using the next");
            }
        }
        e
    }

    /// The room this client is bound to.
    #[must_use]
    pub fn room(&self) -> &str {
        &self.room
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }

    /// The service's external-sender key and limits.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn service_info(&mut self) -> Result<pb::ServiceInfo, ClientError> {
        let r = self.req(pb::GetServiceInfoRequest {});
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .get_service_info(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner())
    }

    /// Upload KeyPackages; returns how many this identity has available.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn publish_key_packages(&mut self, kps: Vec<Vec<u8>>) -> Result<u32, ClientError> {
        let r = self.req(pb::PublishKeyPackagesRequest {
            room: self.room.clone(),
            key_packages: kps,
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .publish_key_packages(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner()
            .available)
    }

    /// Take one KeyPackage of `identity`.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn claim_key_package(&mut self, identity: &str) -> Result<Vec<u8>, ClientError> {
        let r = self.req(pb::ClaimKeyPackageRequest {
            room: self.room.clone(),
            identity: identity.to_owned(),
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .claim_key_package(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner()
            .key_package)
    }

    /// Create the room from its epoch-0 GroupInfo.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn create_room(&mut self, group_info: Vec<u8>) -> Result<u64, ClientError> {
        let r = self.req(pb::CreateRoomRequest {
            room: self.room.clone(),
            group_info,
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .create_room(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner()
            .epoch)
    }

    /// The newest GroupInfo and its epoch.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn group_info(&mut self) -> Result<(u64, Vec<u8>), ClientError> {
        let r = self.req(pb::GetGroupInfoRequest {
            room: self.room.clone(),
        });
        let (i, mut rpc) = self.rpc();
        let g = rpc
            .get_group_info(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner();
        Ok((g.epoch, g.group_info))
    }

    /// Submit a commit.
    ///
    /// # Errors
    /// [`ClientError::Stale`] if another commit won the epoch; others as the RPC.
    pub async fn send_commit(
        &mut self,
        commit: Vec<u8>,
        welcome: Vec<u8>,
        group_info: Vec<u8>,
    ) -> Result<pb::SendCommitResponse, ClientError> {
        let r = self.req(pb::SendCommitRequest {
            room: self.room.clone(),
            commit,
            welcome,
            group_info,
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .send_commit(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner())
    }

    /// Announce leaving: the service proposes this identity's removal.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn leave(&mut self) -> Result<(), ClientError> {
        let r = self.req(pb::LeaveRequest {
            room: self.room.clone(),
        });
        let (i, mut rpc) = self.rpc();
        rpc.leave(r).await.map_err(|e| self.failed(i, e))?;
        Ok(())
    }

    /// Open the room's event stream (see `SubscribeRequest.from_epoch`).
    ///
    /// # Errors
    /// As the RPC.
    pub async fn subscribe(
        &mut self,
        from_epoch: Option<u64>,
    ) -> Result<tonic::Streaming<pb::RoomEvent>, ClientError> {
        let r = self.req(pb::SubscribeRequest {
            room: self.room.clone(),
            from_epoch,
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .subscribe(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner())
    }

    /// The SFU URL of the node the room is placed on (KDS-PLACE-02).
    ///
    /// # Errors
    /// `UNAVAILABLE` when no SFU node is live; others as the RPC.
    pub async fn placement(&mut self) -> Result<String, ClientError> {
        let r = self.req(pb::GetPlacementRequest {
            room: self.room.clone(),
        });
        let (i, mut rpc) = self.rpc();
        Ok(rpc
            .get_placement(r)
            .await
            .map_err(|e| self.failed(i, e))?
            .into_inner()
            .sfu_url)
    }

    /// End the room for good: its state, log and KeyPackages are deleted at the service and
    /// every open stream ends (`NOT_FOUND`). Needs a token with the `create` grant; meant for
    /// the application backend.
    ///
    /// # Errors
    /// As the RPC.
    pub async fn delete_room(&mut self) -> Result<(), ClientError> {
        let r = self.req(pb::DeleteRoomRequest {
            room: self.room.clone(),
        });
        let (i, mut rpc) = self.rpc();
        rpc.delete_room(r).await.map_err(|e| self.failed(i, e))?;
        Ok(())
    }
}
