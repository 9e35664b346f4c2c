//! The tasks that move media: one reader per published track, one writer and one RTCP reader
//! per live subscription. They carry out the routing core's verdicts and never read a payload
//! byte (SFU-BLIND-03).

use std::sync::{Arc, Weak};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use veil_rtc::is_key_frame_request;
use veil_wire::ext::{Extension, ExtensionForm, form_for, write_block};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::metrics::{DropKind, SubscriberTrack};
use super::{Published, RoomShell, Shared, SignalEvent, TrackInfo, track_name};
use crate::routing::{Forward, MediaKind, PacketMeta, ParticipantId, Publish, TrackId};

/// Most extension elements the SFU reads or forwards per packet.
const MAX_ELEMENTS: usize = 32;

/// Send one PLI per SSRC to the publisher of `remote` (the SFU's own, throttled requests).
pub(super) async fn send_plis(shared: &Shared, remote: &Arc<dyn TrackRemote>, ssrcs: &[u32]) {
    for &media_ssrc in ssrcs {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        match remote.write_rtcp(vec![Box::new(pli)]).await {
            Ok(()) => {
                shared.metrics.publisher_key_frame_requests.inc();
            }
            Err(e) => debug!(media_ssrc, error = %e, "PLI not sent"),
        }
    }
}

/// Read one published track until it ends: register it, route every packet, end it.
pub(super) async fn read_published(
    shared: Arc<Shared>,
    room: Arc<RoomShell>,
    publisher: ParticipantId,
    track: Arc<dyn TrackRemote>,
) {
    let Some(tid) = register(&shared, &room, publisher, &track).await else {
        // Not published (no `publish` grant, or the core refused it): drain and count, so
        // webrtc-rs's queue for the track does not fill.
        while let Some(ev) = track.poll().await {
            match ev {
                TrackRemoteEvent::OnRtpPacket(_) => shared.metrics.drop(DropKind::NotPermitted),
                TrackRemoteEvent::OnEnded => break,
                _ => {}
            }
        }
        return;
    };
    let kind = room
        .lock()
        .core
        .track(tid)
        .map_or(MediaKind::Audio, |t| t.1);
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                let plis = route(&shared, &room, publisher, tid, kind, &p);
                if !plis.is_empty() {
                    send_plis(&shared, &track, &plis).await;
                }
            }
            // webrtc-rs latched this stream's rid (from its first packets or the SDP): tell
            // the core, for packets that do not carry the rid themselves (SFU-STR-04).
            TrackRemoteEvent::OnOpen(init) => {
                if let Some(rid) = init.rid.as_deref()
                    && let Err(e) = room.lock().core.bind_layer(tid, init.ssrc, rid.as_bytes())
                {
                    debug!(error = %e, "layer not bound");
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    unpublish(&shared, &room, tid).await;
}

async fn register(
    shared: &Shared,
    room: &RoomShell,
    publisher: ParticipantId,
    track: &Arc<dyn TrackRemote>,
) -> Option<TrackId> {
    let ssrc = track.ssrcs().await.first().copied()?;
    let codec = track.codec(ssrc).await?;
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        _ => return None,
    };
    let publisher_track_id = track.track_id().await;
    let (tid, info, others) = {
        let mut st = room.lock();
        let p = st.participants.get(&publisher)?.clone();
        if !p.permissions.publish {
            debug!(identity = %p.identity, "track refused: no publish grant");
            return None;
        }
        let rids: Vec<String> = p
            .remote_sdp()
            .section_of_track(&publisher_track_id)
            .map(|s| s.send_rids.clone())
            .unwrap_or_default();
        let publish = Publish {
            kind,
            clock_rate: codec.clock_rate,
            rids: rids.iter().map(|r| r.clone().into_bytes()).collect(),
        };
        let tid = match st.core.publish(publisher, publish) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "track not published");
                return None;
            }
        };
        let info = TrackInfo {
            track: track_name(tid),
            publisher: p.identity.clone(),
            kind,
            publisher_track_id,
            rids,
        };
        st.tracks.insert(
            tid,
            Published {
                publisher,
                info: info.clone(),
                codec,
                remote: track.clone(),
            },
        );
        let others: Vec<_> = st
            .participants
            .values()
            .filter(|o| o.id != publisher)
            .cloned()
            .collect();
        (tid, info, others)
    };
    shared.metrics.tracks.inc();
    debug!(room = %room.name, track = %info.track, publisher = %info.publisher, "track published");
    for o in others {
        o.send(SignalEvent::TrackPublished(info.clone()));
    }
    Some(tid)
}

