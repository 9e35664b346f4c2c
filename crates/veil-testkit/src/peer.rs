//! One SDK participant that publishes audio every 20 ms in a task of its own and remembers when
//! it last heard each other participant, its room events and its group status: what the
//! outage, restart and soak scenarios watch to say "media is back".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use veil_client::group::GroupStatus;
use veil_client::link::Link;
use veil_client::room::{Room, RoomEvent};

/// A publishing participant; dropping it stops its task and drops its room (no leave).
#[derive(Debug)]
pub struct Peer {
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    events: Arc<Mutex<Vec<RoomEvent>>>,
    failures: Arc<Mutex<u64>>,
    status: watch::Receiver<GroupStatus>,
    stop: Option<oneshot::Sender<()>>,
    updates: mpsc::Sender<oneshot::Sender<Option<u64>>>,
    task: Option<tokio::task::JoinHandle<Room>>,
}

impl Peer {
    /// Start publishing on `room` (a refused frame, while the SFU is away, is what an outage
    /// looks like: it is not an error here).
    #[must_use]
    pub fn start(mut room: Room) -> Self {
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(0));
        let status = room.group().watch_status();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (updates, mut update_rx) = mpsc::channel::<oneshot::Sender<Option<u64>>>(1);
        let (h, e, f) = (heard.clone(), events.clone(), failures.clone());
        let mut rx = room.events();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = &mut stopped => return room,
                    Some(done) = update_rx.recv() => {
                        let _ = done.send(room.group().self_update().await.ok());
                    }
                    _ = tick.tick() => {
                        n += 1;
                        let frame = [0xfc, n as u8, (n >> 8) as u8];
                        let _ = room.publish_audio(&frame, n * 960, (true, 40)).await;
                        *f.lock().unwrap() = room
                            .stats()
                            .received
                            .values()
                            .map(|t| t.decrypt_failures.values().sum::<u64>())
                            .sum();
                    }
                    frame = room.next_frame() => {
                        let Some(frame) = frame else { return room };
                        h.lock().unwrap().insert(frame.participant, Instant::now());
                    }
                    ev = rx.recv() => {
                        if let Ok(ev) = ev {
                            e.lock().unwrap().push(ev);
                        }
                    }
                }
            }
        });
        Self {
            heard,
            events,
            failures,
            status,
            stop: Some(stop),
            updates,
            task: Some(task),
        }
    }

    /// When a frame from `other` last arrived, decrypted.
    #[must_use]
    pub fn last_heard(&self, other: &str) -> Option<Instant> {
        self.heard.lock().unwrap().get(other).copied()
    }

    /// When a frame from each other participant last arrived, for failure messages.
    #[must_use]
    pub fn heard(&self) -> HashMap<String, Instant> {
        self.heard.lock().unwrap().clone()
    }

    /// Whether a frame from every one of `others` arrived after `since`.
    #[must_use]
    pub fn heard_all_since(&self, others: &[&str], since: Instant) -> bool {
        let h = self.heard.lock().unwrap();
        others.iter().all(|o| h.get(*o).is_some_and(|t| *t > since))
    }

    /// The group's epoch now.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.status.borrow().epoch
    }

    /// The group's status now.
    #[must_use]
    pub fn status(&self) -> GroupStatus {
        self.status.borrow().clone()
    }

    /// The group's member count now.
    #[must_use]
    pub fn members(&self) -> usize {
        self.status.borrow().members.len()
    }

    /// Decrypt failures so far, every reason and track.
    #[must_use]
    pub fn decrypt_failures(&self) -> u64 {
        *self.failures.lock().unwrap()
    }

    /// Whether `link` was reported lost (`Reconnecting`) and back (`Reconnected`).
    #[must_use]
    pub fn saw(&self, link: Link) -> (bool, bool) {
        let e = self.events.lock().unwrap();
        (
            e.iter()
                .any(|e| matches!(e, RoomEvent::Reconnecting { link: l, .. } if *l == link)),
            e.iter()
                .any(|e| matches!(e, RoomEvent::Reconnected { link: l, .. } if *l == link)),
        )
    }

    /// Commit a self-update and wait for its acknowledgement: the new epoch, or `None` if
    /// it failed.
    pub async fn self_update(&self) -> Option<u64> {
        let (done, result) = oneshot::channel();
        self.updates.send(done).await.ok()?;
        result.await.ok().flatten()
    }

    /// Every room event so far, for failure messages.
    #[must_use]
    pub fn events(&self) -> Vec<RoomEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Stop publishing and leave the room.
    ///
    /// # Panics
    /// If the task panicked.
    pub async fn leave(mut self) {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            let _ = stop.send(());
            let room = task.await.expect("the peer's task");
            let _ = room.leave().await;
        }
    }
}

/// Wait until every pair of `peers` (with their names) heard each other after `since`; the
/// time that took from `since`, or `None` past `limit`.
pub async fn all_hear_after(
    peers: &[(&str, &Peer)],
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let deadline = since + limit;
    loop {
        let done = peers.iter().all(|(me, p)| {
            let others: Vec<&str> = peers.iter().map(|(n, _)| *n).filter(|n| n != me).collect();
            p.heard_all_since(&others, since)
        });
        if done {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
