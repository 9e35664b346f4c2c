//! The webrtc-rs test peer: an event handler that reports ICE gathering and connection state
//! on watch channels and hands every remote track to the test, plus loopback helpers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription,
};

/// The one UDP address a loopback test peer binds: any free port on 127.0.0.1, no ICE servers.
pub const LOOPBACK: &str = "127.0.0.1:0";

/// [`LOOPBACK`] as the address list `PeerConnectionBuilder::with_udp_addrs` takes.
#[must_use]
pub fn loopback_addrs() -> Vec<String> {
    vec![LOOPBACK.to_owned()]
}

/// What a test does with each remote track; the handler awaits it before returning.
pub type OnTrack =
    Box<dyn Fn(Arc<dyn TrackRemote>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The test peer's [`PeerConnectionEventHandler`].
pub struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    on_track: Option<OnTrack>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("gathered", &*self.gathered.borrow())
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// The handler's reports.
#[derive(Debug, Clone)]
pub struct Events {
    /// Becomes `true` when ICE gathering completes.
    pub gathered: watch::Receiver<bool>,
    /// The connection state, from `New`.
    pub state: watch::Receiver<RTCPeerConnectionState>,
}

impl Handler {
    /// A handler that gives every remote track to `on_track` (`None`: ignores them).
    #[must_use]
    pub fn new(on_track: Option<OnTrack>) -> (Arc<Self>, Events) {
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let h = Arc::new(Self {
            gathered: gathered_tx,
            state: state_tx,
            on_track,
        });
        (h, Events { gathered, state })
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        self.state.send_replace(s);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(f) = &self.on_track {
            f(track).await;
        }
    }
}

/// Wait until `rx` holds a value for which `pred` is true.
///
/// # Panics
/// After `timeout`, or if the sender is gone first, naming `what`.
pub async fn wait_for<T>(
    rx: &mut watch::Receiver<T>,
    timeout: Duration,
    what: &str,
    pred: impl FnMut(&T) -> bool,
) {
    tokio::time::timeout(timeout, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
        .unwrap_or_else(|_| panic!("closed: {what}"));
}

/// Apply `offer` on `pc` and return its answer, applied too (no trickle: wait for gathering
/// before reading the local description if candidates must be in it).
///
/// # Panics
/// If the offer does not apply.
pub async fn answer_offer(pc: &Arc<dyn PeerConnection>, offer: String) -> String {
    pc.set_remote_description(RTCSessionDescription::offer(offer).unwrap())
        .await
        .unwrap();
    let answer = pc.create_answer(None).await.unwrap();
    pc.set_local_description(answer).await.unwrap();
    pc.local_description().await.unwrap().sdp
}