async fn unpublish(shared: &Shared, room: &RoomShell, tid: TrackId) {
    let (subscribers, others) = {
        let mut st = room.lock();
        if st.tracks.remove(&tid).is_none() {
            return; // already gone with its publisher
        }
        let subscribers = st.core.unpublish(tid);
        st.outputs.retain(|(_, t), _| *t != tid);
        let others: Vec<_> = st.participants.values().cloned().collect();
        (subscribers, others)
    };
    shared.metrics.tracks.dec();
    for o in others {
        o.send(SignalEvent::TrackUnpublished {
            track: track_name(tid),
        });
        if subscribers.contains(&o.id)
            && o.remove_subscription(shared, &room.name, tid)
                .await
                .unwrap_or(false)
            && let Err(e) = o.renegotiate().await
        {
            debug!(error = %e, "renegotiation after an unpublish failed");
        }
    }
}

/// What the routing core reads of `p`, its extension block written into `block`; None if the
/// elements do not make a block.
pub(crate) fn packet_meta<'a>(
    p: &rtp::Packet,
    block: &'a mut [u8; 1500],
) -> Option<PacketMeta<'a>> {
    // The core reads the extension block as the wire carries it; rebuild it from the elements
    // webrtc-rs parsed (same elements, smallest form).
    let mut els = [Extension { id: 0, data: &[] }; MAX_ELEMENTS];
    let n = p.header.extensions.len().min(MAX_ELEMENTS);
    for (slot, e) in els.iter_mut().zip(&p.header.extensions) {
        *slot = Extension {
            id: e.id,
            data: &e.payload,
        };
    }
    let (ext_profile, len) = if n == 0 {
        (None, 0)
    } else {
        let (profile, len) = write_block(&els[..n], block).ok()?;
        (Some(profile), len)
    };
    Some(PacketMeta {
        ssrc: p.header.ssrc,
        seq: p.header.sequence_number,
        timestamp: p.header.timestamp,
        marker: p.header.marker,
        ext_profile,
        ext_body: &block[..len],
        // The header as received (fixed part, CSRCs, extension block) and the payload's length.
        len: p.payload.len() + 12 + 4 * p.header.csrc.len() + if n == 0 { 0 } else { 4 + len },
    })
}

