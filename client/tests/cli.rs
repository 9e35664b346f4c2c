//! The `veil` command end to end on loopback, with real processes and sockets: `veil server`,
//! `veil token`, `veil join` and `veil demo`, and browsers joining calls (`browser`). One
//! binary; one behaviour per module under `cli/`.

#[path = "cli/browser.rs"]
mod browser;
#[path = "cli/common.rs"]
mod common;
#[path = "cli/demo.rs"]
mod demo;
#[path = "cli/guests.rs"]
mod guests;
#[path = "cli/media.rs"]
mod media;
#[path = "cli/membership.rs"]
mod membership;
#[path = "cli/restart.rs"]
mod restart;
#[path = "cli/tls.rs"]
mod tls;
