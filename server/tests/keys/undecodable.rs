//! PROTO-DEC-01: a request that does not decode as protobuf is `INVALID_ARGUMENT` on every RPC
//! of the key service, not `INTERNAL` ("the database failed; retry later", specs/key-service.md
//! §6). Issue 22, defect 6. The frames are made by hand and sent with a codec that writes raw
//! bytes.

use bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::common::Server;

/// A codec that sends the bytes it is given and returns the bytes it receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Field 1 (`room` in every request but `GetServiceInfo`'s) holding the bytes FF FE.
pub const BAD_UTF8: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
/// Field 1 as a varint: a string needs wire type 2.
pub const WRONG_WIRE_TYPE: &[u8] = &[0x08, 0x01];

/// An unknown field 15 of 200 nested, closed groups: over prost's recursion limit of 100
/// though every byte is in place.
pub fn deep_nesting() -> Vec<u8> {
    let mut b = vec![0x7b; 200];
    b.extend([0x7c; 200]);
    b
}

const RPCS: [&str; 8] = [
    "PublishKeyPackages",
    "ClaimKeyPackage",
    "CreateRoom",
    "GetGroupInfo",
    "SendCommit",
    "Leave",
    "DeleteRoom",
    "Subscribe",
];

async fn call(
    ch: &Channel,
    token: &str,
    rpc: &str,
    body: Vec<u8>,
) -> Result<Option<Vec<u8>>, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(format!("/veil.keys.v1.KeyService/{rpc}")).unwrap();
    let mut req = Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    if rpc == "Subscribe" {
        let mut s = g.server_streaming(req, path, Raw).await?.into_inner();
        s.message().await
    } else {
        g.unary(req, path, Raw).await.map(|r| Some(r.into_inner()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_on_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 10_000);
    let token = server.token("r", "mallory");
    let ch = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The raw client works: a well-formed (empty) GetServiceInfo request is answered.
    let info = call(&ch, &token, "GetServiceInfo", Vec::new()).await;
    assert!(matches!(info, Ok(Some(ref b)) if !b.is_empty()), "{info:?}");

    let mut cases: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    for rpc in RPCS {
        cases.push((rpc, "invalid UTF-8", BAD_UTF8.to_vec()));
        cases.push((rpc, "wrong wire type", WRONG_WIRE_TYPE.to_vec()));
        cases.push((rpc, "deep nesting", deep_nesting()));
    }
    // GetServiceInfo's request has no fields: only nesting can make it undecodable.
    cases.push(("GetServiceInfo", "deep nesting", deep_nesting()));

    let mut wrong = Vec::new();
    for (rpc, shape, body) in cases {
        match call(&ch, &token, rpc, body).await {
            Err(s)
                if s.code() == Code::InvalidArgument
                    && s.message().starts_with("malformed request: ") => {}
            other => wrong.push(format!("{rpc} / {shape}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The connection and the service are fine afterwards.
    let info = call(&ch, &token, "GetServiceInfo", Vec::new()).await;
    assert!(info.is_ok(), "{info:?}");
}
