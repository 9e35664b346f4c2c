//! KDS-HOST-01: which SFU nodes host which rooms, for rooms that span nodes (specs/sfu.md,
//! "Cascading rooms over nodes", SFU-CAS-01). Each node renews its rows every second or so;
//! a node that stops (killed, cut off) drops out when its lease lapses, by the database's
//! clock.

use std::time::Duration;

use super::{KdsError, Session, db};

/// `url` hosts exactly `rooms` until `lease` from now; the other live nodes hosting any of
/// them, as (room, URL), sorted.
pub(super) fn host(
    s: &mut Session,
    url: &str,
    rooms: &[String],
    lease: Duration,
) -> Result<Vec<(String, String)>, KdsError> {
    let secs = lease.as_secs_f64();
    let mut tx = s.client()?.transaction().map_err(db)?;
    tx.execute(
        "INSERT INTO sfu_rooms (url, room, expires)
         SELECT $1, r, now() + make_interval(secs => $3) FROM unnest($2::text[]) AS r
         ON CONFLICT (url, room) DO UPDATE SET expires = EXCLUDED.expires",
        &[&url, &rooms, &secs],
    )
    .map_err(db)?;
    // Rooms this node no longer hosts, and anyone's long expired, go.
    tx.execute(
        "DELETE FROM sfu_rooms WHERE (url = $1 AND NOT (room = ANY($2::text[])))
         OR expires < now() - interval '1 hour'",
        &[&url, &rooms],
    )
    .map_err(db)?;
    let rows = tx
        .query(
            "SELECT room, url FROM sfu_rooms
             WHERE room = ANY($2::text[]) AND url <> $1 AND expires > now()
             ORDER BY room, url",
            &[&url, &rooms],
        )
        .map_err(db)?;
    tx.commit().map_err(db)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
        .collect()
}
