//! The key service's integration suite (`tests/keys`) against PostgreSQL (issue 25): the same
//! scenario files, with the real `veil-server` binary started with `--database postgres://…`
//! on a fresh database of a PostgreSQL server this binary starts (veil-testkit). `datadir`
//! is left out: it checks the modes of the SQLite file in the data directory.

#![allow(unreachable_pub)]

/// This binary tests the PostgreSQL store.
pub const POSTGRES: bool = true;

mod cascade;
mod cascade_failover;
mod cascade_tls;
#[path = "../keys/common.rs"]
mod common;
#[path = "../keys/durability.rs"]
mod durability;
#[path = "../keys/flood.rs"]
mod flood;
#[path = "../keys/hostile.rs"]
mod hostile;
#[path = "../keys/limits.rs"]
mod limits;
#[path = "../keys/membership.rs"]
mod membership;
mod placement;
#[path = "../keys/race.rs"]
mod race;
mod replicas;
#[path = "../keys/resync.rs"]
mod resync;
#[path = "../keys/undecodable.rs"]
mod undecodable;
