//! Replicas of the key service sharing one store (specs/key-service.md §5.2).
//!
//! Each replica keeps the rooms it serves in memory, as a single server does, but the store is
//! the truth and other replicas write it too. So:
//!
//! - KDS-REP-01: before every decision about a room (a commit, a removal proposal, a
//!   subscription's replay, a GroupInfo) the replica compares the room's stored log position
//!   with its own and, if another replica wrote, reloads the room and broadcasts the events it
//!   had not seen, in log order, to its own streams. A write that loses a race against another
//!   replica does the same before its error goes back.
//! - KDS-REP-02: every write is announced on the database (`pg_notify`), and each replica
//!   catches up the rooms it holds as the announcements arrive; every [`Config::replica_sync`]
//!   it also compares every room it holds, so a lost announcement only delays events.
//! - KDS-REP-03: a member's streams may be on any replica, so departures are decided on
//!   presence leases in the store: each replica renews, every third of
//!   [`Config::presence_lease`], a lease per member it holds a stream of, and a departure timer
//!   that finds another replica's lease waits for it to run out before proposing the removal.
//!
//! [`Config::replica_sync`]: super::Config::replica_sync
//! [`Config::presence_lease`]: super::Config::presence_lease

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Inner, KeyService, RoomHandle, blocking, lock};
use crate::error::KdsError;
use crate::room::RoomState;
use crate::store::Change;

/// A name for this process among replicas: host, process id and start time.
pub(super) fn name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}/{}/{nanos:x}", std::process::id())
}

impl KeyService {
    /// KDS-REP-01: bring `st` (the room `h`, locked by the caller) up to the store, and
    /// broadcast the events other replicas wrote since. Returns the identities that became
    /// members meanwhile (they get a departure timer like any new member). Nothing to do on a
    /// store nobody else writes.
    ///
    /// # Errors
    /// [`KdsError::NoSuchRoom`] if another replica deleted the room; storage errors.
    pub(super) fn catch_up(
        inner: &Inner,
        h: &RoomHandle,
        st: &mut RoomState,
    ) -> Result<Vec<String>, KdsError> {
        if !inner.store.shared() {
            return Ok(Vec::new());
        }
        let name = st.name().to_owned();
        let head = inner
            .store
            .next_seq(&name)?
            .ok_or_else(|| KdsError::NoSuchRoom(name.clone()))?;
        if head <= st.last_seq() + 1 {
            return Ok(Vec::new());
        }
        // The room row first: the events below its position were committed with it.
        let rec = inner
            .store
            .room(&name)?
            .ok_or_else(|| KdsError::NoSuchRoom(name.clone()))?;
        let events = inner.store.events(&name, st.last_seq(), rec.next_seq)?;
        let fresh = RoomState::restore(&rec, &inner.key)?;
        let ids = |s: &RoomState| -> std::collections::BTreeSet<String> {
            s.members().into_iter().map(|(_, id)| id).collect()
        };
        let (before, after) = (ids(st), ids(&fresh));
        inner
            .metrics
            .members
            .inc_by(after.len() as i64 - before.len() as i64);
        tracing::debug!(
            room = name,
            from = st.epoch(),
            to = fresh.epoch(),
            events = events.len(),
            "caught up with another replica"
        );
        *st = fresh;
        Self::broadcast(h, events);
        Ok(after.difference(&before).cloned().collect())
    }

