//! Durable state of the key service (specs/key-service.md §5): rooms, their handshake logs and
//! KeyPackages. [`Store`] is synchronous and small; [`SqliteStore`] is the embedded default and
//! [`PostgresStore`] the store replicas share. Every method that changes state is one
//! transaction, so a failure leaves nothing half-written (KDS-DUR-01), and both stores create
//! their schema by numbered migrations recorded in a `schema_version` table (KDS-DUR-04).

use crate::error::KdsError;

mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

/// What an event in a room's log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A commit, sent in `epoch` (the room moves to `epoch + 1`).
    Commit = 1,
    /// The service's Remove proposal, bound to `epoch`.
    Proposal = 2,
    /// A Welcome into `epoch`, for `recipient` only.
    Welcome = 3,
}

impl EventKind {
    pub(crate) fn from_i64(v: i64) -> Result<Self, KdsError> {
        match v {
            1 => Ok(Self::Commit),
            2 => Ok(Self::Proposal),
            3 => Ok(Self::Welcome),
            _ => Err(KdsError::storage(format!("unknown event kind {v}"))),
        }
    }
}

/// One entry of a room's handshake log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the room's log (strictly increasing, from 1).
    pub seq: u64,
    /// What it is.
    pub kind: EventKind,
    /// The epoch it belongs to (see [`EventKind`]).
    pub epoch: u64,
    /// Committer, or the member a proposal removes.
    pub actor: String,
    /// For a Welcome: the identity it is for.
    pub recipient: Option<String>,
    /// The MLS message.
    pub message: Vec<u8>,
    /// SHA-256 of a commit's bytes (duplicate detection).
    pub hash: Option<Vec<u8>>,
}

/// A room's current state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// Room name (= MLS group id).
    pub room: String,
    /// Current epoch.
    pub epoch: u64,
    /// Next log position.
    pub next_seq: u64,
    /// Newest GroupInfo (with ratchet tree).
    pub group_info: Vec<u8>,
    /// The serialised public group state (openmls `PublicGroup` storage; no secrets).
    pub public_state: Vec<u8>,
}

/// A stored KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageRecord {
    /// The KeyPackage's hash reference (RFC 9420 §5.2).
    pub hash_ref: Vec<u8>,
    /// Whether it is a last-resort KeyPackage (kept after use).
    pub last_resort: bool,
    /// The `MLSMessage` bytes.
    pub message: Vec<u8>,
}

/// A change another process made to a shared store (KDS-REP-02).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This room's log or state changed, or the room was deleted.
    Room(String),
    /// Changes may have been missed (the listening connection was lost and is back): every
    /// room a replica holds should be read again.
    All,
}

