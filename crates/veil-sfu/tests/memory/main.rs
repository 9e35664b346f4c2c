//! The SFU's session core in memory: one `EdgeRooms` and sans-I/O `rtc` client peers, no
//! socket, no runtime, no sleep; virtual time that only the harness moves (`common/`). One
//! behaviour per file; each run is the same run. The checks they prove are listed in
//! specs/sfu.md ("Testing the core in memory").

#![allow(unreachable_pub)] // test helpers: `pub` for the submodules of this one binary

mod cascade;
mod churn;
mod common;
mod departure;
mod hostile;
mod join;
mod nack;
mod pli;
mod renegotiation;
mod simulcast;
