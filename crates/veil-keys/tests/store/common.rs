//! The two stores under test and the records the checks share.

use veil_keys::store::{
    Event, EventKind, KeyPackageRecord, PostgresStore, RoomRecord, SqliteStore,
};
use veil_testkit::postgres::TempPostgres;

/// A fresh SQLite store (its directory lives as long as the store is used).
pub fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("t.db")).unwrap();
    (dir, s)
}

/// The URL of a fresh database on this binary's PostgreSQL server.
pub fn pg_database() -> String {
    TempPostgres::shared().database()
}

/// A fresh PostgreSQL store.
pub fn postgres() -> PostgresStore {
    PostgresStore::open(&pg_database()).unwrap()
}

/// Run a check (a function of `&dyn Store`) as one test per store.
macro_rules! both_stores {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $check() {
                let (_dir, s) = crate::common::sqlite();
                super::$check(&s);
            })*
        }
        mod postgres {
            $(#[test]
            fn $check() {
                super::$check(&crate::common::postgres());
            })*
        }
    };
}
pub(crate) use both_stores;

pub fn kp(tag: u8, last_resort: bool) -> KeyPackageRecord {
    KeyPackageRecord {
        hash_ref: vec![tag; 16],
        last_resort,
        message: vec![tag; 4],
    }
}

pub fn room(name: &str) -> RoomRecord {
    RoomRecord {
        room: name.into(),
        epoch: 0,
        next_seq: 1,
        group_info: vec![1],
        public_state: vec![2],
    }
}

pub fn event(kind: EventKind, seq: u64, epoch: u64, len: usize) -> Event {
    Event {
        seq,
        kind,
        epoch,
        actor: "a".into(),
        recipient: (kind == EventKind::Welcome).then(|| "bob".into()),
        message: vec![seq as u8; len],
        hash: (kind == EventKind::Commit).then(|| vec![seq as u8; 32]),
    }
}