/// The storage the key service needs. Every mutating method is atomic.
pub trait Store: Send + Sync + 'static {
    /// All rooms, for start-up.
    fn rooms(&self) -> Result<Vec<RoomRecord>, KdsError>;
    /// One room, e.g. to reload it after a failed write.
    fn room(&self, room: &str) -> Result<Option<RoomRecord>, KdsError> {
        Ok(self.rooms()?.into_iter().find(|r| r.room == room))
    }
    /// Create a room; [`KdsError::RoomExists`] if it exists.
    fn create_room(&self, room: &RoomRecord) -> Result<(), KdsError>;
    /// Append `events` to `state.room`'s log and replace its state, in one transaction; consume
    /// the single-use KeyPackages `consumed` (hash refs). A second commit for one epoch violates
    /// a uniqueness constraint and returns [`KdsError::EpochTaken`] (KDS-ORD-02).
    fn append(
        &self,
        state: &RoomRecord,
        events: &[Event],
        consumed: &[Vec<u8>],
    ) -> Result<(), KdsError>;
    /// One page of a replay (KDS-FAN-02, KDS-LIM-04): the commits and proposals of `room` sent
    /// in `from_epoch` or later with `after < seq <= up_to`, in log order. The page ends with
    /// the event that brings its messages to `max_bytes` or more, so it holds at least one
    /// event while any is left and at most `max_bytes` plus one message. An empty page ends
    /// the replay.
    fn log_page(
        &self,
        room: &str,
        from_epoch: u64,
        after: u64,
        up_to: u64,
        max_bytes: usize,
    ) -> Result<Vec<Event>, KdsError>;
    /// The newest Welcome for `identity` in `room` with `seq <= up_to`.
    fn latest_welcome(
        &self,
        room: &str,
        identity: &str,
        up_to: u64,
    ) -> Result<Option<Event>, KdsError>;
    /// The commit accepted in `epoch`, if any.
    fn commit_at(&self, room: &str, epoch: u64) -> Result<Option<Event>, KdsError>;
    /// Store KeyPackages of `identity` for `room`; returns how many it now has available.
    /// [`KdsError::TooManyKeyPackages`] beyond `cap`.
    fn add_key_packages(
        &self,
        room: &str,
        identity: &str,
        kps: &[KeyPackageRecord],
        cap: u32,
    ) -> Result<u32, KdsError>;
    /// Hand out one KeyPackage of `identity` to `claimer` (oldest single-use first, else the
    /// last-resort one) and record that it was handed out in `room`. Idempotent per claimer: a
    /// claimer asking again (a retry after a lost reply) gets the single-use KeyPackage it was
    /// already given, as long as no commit consumed it (KDS-KP-03).
    fn claim_key_package(
        &self,
        room: &str,
        identity: &str,
        claimer: &str,
    ) -> Result<Option<Vec<u8>>, KdsError>;
    /// The identity whose KeyPackage `hash_ref` was handed out in `room`, if it was.
    fn claimed_key_package(&self, room: &str, hash_ref: &[u8]) -> Result<Option<String>, KdsError>;
    /// Delete `room`: its state, its log and its KeyPackages, in one transaction (KDS-GC-03).
    /// Returns whether it existed.
    fn delete_room(&self, room: &str) -> Result<bool, KdsError>;
    /// Every event of `room`, Welcomes included, with `after < seq < before`, in log order:
    /// what a replica broadcasts when it finds that another one wrote (KDS-REP-01).
    fn events(&self, room: &str, after: u64, before: u64) -> Result<Vec<Event>, KdsError>;
    /// Whether other processes write this store too (replicas sharing one database,
    /// specs/key-service.md §5.2). The service then reads a room's position again before
    /// every decision about it (KDS-REP-01) and keeps presence leases (KDS-REP-03).
    fn shared(&self) -> bool {
        false
    }
    /// The next log position of `room`, `None` if it does not exist: the cheap read by which
    /// a replica notices that another one wrote (KDS-REP-01).
    fn next_seq(&self, room: &str) -> Result<Option<u64>, KdsError> {
        Ok(self.room(room)?.map(|r| r.next_seq))
    }
    /// The next log positions of those of `rooms` that exist, in one read: the periodic
    /// sweep of a replica over every room it holds (KDS-REP-02).
    fn next_seqs(
        &self,
        rooms: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, KdsError> {
        let mut out = std::collections::HashMap::new();
        for r in rooms {
            if let Some(n) = self.next_seq(r)? {
                out.insert(r.clone(), n);
            }
        }
        Ok(out)
    }
    /// The changes other processes commit, as they commit them (KDS-REP-02); `None` for a
    /// store nobody else writes. Each call starts its own listener, which ends when the
    /// receiver is dropped.
    fn changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Change>>, KdsError> {
        Ok(None)
    }
    /// Record that `replica` holds a stream of each `(room, identity)` in `present`, for
    /// `lease` from now by the database's clock (KDS-REP-03).
    fn refresh_presence(
        &self,
        _replica: &str,
        _present: &[(String, String)],
        _lease: std::time::Duration,
    ) -> Result<(), KdsError> {
        Ok(())
    }
    /// `replica` no longer holds a stream of `identity` in `room` (KDS-REP-03).
    fn release_presence(
        &self,
        _replica: &str,
        _room: &str,
        _identity: &str,
    ) -> Result<(), KdsError> {
        Ok(())
    }
    /// The longest unexpired presence lease another replica holds for `identity` in `room`:
    /// how long this replica should wait before proposing its removal (KDS-REP-03).
    fn present_elsewhere(
        &self,
        _replica: &str,
        _room: &str,
        _identity: &str,
    ) -> Result<Option<std::time::Duration>, KdsError> {
        Ok(None)
    }
    /// Announce that SFU node `node` serves media at `url` for `lease` from now (KDS-PLACE-01).
    /// A store nobody else writes has one node, the process itself: nothing to record.
    fn announce_node(
        &self,
        _node: &str,
        _url: &str,
        _lease: std::time::Duration,
    ) -> Result<(), KdsError> {
        Ok(())
    }
    /// The SFU URL of the node `room` is placed on, placing it on the live node with the fewest
    /// rooms if it has none or its node stopped announcing itself (KDS-PLACE-02). `None` when
    /// the store keeps no placements (one process: its own SFU) or no node is live.
    fn place_room(&self, _room: &str) -> Result<Option<String>, KdsError> {
        Ok(None)
    }
    /// A service-wide value (e.g. the external-sender key pair).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, KdsError>;
    /// Set a service-wide value if it is not set; returns the value now stored.
    fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, KdsError>;
}

/// Seconds since the Unix epoch, as a KeyPackage's `created` column records them (0 for a clock
/// before 1970).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `v` as a signed 64-bit column value (SQLite INTEGER, PostgreSQL BIGINT).
fn to_i64(v: u64) -> Result<i64, KdsError> {
    i64::try_from(v).map_err(|_| KdsError::storage(format!("{v} does not fit a 64-bit column")))
}

/// A stored 64-bit column value as `u64`; `what` names it in the error.
fn to_u64(v: i64, what: &str) -> Result<u64, KdsError> {
    u64::try_from(v).map_err(|_| KdsError::storage(format!("negative {what}")))
}
