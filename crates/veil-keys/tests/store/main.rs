//! The store's promises (specs/key-service.md §5), checked against both stores: the embedded
//! SQLite file and a real PostgreSQL server started by this binary (veil-testkit). `race`
//! checks the promises replicas rely on with two `PostgresStore`s on two connections.

#![allow(unreachable_pub)]

mod common;
mod pool;
mod race;
mod semantics;
mod tls;
