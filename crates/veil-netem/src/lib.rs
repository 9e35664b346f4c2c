//! Network impairment for Veil's tests: these machines have no kernel `netem`, so calls are
//! impaired in userspace (specs/netem.md).
//!
//! - The model is sans-I/O ([`Link`]): datagrams in with the time they arrive, datagrams out
//!   when they are due, with loss (random, Gilbert–Elliott bursts, or a scripted window),
//!   delay and jitter, reordering, duplication, a rate cap and a blackout ([`Impairment`]). It
//!   reads no clock and draws from a seeded generator, so a seed names a run and the unit
//!   tests run in virtual time.
//! - The relay ([`Relay`]) is its tokio shell: a UDP relay between participants and the SFU
//!   (which advertises the relay's address, `SfuConfig::advertise`), one flow per client
//!   source address, both directions impaired, the impairment changeable while it runs.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use veil_netem::{Impairment, Link, Loss};
//!
//! let t0 = Instant::now();
//! let mut link = Link::new(Impairment { delay: Duration::from_millis(50), ..Impairment::default() }, 1, t0);
//! link.push(t0, b"hello".to_vec());
//! assert_eq!(link.poll(t0), None);
//! let due = link.next_timeout().unwrap();
//! assert_eq!(due, t0 + Duration::from_millis(50));
//! assert_eq!(link.poll(due).as_deref(), Some(&b"hello"[..]));
//! # let _ = Loss::None;
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod impairment;
mod link;
mod relay;
mod rng;

pub use error::NetemError;
pub use impairment::{GilbertElliott, Impairment, Loss, LossWindow, RateCap};
pub use link::{Link, LinkCounters};
pub use relay::{BoundRelay, FlowStats, Relay, RelayConfig};
pub use rng::SplitMix64;
