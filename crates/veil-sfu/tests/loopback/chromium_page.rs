//! A headless Chromium as an SFU participant, driven over the DevTools protocol
//! (`veil_testkit::browser`): the page holds one `RTCPeerConnection`, the test carries its
//! signalling to the SFU's `Backend` calls and reads the page's `getStats`. The page is served
//! from 127.0.0.1 (a secure context, so `getUserMedia` works with Chromium's fake camera).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use veil_sfu::grpc::Backend;
use veil_sfu::{EdgeSfu, Permissions, SignalEvent};
use veil_testkit::browser::{Chromium, Page};

use crate::chromium::{read_request, respond};

/// The page's helpers: `veil.publish(encodings)` and `veil.view()` make the connection and
/// return its offer; `veil.accept(answer)`, `veil.answer(offer)`; `veil.stats(type)` the
/// video entries of one `getStats` type.
const HELPERS: &str = r#"
window.veil = {
  pc: null,
  async gathered() {
    const pc = this.pc;
    if (pc.iceGatheringState === 'complete') return;
    await new Promise(r => pc.addEventListener('icegatheringstatechange',
      () => pc.iceGatheringState === 'complete' && r()));
  },
  async offer() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await this.gathered();
    return this.pc.localDescription.sdp;
  },
  async publish(encodings) {
    this.pc = new RTCPeerConnection();
    const s = await navigator.mediaDevices.getUserMedia(
      {audio: true, video: {width: 640, height: 360}});
    this.pc.addTransceiver(s.getAudioTracks()[0], {direction: 'sendonly'});
    this.pc.addTransceiver(s.getVideoTracks()[0], {direction: 'sendonly', sendEncodings: encodings});
    return this.offer();
  },
  async view() {
    this.pc = new RTCPeerConnection();
    this.pc.createDataChannel('signal');
    this.pc.ontrack = e => {
      const v = document.createElement('video');
      v.muted = true; v.autoplay = true; document.body.appendChild(v);
      v.srcObject = new MediaStream([e.track]); v.play().catch(() => {});
    };
    return this.offer();
  },
  async accept(sdp) { await this.pc.setRemoteDescription({type: 'answer', sdp}); return true; },
  async answer(sdp) {
    await this.pc.setRemoteDescription({type: 'offer', sdp});
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    return this.pc.localDescription.sdp;
  },
  async stats(type) {
    const out = [];
    (await this.pc.getStats()).forEach(s => { if (s.type === type && s.kind === 'video') out.push(s); });
    return out;
  },
};
true
"#;

/// Serve an empty page on 127.0.0.1; its URL.
pub(crate) async fn serve_blank() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (_, _, stream) = read_request(stream).await;
                respond(
                    stream,
                    "200 OK",
                    "text/html",
                    "<!doctype html><title>veil</title>",
                )
                .await;
            });
        }
    });
    url
}

/// A Chromium participant: its browser, its page, and its signalling events other than the
/// SFU's offers (those the page answers in the background).
pub(crate) struct ChromiumPeer {
    pub(crate) page: Arc<Page>,
    pub(crate) events: mpsc::UnboundedReceiver<SignalEvent>,
    _chromium: Chromium,
}

/// What a Chromium participant does first: publish a camera with these encodings (a JS array
/// literal), or only view.
pub(crate) enum Role<'a> {
    Publish(&'a str),
    View,
}

impl ChromiumPeer {
    /// Open a page on `url`, join `room` as `identity` and answer the SFU's later offers.
    pub(crate) async fn join(
        sfu: &EdgeSfu,
        url: &str,
        room: &str,
        identity: &str,
        role: Role<'_>,
    ) -> ChromiumPeer {
        let chromium = Chromium::launch(&[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let page = Arc::new(chromium.open(url).await.unwrap());
        page.eval(HELPERS).await.unwrap();
        let call = match role {
            Role::Publish(encodings) => format!("veil.publish({encodings})"),
            Role::View => "veil.view()".to_owned(),
        };
        let offer = eval_str(&page, &call).await;
        let session = sfu
            .join_with(room, identity, &offer, Permissions::ALL)
            .await
            .unwrap();
        page.eval(&format!("veil.accept({})", js(&session.answer)))
            .await
            .unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let (p, sfu, room, identity) = (
            page.clone(),
            sfu.clone(),
            room.to_owned(),
            identity.to_owned(),
        );
        let mut incoming = session.events;
        tokio::spawn(async move {
            while let Some(ev) = incoming.recv().await {
                match ev {
                    SignalEvent::Offer { sdp } => {
                        let Ok(Value::String(answer)) =
                            p.eval(&format!("veil.answer({})", js(&sdp))).await
                        else {
                            return;
                        };
                        if let Err(e) = sfu.answer(&room, &identity, &answer).await {
                            panic!("{identity}'s answer refused: {e}");
                        }
                    }
                    other => {
                        let _ = tx.send(other);
                    }
                }
            }
        });
        ChromiumPeer {
            page,
            events,
            _chromium: chromium,
        }
    }

    /// The first event `f` accepts within `within`; others are dropped.
    pub(crate) async fn next_event<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&SignalEvent) -> Option<T>,
    ) -> T {
        tokio::time::timeout(within, async {
            loop {
                let ev = self.events.recv().await.expect("the page's events ended");
                if let Some(t) = f(&ev) {
                    return t;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
    }

    /// The page's video entries of `getStats` type `kind` (`inbound-rtp`, `outbound-rtp`, …).
    pub(crate) async fn stats(&self, kind: &str) -> Vec<Value> {
        match self.page.eval(&format!("veil.stats({})", js(kind))).await {
            Ok(Value::Array(v)) => v,
            other => panic!("getStats: {other:?}"),
        }
    }
}

/// `s` as a JavaScript string literal.
pub(crate) fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn eval_str(page: &Page, expr: &str) -> String {
    match page.eval(expr).await {
        Ok(Value::String(s)) => s,
        other => panic!("{expr}: {other:?}; console: {:?}", page.console()),
    }
}