/// Route one packet; queue its copies; return the SSRCs to send PLIs for.
fn route(
    shared: &Shared,
    room: &RoomShell,
    publisher: ParticipantId,
    tid: TrackId,
    kind: MediaKind,
    p: &rtp::Packet,
) -> Vec<u32> {
    let m = &shared.metrics;
    let counters = m.of(kind);
    counters.received.inc();
    if p.payload.is_empty() {
        m.drop(DropKind::Padding);
        return Vec::new();
    }
    let mut block = [0u8; 1500];
    let Some(meta) = packet_meta(p, &mut block) else {
        m.drop(DropKind::Metadata);
        return Vec::new();
    };
    let now = shared.now();
    let mut st = room.lock();
    if let Some(tap) = shared.config.tap.as_ref().filter(|t| t.listening()) {
        let identity = st
            .participants
            .get(&publisher)
            .map(|p| p.identity.as_str())
            .unwrap_or_default();
        tap.record(super::TappedPacket::of(
            &room.name,
            identity,
            track_name(tid),
            kind,
            p,
        ));
    }
    let routed = match st.core.on_rtp(publisher, tid, &meta, now) {
        Ok(r) => r,
        Err(e) => {
            debug!(room = %room.name, publisher, error = %e, "packet dropped");
            m.drop(DropKind::of_error(&e));
            return Vec::new();
        }
    };
    if routed.repair {
        m.drop(DropKind::Repair);
    }
    for d in &routed.dropped {
        m.drop(DropKind::from(*d));
    }
    for f in &routed.forwards {
        let Some(tx) = st.outputs.get(&(f.subscriber, tid)) else {
            continue;
        };
        match tx.try_send(rewrite(p, f)) {
            Ok(()) => {
                counters.forwarded.inc();
                counters.forwarded_bytes.inc_by(p.payload.len() as u64);
            }
            // SFU-LIVE-03: a slow subscriber loses packets, nobody else waits for it.
            Err(mpsc::error::TrySendError::Full(_)) => m.drop(DropKind::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        if f.switched
            && let Some(s) = st.participants.get(&f.subscriber)
        {
            m.subscriber_layer
                .get_or_create(&SubscriberTrack {
                    room: room.name.clone(),
                    subscriber: s.identity.clone(),
                    track: track_name(tid),
                })
                .set(i64::from(routed.layer));
        }
    }
    if let Some(identity) = routed
        .active_speaker
        .and_then(|id| st.participants.get(&id))
        .map(|p| p.identity.clone())
    {
        debug!(room = %room.name, %identity, "active speaker");
        for p in st.participants.values() {
            p.send(SignalEvent::ActiveSpeaker {
                identity: identity.clone(),
            });
        }
    }
    drop(st);
    routed.key_frame_requests
}

/// The copy of `p` for one subscriber: SSRC, payload type, sequence number, timestamp and
/// extension ids rewritten (SFU-FWD-03, SFU-EXT-01..03); the payload is the same bytes, shared,
/// not copied (SFU-BLIND-03). CSRCs and padding are per hop and not forwarded.
pub(crate) fn rewrite(p: &rtp::Packet, f: &Forward) -> rtp::Packet {
    let mut extensions = Vec::with_capacity(p.header.extensions.len());
    for e in &p.header.extensions {
        if let Some(id) = f.ext.map_id(e.id)
            && extensions.len() < MAX_ELEMENTS
        {
            extensions.push(rtp::header::Extension {
                id,
                payload: e.payload.clone(),
            });
        }
    }
    let mut views = [Extension { id: 0, data: &[] }; MAX_ELEMENTS];
    for (v, e) in views.iter_mut().zip(&extensions) {
        *v = Extension {
            id: e.id,
            data: &e.payload,
        };
    }
    let extension_profile = match form_for(&views[..extensions.len()]) {
        ExtensionForm::OneByte => rtp::header::EXTENSION_PROFILE_ONE_BYTE,
        ExtensionForm::TwoByte { .. } => rtp::header::EXTENSION_PROFILE_TWO_BYTE,
    };
    // webrtc-rs keeps the block's padding in this field and updates it as elements are added
    // (the TWCC sender adds transport-cc on the way out, SFU-BWE-01); it must start right, or
    // the packet's size and its marshalled bytes disagree and SRTP refuses it.
    let element_header = match extension_profile {
        rtp::header::EXTENSION_PROFILE_ONE_BYTE => 1,
        _ => 2,
    };
    let block_len: usize = extensions
        .iter()
        .map(|e| element_header + e.payload.len())
        .sum();
    let extensions_padding = (4 - block_len % 4) % 4;
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            padding: false,
            extension: !extensions.is_empty(),
            marker: p.header.marker,
            payload_type: f.payload_type,
            sequence_number: f.seq,
            timestamp: f.timestamp,
            ssrc: f.ssrc,
            csrc: Vec::new(),
            extension_profile,
            extensions,
            extensions_padding,
        },
        payload: p.payload.clone(),
    }
}

/// Write one subscription's queued packets to its track until the queue closes.
pub(super) async fn write_subscription(
    shared: Weak<Shared>,
    local: Arc<TrackLocalStaticRTP>,
    mut rx: mpsc::Receiver<rtp::Packet>,
) {
    while let Some(p) = rx.recv().await {
        if let Err(e) = local.write_rtp(p).await {
            debug!(error = %e, "write_rtp");
            if let Some(s) = shared.upgrade() {
                s.metrics.drop(DropKind::WriteFailed);
            }
        }
    }
}

/// Read a subscriber's PLI/FIR about one subscription. They end here; the SFU asks the
/// publisher itself, throttled (SFU-KF-01, SFU-KF-03).
pub(super) async fn read_subscriber_rtcp(
    shared: Weak<Shared>,
    room: Weak<RoomShell>,
    subscriber: ParticipantId,
    tid: TrackId,
    local: Arc<TrackLocalStaticRTP>,
) {
    while let Some(ev) = local.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = ev else {
            continue;
        };
        let n = packets
            .iter()
            .filter(|p| is_key_frame_request(p.as_ref()))
            .count();
        let (Some(shared), Some(room)) = (shared.upgrade(), room.upgrade()) else {
            return;
        };
        if n == 0 {
            continue;
        }
        shared
            .metrics
            .subscriber_key_frame_requests
            .inc_by(n as u64);
        let now = shared.now();
        let request = {
            let mut st = room.lock();
            st.core
                .subscriber_key_frame_request(subscriber, tid, now)
                .and_then(|ssrc| st.tracks.get(&tid).map(|t| (t.remote.clone(), ssrc)))
        };
        if let Some((remote, ssrc)) = request {
            send_plis(&shared, &remote, &[ssrc]).await;
        }
    }
}
