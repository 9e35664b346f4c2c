//! Integration tests of the key-distribution service: the real `veil-server` binary on
//! loopback with a fresh SQLite file, driven by veil-client members.

#![allow(unreachable_pub)]

mod common;
mod datadir;
mod durability;
mod flood;
mod hostile;
mod limits;
mod membership;
mod race;
mod resync;
mod undecodable;
