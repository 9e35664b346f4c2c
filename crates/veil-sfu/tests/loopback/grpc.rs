//! SFU-AUTH-01..03 and the `veil.sfu.v1` signalling stream, end to end: webrtc-rs peers join,
//! publish, subscribe and leave through the gRPC service, with Veil access tokens.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Streaming};
use veil_auth::{TokenKey, Verifier};
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_client::SfuClient;
use veil_sfu::SfuConfig;
use veil_sfu::edge::EdgeSfu;
use veil_sfu::grpc::{Backend, SfuService, SignalLimits};
use veil_sfu::routing::MediaKind;
use webrtc::peer_connection::RTCSessionDescription;

use crate::common::*;

use pb::signal_event::Event as E;
use pb::signal_request::Request as R;

async fn serve<B: Backend>(sfu: B, key: &TokenKey) -> SocketAddr {
    serve_with(sfu, key, SignalLimits::default()).await
}

async fn serve_with<B: Backend>(sfu: B, key: &TokenKey, limits: SignalLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = SfuService::new(sfu, Verifier::new([key.clone()]).unwrap()).with_limits(limits);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn token(key: &TokenKey, identity: &str, room: &str, publish: bool, subscribe: bool) -> String {
    veil_testkit::token::mint_with(
        key,
        room,
        identity,
        veil_testkit::token::joiner(publish, subscribe),
        0,
        Duration::from_secs(600),
    )
}

/// A signalling stream: requests in, events out.
struct Signal {
    tx: mpsc::Sender<pb::SignalRequest>,
    rx: Streaming<pb::SignalEvent>,
    backlog: Vec<E>,
    next_id: u32,
}

impl Signal {
    async fn open(addr: SocketAddr, token: Option<&str>) -> Result<Signal, tonic::Status> {
        let mut client = SfuClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut req = Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = client.signal(req).await?.into_inner();
        Ok(Signal {
            tx,
            rx,
            backlog: Vec::new(),
            next_id: 1,
        })
    }

    async fn send(&mut self, r: R) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .send(pb::SignalRequest {
                id,
                request: Some(r),
            })
            .await
            .unwrap();
        id
    }

    /// The next event `f` accepts (others are kept), or the status the stream ended with.
    async fn next<T>(&mut self, mut f: impl FnMut(&E) -> Option<T>) -> Result<T, tonic::Status> {
        if let Some((i, t)) = self
            .backlog
            .iter()
            .enumerate()
            .find_map(|(i, e)| f(e).map(|t| (i, t)))
        {
            self.backlog.remove(i);
            return Ok(t);
        }
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.message().await? {
                    Some(pb::SignalEvent { event: Some(e) }) => match f(&e) {
                        Some(t) => return Ok(t),
                        None => self.backlog.push(e),
                    },
                    Some(_) => {}
                    None => return Err(tonic::Status::cancelled("stream ended")),
                }
            }
        })
        .await
        .expect("signalling event")
    }

    /// Join with `peer`'s offer, proposing a packetization, and connect it; returns the room's
    /// packetization (SFU-ROOM-03).
    async fn join_proposing(
        &mut self,
        peer: &mut Peer,
        packetization: pb::Packetization,
    ) -> Result<i32, tonic::Status> {
        let offer_sdp = peer.offer().await;
        self.send(R::Join(pb::Join {
            room: peer.room.clone(),
            offer_sdp,
            packetization: packetization as i32,
        }))
        .await;
        let (answer, room_packetization) = self
            .next(|e| match e {
                E::Joined(j) => Some((j.answer_sdp.clone(), j.packetization)),
                _ => None,
            })
            .await?;
        peer.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        peer.connected().await;
        Ok(room_packetization)
    }

    /// Answer the SFU's next offer with `peer`.
    async fn answer_offer(&mut self, peer: &Peer) {
        let offer = self
            .next(|e| match e {
                E::Offer(d) => Some(d.sdp.clone()),
                _ => None,
            })
            .await
            .unwrap();
        let sdp = answer_offer(&peer.pc, offer).await;
        self.send(R::Answer(pb::SessionDescription { sdp })).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_session_publishes_subscribes_and_leaves() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let addr = serve(sfu.clone(), &key).await;
    let room = "grpc";

    // Alice may publish only.
    let mut alice = Peer::new(room, "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, 0xA1, "mic").await;
    let mut a_sig = Signal::open(addr, Some(&token(&key, "alice", room, true, false)))
        .await
        .unwrap();
    // SFU-ROOM-03: alice is first to name a packetization; it becomes the room's.
    let p = a_sig
        .join_proposing(&mut alice, pb::Packetization::Ietf)
        .await
        .unwrap();
    assert_eq!(p, pb::Packetization::Ietf as i32);
    let talk = tokio::spawn(async move {
        for i in 0u16.. {
            let body = Bytes::from(vec![0x5A; 40 + usize::from(i % 50)]);
            mic.send(i, 960 * u32::from(i), false, &[], body).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Bob may subscribe only.
    let mut bob = Peer::new(room, "bob", false).await;
    let mut b_sig = Signal::open(addr, Some(&token(&key, "bob", room, false, true)))
        .await
        .unwrap();
    // Bob would rather use the browser packetization, and is told the room's.
    let p = b_sig
        .join_proposing(&mut bob, pb::Packetization::Browser)
        .await
        .unwrap();
    assert_eq!(p, pb::Packetization::Ietf as i32);
    let track = b_sig
        .next(|e| match e {
            E::TrackPublished(t) if t.publisher == "alice" => Some(t.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        (track.kind, track.publisher_track_id.as_str()),
        (pb::MediaKind::Audio as i32, "mic")
    );
    b_sig
        .send(R::Subscribe(pb::Subscribe {
            track: track.track.clone(),
        }))
        .await;
    b_sig.answer_offer(&bob).await;
    let ssrc = b_sig
        .next(|e| match e {
            E::Subscribed(s) if s.track == track.track => Some(s.ssrc),
            _ => None,
        })
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, bob.received.recv())
        .await
        .expect("media")
        .unwrap();
    assert_eq!(r.packet.header.ssrc, ssrc);
    assert!(r.packet.payload.iter().all(|b| *b == 0x5A));

    // SFU-SVC-10: `SetSvcLayer` reaches the subscription (a cap on a track that is not scalable
    // changes nothing); on a track bob does not receive it fails, and that failure is the
    // first his session reports, so the one before it was taken.
    let cap = |track: &str| {
        R::SetSvcLayer(pb::SetSvcLayer {
            track: track.to_owned(),
            max_spatial: Some(0),
            max_temporal: Some(1),
        })
    };
    b_sig.send(cap(&track.track)).await;
    let id = b_sig.send(cap("t999")).await;
    let failed = b_sig
        .next(|e| match e {
            E::RequestFailed(f) => Some(f.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        (failed.id, failed.code),
        (id, Code::FailedPrecondition as i32),
        "{failed:?}"
    );

    // Alice may not subscribe (SFU-AUTH-02): the request fails, the session goes on.
    let id = a_sig
        .send(R::Subscribe(pb::Subscribe {
            track: track.track.clone(),
        }))
        .await;
    let failed = a_sig
        .next(|e| match e {
            E::RequestFailed(f) => Some(f.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        (failed.id, failed.code),
        (id, Code::PermissionDenied as i32)
    );

    // Bob closes his stream: that is his leave (SFU-AUTH-03).
    drop(b_sig);
    let (who, why) = a_sig
        .next(|e| match e {
            E::ParticipantLeft(l) => Some((l.identity.clone(), l.reason)),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((who.as_str(), why), ("bob", pb::LeaveReason::Left as i32));
    roster_becomes(&sfu, room, &["alice"]).await;
    // The gauges follow: alice and her track are left, bob's subscription is gone with him.
    let m = sfu.metrics();
    assert_eq!(
        (m.rooms.get(), m.participants.get(), m.tracks.get()),
        (1, 1, 1)
    );
    assert_eq!(m.subscriptions.get(), 0);
    assert!(m.forwarded("audio") > 0);
    assert!(
        m.encode()
            .contains("veil_sfu_participants_left_total{reason=\"left\"} 1"),
        "{}",
        m.encode()
    );
    // His gauges go too.
    eventually("bob's gauges to go", || {
        !m.encode().contains("subscriber=\"bob\"")
    })
    .await;
    talk.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_missing_wrong_and_powerless_tokens() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let other = TokenKey::generate("other").unwrap();
    let addr = serve(sfu.clone(), &key).await;
    let room = "auth";
    let join = |sdp: String| {
        R::Join(pb::Join {
            room: room.to_owned(),
            offer_sdp: sdp,
            packetization: 0,
        })
    };
    let mut peer = Peer::new(room, "eve", false).await;
    let offer = peer.offer().await;

    // No token, and a token signed by an unknown key: UNAUTHENTICATED before anything else.
    for t in [None, Some(token(&other, "eve", room, true, true))] {
        let err = match Signal::open(addr, t.as_deref()).await {
            Err(s) => s,
            Ok(mut s) => {
                s.send(join(offer.clone())).await;
                s.next(|_| Some(())).await.unwrap_err()
            }
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // Another room's token, and a token without media grants: PERMISSION_DENIED.
    for t in [
        token(&key, "eve", "elsewhere", true, true),
        token(&key, "eve", room, false, false),
    ] {
        let mut s = Signal::open(addr, Some(&t)).await.unwrap();
        s.send(join(offer.clone())).await;
        let err = s.next(|_| Some(())).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // A first request that is not `join`.
    let mut s = Signal::open(addr, Some(&token(&key, "eve", room, true, true)))
        .await
        .unwrap();
    s.send(R::Leave(pb::Leave {})).await;
    assert_eq!(
        s.next(|_| Some(())).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(sfu.participants(room).await.is_empty());
}

/// A codec that sends the bytes it is given and returns the bytes it receives, to put
/// hand-made frames on the signalling stream.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
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

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

/// A signalling stream of raw frames.
async fn raw_signal(addr: SocketAddr, token: &str) -> (mpsc::Sender<Vec<u8>>, Streaming<Vec<u8>>) {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/veil.sfu.v1.Sfu/Signal");
    let rx = g.streaming(req, path, Raw).await.unwrap().into_inner();
    (tx, rx)
}

/// The status the stream ends with; events before it are skipped.
async fn end_status(rx: &mut Streaming<Vec<u8>>) -> tonic::Status {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return tonic::Status::ok("the stream ended with OK"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("the stream did not end")
}

/// PROTO-DEC-01 on the SFU: a signalling request that does not decode ends the stream with
/// `INVALID_ARGUMENT`, as the first request or within a session, and the participant leaves
/// (issue 22, defect 6; before, the stream ended with OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_signalling_requests_are_invalid_argument() {
    use prost::Message as _;
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    let addr = serve(sfu.clone(), &key).await;
    let room = "decode";
    let t = token(&key, "eve", room, true, true);
    // `join` (field 2) whose `room` (field 1) holds the bytes FF FE.
    let bad_utf8 = vec![0x12, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    // `id` (field 1, uint32) sent length-delimited.
    let wrong_wire_type = vec![0x0a, 0x01, 0x00];
    // An unknown field 15 of 200 nested, closed groups: over prost's recursion limit.
    let mut deep = vec![0x7b; 200];
    deep.extend([0x7c; 200]);
    let is_malformed = |s: &tonic::Status| {
        s.code() == Code::InvalidArgument && s.message().starts_with("malformed request: ")
    };

    for (shape, frame) in [
        ("invalid UTF-8", bad_utf8.clone()),
        ("wrong wire type", wrong_wire_type),
        ("deep nesting", deep),
    ] {
        let (tx, mut rx) = raw_signal(addr, &t).await;
        tx.send(frame).await.unwrap();
        let s = end_status(&mut rx).await;
        assert!(is_malformed(&s), "first request, {shape}: {s:?}");
    }

    // Within a session: join with a real offer, then send a frame that does not decode.
    let mut peer = Peer::new(room, "eve", false).await;
    let join = pb::SignalRequest {
        id: 1,
        request: Some(R::Join(pb::Join {
            room: room.to_owned(),
            offer_sdp: peer.offer().await,
            packetization: 0,
        })),
    };
    let (tx, mut rx) = raw_signal(addr, &t).await;
    tx.send(join.encode_to_vec()).await.unwrap();
    let joined = tokio::time::timeout(WAIT, async {
        loop {
            let frame = rx.message().await.unwrap().expect("an event");
            if let Some(E::Joined(j)) = pb::SignalEvent::decode(&frame[..]).unwrap().event {
                return j;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(joined.identity, "eve");
    roster_becomes(&sfu, room, &["eve"]).await;
    tx.send(bad_utf8).await.unwrap();
    let s = end_status(&mut rx).await;
    assert!(is_malformed(&s), "within a session: {s:?}");
    roster_becomes(&sfu, room, &[]).await;
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// SFU-WEB-01: a browser's session over `Open` and `Send` (gRPC-Web has no client streaming).
/// The session's name is bound to the token's identity; `Send`'s outcome arrives on the
/// `Open` stream; dropping the stream ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_takes_its_requests_through_send() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let addr = serve(sfu.clone(), &key).await;
    let room = "web";
    let alice_token = token(&key, "alice", room, true, true);
    let mut client = SfuClient::connect(format!("http://{addr}")).await.unwrap();

    let mut alice = Peer::new(room, "alice", true).await;
    let join = |offer_sdp| pb::SignalRequest {
        id: 0,
        request: Some(R::Join(pb::Join {
            room: room.to_owned(),
            offer_sdp,
            packetization: pb::Packetization::Browser as i32,
        })),
    };
    let mut events = client
        .open(authed(join(alice.offer().await), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let joined = match events.message().await.unwrap() {
        Some(pb::SignalEvent {
            event: Some(E::Joined(j)),
        }) => j,
        other => panic!("expected joined, got {other:?}"),
    };
    assert_eq!(joined.identity, "alice");
    assert_eq!(joined.session.len(), 32, "{}", joined.session);
    assert!(joined.session.bytes().all(|b| b.is_ascii_hexdigit()));
    alice
        .pc
        .set_remote_description(RTCSessionDescription::answer(joined.answer_sdp).unwrap())
        .await
        .unwrap();
    alice.connected().await;

    let send = |session: &str, id: u32, request: Option<R>| pb::SendRequest {
        session: session.to_owned(),
        request: Some(pb::SignalRequest { id, request }).filter(|_| id != 0),
    };
    let subscribe = || {
        Some(R::Subscribe(pb::Subscribe {
            track: "t999".into(),
        }))
    };
    // Another identity cannot use alice's session, nor can anyone use a made-up one: both are
    // simply not found.
    let bob_token = token(&key, "bob", room, true, true);
    let s = client
        .send(authed(send(&joined.session, 7, subscribe()), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let s = client
        .send(authed(send(&"0".repeat(32), 7, subscribe()), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let s = client
        .send(authed(send(&joined.session, 0, None), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = client
        .send(Request::new(send(&joined.session, 7, subscribe())))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // A request the SFU refuses is accepted by Send; its failure arrives on the stream.
    client
        .send(authed(send(&joined.session, 42, subscribe()), &alice_token))
        .await
        .unwrap();
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            match events.message().await.unwrap() {
                Some(pb::SignalEvent {
                    event: Some(E::RequestFailed(f)),
                }) => return f,
                Some(_) => {}
                None => panic!("the stream ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(failed.id, 42);
    assert_eq!(failed.code, Code::NotFound as i32, "{failed:?}");

    // Closing the stream ends the session: its name stops working and alice can join again.
    drop(events);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = client
            .send(authed(send(&joined.session, 8, subscribe()), &alice_token))
            .await;
        if r.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived its stream: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = Peer::new(room, "alice", true).await;
    let mut events = client
        .open(authed(join(again.offer().await), &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        events.message().await.unwrap(),
        Some(pb::SignalEvent {
            event: Some(E::Joined(_))
        })
    ));
}

/// The signalling limits (specs/limits.md): a subscription over `max_subscriptions`
/// (LIM-SUB-01), an SDP over `max_sdp_bytes` (LIM-SDP-01) and requests over the rate
/// (LIM-RATE-01) each fail with `RequestFailed{RESOURCE_EXHAUSTED}` and a message saying what to
/// do; bob's session goes on, and alice, at the same moment, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_limits_refuse_with_resource_exhausted_and_spare_the_others() {
    let sfu = EdgeSfu::new(SfuConfig::default()).unwrap();
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let limits = SignalLimits {
        request_rate: veil_auth::RequestRate {
            per_second: 1,
            burst: 6,
        },
        max_subscriptions: 1,
        max_sdp_bytes: 64 * 1024,
    };
    let addr = serve_with(sfu.clone(), &key, limits).await;
    let room = "limits";

    // Alice publishes two tracks.
    let mut alice = Peer::new(room, "alice", true).await;
    let mic = alice.add_track(MediaKind::Audio, 0xA1, "mic").await;
    let mic2 = alice.add_track(MediaKind::Audio, 0xA2, "mic2").await;
    let mut a_sig = Signal::open(addr, Some(&token(&key, "alice", room, true, false)))
        .await
        .unwrap();
    a_sig
        .join_proposing(&mut alice, pb::Packetization::Ietf)
        .await
        .unwrap();
    let talk = tokio::spawn(async move {
        for i in 0u16.. {
            for m in [&mic, &mic2] {
                let body = Bytes::from(vec![0x5A; 40]);
                m.send(i, 960 * u32::from(i), false, &[], body).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Bob may subscribe to one track at a time.
    let mut bob = Peer::new(room, "bob", false).await;
    let mut b_sig = Signal::open(addr, Some(&token(&key, "bob", room, false, true)))
        .await
        .unwrap();
    b_sig
        .join_proposing(&mut bob, pb::Packetization::Ietf)
        .await
        .unwrap();
    let mut tracks = Vec::new();
    while tracks.len() < 2 {
        tracks.push(
            b_sig
                .next(|e| match e {
                    E::TrackPublished(t) if t.publisher == "alice" => Some(t.track.clone()),
                    _ => None,
                })
                .await
                .unwrap(),
        );
    }
    let failed = |f: &E| match f {
        E::RequestFailed(f) => Some(f.clone()),
        _ => None,
    };
    b_sig
        .send(R::Subscribe(pb::Subscribe {
            track: tracks[0].clone(),
        }))
        .await;
    b_sig.answer_offer(&bob).await;
    b_sig
        .next(|e| match e {
            E::Subscribed(s) if s.track == tracks[0] => Some(()),
            _ => None,
        })
        .await
        .unwrap();
    // LIM-SUB-01: the second subscription is refused.
    let id = b_sig
        .send(R::Subscribe(pb::Subscribe {
            track: tracks[1].clone(),
        }))
        .await;
    let f = b_sig.next(failed).await.unwrap();
    assert_eq!(
        (f.id, f.code),
        (id, Code::ResourceExhausted as i32),
        "{f:?}"
    );
    assert!(f.message.contains("unsubscribe from one first"), "{f:?}");
    // LIM-SDP-01: an offer over the cap is refused before it is parsed.
    let id = b_sig
        .send(R::Offer(pb::SessionDescription {
            sdp: "x".repeat(64 * 1024 + 1),
        }))
        .await;
    let f = b_sig.next(failed).await.unwrap();
    assert_eq!(
        (f.id, f.code),
        (id, Code::ResourceExhausted as i32),
        "{f:?}"
    );
    assert!(f.message.contains("the limit is 65536 bytes"), "{f:?}");
    // LIM-RATE-01: twenty requests at once; past the burst they are refused.
    let cap = |track: &str| {
        R::SetSvcLayer(pb::SetSvcLayer {
            track: track.to_owned(),
            max_spatial: Some(0),
            max_temporal: Some(0),
        })
    };
    for _ in 0..20 {
        b_sig.send(cap("t999")).await;
    }
    let mut codes = Vec::new();
    for _ in 0..20 {
        let f = b_sig.next(failed).await.unwrap();
        if f.code == Code::ResourceExhausted as i32 {
            assert!(f.message.contains("slow down"), "{f:?}");
        }
        codes.push(Code::from(f.code));
    }
    let refused = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert!(refused >= 10, "{codes:?}");
    // The same moment: alice's bucket is her own.
    let id = a_sig.send(cap("t999")).await;
    let f = a_sig.next(failed).await.unwrap();
    assert_eq!(
        (f.id, f.code),
        (id, Code::FailedPrecondition as i32),
        "{f:?}"
    );
    // Bob's session went on: his subscription still delivers.
    let got = tokio::time::timeout(WAIT, bob.received.recv())
        .await
        .expect("media")
        .unwrap();
    assert!(got.packet.payload.iter().all(|b| *b == 0x5A));
    assert_eq!(sfu.participants(room).await.len(), 2);
    talk.abort();
}

/// `SfuConfig::max_participants` (specs/limits.md, `--sfu-max-participants`): the join past it
/// ends its stream with `RESOURCE_EXHAUSTED`; the participant inside stays, and another room
/// admits at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_a_join_and_another_room_admits() {
    let sfu = EdgeSfu::new(SfuConfig {
        max_participants: 1,
        ..SfuConfig::default()
    })
    .unwrap();
    init_tracing();
    let key = TokenKey::generate("test").unwrap();
    let addr = serve(sfu.clone(), &key).await;
    let join = |room: &str, offer_sdp: String| {
        R::Join(pb::Join {
            room: room.to_owned(),
            offer_sdp,
            packetization: 0,
        })
    };
    let joined = |e: &E| matches!(e, E::Joined(_)).then_some(());
    let mut sigs = Vec::new();
    for (who, room) in [("alice", "full"), ("bob", "full"), ("carol", "other")] {
        let mut peer = Peer::new(room, who, false).await;
        let offer = peer.offer().await;
        let mut s = Signal::open(addr, Some(&token(&key, who, room, true, true)))
            .await
            .unwrap();
        s.send(join(room, offer)).await;
        let r = s.next(joined).await;
        sigs.push((who, r, s, peer));
    }
    assert!(sigs[0].1.is_ok(), "alice: {:?}", sigs[0].1);
    let e = sigs[1].1.as_ref().unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "bob: {e:?}");
    assert!(e.message().contains("participants per room"), "{e:?}");
    assert!(sigs[2].1.is_ok(), "carol: {:?}", sigs[2].1);
    assert_eq!(sfu.participants("full").await.len(), 1);
    assert_eq!(sfu.participants("other").await.len(), 1);
}
