//! The shared store: PostgreSQL, for replicas of the key service that share one database
//! (specs/key-service.md §5, issue 25).
//!
//! The promises that matter across processes are kept by the database, never by a lock in
//! this process: one commit per room and epoch is the partial unique index
//! `one_commit_per_epoch` (KDS-ORD-02), the log's total order is the `(room, seq)` primary key,
//! and a single-use KeyPackage is handed out by one `UPDATE ... RETURNING` over a row locked
//! with `FOR UPDATE SKIP LOCKED` (KDS-KP-04).
//!
//! [`Store`] is synchronous and the service calls it from `spawn_blocking`. The client is the
//! `postgres` crate (tokio-postgres's blocking wrapper), which runs its own small runtime and
//! so may not be driven from a thread inside another runtime: one dedicated thread owns the
//! connection and runs the store's calls one at a time, as SQLite's one connection does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use postgres::error::SqlState;
use postgres::{Client, Statement};

use super::{
    Change, Event, EventKind, KeyPackageRecord, RoomRecord, Store, now_secs, to_i64, to_u64,
};
use crate::error::KdsError;

mod replica;
mod tls;

use tls::PgTls;

/// The channel on which every write to a room is announced, with the room's name as payload
/// (KDS-REP-02). `pg_notify` inside a transaction is delivered when it commits.
const CHANNEL: &str = "veil_rooms";

/// The schema, one migration per version (KDS-DUR-04): migration `i` brings the database to
/// version `i + 1`. bytea for blobs, BIGINT for epochs and positions.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE rooms (
    room TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    next_seq BIGINT NOT NULL,
    group_info BYTEA NOT NULL,
    public_state BYTEA NOT NULL
);
CREATE TABLE events (
    room TEXT NOT NULL REFERENCES rooms(room),
    seq BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    epoch BIGINT NOT NULL,
    actor TEXT NOT NULL,
    recipient TEXT,
    message BYTEA NOT NULL,
    hash BYTEA,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX one_commit_per_epoch ON events (room, epoch) WHERE kind = 1;
CREATE INDEX welcomes ON events (room, recipient, seq) WHERE kind = 3;
CREATE TABLE key_packages (
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    hash_ref BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL,
    message BYTEA NOT NULL,
    claimed BOOLEAN NOT NULL DEFAULT false,
    claimed_by TEXT,
    created BIGINT NOT NULL,
    PRIMARY KEY (room, hash_ref)
);
CREATE INDEX kp_by_identity ON key_packages (room, identity, claimed);
",
    "
CREATE TABLE presence (
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    replica TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room, identity, replica)
);
",
    "
CREATE TABLE sfu_nodes (
    node TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
CREATE TABLE placements (
    room TEXT PRIMARY KEY,
    node TEXT NOT NULL
);
",
];

/// The advisory lock that serialises migrations of replicas starting together.
const MIGRATION_LOCK: i64 = 0x7665_696c_6b64_7331; // "veilkds1"

const EVENT_COLS: &str = "seq, kind, epoch, actor, recipient, message, hash";
const ROOM_COLS: &str = "room, epoch, next_seq, group_info, public_state";

