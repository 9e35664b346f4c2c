//! Two webrtc-rs peers on loopback (no ICE servers), offer/answer without trickle.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use veil_client::media::MediaKind;
use veil_client::transport::{RemotePacket, peer_connection, read_track};
use veil_mls::{CallSession, KeyConfig};
use veil_testkit::webrtc::{Events, Handler, OnTrack, loopback_addrs, wait_for};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

pub const T0: Duration = Duration::ZERO;

pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub events: Events,
}

pub async fn peer(tracks: Option<mpsc::Sender<(MediaKind, RemotePacket)>>) -> Peer {
    let on_track = tracks.map(|out| -> OnTrack {
        Box::new(move |track: Arc<dyn TrackRemote>| {
            let out = out.clone();
            Box::pin(async move {
                let kind = match track.kind().await {
                    rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => MediaKind::Audio,
                    _ => MediaKind::Video,
                };
                let (tx, mut rx) = mpsc::channel(1024);
                tokio::spawn(read_track(track, tx));
                tokio::spawn(async move {
                    while let Some(p) = rx.recv().await {
                        if out.send((kind, p)).await.is_err() {
                            return;
                        }
                    }
                });
            })
        })
    });
    let (h, events) = Handler::new(on_track);
    let pc = peer_connection(h, loopback_addrs()).await.unwrap();
    Peer { pc, events }
}

/// Wait up to 10 s for ICE gathering to complete.
async fn gathered(p: &mut Peer, what: &str) {
    wait_for(&mut p.events.gathered, Duration::from_secs(10), what, |v| {
        *v
    })
    .await;
}

/// Wait up to 10 s for the connection to be up.
async fn connected(p: &mut Peer, what: &str) {
    wait_for(&mut p.events.state, Duration::from_secs(10), what, |s| {
        *s == RTCPeerConnectionState::Connected
    })
    .await;
}

pub fn group() -> (CallSession, CallSession) {
    let mut alice = CallSession::new(b"alice", KeyConfig::default()).unwrap();
    alice.create_group(b"room", T0).unwrap();
    let mut bob = CallSession::new(b"bob", KeyConfig::default()).unwrap();
    let out = alice
        .add_members(&[bob.key_package(false).unwrap()])
        .unwrap();
    alice.confirm_commit(T0).unwrap();
    bob.join_welcome(&out.welcome.unwrap(), T0).unwrap();
    (alice, bob)
}

/// Connect `a` (offerer, with its tracks added) and `b` (answerer); returns the offer's SDP.
pub async fn connect(a: &mut Peer, b: &mut Peer) -> String {
    let offer = a.pc.create_offer(None).await.unwrap();
    a.pc.set_local_description(offer).await.unwrap();
    gathered(a, "offerer gathering").await;
    let offer = a.pc.local_description().await.unwrap();
    let sdp = offer.sdp.clone();
    b.pc.set_remote_description(offer).await.unwrap();
    let answer = b.pc.create_answer(None).await.unwrap();
    b.pc.set_local_description(answer).await.unwrap();
    gathered(b, "answerer gathering").await;
    a.pc.set_remote_description(b.pc.local_description().await.unwrap())
        .await
        .unwrap();
    connected(a, "offerer connect").await;
    connected(b, "answerer connect").await;
    sdp
}
