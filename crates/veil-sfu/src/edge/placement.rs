//! Which worker serves which room (SFU-WRK-01..03), sans I/O.
//!
//! [`EdgeSfu`](super::EdgeSfu) runs one worker per core, each an edge with its own socket and
//! thread. A room lives on one worker: its first joiner places it on the worker with the
//! fewest participants (ties: the lowest index), every later joiner of the room goes to the
//! same worker, and the room's entry is removed when its last participant leaves, so a room
//! that comes back later is placed afresh.
//!
//! A place is counted from the moment a join is admitted to a worker ([`Placement::reserve`])
//! until the participant is gone ([`Placement::release`]); a join that fails or is abandoned
//! gives its place back. That is what keeps two concurrent first joins of one room on one
//! worker: the second sees the first's reservation.

use std::collections::HashMap;

use prometheus_client::metrics::gauge::Gauge;

/// The room → worker map and each worker's load, in participants.
#[derive(Debug)]
pub(crate) struct Placement {
    rooms: HashMap<String, Placed>,
    /// Participants (and joins in flight) per worker.
    load: Vec<usize>,
    /// `veil_sfu_placed_rooms`: the map's size, set at each change (SFU-WRK-03).
    placed: Gauge,
}

#[derive(Debug, Clone, Copy)]
struct Placed {
    worker: usize,
    participants: usize,
}

impl Placement {
    /// No rooms on `workers` workers (at least one); `placed` follows the number of rooms.
    pub(crate) fn new(workers: usize, placed: Gauge) -> Self {
        placed.set(0);
        Self {
            rooms: HashMap::new(),
            load: vec![0; workers.max(1)],
            placed,
        }
    }

    /// The worker `room` is on, if anyone is in it or joining it.
    pub(crate) fn worker_of(&self, room: &str) -> Option<usize> {
        self.rooms.get(room).map(|p| p.worker)
    }

    /// A place in `room` for one joiner: the room's worker, or for a new room the least-loaded
    /// worker (SFU-WRK-01, 02). Give it back with [`Placement::release`].
    pub(crate) fn reserve(&mut self, room: &str) -> usize {
        let load = &self.load;
        let placed = self.rooms.entry(room.to_owned()).or_insert_with(|| Placed {
            worker: (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0),
            participants: 0,
        });
        placed.participants += 1;
        let worker = placed.worker;
        self.load[worker] += 1;
        self.placed.set(self.rooms.len() as i64);
        worker
    }

    /// One place in `room` is free again; the room's entry goes with its last (SFU-WRK-03).
    pub(crate) fn release(&mut self, room: &str) {
        let Some(placed) = self.rooms.get_mut(room) else {
            return;
        };
        placed.participants = placed.participants.saturating_sub(1);
        self.load[placed.worker] = self.load[placed.worker].saturating_sub(1);
        if placed.participants == 0 {
            self.rooms.remove(room);
            self.placed.set(self.rooms.len() as i64);
        }
    }

    /// The rooms placed (someone is in each, or joining it), sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rooms.keys().cloned().collect();
        v.sort();
        v
    }

    /// Participants (and joins in flight) per worker.
    pub(crate) fn load(&self) -> &[usize] {
        &self.load
    }

    /// Rooms placed.
    #[cfg(test)]
    fn rooms(&self) -> usize {
        assert_eq!(
            self.placed.get(),
            self.rooms.len() as i64,
            "the gauge follows"
        );
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_room_goes_to_the_least_loaded_worker_and_its_joiners_follow_it() {
        let mut p = Placement::new(3, Gauge::default());
        assert_eq!(p.reserve("a"), 0, "ties go to the lowest index");
        assert_eq!(p.reserve("a"), 0);
        assert_eq!(p.reserve("a"), 0, "a room's joiners follow its first");
        assert_eq!(p.reserve("b"), 1);
        assert_eq!(p.reserve("c"), 2);
        assert_eq!(p.reserve("c"), 2);
        // Loads 3, 1, 2: the next new room goes to worker 1.
        assert_eq!(p.reserve("d"), 1);
        assert_eq!(p.load(), &[3, 2, 2]);
        assert_eq!(p.worker_of("a"), Some(0));
        assert_eq!(p.worker_of("nowhere"), None);
    }

    #[test]
    fn a_room_leaves_the_map_with_its_last_participant_and_is_placed_afresh() {
        let mut p = Placement::new(2, Gauge::default());
        p.reserve("big");
        p.reserve("big");
        assert_eq!(p.reserve("small"), 1);
        p.release("small");
        assert_eq!(p.worker_of("small"), None, "emptied: gone from the map");
        assert_eq!(p.rooms(), 1);
        p.release("big");
        assert_eq!(p.worker_of("big"), Some(0), "one participant left");
        p.release("big");
        assert_eq!(p.worker_of("big"), None);
        assert_eq!(p.load(), &[0, 0]);
        assert_eq!(p.rooms(), 0);
        // A release with nothing placed changes nothing.
        p.release("big");
        assert_eq!(p.load(), &[0, 0]);
        // It was on worker 1; both are idle now, so it comes back on worker 0.
        assert_eq!(p.reserve("small"), 0, "placed afresh");
    }

    #[test]
    fn one_worker_takes_every_room() {
        let mut p = Placement::new(1, Gauge::default());
        for r in ["a", "b", "c"] {
            assert_eq!(p.reserve(r), 0);
        }
        assert_eq!(p.load(), &[3]);
        let zero = Placement::new(0, Gauge::default());
        assert_eq!(zero.load(), &[0], "at least one worker");
    }
}
