//! The SFU session over gRPC-Web, which cannot stream requests: `Open` carries the `Join` and
//! streams the session's events, `Send` each further request (SFU-WEB-01, specs/browser.md §3).
//! Events reach the page as JSON through its callback.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt as _;
use js_sys::Function;
use tonic::Request as GrpcRequest;
use tonic_web_wasm_client::Client;
use veil_proto::sfu::v1 as pb;
use veil_proto::sfu::v1::sfu_client::SfuClient;
use veil_proto::sfu::v1::signal_event::Event as E;
use veil_proto::sfu::v1::signal_request::Request as R;
use wasm_bindgen::prelude::*;

use super::js_err;
use crate::WebError;

struct Inner {
    rpc: SfuClient<Client>,
    token: String,
    room: String,
    /// `Joined.session`, once open.
    session: RefCell<Option<String>>,
    next_id: Cell<u32>,
}

/// One SFU session of the page.
#[derive(Clone)]
pub(crate) struct Signal(Rc<Inner>);

impl Signal {
    pub(crate) fn new(base_url: &str, token: &str, room: &str) -> Self {
        Self(Rc::new(Inner {
            rpc: SfuClient::new(Client::new(base_url.to_owned())),
            token: token.to_owned(),
            room: room.to_owned(),
            session: RefCell::new(None),
            next_id: Cell::new(1),
        }))
    }

    fn req<T>(&self, msg: T) -> GrpcRequest<T> {
        let mut r = GrpcRequest::new(msg);
        if let Ok(v) = format!("Bearer {}", self.0.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// Join with `offer_sdp`; resolves with the SFU's answer. Every later event goes to
    /// `on_event` as JSON (`{type, ...}`), the last one `{type: "closed", error}`.
    pub(crate) async fn open(
        &self,
        offer_sdp: String,
        on_event: Function,
    ) -> Result<String, JsError> {
        let join = pb::SignalRequest {
            id: 0,
            request: Some(R::Join(pb::Join {
                room: self.0.room.clone(),
                offer_sdp,
                packetization: pb::Packetization::Browser as i32,
            })),
        };
        let mut rpc = self.0.rpc.clone();
        let mut events = rpc
            .open(self.req(join))
            .await
            .map_err(|s| js_err(WebError::Sfu(super::status_text(&s))))?
            .into_inner();
        let joined = match events.next().await {
            Some(Ok(pb::SignalEvent {
                event: Some(E::Joined(j)),
            })) => j,
            Some(Ok(other)) => {
                return Err(js_err(WebError::Sfu(format!(
                    "expected `joined` first, got {other:?}"
                ))));
            }
            Some(Err(s)) => return Err(js_err(WebError::Sfu(super::status_text(&s)))),
            None => return Err(js_err(WebError::Sfu("the session ended at once".into()))),
        };
        *self.0.session.borrow_mut() = Some(joined.session);
        wasm_bindgen_futures::spawn_local(async move {
            let error = loop {
                match events.next().await {
                    Some(Ok(ev)) => {
                        if let Some(json) = event_json(ev) {
                            let _ = on_event.call1(&JsValue::NULL, &JsValue::from_str(&json));
                        }
                    }
                    Some(Err(s)) => break Some(super::status_text(&s)),
                    None => break None,
                }
            };
            let closed = serde_json::json!({ "type": "closed", "error": error }).to_string();
            let _ = on_event.call1(&JsValue::NULL, &JsValue::from_str(&closed));
        });
        Ok(joined.answer_sdp)
    }

    async fn send(&self, request: R) -> Result<(), JsError> {
        let session = self
            .0
            .session
            .borrow()
            .clone()
            .ok_or_else(|| js_err(WebError::Sfu("no SFU session is open".into())))?;
        let id = self.0.next_id.get();
        self.0.next_id.set(id.wrapping_add(1));
        let msg = pb::SendRequest {
            session,
            request: Some(pb::SignalRequest {
                id,
                request: Some(request),
            }),
        };
        let mut rpc = self.0.rpc.clone();
        rpc.send(self.req(msg))
            .await
            .map(|_| ())
            .map_err(|s| js_err(WebError::Sfu(super::status_text(&s))))
    }

    pub(crate) async fn answer(&self, sdp: String) -> Result<(), JsError> {
        self.send(R::Answer(pb::SessionDescription { sdp })).await
    }

    pub(crate) async fn offer(&self, sdp: String) -> Result<(), JsError> {
        self.send(R::Offer(pb::SessionDescription { sdp })).await
    }

    pub(crate) async fn subscribe(&self, track: String) -> Result<(), JsError> {
        self.send(R::Subscribe(pb::Subscribe { track })).await
    }

    pub(crate) async fn unsubscribe(&self, track: String) -> Result<(), JsError> {
        self.send(R::Unsubscribe(pb::Unsubscribe { track })).await
    }

    pub(crate) async fn set_layer(&self, track: String, rid: String) -> Result<(), JsError> {
        self.send(R::SetLayer(pb::SetLayer { track, rid })).await
    }

    pub(crate) async fn set_svc_layer(
        &self,
        track: String,
        max_spatial: Option<u32>,
        max_temporal: Option<u32>,
    ) -> Result<(), JsError> {
        self.send(R::SetSvcLayer(pb::SetSvcLayer {
            track,
            max_spatial,
            max_temporal,
        }))
        .await
    }

    pub(crate) async fn leave(&self) -> Result<(), JsError> {
        self.send(R::Leave(pb::Leave {})).await
    }
}

/// A signalling event as the page reads it.
fn event_json(ev: pb::SignalEvent) -> Option<String> {
    let kind = |k: i32| match pb::MediaKind::try_from(k) {
        Ok(pb::MediaKind::Audio) => "audio",
        Ok(pb::MediaKind::Video) => "video",
        _ => "unknown",
    };
    let v = match ev.event? {
        E::Joined(_) => return None,
        E::Offer(d) => serde_json::json!({ "type": "offer", "sdp": d.sdp }),
        E::Answer(d) => serde_json::json!({ "type": "answer", "sdp": d.sdp }),
        E::TrackPublished(t) => serde_json::json!({
            "type": "trackPublished", "track": t.track, "publisher": t.publisher,
            "kind": kind(t.kind), "publisherTrackId": t.publisher_track_id, "rids": t.rids,
        }),
        E::TrackUnpublished(t) => {
            serde_json::json!({ "type": "trackUnpublished", "track": t.track })
        }
        E::Subscribed(s) => {
            serde_json::json!({ "type": "subscribed", "track": s.track, "ssrc": s.ssrc })
        }
        E::ParticipantJoined(p) => {
            serde_json::json!({ "type": "participantJoined", "identity": p.identity })
        }
        E::ParticipantLeft(p) => serde_json::json!({
            "type": "participantLeft", "identity": p.identity,
            "reason": pb::LeaveReason::try_from(p.reason).map_or("unspecified", |r| r.as_str_name()),
        }),
        E::RequestFailed(f) => serde_json::json!({
            "type": "requestFailed", "id": f.id, "code": f.code, "message": f.message,
        }),
        E::ActiveSpeaker(s) => {
            serde_json::json!({ "type": "activeSpeaker", "identity": s.identity })
        }
    };
    Some(v.to_string())
}
