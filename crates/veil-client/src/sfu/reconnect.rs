//! The session's supervisor: it watches the connection in use, and when it is lost closes it
//! and opens a new one with the same token and tracks, on the SFU's [`Backoff`] schedule,
//! until one connects or the session is left (specs/sfu.md, "Reconnecting").
//!
//! Nothing of the media path restarts: the tracks are the same [`LocalTrack`]s, so the
//! publishers' SFrame counters, frame numbers and RTP sequence numbers run on; no MLS epoch
//! changes. What is per connection, the SFU's track names and its SSRCs towards this
//! subscriber, comes with a new [`RemoteMedia::connection`].

use std::time::Instant;

use super::{ClientError, ExtIds, JoinHandle, Params};
use super::{
    Current, LinkEvent, LinkStatus, Opened, PoisonError, RECONNECT_WAIT, RTCPeerConnectionState,
    SfuEvent, is_lost, open, watch,
};
use crate::link::{Backoff, jitter};

#[cfg(doc)]
use super::{LocalTrack, RemoteMedia};

/// Why the connection in use is lost, once it is (SFU-CLI-01): its signalling stream ended or
/// failed, or the peer connection went `Disconnected` (no ICE answer for 3 s), `Failed` or
/// `Closed`.
async fn lost(
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    signalling: &mut JoinHandle<Result<(), ClientError>>,
) -> String {
    tokio::select! {
        r = signalling => match r {
            Ok(Ok(())) => "the SFU ended the signalling stream".to_owned(),
            Ok(Err(e)) => format!("signalling: {e}"),
            Err(e) => format!("the signalling task ended: {e}"),
        },
        s = state.wait_for(|s| is_lost(*s)) => match s {
            Ok(s) => format!("the WebRTC connection went {}", *s),
            Err(_) => "the WebRTC connection is gone".to_owned(),
        },
    }
}

async fn ext_ids(o: &Opened, tracks: usize) -> Vec<Option<ExtIds>> {
    let mut v = Vec::with_capacity(tracks);
    for i in 0..tracks {
        v.push(o.conn.ext_ids(i).await.ok());
    }
    v
}

/// The signalling task of the connection in use, aborted with the supervisor (which holds
/// it): a session dropped without leaving must not keep its connection.
struct Signalling(JoinHandle<Result<(), ClientError>>);

impl Drop for Signalling {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watch the session and reconnect it whenever it is lost (SFU-CLI-02..04); runs until
/// aborted.
pub(super) async fn supervise(
    p: Params,
    first: Opened,
    current: Current,
    link: watch::Sender<LinkStatus>,
) {
    // The publishers packetize with what the first connection negotiated; every later one is
    // offered the same way and must agree (SFU-NEG-01: the answer keeps the offerer's ids).
    let packetization = first.packetization;
    let reference = ext_ids(&first, p.tracks.len()).await;
    // Only `current` may keep the connection: once it is taken out, dropping it closes the
    // signalling stream (the SFU's leave for a session it still holds).
    let Opened {
        conn,
        mut state,
        signalling,
        ..
    } = first;
    drop(conn);
    let mut signalling = Signalling(signalling);
    let mut connection = 0u32;
    loop {
        let reason = lost(&mut state, &mut signalling.0).await;
        tracing::warn!(reason, "lost the SFU session; reconnecting");
        let down = Instant::now();
        signalling.0.abort();
        let old = current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        link.send_modify(|s| s.lose(reason.clone()));
        let _ = p.events.send(SfuEvent::Link(LinkEvent::Lost { reason }));
        if let Some(c) = old {
            // Before the next connection binds the tracks (a track has one binding).
            c.close(false).await;
        }
        let mut backoff = Backoff::new(Backoff::SFU);
        let opened = loop {
            tokio::time::sleep(backoff.next_delay(jitter())).await;
            connection = connection.wrapping_add(1);
            match open(&p, packetization, connection, RECONNECT_WAIT).await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::info!(
                        attempt = backoff.attempts(),
                        error = %e,
                        "reconnecting to the SFU failed; retrying"
                    );
                    link.send_modify(|s| s.failed(e.to_string()));
                }
            }
        };
        if opened.packetization != packetization {
            tracing::warn!(
                room = ?opened.packetization,
                ours = ?packetization,
                "the room's packetization changed across the reconnection; this participant keeps its own"
            );
        }
        if ext_ids(&opened, p.tracks.len()).await != reference {
            tracing::warn!("the extension ids changed across the reconnection");
        }
        *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(opened.conn.clone());
        state = opened.state;
        signalling = Signalling(opened.signalling);
        let attempts = backoff.attempts();
        let down_for = down.elapsed();
        link.send_modify(LinkStatus::restore);
        tracing::info!(attempts, ?down_for, "the SFU session is back");
        let _ = p
            .events
            .send(SfuEvent::Link(LinkEvent::Restored { attempts, down_for }));
    }
}
