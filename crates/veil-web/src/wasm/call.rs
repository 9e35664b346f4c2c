//! `Call`: the page's participant. The call core's [`Member`] runs here, on the page's event
//! loop, driven by a shell like the native SDK's: it makes the RPCs the member asks for over
//! gRPC-Web, feeds it the room's stream, wakes it with `setTimeout`, and after every change
//! tells the page the status and, on a new epoch, the key blob for the transform worker
//! (specs/browser.md §2, §4).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::pin;
use std::rc::Rc;

use futures_channel::{mpsc, oneshot};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _, select_biased};
use js_sys::{Function, Uint8Array};
use veil_call::{
    CallError, Command, CommandId, Event, Member, MemberConfig, Reply, RequestId, Status,
    safety_code,
};
use veil_mls::{FrameKeys, KeyConfig};
use veil_proto::keys::v1 as pb;
use wasm_bindgen::prelude::*;

use super::keys::{Completed, Keys, failure, service_event};
use super::signal::Signal;
use super::time::{now, sleep_until};
use crate::frames::encode_epoch;

type Outcome = Result<Option<u64>, CallError>;

/// What the page sees of the member, kept by the shell.
#[derive(Default)]
struct View {
    status: Status,
    /// `(leaf index, identity)` of every member.
    leaves: Vec<(u32, String)>,
    /// This member's leaf index in the group.
    own_leaf: Option<u32>,
    /// Why the member stopped (`Some("")`: it left).
    stopped: Option<String>,
    on_update: Option<Function>,
    /// The epoch whose key blob the page got last.
    exported: Option<u64>,
}

/// One participant of a call in the page: its MLS membership (the call core) and its SFU
/// signalling, both over gRPC-Web to the server that served the page.
#[wasm_bindgen]
pub struct Call {
    cmds: mpsc::UnboundedSender<(Command, oneshot::Sender<Outcome>)>,
    view: Rc<RefCell<View>>,
    frames: FrameKeys,
    signal: Signal,
}

#[wasm_bindgen]
impl Call {
    /// A participant of `room` as `identity` (the token's), talking to the server at
    /// `base_url` (the page's origin). Nothing is sent until [`join`](Self::join).
    ///
    /// # Errors
    /// An impossible key configuration.
    #[wasm_bindgen(constructor)]
    pub fn new(base_url: &str, token: &str, room: &str, identity: &str) -> Result<Call, JsError> {
        // The jitter of retries only: not a secret.
        let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
        let member = Member::new(
            MemberConfig::new(identity, room),
            KeyConfig::default(),
            seed,
        )
        .map_err(super::js_err)?;
        let frames = member.frame_keys();
        let (cmds, rx) = mpsc::unbounded();
        let view = Rc::new(RefCell::new(View::default()));
        let shell = Shell {
            member,
            keys: Keys::new(base_url, token, room),
            view: view.clone(),
            frames: frames.clone(),
            waiting: HashMap::new(),
        };
        wasm_bindgen_futures::spawn_local(shell.run(rx));
        Ok(Call {
            cmds,
            view,
            frames,
            signal: Signal::new(base_url, token, room),
        })
    }

    /// Call `f(statusJson, keyBlob)` after every change of the member's status; `keyBlob` (a
    /// `Uint8Array`, for the transform worker) is given when the epoch changed, `undefined`
    /// otherwise. Called once at once with the current state.
    pub fn on_update(&self, f: Function) {
        self.view.borrow_mut().exported = None;
        self.view.borrow_mut().on_update = Some(f);
        notify(&self.view, &self.frames);
    }

    /// Join the room (by external commit, or create it if nobody has); resolves with the
    /// epoch once in.
    ///
    /// # Errors
    /// The member's failure in words (an expired token, an unreachable server).
    pub async fn join(&self) -> Result<f64, JsError> {
        self.command(Command::JoinOrCreate)
            .await
            .map(|e| e.unwrap_or(0) as f64)
    }

