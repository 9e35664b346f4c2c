//! Two webrtc-rs peers on loopback (no ICE servers), offer/answer without trickle.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use veil_client::media::MediaKind;
use veil_client::transport::{RemotePacket, peer_connection, read_track};
use veil_mls::{CallSession, KeyConfig};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
};

pub const T0: Duration = Duration::ZERO;

pub struct Handler {
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    tracks: Option<mpsc::Sender<(MediaKind, RemotePacket)>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.send_replace(true);
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(out) = self.tracks.clone() else {
            return;
        };
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
    }
}

pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub gathered: watch::Receiver<bool>,
    pub connected: watch::Receiver<bool>,
}

pub async fn peer(tracks: Option<mpsc::Sender<(MediaKind, RemotePacket)>>) -> Peer {
    let (g_tx, gathered) = watch::channel(false);
    let (c_tx, connected) = watch::channel(false);
    let h = Arc::new(Handler {
        gathered: g_tx,
        connected: c_tx,
        tracks,
    });
    let pc = peer_connection(h, vec!["127.0.0.1:0".to_owned()])
        .await
        .unwrap();
    Peer {
        pc,
        gathered,
        connected,
    }
}

pub async fn wait(rx: &mut watch::Receiver<bool>, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v))
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap();
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
    wait(&mut a.gathered, "offerer gathering").await;
    let offer = a.pc.local_description().await.unwrap();
    let sdp = offer.sdp.clone();
    b.pc.set_remote_description(offer).await.unwrap();
    let answer = b.pc.create_answer(None).await.unwrap();
    b.pc.set_local_description(answer).await.unwrap();
    wait(&mut b.gathered, "answerer gathering").await;
    a.pc.set_remote_description(b.pc.local_description().await.unwrap())
        .await
        .unwrap();
    wait(&mut a.connected, "offerer connect").await;
    wait(&mut b.connected, "answerer connect").await;
    sdp
}
