//! The `veil` command end to end on loopback, with real processes and sockets: `veil server`,
//! `veil token` and `veil join`. One binary; one behaviour per module under `cli/`.

#[path = "cli/common.rs"]
mod common;
#[path = "cli/media.rs"]
mod media;
#[path = "cli/membership.rs"]
mod membership;