    /// Leave the room: the key service proposes this member's removal, the member stops.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub async fn leave(&self) -> Result<(), JsError> {
        self.command(Command::Leave).await.map(|_| ())
    }

    /// The status as JSON: `epoch`, `safetyCode`, `members` (`[{leaf, identity}]`), `ownLeaf`,
    /// `removed`, `resyncs`, `keyService` (`{lost, attempts, lastError}`), `stopped`.
    #[must_use]
    pub fn status(&self) -> String {
        status_json(&self.view.borrow(), &self.frames)
    }

    /// The SFU session: see [`Signal`]'s methods, reached through this object.
    #[wasm_bindgen(js_name = sfuOpen)]
    pub async fn sfu_open(&self, offer_sdp: String, on_event: Function) -> Result<String, JsError> {
        self.signal.open(offer_sdp, on_event).await
    }

    /// Answer the SFU's offer.
    #[wasm_bindgen(js_name = sfuAnswer)]
    pub async fn sfu_answer(&self, sdp: String) -> Result<(), JsError> {
        self.signal.answer(sdp).await
    }

    /// Offer again (e.g. to publish a screen share); the answer comes as an `answer` event.
    #[wasm_bindgen(js_name = sfuOffer)]
    pub async fn sfu_offer(&self, sdp: String) -> Result<(), JsError> {
        self.signal.offer(sdp).await
    }

    /// Receive a published track.
    #[wasm_bindgen(js_name = sfuSubscribe)]
    pub async fn sfu_subscribe(&self, track: String) -> Result<(), JsError> {
        self.signal.subscribe(track).await
    }

    /// Stop receiving a track.
    #[wasm_bindgen(js_name = sfuUnsubscribe)]
    pub async fn sfu_unsubscribe(&self, track: String) -> Result<(), JsError> {
        self.signal.unsubscribe(track).await
    }

    /// Which simulcast layer of `track` to receive (`""`: the first).
    #[wasm_bindgen(js_name = sfuSetLayer)]
    pub async fn sfu_set_layer(&self, track: String, rid: String) -> Result<(), JsError> {
        self.signal.set_layer(track, rid).await
    }

    /// Cap the spatial and temporal layer of a scalable `track` (`undefined`: no cap in that
    /// dimension); the SFU forwards the best decode target within it (SFU-SVC-10).
    #[wasm_bindgen(js_name = sfuSetSvcLayer)]
    pub async fn sfu_set_svc_layer(
        &self,
        track: String,
        max_spatial: Option<u32>,
        max_temporal: Option<u32>,
    ) -> Result<(), JsError> {
        self.signal
            .set_svc_layer(track, max_spatial, max_temporal)
            .await
    }

    /// Leave the SFU session.
    #[wasm_bindgen(js_name = sfuLeave)]
    pub async fn sfu_leave(&self) -> Result<(), JsError> {
        self.signal.leave().await
    }
}

impl Call {
    async fn command(&self, cmd: Command) -> Result<Option<u64>, JsError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .unbounded_send((cmd, tx))
            .map_err(|_| super::js_err(crate::WebError::Ended))?;
        match rx.await {
            Ok(r) => r.map_err(super::js_err),
            Err(_) => Err(super::js_err(crate::WebError::Ended)),
        }
    }
}

fn status_json(v: &View, frames: &FrameKeys) -> String {
    let s = &v.status;
    let members: Vec<_> = v
        .leaves
        .iter()
        .map(|(leaf, id)| serde_json::json!({ "leaf": leaf, "identity": id }))
        .collect();
    // Shown while this member sends, as the worker's key blob says.
    let own = frames.sender_kid().and(v.own_leaf);
    serde_json::json!({
        "epoch": s.epoch,
        "safetyCode": s.epoch_authenticator.as_deref().map(safety_code),
        "members": members,
        "ownLeaf": own,
        "removed": s.removed,
        "resyncs": s.resyncs,
        "keyService": {
            "lost": s.key_service.lost,
            "attempts": s.key_service.attempts,
            "lastError": s.key_service.last_error,
        },
        "stopped": v.stopped,
    })
    .to_string()
}

/// Tell the page: the status, and the key blob if the epoch changed since it last got one.
fn notify(view: &Rc<RefCell<View>>, frames: &FrameKeys) {
    let (f, json, blob) = {
        let mut v = view.borrow_mut();
        let Some(f) = v.on_update.clone() else { return };
        // The secret is copied out only for an epoch the page has not had yet.
        let fresh = frames.epoch().is_some_and(|e| v.exported != Some(e));
        let blob = fresh.then(|| frames.export_current()).flatten().map(|e| {
            v.exported = Some(e.epoch);
            Uint8Array::from(&encode_epoch(&e)[..])
        });
        (f, status_json(&v, frames), blob)
    };
    // The callback runs with no borrow held: it may call `status()`.
    let blob = blob.map_or(JsValue::UNDEFINED, JsValue::from);
    if let Err(e) = f.call2(&JsValue::NULL, &JsValue::from_str(&json), &blob) {
        web_sys_log(&format!("the page's update callback threw: {e:?}"));
    }
}

fn web_sys_log(msg: &str) {
    let console = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("console"))
        .ok()
        .and_then(|c| js_sys::Reflect::get(&c, &JsValue::from_str("warn")).ok())
        .and_then(|f| f.dyn_into::<Function>().ok());
    if let Some(f) = console {
        let _ = f.call1(&JsValue::NULL, &JsValue::from_str(msg));
    }
}

