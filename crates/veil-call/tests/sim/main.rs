//! A seeded simulation of calls: 3 to 6 members (and some who come and go) against one key
//! service built on `veil_keys`' room state and SQLite store, over a network that delays,
//! reorders, duplicates and drops, breaks streams, loses replies and refuses requests, in
//! virtual time. Each seed plays a scenario (create, joins by external commit and by Welcome,
//! adds, removals, self-updates, leaves, commits racing in the same instant, and restarts from
//! the stored MLS state) and after every step and a quiet period checks that
//!
//! - (a) every member is in the service's epoch with the same epoch authenticator, and the
//!   room's members are exactly the live members;
//! - (b) a member that was removed or left derives no later key, and decrypts no later frame;
//! - (c) a joiner decrypts no frame of an epoch before it joined;
//! - (d) every member decrypts every other member's frames, both at once when an epoch starts
//!   and after the quiet period;
//! - (e) every command ends (`Event::Done`) within its `retry_for`, plus the last back-off it
//!   started before the deadline and a round trip.
//!
//! ```text
//! cargo test -p veil-call --test sim                          # seeds 0..48 (CI, ~15 s)
//! VEIL_SIM_SEEDS=10000 cargo test -p veil-call --release --test sim   # many more
//! VEIL_SIM_FIRST=5000 VEIL_SIM_SEEDS=1000 cargo test ...      # seeds 5000..6000
//! VEIL_SIM_SEED=1234 cargo test -p veil-call --test sim       # one seed, with its trace
//! VEIL_SIM_LIST=1 cargo test -p veil-call --test sim -- --nocapture  # seeds whose commands failed
//! ```
//!
//! A failing seed prints a one-line reproduction and its trace, and the test fails.

mod net;
mod service;
mod world;

use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn seeded_calls_converge_and_keep_epochs_apart() {
    let (seeds, verbose): (Vec<u64>, bool) = match env_u64("VEIL_SIM_SEED") {
        Some(s) => (vec![s], true),
        None => {
            let first = env_u64("VEIL_SIM_FIRST").unwrap_or(0);
            let n = env_u64("VEIL_SIM_SEEDS").unwrap_or(48);
            ((first..first + n).collect(), false)
        }
    };
    let list = std::env::var_os("VEIL_SIM_LIST").is_some();
    let started = Instant::now();
    let mut total = world::Stats::default();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let mut w = world::World::new(seed);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world::run(seed, &mut w)));
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(p) => Some(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            )),
        };
        if list && (!w.stats.failures.is_empty() || w.stats.resyncs > 0) {
            let (f, r) = (&w.stats.failures, w.stats.resyncs);
            eprintln!("seed {seed}: commands that failed: {f:?}; resyncs: {r}");
        }
        total.add(&w.stats);
        if let Some(e) = &error {
            eprintln!("seed {seed} FAILED: {e}");
            eprintln!("  reproduce: VEIL_SIM_SEED={seed} cargo test -p veil-call --test sim");
            if verbose {
                eprintln!("{}", w.trace());
            }
            failed.push(seed);
        } else if verbose {
            eprintln!("{}", w.trace());
        }
    }
    eprintln!(
        "{} seeds in {:.1?} ({} failed): {total:#?}",
        seeds.len(),
        started.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}
