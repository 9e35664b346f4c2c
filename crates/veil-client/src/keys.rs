//! A thin client of the key-distribution service (`veil.keys.v1`): one method per RPC, the
//! access token on every call, and gRPC statuses turned into [`ClientError`]s a caller can act
//! on (rebase, retry, give up).

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
    rpc: KeyServiceClient<Channel>,
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
        let endpoint = crate::endpoint::endpoint(url, security)?;
        // Lazy: an unreachable service shows up as UNAVAILABLE on the first call, which callers
        // retry, and the channel reconnects by itself after the service restarts.
        let channel = endpoint.connect_lazy();
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::config("the token is not ASCII"))?;
        Ok(Self {
            rpc: KeyServiceClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            auth,
            room: room.to_owned(),
        })
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
        Ok(self
            .rpc
            .get_service_info(r)
            .await
            .map_err(from_status)?
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
        Ok(self
            .rpc
            .publish_key_packages(r)
            .await
            .map_err(from_status)?
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
        Ok(self
            .rpc
            .claim_key_package(r)
            .await
            .map_err(from_status)?
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
        Ok(self
            .rpc
            .create_room(r)
            .await
            .map_err(from_status)?
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
        let g = self
            .rpc
            .get_group_info(r)
            .await
            .map_err(from_status)?
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
        Ok(self
            .rpc
            .send_commit(r)
            .await
            .map_err(from_status)?
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
        self.rpc.leave(r).await.map_err(from_status)?;
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
        Ok(self
            .rpc
            .subscribe(r)
            .await
            .map_err(from_status)?
            .into_inner())
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
        self.rpc.delete_room(r).await.map_err(from_status)?;
        Ok(())
    }
}
