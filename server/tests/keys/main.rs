//! Integration tests of the key-distribution service: the real `veil-server` binary on
//! loopback with a fresh SQLite file, driven by veil-client members. `tests/keys_pg` runs the
//! same scenarios against PostgreSQL.

#![allow(unreachable_pub)]

/// This binary tests the embedded SQLite store.
pub const POSTGRES: bool = false;

mod common;
mod datadir;
mod durability;
mod flood;
mod hostile;
mod limits;
mod membership;
mod race;
mod resync;
mod tls;
mod undecodable;
