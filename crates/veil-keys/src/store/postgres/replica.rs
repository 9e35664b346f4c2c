//! What replicas sharing one database tell each other through it (specs/key-service.md §5.2):
//! every write to a room is announced with `pg_notify` (KDS-REP-02) and heard here on a
//! connection of its own, each replica leases the presence of the members whose streams it
//! holds (KDS-REP-03), and each SFU node announces itself and rooms are placed on live nodes
//! (KDS-PLACE-01/02).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;
use tokio::sync::mpsc;

use super::{CHANNEL, Session, db};
use crate::error::KdsError;
use crate::store::Change;

/// Changes queued for the service before the listener waits for it to read.
const QUEUE: usize = 1024;
/// How often the listener looks whether its receiver is gone while nothing arrives.
const POLL: Duration = Duration::from_millis(500);
/// The longest wait between attempts to reconnect the listening connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Start a thread that listens on [`CHANNEL`] with its own connection and passes each
/// notification on; it ends when the receiver is dropped. Whenever the connection is
/// (re)established it first sends [`Change::All`]: what was written while nobody listened is
/// caught up by reading every room again (KDS-REP-02).
pub(super) fn listen(
    config: postgres::Config,
    tls: super::tls::PgTls,
) -> Result<mpsc::Receiver<Change>, KdsError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("veil-keys-listen".into())
        .spawn(move || run(&config, &tls, &tx))
        .map_err(|e| KdsError::storage_by("start the PostgreSQL listener", e))?;
    Ok(rx)
}

fn run(config: &postgres::Config, tls: &super::tls::PgTls, tx: &mpsc::Sender<Change>) {
    let mut backoff = Duration::from_millis(100);
    while !tx.is_closed() {
        let connected = config.connect(tls.clone()).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(c)
        });
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' writes; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if tx.blocking_send(Change::All).is_err() {
            return;
        }
        loop {
            let mut notes = client.notifications();
            match notes.timeout_iter(POLL).next() {
                Ok(Some(n)) => {
                    if tx
                        .blocking_send(Change::Room(n.payload().to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) if tx.is_closed() => return,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that listens for other replicas' writes");
                    break;
                }
            }
        }
    }
}

/// Extend `replica`'s leases on `present` to `lease` from now, by the database's clock (so
/// replicas' clocks need not agree), and drop its leases on anything else (KDS-REP-03).
pub(super) fn refresh(
    s: &mut Session,
    replica: &str,
    present: &[(String, String)],
    lease: Duration,
) -> Result<(), KdsError> {
    let upsert = s.stmt(
        "INSERT INTO presence (room, identity, replica, expires)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (room, identity, replica) DO UPDATE SET expires = EXCLUDED.expires",
    )?;
    let mut tx = s.client()?.transaction().map_err(db)?;
    let secs = lease.as_secs_f64();
    for (room, identity) in present {
        tx.execute(&upsert, &[room, identity, &replica, &secs])
            .map_err(db)?;
    }
    // Leases this replica no longer holds, and anyone's long expired, go.
    let rooms: Vec<&str> = present.iter().map(|(r, _)| r.as_str()).collect();
    let ids: Vec<&str> = present.iter().map(|(_, i)| i.as_str()).collect();
    tx.execute(
        "DELETE FROM presence WHERE (replica = $1 AND (room, identity) NOT IN
            (SELECT * FROM unnest($2::text[], $3::text[])))
         OR expires < now() - interval '1 hour'",
        &[&replica, &rooms, &ids],
    )
    .map_err(db)?;
    tx.commit().map_err(db)
}

/// How long the longest unexpired lease of another replica on `identity` in `room` still runs.
pub(super) fn present_elsewhere(
    s: &mut Session,
    replica: &str,
    room: &str,
    identity: &str,
) -> Result<Option<Duration>, KdsError> {
    let st = s.stmt(
        "SELECT EXTRACT(EPOCH FROM MAX(expires) - now())::float8 FROM presence
         WHERE room = $1 AND identity = $2 AND replica <> $3 AND expires > now()",
    )?;
    let left: Option<f64> = s
        .client()?
        .query_one(&st, &[&room, &identity, &replica])
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    Ok(left.map(|secs| Duration::from_secs_f64(secs.max(0.0))))
}

/// KDS-PLACE-01: `node` serves SFU signalling at `url` until `lease` from now.
pub(super) fn announce(
    s: &mut Session,
    node: &str,
    url: &str,
    lease: Duration,
) -> Result<(), KdsError> {
    let st = s.stmt(
        "INSERT INTO sfu_nodes (node, url, expires) VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url, expires = EXCLUDED.expires",
    )?;
    s.client()?
        .execute(&st, &[&node, &url, &lease.as_secs_f64()])
        .map_err(db)?;
    Ok(())
}

/// KDS-PLACE-02: the URL of `room`'s node; a room without a live node is placed on the live
/// node with the fewest rooms (ties: the node name), under a transaction-scoped advisory lock
/// on the room so that replicas placing it at once agree.
pub(super) fn place(s: &mut Session, room: &str) -> Result<Option<String>, KdsError> {
    let current = s.stmt(
        "SELECT n.url FROM placements p JOIN sfu_nodes n ON n.node = p.node
         WHERE p.room = $1 AND n.expires > now()",
    )?;
    let least = s.stmt(
        "SELECT n.node, n.url FROM sfu_nodes n
         LEFT JOIN placements p ON p.node = n.node
         WHERE n.expires > now()
         GROUP BY n.node, n.url ORDER BY COUNT(p.room), n.node LIMIT 1",
    )?;
    let put = s.stmt(
        "INSERT INTO placements (room, node) VALUES ($1, $2)
         ON CONFLICT (room) DO UPDATE SET node = EXCLUDED.node",
    )?;
    let mut tx = s.client()?.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&room])
        .map_err(db)?;
    if let Some(row) = tx.query_opt(&current, &[&room]).map_err(db)? {
        return row.try_get(0).map(Some).map_err(db);
    }
    let Some(row) = tx.query_opt(&least, &[]).map_err(db)? else {
        return Ok(None);
    };
    let (node, url): (String, String) = (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
    tx.execute(&put, &[&room, &node]).map_err(db)?;
    tx.commit().map_err(db)?;
    tracing::info!(room, node, "room placed on an SFU node");
    Ok(Some(url))
}