fn db(e: postgres::Error) -> KdsError {
    KdsError::storage_by("PostgreSQL", e)
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn event_from_row(r: &postgres::Row) -> Result<Event, KdsError> {
    Ok(Event {
        seq: to_u64(r.try_get(0).map_err(db)?, "seq")?,
        kind: EventKind::from_i64(i64::from(r.try_get::<_, i16>(1).map_err(db)?))?,
        epoch: to_u64(r.try_get(2).map_err(db)?, "epoch")?,
        actor: r.try_get(3).map_err(db)?,
        recipient: r.try_get(4).map_err(db)?,
        message: r.try_get(5).map_err(db)?,
        hash: r.try_get(6).map_err(db)?,
    })
}

fn room_from_row(r: &postgres::Row) -> Result<RoomRecord, KdsError> {
    Ok(RoomRecord {
        room: r.try_get(0).map_err(db)?,
        epoch: to_u64(r.try_get(1).map_err(db)?, "epoch")?,
        next_seq: to_u64(r.try_get(2).map_err(db)?, "seq")?,
        group_info: r.try_get(3).map_err(db)?,
        public_state: r.try_get(4).map_err(db)?,
    })
}

/// The connection, owned by the store's thread; reconnects when the server closed it.
struct Session {
    config: postgres::Config,
    tls: PgTls,
    client: Option<Client>,
    /// Prepared statements of this connection, by their text.
    stmts: HashMap<String, Statement>,
}

impl Session {
    fn client(&mut self) -> Result<&mut Client, KdsError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.stmts.clear();
            self.client = None;
            self.client = Some(self.config.connect(self.tls.clone()).map_err(db)?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| KdsError::internal("no PostgreSQL connection"))
    }

    /// `sql`, prepared once per connection (a prepared statement saves a round trip).
    fn stmt(&mut self, sql: &str) -> Result<Statement, KdsError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client()?.prepare(sql).map_err(db)?;
        self.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The store replicas share: one PostgreSQL database. An acknowledged write is committed, and
/// with PostgreSQL's defaults (`fsync`, `synchronous_commit = on`) on the server's disk before
/// the reply leaves (KDS-DUR-01).
#[derive(Debug)]
pub struct PostgresStore {
    jobs: mpsc::Sender<Job>,
    /// For the listening connections of [`Store::changes`].
    config: postgres::Config,
    tls: PgTls,
}

impl PostgresStore {
    /// Connections a store opens unless told otherwise.
    pub const DEFAULT_CONNECTIONS: usize = 4;

    /// Connect to `url` (`postgres://user@host/db`, or libpq's `key=value` form; a Unix socket
    /// directory as a percent-encoded host) and bring the schema up to date.
    ///
    /// # Errors
    /// [`KdsError::Storage`] if the URL does not parse, the server cannot be reached or the
    /// migration fails.
    pub fn open(url: &str) -> Result<Self, KdsError> {
        Self::open_with(url, None, Self::DEFAULT_CONNECTIONS)
    }

    /// As [`open`](Self::open), verifying the server's TLS certificate against the
    /// certificates of `ca_pem` (PEM) instead of the system's roots (KDS-PG-TLS-01), with
    /// `connections` connections (at least one; KDS-PG-POOL-01). Whether TLS is used at all is
    /// the URL's `sslmode` (`disable`, `prefer`, `require`).
    ///
    /// # Errors
    /// As [`open`](Self::open); also [`KdsError::Storage`] if `ca_pem` holds no certificate,
    /// or the server's certificate does not verify.
    pub fn open_with(
        url: &str,
        ca_pem: Option<&[u8]>,
        connections: usize,
    ) -> Result<Self, KdsError> {
        let tls = PgTls::new(ca_pem)?;
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| KdsError::storage_by("the PostgreSQL URL", e))?;
        if config.get_application_name().is_none() {
            config.application_name("veil-keys");
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let listen = config.clone();
        // KDS-PG-POOL-01: `connections` sessions take calls from one queue, so calls on
        // different rooms do not wait for each other; what must not interleave is decided in
        // the database (constraints, row and advisory locks), as between replicas.
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..connections.max(1) {
            let (rx, config, tls) = (rx.clone(), config.clone(), tls.clone());
            std::thread::Builder::new()
                .name(format!("veil-keys-postgres-{i}"))
                .spawn(move || {
                    let mut session = Session {
                        config,
                        tls,
                        client: None,
                        stmts: HashMap::new(),
                    };
                    loop {
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(&mut session),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| KdsError::storage_by("start a PostgreSQL thread", e))?;
        }
        let store = Self {
            jobs,
            config: listen,
            tls,
        };
        store.run(|s| migrate(s.client()?))?;
        Ok(store)
    }

    /// Run `f` on the store's thread and wait for its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<T, KdsError> + Send + 'static,
    ) -> Result<T, KdsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gone = || KdsError::internal("the PostgreSQL thread stopped");
        self.jobs
            .send(Box::new(move |s| {
                let r = f(s);
                if r.is_err() {
                    // A failed call may have left the connection mid-transaction or broken:
                    // the transaction rolled back when it dropped; a broken connection is
                    // replaced on the next call.
                    s.client = s.client.take().filter(|c| !c.is_closed());
                }
                let _ = tx.send(r);
            }))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// Apply the migrations the database has not seen, in one transaction under an advisory lock,
/// so replicas starting together apply each once (KDS-DUR-04).
fn migrate(client: &mut Client) -> Result<(), KdsError> {
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        .map_err(db)?;
    let have: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .map_err(db)?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).map_err(|_| KdsError::storage("migrations"))?;
    if have > known {
        return Err(KdsError::storage(format!(
            "the database's schema is version {have}, newer than this build's {known}"
        )));
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(have).unwrap_or(0))
    {
        tx.batch_execute(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

impl Store for PostgresStore {
    fn rooms(&self) -> Result<Vec<RoomRecord>, KdsError> {
        self.run(|s| {
            let st = s.stmt(&format!("SELECT {ROOM_COLS} FROM rooms"))?;
            let rows = s.client()?.query(&st, &[]).map_err(db)?;
            rows.iter().map(room_from_row).collect()
        })
    }

    fn room(&self, room: &str) -> Result<Option<RoomRecord>, KdsError> {
        let room = room.to_owned();
        self.run(move |s| {
            let st = s.stmt(&format!("SELECT {ROOM_COLS} FROM rooms WHERE room = $1"))?;
            let row = s.client()?.query_opt(&st, &[&room]).map_err(db)?;
            row.as_ref().map(room_from_row).transpose()
        })
    }

    fn create_room(&self, room: &RoomRecord) -> Result<(), KdsError> {
        let room = room.clone();
        self.run(move |s| {
            let st = s.stmt(&format!(
                "INSERT INTO rooms ({ROOM_COLS}) VALUES ($1, $2, $3, $4, $5)"
            ))?;
            s.client()?
                .execute(
                    &st,
                    &[
                        &room.room,
                        &to_i64(room.epoch)?,
                        &to_i64(room.next_seq)?,
                        &room.group_info,
                        &room.public_state,
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
        })
    }

    fn append(
        &self,
        state: &RoomRecord,
        events: &[Event],
        consumed: &[Vec<u8>],
    ) -> Result<(), KdsError> {
        let (state, events, consumed) = (state.clone(), events.to_vec(), consumed.to_vec());
        self.run(move |s| {
            let insert = s.stmt(&format!(
                "INSERT INTO events (room, {EVENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ))?;
            let update = s.stmt(
                "UPDATE rooms SET epoch = $2, next_seq = $3, group_info = $4, public_state = $5 WHERE room = $1",
            )?;
            let consume = s.stmt(
                "DELETE FROM key_packages WHERE room = $1 AND hash_ref = $2 AND NOT last_resort",
            )?;
            let mut tx = s.client()?.transaction().map_err(db)?;
            for e in &events {
                // KDS-ORD-02: a second commit for one epoch, or a second event at one log
                // position (a replica that wrote from a stale state), violates a unique index;
                // under READ COMMITTED the loser waits for the winner's commit, then fails.
                tx.execute(
                    &insert,
                    &[
                        &state.room,
                        &to_i64(e.seq)?,
                        &(e.kind as i16),
                        &to_i64(e.epoch)?,
                        &e.actor,
                        &e.recipient,
                        &e.message,
                        &e.hash,
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
                    &update,
                    &[
                        &state.room,
                        &to_i64(state.epoch)?,
                        &to_i64(state.next_seq)?,
                        &state.group_info,
                        &state.public_state,
                    ],
                )
                .map_err(db)?;
            if n != 1 {
                return Err(KdsError::NoSuchRoom(state.room.clone()));
            }
            for h in &consumed {
                tx.execute(&consume, &[&state.room, h]).map_err(db)?;
            }
            notify(&mut tx, &state.room)?;
            tx.commit().map_err(db)
        })
    }

    fn log_page(
        &self,
        room: &str,
        from_epoch: u64,
        after: u64,
        up_to: u64,
        max_bytes: usize,
    ) -> Result<Vec<Event>, KdsError> {
        let room = room.to_owned();
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        self.run(move |s| {
            // The page is cut in the database (the bytes of the events before each one), so
            // the rows past it are never sent; `octet_length` of a bytea reads its header only.
            let st = s.stmt(&format!(
                "SELECT {EVENT_COLS} FROM (
                    SELECT {EVENT_COLS}, COALESCE(SUM(octet_length(message)) OVER (
                        ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                    FROM events
                    WHERE room = $1 AND kind IN (1, 2) AND epoch >= $2 AND seq > $3 AND seq <= $4
                ) page WHERE before < $5 ORDER BY seq"
            ))?;
            let rows = s
                .client()?
                .query(
                    &st,
                    &[
                        &room,
                        &to_i64(from_epoch)?,
                        &to_i64(after)?,
                        &to_i64(up_to)?,
                        &max_bytes,
                    ],
                )
                .map_err(db)?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn latest_welcome(
        &self,
        room: &str,
        identity: &str,
        up_to: u64,
    ) -> Result<Option<Event>, KdsError> {
        let (room, identity) = (room.to_owned(), identity.to_owned());
        self.run(move |s| {
            let st = s.stmt(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = $1 AND kind = 3 AND recipient = $2 AND seq <= $3 ORDER BY seq DESC LIMIT 1"
            ))?;
            let row = s
                .client()?
                .query_opt(&st, &[&room, &identity, &to_i64(up_to)?])
                .map_err(db)?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    fn commit_at(&self, room: &str, epoch: u64) -> Result<Option<Event>, KdsError> {
        let room = room.to_owned();
        self.run(move |s| {
            let st = s.stmt(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = $1 AND kind = 1 AND epoch = $2"
            ))?;
            let row = s
                .client()?
                .query_opt(&st, &[&room, &to_i64(epoch)?])
                .map_err(db)?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    fn add_key_packages(
        &self,
        room: &str,
        identity: &str,
        kps: &[KeyPackageRecord],
        cap: u32,
    ) -> Result<u32, KdsError> {
        let (room, identity, kps) = (room.to_owned(), identity.to_owned(), kps.to_vec());
        self.run(move |s| {
            let replace = s.stmt(
                "DELETE FROM key_packages WHERE room = $1 AND identity = $2 AND last_resort AND NOT claimed",
            )?;
            let insert = s.stmt(
                "INSERT INTO key_packages (room, identity, hash_ref, last_resort, message, created) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )?;
            let count = s.stmt(
                "SELECT COUNT(*) FROM key_packages WHERE room = $1 AND identity = $2 AND NOT claimed",
            )?;
            let mut tx = s.client()?.transaction().map_err(db)?;
            // Two replicas uploading for one identity would each count before the other's
            // rows commit; a transaction-scoped lock on (room, identity) makes them take turns.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
                &[&room, &identity],
            )
            .map_err(db)?;
            let now = now_secs();
            for kp in &kps {
                if kp.last_resort {
                    // One last-resort KeyPackage per identity and room: a new one replaces it.
                    tx.execute(&replace, &[&room, &identity]).map_err(db)?;
                }
                tx.execute(
                    &insert,
                    &[
                        &room,
                        &identity,
                        &kp.hash_ref,
                        &kp.last_resort,
                        &kp.message,
                        &now,
                    ],
                )
                .map_err(db)?;
            }
            let available: i64 = tx
                .query_one(&count, &[&room, &identity])
                .map_err(db)?
                .get(0);
            let available = u32::try_from(available).unwrap_or(u32::MAX);
            if available > cap {
                // Dropping `tx` rolls the whole upload back.
                return Err(KdsError::TooManyKeyPackages { cap });
            }
            tx.commit().map_err(db)?;
            Ok(available)
        })
    }

    fn claim_key_package(
        &self,
        room: &str,
        identity: &str,
        claimer: &str,
    ) -> Result<Option<Vec<u8>>, KdsError> {
        let (room, identity, claimer) = (room.to_owned(), identity.to_owned(), claimer.to_owned());
        self.run(move |s| claim(s, &room, &identity, &claimer))
    }

    fn claimed_key_package(&self, room: &str, hash_ref: &[u8]) -> Result<Option<String>, KdsError> {
        let room = room.to_owned();
        // A last-resort KeyPackage stays unclaimed; its hand-out is recorded under hash_ref||00.
        let hash_ref = hash_ref.to_vec();
        let mut marker = hash_ref.clone();
        marker.push(0);
        self.run(move |s| {
            let st = s.stmt(
                "SELECT identity FROM key_packages WHERE room = $1 AND claimed AND (hash_ref = $2 OR hash_ref = $3) LIMIT 1",
            )?;
            let row = s
                .client()?
                .query_opt(&st, &[&room, &hash_ref, &marker])
                .map_err(db)?;
            row.map(|r| r.try_get(0).map_err(db)).transpose()
        })
    }

    fn delete_room(&self, room: &str) -> Result<bool, KdsError> {
        let room = room.to_owned();
        self.run(move |s| {
            let mut tx = s.client()?.transaction().map_err(db)?;
            tx.execute("DELETE FROM events WHERE room = $1", &[&room])
                .map_err(db)?;
            tx.execute("DELETE FROM key_packages WHERE room = $1", &[&room])
                .map_err(db)?;
            tx.execute("DELETE FROM presence WHERE room = $1", &[&room])
                .map_err(db)?;
            tx.execute("DELETE FROM placements WHERE room = $1", &[&room])
                .map_err(db)?;
            let n = tx
                .execute("DELETE FROM rooms WHERE room = $1", &[&room])
                .map_err(db)?;
            notify(&mut tx, &room)?;
            tx.commit().map_err(db)?;
            Ok(n == 1)
        })
    }

    fn events(&self, room: &str, after: u64, before: u64) -> Result<Vec<Event>, KdsError> {
        let room = room.to_owned();
        self.run(move |s| {
            let st = s.stmt(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq"
            ))?;
            let rows = s
                .client()?
                .query(&st, &[&room, &to_i64(after)?, &to_i64(before)?])
                .map_err(db)?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn next_seq(&self, room: &str) -> Result<Option<u64>, KdsError> {
        let room = room.to_owned();
        self.run(move |s| {
            let st = s.stmt("SELECT next_seq FROM rooms WHERE room = $1")?;
            let row = s.client()?.query_opt(&st, &[&room]).map_err(db)?;
            row.map(|r| to_u64(r.try_get(0).map_err(db)?, "seq"))
                .transpose()
        })
    }

    fn next_seqs(
        &self,
        rooms: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, KdsError> {
        let rooms = rooms.to_vec();
        self.run(move |s| {
            let st = s.stmt("SELECT room, next_seq FROM rooms WHERE room = ANY($1)")?;
            let rows = s.client()?.query(&st, &[&rooms]).map_err(db)?;
            rows.iter()
                .map(|r| {
                    let room: String = r.try_get(0).map_err(db)?;
                    Ok((room, to_u64(r.try_get(1).map_err(db)?, "seq")?))
                })
                .collect()
        })
    }

    fn changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Change>>, KdsError> {
        replica::listen(self.config.clone(), self.tls.clone()).map(Some)
    }

    fn refresh_presence(
        &self,
        replica: &str,
        present: &[(String, String)],
        lease: std::time::Duration,
    ) -> Result<(), KdsError> {
        let (replica, present) = (replica.to_owned(), present.to_vec());
        self.run(move |s| replica::refresh(s, &replica, &present, lease))
    }

    fn release_presence(&self, replica: &str, room: &str, identity: &str) -> Result<(), KdsError> {
        let (replica, room, identity) = (replica.to_owned(), room.to_owned(), identity.to_owned());
        self.run(move |s| {
            let st =
                s.stmt("DELETE FROM presence WHERE room = $1 AND identity = $2 AND replica = $3")?;
            s.client()?
                .execute(&st, &[&room, &identity, &replica])
                .map_err(db)?;
            Ok(())
        })
    }

    fn announce_node(
        &self,
        node: &str,
        url: &str,
        lease: std::time::Duration,
    ) -> Result<(), KdsError> {
        let (node, url) = (node.to_owned(), url.to_owned());
        self.run(move |s| replica::announce(s, &node, &url, lease))
    }

    fn place_room(&self, room: &str) -> Result<Option<String>, KdsError> {
        let room = room.to_owned();
        self.run(move |s| replica::place(s, &room))
    }

    fn present_elsewhere(
        &self,
        replica: &str,
        room: &str,
        identity: &str,
    ) -> Result<Option<std::time::Duration>, KdsError> {
        let (replica, room, identity) = (replica.to_owned(), room.to_owned(), identity.to_owned());
        self.run(move |s| replica::present_elsewhere(s, &replica, &room, &identity))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, KdsError> {
        let key = key.to_owned();
        self.run(move |s| {
            let row = s
                .client()?
                .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                .map_err(db)?;
            row.map(|r| r.try_get(0).map_err(db)).transpose()
        })
    }

    fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, KdsError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run(move |s| {
            // Replicas starting together: the first insert wins, every one reads the winner.
            let c = s.client()?;
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key, &value],
            )
            .map_err(db)?;
            c.query_one("SELECT value FROM meta WHERE key = $1", &[&key])
                .map_err(db)?
                .try_get(0)
                .map_err(db)
        })
    }
}

/// KDS-KP-03/04: the claimer's earlier single-use KeyPackage, else the oldest unclaimed
/// single-use one, else the last-resort one, in one transaction.
fn claim(
    s: &mut Session,
    room: &str,
    identity: &str,
    claimer: &str,
) -> Result<Option<Vec<u8>>, KdsError> {
    let again = s.stmt(
        "SELECT message FROM key_packages WHERE room = $1 AND identity = $2 AND claimed AND claimed_by = $3 AND NOT last_resort ORDER BY created, id LIMIT 1",
    )?;
    // One statement takes the row: a racing claim skips the row this one locked, and a row a
    // racing claim took since this statement's snapshot fails `NOT claimed` on the recheck.
    let take = s.stmt(
        "UPDATE key_packages SET claimed = true, claimed_by = $3
         WHERE room = $1 AND NOT claimed AND hash_ref = (
            SELECT hash_ref FROM key_packages
            WHERE room = $1 AND identity = $2 AND NOT claimed AND NOT last_resort
            ORDER BY created, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING message",
    )?;
    let left = s.stmt(
        "SELECT EXISTS (SELECT 1 FROM key_packages WHERE room = $1 AND identity = $2 AND NOT claimed AND NOT last_resort)",
    )?;
    let last_resort = s.stmt(
        "SELECT hash_ref, message FROM key_packages WHERE room = $1 AND identity = $2 AND NOT claimed AND last_resort ORDER BY created, id LIMIT 1",
    )?;
    let mark = s.stmt(
        "INSERT INTO key_packages (room, identity, hash_ref, last_resort, message, claimed, claimed_by, created) VALUES ($1, $2, $3, true, '', true, $4, 0) ON CONFLICT DO NOTHING",
    )?;
    // KDS-KP-04: one claimer's claims of one identity take turns, on every replica, so a
    // claimer asking twice at once (a retry racing its first try on another replica) gets one
    // KeyPackage, not two: the second waits here and then finds the first's in `again`.
    let turn = s.stmt(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2 || chr(31) || $3, 0))",
    )?;
    let mut tx = s.client()?.transaction().map_err(db)?;
    tx.execute(&turn, &[&room, &identity, &claimer])
        .map_err(db)?;
    if let Some(row) = tx
        .query_opt(&again, &[&room, &identity, &claimer])
        .map_err(db)?
    {
        return row.try_get(0).map_err(db);
    }
    // The row the subquery picked can be taken by a racing claim between its snapshot and its
    // lock; then this statement takes nothing although others are left: try again, each time
    // with a fresh snapshot (READ COMMITTED).
    for _ in 0..8 {
        if let Some(row) = tx
            .query_opt(&take, &[&room, &identity, &claimer])
            .map_err(db)?
        {
            let message: Vec<u8> = row.try_get(0).map_err(db)?;
            tx.commit().map_err(db)?;
            return Ok(Some(message));
        }
        let any_left: bool = tx
            .query_one(&left, &[&room, &identity])
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if !any_left {
            break;
        }
    }
    let Some(row) = tx
        .query_opt(&last_resort, &[&room, &identity])
        .map_err(db)?
    else {
        return Ok(None);
    };
    let (hash_ref, message): (Vec<u8>, Vec<u8>) =
        (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
    // Kept available; remember that it was handed out in this room under a marker key.
    let mut marker = hash_ref;
    marker.push(0);
    tx.execute(&mark, &[&room, &identity, &marker, &claimer])
        .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(Some(message))
}

/// Announce a write to `room` on [`CHANNEL`], delivered when `tx` commits (KDS-REP-02).
fn notify(tx: &mut postgres::Transaction<'_>, room: &str) -> Result<(), KdsError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &room])
        .map_err(db)?;
    Ok(())
}
