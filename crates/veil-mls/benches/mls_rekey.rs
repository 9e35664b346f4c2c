//! `cargo bench -p veil-mls --bench mls_rekey`
//!
//! The cost of one rekey for groups of 2, 10, 100 and 1000, split so that the SFrame share is
//! visible. In the steady state, Alice adds a newcomer and then removes it, so the size stays n.
//! Each commit is measured three ways:
//! - `commit`: Alice creates the commit (add or remove);
//! - `process`: Bob processes it, which includes openmls validation and merge, the exporter, and
//!   installing every member's SFrame keys;
//! - `sframe_install`: installing the SFrame keys of n members from an exporter secret, alone.
//!
//! As in the openmls probe, members other than Alice and Bob are KeyPackages of clients that
//! never process anything, so the ratchet tree has blank parents: near the worst case for path
//! encryption.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use veil_mls::{CallSession, EpochKeys, KeyConfig};

const SIZES: [usize; 4] = [2, 10, 100, 1000];
const NOW: Duration = Duration::ZERO;

struct Group {
    alice: CallSession,
    bob: CallSession,
    newcomer_kp: Vec<u8>,
}

fn group(n: usize) -> Group {
    let cfg = KeyConfig::default();
    let mut alice = CallSession::new(b"alice", cfg).unwrap();
    let mut bob = CallSession::new(b"bob", cfg).unwrap();
    alice.create_group(b"bench", NOW).unwrap();
    let mut kps = vec![bob.key_package(false).unwrap()];
    for i in 2..n {
        let c = CallSession::new(format!("m{i}").as_bytes(), cfg).unwrap();
        kps.push(c.key_package(false).unwrap());
    }
    let out = alice.add_members(&kps).unwrap();
    alice.confirm_commit(NOW).unwrap();
    bob.join_welcome(out.welcome.as_deref().unwrap(), NOW)
        .unwrap();
    let newcomer = CallSession::new(b"newcomer", cfg).unwrap();
    Group {
        alice,
        bob,
        newcomer_kp: newcomer.key_package(false).unwrap(),
    }
}

/// One add-then-remove cycle, returning (commit create, Bob's process) for both commits.
fn cycle(g: &mut Group) -> (Duration, Duration) {
    let t0 = Instant::now();
    let add = g
        .alice
        .add_members(std::slice::from_ref(&g.newcomer_kp))
        .unwrap();
    let t1 = Instant::now();
    g.bob.process(&add.commit, NOW).unwrap();
    let t2 = Instant::now();
    g.alice.confirm_commit(NOW).unwrap();
    let t3 = Instant::now();
    let remove = g.alice.remove_members(&[b"newcomer"]).unwrap();
    let t4 = Instant::now();
    g.bob.process(&remove.commit, NOW).unwrap();
    let t5 = Instant::now();
    g.alice.confirm_commit(NOW).unwrap();
    ((t1 - t0) + (t4 - t3), (t2 - t1) + (t5 - t4))
}

fn rekey(c: &mut Criterion) {
    let mut grp = c.benchmark_group("mls_rekey");
    grp.sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let mut g = group(n);
        grp.sample_size(10);
        grp.measurement_time(Duration::from_secs(if n >= 1000 { 20 } else { 3 }));
        // Each iteration is two commits (add and remove); report per commit.
        grp.bench_function(BenchmarkId::new("commit", n), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| cycle(&mut g).0).sum::<Duration>() / 2)
        });
        grp.bench_function(BenchmarkId::new("process", n), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| cycle(&mut g).1).sum::<Duration>() / 2)
        });
        let members: Vec<u32> = (0..n as u32).collect();
        let secret = [7u8; 16];
        let mut keys = EpochKeys::new(KeyConfig::default()).unwrap();
        let mut epoch = 0;
        grp.bench_function(BenchmarkId::new("sframe_install", n), |b| {
            b.iter(|| {
                epoch += 1;
                black_box(
                    keys.install_epoch(epoch, &secret, &members, Some(0), NOW)
                        .unwrap(),
                );
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, rekey);
criterion_main!(benches);
