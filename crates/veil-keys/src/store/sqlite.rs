//! The embedded store: one SQLite file (specs/key-service.md §5).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Event, EventKind, KeyPackageRecord, RoomRecord, Store, now_secs, to_i64, to_u64};
use crate::error::KdsError;

/// The schema, one migration per version (KDS-DUR-04): migration `i` brings the database to
/// version `i + 1`. Version 1 is the schema from before versions were recorded, so its
/// `IF NOT EXISTS` lets a database made then be adopted as it is.
const MIGRATIONS: &[&str] = &["
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    group_info BLOB NOT NULL,
    public_state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL REFERENCES rooms(room),
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    actor TEXT NOT NULL,
    recipient TEXT,
    message BLOB NOT NULL,
    hash BLOB,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_commit_per_epoch ON events (room, epoch) WHERE kind = 1;
CREATE INDEX IF NOT EXISTS welcomes ON events (room, recipient) WHERE kind = 3;
CREATE TABLE IF NOT EXISTS key_packages (
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    hash_ref BLOB NOT NULL,
    last_resort INTEGER NOT NULL,
    message BLOB NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    created INTEGER NOT NULL,
    PRIMARY KEY (room, hash_ref)
);
CREATE INDEX IF NOT EXISTS kp_by_identity ON key_packages (room, identity, claimed);
"];

/// The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a write the
/// service acknowledged is on disk before the reply leaves (KDS-DUR-01).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> KdsError {
    KdsError::storage_by("SQLite", e)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64, i64, Event)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        Event {
            seq: 0,
            kind: EventKind::Commit,
            epoch: 0,
            actor: r.get(3)?,
            recipient: r.get(4)?,
            message: r.get(5)?,
            hash: r.get(6)?,
        },
    ))
}

fn finish_event((seq, kind, epoch, mut e): (i64, i64, i64, Event)) -> Result<Event, KdsError> {
    e.seq = to_u64(seq, "seq")?;
    e.epoch = to_u64(epoch, "epoch")?;
    e.kind = EventKind::from_i64(kind)?;
    Ok(e)
}

type RoomRow = (String, i64, i64, Vec<u8>, Vec<u8>);

fn room_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn finish_room(
    (room, epoch, next_seq, group_info, public_state): RoomRow,
) -> Result<RoomRecord, KdsError> {
    Ok(RoomRecord {
        room,
        epoch: to_u64(epoch, "epoch")?,
        next_seq: to_u64(next_seq, "seq")?,
        group_info,
        public_state,
    })
}

const EVENT_COLS: &str = "seq, kind, epoch, actor, recipient, message, hash";

