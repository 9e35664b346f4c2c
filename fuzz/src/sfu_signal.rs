//! The `sfu_signal` target: a participant's signalling session with a real SFU ([`EdgeSfu`],
//! one worker on a loopback port) through the generated gRPC trait, as tonic would call it:
//! `Open` with the first request, then each further request through `Send` (SFU-WEB-01, the
//! same session loop as a `Signal` stream). Every request type is decoded from bytes: join,
//! offer, answer, candidate, subscribe, unsubscribe, layer and SVC-layer requests, leave.
//!
//! Asserts, besides "no panic" (in any task or worker thread): no refusal is `INTERNAL`, as a
//! status or as a `RequestFailed` (bad input is the caller's fault, specs/sfu.md "Errors"),
//! and the session ends once it leaves, so the next input starts from an empty room.
//!
//! Input: requests, each `[flags][len: u16 LE][len bytes of a SignalRequest]`; the first opens
//! the session. Flags: bit 0 sets a join's room to `fuzz` (the token's); bit 1 replaces the
//! SDP of a join, offer or answer with a Chromium-shaped offer ([`crate::sfu_sdp::OFFER`]).
//! After each request the driver sends an empty request and waits for its `RequestFailed`, so
//! the session has handled the request before the next one goes.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use veil_auth::{Claims, Grants, TokenKey, Verifier};
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_server::Sfu as _;
use veil_sfu::grpc::SfuService;
use veil_sfu::{EdgeSfu, SfuConfig};

use crate::sfu_sdp::OFFER;

/// The id of the empty request that marks "everything before it is handled".
const BARRIER: u32 = u32::MAX;

struct World {
    rt: tokio::runtime::Runtime,
    svc: SfuService<EdgeSfu>,
    key: TokenKey,
    /// Inputs so far: each joins as its own identity, so that the SFU's per-token request
    /// rate (LIM-RATE-01) never throttles the fuzzer, and no input meets the previous one's
    /// participant.
    inputs: std::sync::atomic::AtomicU64,
}

impl World {
    fn token(&self) -> String {
        let n = self
            .inputs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let day = Duration::from_secs(86_400);
        let claims = Claims::new(format!("fuzzer{n}"), "fuzz", Grants::all(), now, day);
        self.key.mint(&claims).expect("mint")
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let cfg = SfuConfig {
            workers: 1,
            ..SfuConfig::default()
        };
        let sfu = rt
            .block_on(async { EdgeSfu::new(cfg) })
            .expect("an SFU on loopback");
        let key = TokenKey::generate("fuzz").expect("token key");
        let svc = SfuService::new(sfu, Verifier::new([key.clone()]).expect("verifier"));
        World {
            rt,
            svc,
            key,
            inputs: 0.into(),
        }
    })
}

fn authorized<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    let v = MetadataValue::try_from(format!("Bearer {token}")).expect("ASCII token");
    req.metadata_mut().insert("authorization", v);
    req
}

fn not_internal(what: &str, s: &Status) {
    assert_ne!(
        s.code(),
        Code::Internal,
        "{what}: INTERNAL: {}",
        s.message()
    );
}

/// One request as the input says, its flags applied.
fn request(flags: u8, bytes: &[u8]) -> Option<pb::SignalRequest> {
    use pb::signal_request::Request as R;
    let mut m = pb::SignalRequest::decode(bytes).ok()?;
    m.id = m.id.min(BARRIER - 1);
    match &mut m.request {
        Some(R::Join(j)) => {
            if flags & 1 != 0 {
                "fuzz".clone_into(&mut j.room);
            }
            if flags & 2 != 0 {
                OFFER.clone_into(&mut j.offer_sdp);
            }
        }
        Some(R::Offer(d) | R::Answer(d)) if flags & 2 != 0 => OFFER.clone_into(&mut d.sdp),
        _ => {}
    }
    Some(m)
}

type Events =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SignalEvent, Status>> + Send>>;

/// Read events up to the `RequestFailed` of `until` (true), or to the stream's end (false).
async fn read(events: &mut Events, until: Option<u32>) -> bool {
    use pb::signal_event::Event as E;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the SFU answers a request within 10 s");
        match next {
            None => return false,
            Some(Err(s)) => {
                not_internal("the session's status", &s);
                return false;
            }
            Some(Ok(pb::SignalEvent {
                event: Some(E::RequestFailed(f)),
            })) => {
                if f.id == BARRIER && until == Some(BARRIER) {
                    return true;
                }
                assert_ne!(
                    f.code,
                    Code::Internal as i32,
                    "request {} failed INTERNAL: {}",
                    f.id,
                    f.message
                );
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The target.
pub fn sfu_signal(data: &[u8]) {
    let w = world();
    let mut reqs = Vec::new();
    let mut rest = data;
    while let [flags, lo, hi, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (one, tail) = tail.split_at(n);
        rest = tail;
        if let Some(m) = request(*flags, one) {
            reqs.push(m);
        }
    }
    let mut reqs = reqs.into_iter();
    let Some(first) = reqs.next() else { return };
    let token = w.token();
    w.rt.block_on(async {
        let mut events: Events = match w.svc.open(authorized(first, &token)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return not_internal("Open", &s),
        };
        // `Joined` names the session that `Send` feeds, or the stream ends with a status.
        let session = match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the SFU answers a join within 10 s")
        {
            Some(Ok(pb::SignalEvent {
                event: Some(pb::signal_event::Event::Joined(j)),
            })) => j.session,
            Some(Err(s)) => return not_internal("Open", &s),
            other => panic!("a session starts with `Joined` or a status, not {other:?}"),
        };
        let send = |request| {
            let r = pb::SendRequest {
                session: session.clone(),
                request: Some(request),
            };
            w.svc.send(authorized(r, &token))
        };
        let barrier = || pb::SignalRequest {
            id: BARRIER,
            request: None,
        };
        for m in reqs {
            if let Err(s) = send(m).await {
                not_internal("Send", &s);
                break;
            }
            if send(barrier()).await.is_err() || !read(&mut events, Some(BARRIER)).await {
                // The session ended (a leave among the requests).
                return;
            }
        }
        let leave = pb::SignalRequest {
            id: 0,
            request: Some(pb::signal_request::Request::Leave(pb::Leave {})),
        };
        if send(leave).await.is_ok() {
            // The session ends once the participant is gone: the next input joins afresh.
            read(&mut events, None).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A join with the fixture offer is admitted: the target reaches the session loop.
    #[test]
    fn the_fixture_offer_joins() {
        let w = world();
        let join = request(
            3,
            &pb::SignalRequest {
                id: 1,
                request: Some(pb::signal_request::Request::Join(pb::Join::default())),
            }
            .encode_to_vec(),
        )
        .unwrap();
        w.rt.block_on(async {
            let mut events = w
                .svc
                .open(authorized(join, &w.token()))
                .await
                .unwrap()
                .into_inner();
            let first = events.next().await.unwrap().unwrap();
            assert!(
                matches!(first.event, Some(pb::signal_event::Event::Joined(_))),
                "{first:?}"
            );
        });
    }
}