    /// How long another replica still holds a presence lease of `identity` in `room`, if it
    /// does (KDS-REP-03); `None` on a store nobody else writes, or if the store cannot say (a
    /// departure is then decided on this replica's streams alone).
    pub(super) async fn leased_elsewhere(
        inner: &Arc<Inner>,
        room: &str,
        identity: &str,
    ) -> Option<Duration> {
        if !inner.store.shared() {
            return None;
        }
        let (i, room, identity) = (inner.clone(), room.to_owned(), identity.to_owned());
        match blocking(move || i.store.present_elsewhere(&i.replica, &room, &identity)).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read presence leases");
                None
            }
        }
    }

    /// Start the tasks of a replica (KDS-REP-02/03): catch up the rooms in memory as other
    /// replicas announce writes and every `replica_sync`, and renew presence leases.
    pub(super) fn start_replica(&self) {
        let changes = match self.inner.store.changes() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for other replicas' writes; relying on periodic reads");
                None
            }
        };
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let Some(period) = weak.upgrade().map(|i| i.cfg.replica_sync) else {
                return;
            };
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changes = changes;
            loop {
                let which = tokio::select! {
                    c = async { changes.as_mut()?.recv().await }, if changes.is_some() => match c {
                        Some(Change::Room(r)) => Some(r),
                        Some(Change::All) => None,
                        None => {
                            changes = None;
                            continue;
                        }
                    },
                    _ = tick.tick() => None,
                };
                let Some(inner) = weak.upgrade() else { return };
                Self { inner }.sync(which.as_deref()).await;
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let now = self.inner.lease_now.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let lease = inner.cfg.presence_lease;
                Self::renew_leases(&inner).await;
                drop(inner);
                tokio::select! {
                    () = tokio::time::sleep(lease / 3) => {}
                    () = now.notified() => {}
                }
            }
        });
    }

    /// Catch up `room` if it is in memory, or every room in memory (KDS-REP-01/02). A sweep
    /// of every room reads all their log positions in one query and catches up only the rooms
    /// another replica wrote to (or deleted).
    async fn sync(&self, room: Option<&str>) {
        let mut rooms: Vec<(String, Arc<RoomHandle>)> = {
            let rooms = lock(&self.inner.rooms);
            match room {
                Some(r) => rooms
                    .get(r)
                    .map(|h| (r.to_owned(), h.clone()))
                    .into_iter()
                    .collect(),
                None => rooms.iter().map(|(n, h)| (n.clone(), h.clone())).collect(),
            }
        };
        if room.is_none() && !rooms.is_empty() {
            let (inner, names) = (
                self.inner.clone(),
                rooms.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            );
            match blocking(move || inner.store.next_seqs(&names)).await {
                Ok(heads) => rooms.retain(|(name, h)| {
                    heads
                        .get(name)
                        .is_none_or(|head| *head > lock(&h.state).last_seq() + 1)
                }),
                Err(e) => tracing::warn!(error = %e, "could not read the rooms' log positions"),
            }
        }
        for (name, h) in rooms {
            let (inner, h2) = (self.inner.clone(), h.clone());
            match blocking(move || Self::catch_up(&inner, &h2, &mut lock(&h2.state))).await {
                Ok(joined) => {
                    for id in joined {
                        self.schedule_departure(&name, &h, &id);
                    }
                }
                Err(KdsError::NoSuchRoom(_)) => self.forget_deleted(&name, &h),
                Err(e) => tracing::warn!(room = name, error = %e, "could not catch up a room"),
            }
        }
    }

    /// Another replica deleted `room`: drop it from memory and end its streams (KDS-GC-03).
    fn forget_deleted(&self, room: &str, h: &Arc<RoomHandle>) {
        let removed = {
            let mut rooms = lock(&self.inner.rooms);
            match rooms.get(room) {
                Some(cur) if Arc::ptr_eq(cur, h) => rooms.remove(room),
                _ => None,
            }
        };
        if let Some(h) = removed {
            h.deleted.send_replace(true);
            self.inner.metrics.rooms.dec();
            let members = lock(&h.state).members().len() as i64;
            self.inner.metrics.members.dec_by(members);
            tracing::info!(room, "room deleted by another replica");
        }
    }

    /// KDS-PLACE-02: the SFU URL of `room`'s node. On a shared store the database places the
    /// room on a live node; otherwise this process's own SFU serves every room.
    pub(super) async fn placement(&self, room: String) -> Result<String, KdsError> {
        let own = self.inner.cfg.sfu_url.clone();
        if !self.inner.store.shared() {
            return own.ok_or_else(|| {
                KdsError::NoSfuNode(
                    "this key service runs without an SFU: give participants the SFU's URL".into(),
                )
            });
        }
        let inner = self.inner.clone();
        blocking(move || inner.store.place_room(&room))
            .await?
            .ok_or_else(|| {
                KdsError::NoSfuNode(
                    "no SFU node is live in this deployment: start one, or wait for a restarted one to announce itself".into(),
                )
            })
    }

    /// KDS-REP-03: lease the presence of every member this replica holds a stream of; and
    /// KDS-PLACE-01: announce this process's SFU node.
    async fn renew_leases(inner: &Arc<Inner>) {
        if let Some(url) = inner.cfg.sfu_url.clone() {
            let i = inner.clone();
            let lease = inner.cfg.presence_lease;
            if let Err(e) = blocking(move || i.store.announce_node(&i.replica, &url, lease)).await {
                tracing::warn!(error = %e, "could not announce this SFU node");
            }
        }
        let present: Vec<(String, String)> = {
            let rooms = lock(&inner.rooms);
            rooms
                .iter()
                .flat_map(|(name, h)| {
                    lock(&h.presence)
                        .by_identity
                        .iter()
                        .filter(|(_, p)| p.streams > 0)
                        .map(|(id, _)| (name.clone(), id.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let i = inner.clone();
        let lease = inner.cfg.presence_lease;
        if let Err(e) =
            blocking(move || i.store.refresh_presence(&i.replica, &present, lease)).await
        {
            tracing::warn!(error = %e, "could not renew presence leases");
        }
    }
}