/// Apply the migrations the database has not seen, each in its own transaction with its
/// version row (KDS-DUR-04). `BEGIN IMMEDIATE` makes a second process opening the same file
/// wait, then find the migration applied.
fn migrate(conn: &mut Connection) -> Result<(), KdsError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        .map_err(db)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(i + 1).map_err(|_| KdsError::storage("migration count"))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_version WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(db)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Open (or create) the database at `path`.
    ///
    /// # Errors
    /// [`KdsError::Storage`] if the file cannot be opened or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KdsError> {
        let mut conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for SqliteStore {
    fn rooms(&self) -> Result<Vec<RoomRecord>, KdsError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT room, epoch, next_seq, group_info, public_state FROM rooms")
            .map_err(db)?;
        let rows = st.query_map([], room_from_row).map_err(db)?;
        rows.map(|r| finish_room(r.map_err(db)?)).collect()
    }

    fn create_room(&self, room: &RoomRecord) -> Result<(), KdsError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO rooms (room, epoch, next_seq, group_info, public_state) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                room.room,
                to_i64(room.epoch)?,
                to_i64(room.next_seq)?,
                room.group_info,
                room.public_state
            ],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                KdsError::RoomExists(room.room.clone())
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    fn append(
        &self,
        state: &RoomRecord,
        events: &[Event],
        consumed: &[Vec<u8>],
    ) -> Result<(), KdsError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        for e in events {
            tx.execute(
                "INSERT INTO events (room, seq, kind, epoch, actor, recipient, message, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    state.room,
                    to_i64(e.seq)?,
                    e.kind as i64,
                    to_i64(e.epoch)?,
                    e.actor,
                    e.recipient,
                    e.message,
                    e.hash
                ],
            )
            .map_err(|err| {
                if is_unique_violation(&err) {
                    KdsError::EpochTaken { epoch: e.epoch }
                } else {
                    db(err)
                }
            })?;
        }
        let n = tx
            .execute(
                "UPDATE rooms SET epoch = ?2, next_seq = ?3, group_info = ?4, public_state = ?5 WHERE room = ?1",
                params![
                    state.room,
                    to_i64(state.epoch)?,
                    to_i64(state.next_seq)?,
                    state.group_info,
                    state.public_state
                ],
            )
            .map_err(db)?;
        if n != 1 {
            return Err(KdsError::NoSuchRoom(state.room.clone()));
        }
        for h in consumed {
            tx.execute(
                "DELETE FROM key_packages WHERE room = ?1 AND hash_ref = ?2 AND last_resort = 0",
                params![state.room, h],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn log_page(
        &self,
        room: &str,
        from_epoch: u64,
        after: u64,
        up_to: u64,
        max_bytes: usize,
    ) -> Result<Vec<Event>, KdsError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = ?1 AND kind IN (1, 2) AND epoch >= ?2 AND seq > ?3 AND seq <= ?4 ORDER BY seq"
            ))
            .map_err(db)?;
        let mut rows = st
            .query(params![
                room,
                to_i64(from_epoch)?,
                to_i64(after)?,
                to_i64(up_to)?
            ])
            .map_err(db)?;
        // SQLite steps row by row: stopping here reads no further message.
        let (mut page, mut bytes) = (Vec::new(), 0usize);
        while bytes < max_bytes {
            let Some(row) = rows.next().map_err(db)? else {
                break;
            };
            let e = finish_event(event_from_row(row).map_err(db)?)?;
            bytes += e.message.len();
            page.push(e);
        }
        Ok(page)
    }

    fn room(&self, room: &str) -> Result<Option<RoomRecord>, KdsError> {
        let c = self.conn();
        c.query_row(
            "SELECT room, epoch, next_seq, group_info, public_state FROM rooms WHERE room = ?1",
            params![room],
            room_from_row,
        )
        .optional()
        .map_err(db)?
        .map(finish_room)
        .transpose()
    }

    fn delete_room(&self, room: &str) -> Result<bool, KdsError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        tx.execute("DELETE FROM events WHERE room = ?1", params![room])
            .map_err(db)?;
        tx.execute("DELETE FROM key_packages WHERE room = ?1", params![room])
            .map_err(db)?;
        let n = tx
            .execute("DELETE FROM rooms WHERE room = ?1", params![room])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n == 1)
    }

    fn latest_welcome(
        &self,
        room: &str,
        identity: &str,
        up_to: u64,
    ) -> Result<Option<Event>, KdsError> {
        let c = self.conn();
        c.query_row(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = ?1 AND kind = 3 AND recipient = ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT 1"
            ),
            params![room, identity, to_i64(up_to)?],
            event_from_row,
        )
        .optional()
        .map_err(db)?
        .map(finish_event)
        .transpose()
    }

    fn events(&self, room: &str, after: u64, before: u64) -> Result<Vec<Event>, KdsError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(
                params![room, to_i64(after)?, to_i64(before)?],
                event_from_row,
            )
            .map_err(db)?;
        rows.map(|r| finish_event(r.map_err(db)?)).collect()
    }

    fn commit_at(&self, room: &str, epoch: u64) -> Result<Option<Event>, KdsError> {
        let c = self.conn();
        c.query_row(
            &format!("SELECT {EVENT_COLS} FROM events WHERE room = ?1 AND kind = 1 AND epoch = ?2"),
            params![room, to_i64(epoch)?],
            event_from_row,
        )
        .optional()
        .map_err(db)?
        .map(finish_event)
        .transpose()
    }

    fn add_key_packages(
        &self,
        room: &str,
        identity: &str,
        kps: &[KeyPackageRecord],
        cap: u32,
    ) -> Result<u32, KdsError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let now = now_secs();
        for kp in kps {
            if kp.last_resort {
                // One last-resort KeyPackage per identity and room: a new one replaces the old.
                tx.execute(
                    "DELETE FROM key_packages WHERE room = ?1 AND identity = ?2 AND last_resort = 1 AND claimed = 0",
                    params![room, identity],
                )
                .map_err(db)?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO key_packages (room, identity, hash_ref, last_resort, message, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![room, identity, kp.hash_ref, kp.last_resort, kp.message, now],
            )
            .map_err(db)?;
        }
        let available: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM key_packages WHERE room = ?1 AND identity = ?2 AND claimed = 0",
                params![room, identity],
                |r| r.get(0),
            )
            .map_err(db)?;
        let available = u32::try_from(available).unwrap_or(u32::MAX);
        if available > cap {
            // Dropping `tx` rolls the whole upload back.
            return Err(KdsError::TooManyKeyPackages { cap });
        }
        tx.commit().map_err(db)?;
        Ok(available)
    }

    fn claim_key_package(
        &self,
        room: &str,
        identity: &str,
        claimer: &str,
    ) -> Result<Option<Vec<u8>>, KdsError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let again: Option<Vec<u8>> = tx
            .query_row(
                "SELECT message FROM key_packages WHERE room = ?1 AND identity = ?2 AND claimed = 1 AND claimed_by = ?3 AND last_resort = 0 ORDER BY created ASC, rowid ASC LIMIT 1",
                params![room, identity, claimer],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(message) = again {
            return Ok(Some(message));
        }
        let found: Option<(Vec<u8>, bool, Vec<u8>)> = tx
            .query_row(
                "SELECT hash_ref, last_resort, message FROM key_packages WHERE room = ?1 AND identity = ?2 AND claimed = 0 ORDER BY last_resort ASC, created ASC, rowid ASC LIMIT 1",
                params![room, identity],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db)?;
        let Some((hash_ref, last_resort, message)) = found else {
            return Ok(None);
        };
        if last_resort {
            // Kept available; remember that it was handed out in this room under a marker key
            // (hash_ref || 0x00, built here: SQL's || would turn the blob into text).
            let mut marker = hash_ref;
            marker.push(0);
            tx.execute(
                "INSERT OR IGNORE INTO key_packages (room, identity, hash_ref, last_resort, message, claimed, claimed_by, created) VALUES (?1, ?2, ?3, 1, x'', 1, ?4, 0)",
                params![room, identity, marker, claimer],
            )
            .map_err(db)?;
        } else {
            tx.execute(
                "UPDATE key_packages SET claimed = 1, claimed_by = ?3 WHERE room = ?1 AND hash_ref = ?2",
                params![room, hash_ref, claimer],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(Some(message))
    }

    fn claimed_key_package(&self, room: &str, hash_ref: &[u8]) -> Result<Option<String>, KdsError> {
        let c = self.conn();
        // A last-resort KeyPackage stays unclaimed; its hand-out is recorded under hash_ref||00.
        let mut marker = hash_ref.to_vec();
        marker.push(0);
        c.query_row(
            "SELECT identity FROM key_packages WHERE room = ?1 AND claimed = 1 AND (hash_ref = ?2 OR hash_ref = ?3)",
            params![room, hash_ref, marker],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, KdsError> {
        let c = self.conn();
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db)
    }

    fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, KdsError> {
        let c = self.conn();
        c.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )
        .map_err(db)?;
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(db)
    }
}
