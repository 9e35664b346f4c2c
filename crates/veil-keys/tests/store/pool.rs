//! The PostgreSQL store's connections (KDS-PG-POOL-01): a call stuck on one room's row lock
//! does not hold up a call on another room when the store has two connections; with one, the
//! second call waits its turn. Another session holds the lock, as a slow replica's
//! transaction would.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use veil_keys::store::{EventKind, PostgresStore, RoomRecord, Store};

use crate::common::{event, pg_database, room};

/// Open a store with `connections` on a fresh database with rooms `a` and `b`; lock `a`'s row
/// from another session; append to `a` (blocked) and read `b`. Returns whether the read came
/// back while the lock was still held, and the append's result once it was released.
fn read_while_another_room_is_locked(connections: usize) -> (bool, bool) {
    let url = pg_database();
    let store = Arc::new(PostgresStore::open_with(&url, None, connections).unwrap());
    store.create_room(&room("a")).unwrap();
    store.create_room(&room("b")).unwrap();
    let mut locker = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = locker.transaction().unwrap();
    tx.execute("SELECT 1 FROM rooms WHERE room = 'a' FOR UPDATE", &[])
        .unwrap();

    let (done_tx, done) = mpsc::channel();
    let s = store.clone();
    let append = std::thread::spawn(move || {
        let next = RoomRecord {
            epoch: 1,
            next_seq: 2,
            ..room("a")
        };
        let r = s.append(&next, &[event(EventKind::Commit, 1, 0, 4)], &[]);
        let _ = done_tx.send("append");
        r.is_ok()
    });
    // The read is queued only once the append waits on the lock (PostgreSQL says so).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the append never reached the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (read_tx, read) = mpsc::channel();
    let s = store.clone();
    std::thread::spawn(move || {
        let r = s.room("b");
        let _ = read_tx.send(r.is_ok());
    });
    // Two connections: the read comes back while the lock is held (generous wait). One: it
    // cannot, and is still waiting when the lock goes.
    let watch = Duration::from_secs(if connections > 1 { 30 } else { 2 });
    let read_first = read.recv_timeout(watch).unwrap_or_default();
    assert!(done.try_recv().is_err(), "the append waited for the lock");
    tx.rollback().unwrap();
    let appended = append.join().unwrap();
    if !read_first {
        assert_eq!(read.recv_timeout(Duration::from_secs(30)), Ok(true));
    }
    (read_first, appended)
}

#[test]
fn with_two_connections_one_locked_room_does_not_hold_up_another() {
    assert_eq!(read_while_another_room_is_locked(2), (true, true));
}

#[test]
fn with_one_connection_calls_take_turns() {
    assert_eq!(read_while_another_room_is_locked(1), (false, true));
}
