//! Carries each connection's bandwidth estimate from webrtc-rs's interceptor chain into the routing
//! core and the metrics (SFU-BWE-01, SFU-BWE-03).

use std::sync::Weak;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::metrics::Subscriber;
use super::peer::Estimate;
use super::{RoomShell, Shared};
use crate::routing::ParticipantId;

/// How often a connection's estimate is handed to the core. GCC changes its target at most every
/// 200 ms (rate-control interval) and on feedback, which comes about every 100 ms.
pub(super) const ESTIMATE_PERIOD: Duration = Duration::from_millis(100);

/// Hand `estimate` of participant `id`'s connection to the core every [`ESTIMATE_PERIOD`] until the
/// participant is gone.
pub(super) async fn follow(
    shared: Weak<Shared>,
    room: Weak<RoomShell>,
    id: ParticipantId,
    identity: String,
    estimate: Estimate,
) {
    let mut tick = tokio::time::interval(ESTIMATE_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut labels = None;
    loop {
        tick.tick().await;
        let (Some(shared), Some(room)) = (shared.upgrade(), room.upgrade()) else {
            return;
        };
        let bps = estimate.bits_per_second();
        let now = shared.now();
        {
            let mut st = room.lock();
            if !st.participants.contains_key(&id) {
                if let Some(l) = labels.take() {
                    shared.metrics.subscriber_estimate.remove(&l);
                }
                return;
            }
            // Every tick, not only on change: the core splits the estimate by the rates it
            // measures, and those move.
            st.core.set_estimate(id, bps, now);
        }
        if let Some(bps) = bps {
            let l = labels.get_or_insert_with(|| Subscriber {
                room: room.name.clone(),
                subscriber: identity.clone(),
            });
            shared
                .metrics
                .subscriber_estimate
                .get_or_create(l)
                .set(i64::try_from(bps).unwrap_or(i64::MAX));
        }
    }
}