/// The member and the I/O it asks for.
struct Shell {
    member: Member,
    keys: Keys,
    view: Rc<RefCell<View>>,
    frames: FrameKeys,
    waiting: HashMap<CommandId, oneshot::Sender<Outcome>>,
}

enum Wake {
    Done(Completed),
    Event(RequestId, Option<Result<pb::RoomEvent, tonic::Status>>),
    Command(Option<(Command, oneshot::Sender<Outcome>)>),
    Timer,
}

impl Shell {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<(Command, oneshot::Sender<Outcome>)>) {
        let mut inflight = FuturesUnordered::new();
        let mut stream: Option<(RequestId, tonic::Streaming<pb::RoomEvent>)> = None;
        loop {
            if self.flush(&mut inflight, &mut stream) {
                for (_, tx) in self.waiting.drain() {
                    let _ = tx.send(Err(CallError::Stopped));
                }
                return;
            }
            let wake_at = self.member.poll_timeout();
            let wake = {
                let mut timer = pin!(sleep_until(wake_at).fuse());
                let mut done = pin!(
                    async {
                        if inflight.is_empty() {
                            std::future::pending::<()>().await;
                        }
                        inflight.next().await
                    }
                    .fuse()
                );
                let mut event = pin!(
                    async {
                        match &mut stream {
                            Some((id, s)) => (*id, s.next().await),
                            None => std::future::pending().await,
                        }
                    }
                    .fuse()
                );
                let mut cmd = cmds.next();
                select_biased! {
                    d = done => match d {
                        Some(d) => Wake::Done(d),
                        None => Wake::Timer,
                    },
                    (id, ev) = event => Wake::Event(id, ev),
                    c = cmd => Wake::Command(c),
                    () = timer => Wake::Timer,
                }
            };
            let t = now();
            match wake {
                Wake::Done(Completed::Reply(id, reply)) => self.member.handle_reply(id, reply, t),
                Wake::Done(Completed::Stream(id, Ok(s))) => {
                    stream = Some((id, s));
                    self.member.handle_reply(id, Reply::Subscribed, t);
                }
                Wake::Done(Completed::Stream(id, Err(f))) => {
                    self.member.handle_reply(id, Reply::Failed(f), t);
                }
                Wake::Event(id, Some(Ok(ev))) => {
                    if let Some(ev) = service_event(ev) {
                        self.member.handle_event(id, ev, t);
                    }
                }
                Wake::Event(id, Some(Err(s))) => {
                    stream = None;
                    self.member.handle_stream_end(id, Some(failure(&s)), t);
                }
                Wake::Event(id, None) => {
                    stream = None;
                    self.member.handle_stream_end(id, None, t);
                }
                // The page dropped the call: stop (the server sees the streams close).
                Wake::Command(None) => return,
                Wake::Command(Some((c, tx))) => {
                    let id = self.member.command(c, t);
                    self.waiting.insert(id, tx);
                }
                Wake::Timer => self.member.handle_timeout(t),
            }
        }
    }

    /// Start the requests and deliver the events the member queued; true once it stopped.
    fn flush(
        &mut self,
        inflight: &mut FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = Completed>>>>,
        stream: &mut Option<(RequestId, tonic::Streaming<pb::RoomEvent>)>,
    ) -> bool {
        let mut stopped = false;
        while let Some((id, req)) = self.member.poll_request() {
            if matches!(req, veil_call::Request::Subscribe { .. }) {
                // The new subscription replaces the old one (specs/member.md §4).
                *stream = None;
            }
            inflight.push(Box::pin(self.keys.clone().execute(id, req)));
        }
        let mut changed = false;
        while let Some(ev) = self.member.poll_event() {
            match ev {
                Event::Status(s) => {
                    let mut v = self.view.borrow_mut();
                    v.own_leaf = self.member.session().own_index();
                    v.leaves = self
                        .member
                        .session()
                        .members()
                        .into_iter()
                        .map(|(leaf, id)| (leaf, String::from_utf8_lossy(&id).into_owned()))
                        .collect();
                    v.status = s;
                    changed = true;
                }
                Event::Done { id, result } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Event::Link(_) | Event::Resync { .. } => changed = true,
                Event::Stopped { error } => {
                    self.view.borrow_mut().stopped =
                        Some(error.map_or_else(String::new, |e| e.to_string()));
                    stopped = true;
                    changed = true;
                }
            }
        }
        if changed {
            notify(&self.view, &self.frames);
        }
        stopped
    }
}
