//! `cargo bench -p veil-mls --bench frame_latency`
//!
//! Frame latency at one member (Alice) while MLS work runs, for groups of 100 and 1000:
//! - `encrypt`: publish → encrypted, one 1200-byte frame as Alice;
//! - `decrypt`: receive → decrypted, one 1200-byte frame from Bob.
//!
//! Latency is the time of the call, including any wait for a lock. Four conditions per size:
//! - `old, idle`: `CallSession::encrypt_frame`/`decrypt_frame` under the session's mutex, as the
//!   SDK did before the frame path was split off; no MLS work;
//! - `old, busy`: the same, while an MLS thread works and takes the same mutex for each of
//!   Alice's operations, as `Actor::commit_with` did (`make(&mut session.lock())`);
//! - `new, idle`: `FrameKeys::encrypt` and one `FrameDecryptor`; no MLS work;
//! - `new, busy`: the same, while the MLS thread owns Alice's `CallSession` outright.
//!
//! The MLS thread runs, back to back for the whole window, one loop of four real commits at n
//! members: Alice adds a newcomer (the service accepts: Alice confirms, then Bob processes it),
//! Alice removes it again (same), Alice self-updates (same), and Bob self-updates (Alice
//! processes it, then Bob confirms). Bob's work runs on the same thread without a lock shared
//! with frames: it stands for the rest of the group.
//!
//! Pacing: two threads, as in the SDK: one encrypts a frame every `VEIL_BENCH_PERIOD_US`
//! (default 1000 µs), the other decrypts one as often, half a period later; `VEIL_BENCH_SECS`
//! (default 5) seconds per condition. A late call is not made up for: the next frame comes a
//! period after it, so frames that would have queued behind a wait are not counted. Bob seals each received frame just before
//! Alice decrypts it (not timed), with his lock-free `FrameKeys`, so it is under Bob's current
//! epoch. Alice always moves to an epoch before Bob does (Alice confirms her commits before Bob
//! processes them; Alice processes Bob's before he confirms), so she knows every epoch Bob
//! seals under. Every decryption must give back Bob's plaintext; anything else panics.
//!
//! The key configuration is the default except `max_retained_epochs = 16` (default 3): the
//! loop changes epochs every few milliseconds, far faster than a real call, and a frame thread
//! that is descheduled between Bob's seal and Alice's open could otherwise find the epoch gone.
//!
//! For the new path, frames are also split into "first" ones (the first call after the member
//! published a new key set, or a decryption that derived a sender's key: once per epoch by
//! design) and "steady" ones. The old path is not split: there a frame that waited behind the
//! commit that installed an epoch is a first one too.
//!
//! Members other than Alice and Bob are KeyPackages of clients that never process anything, as
//! in `mls_rekey`. Groups are built once per size and reused by the four conditions.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use veil_mls::{CallSession, FrameDecryptor, FrameKeys, KeyConfig, Processed, Received};

const SIZES: [usize; 2] = [100, 1000];
const FRAME_LEN: usize = 1200;
/// SFrame metadata (authenticated, not encrypted), e.g. a track id and RTP timestamp.
const METADATA: &[u8] = b"track-0:ts-90000";
/// A frame slower than this counts as having waited.
const WAITED: Duration = Duration::from_millis(1);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

fn config() -> KeyConfig {
    KeyConfig {
        max_retained_epochs: 16,
        ..KeyConfig::default()
    }
}

/// The bench's monotonic clock, shared by the MLS and frame threads and by all conditions.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> Duration {
        self.0.elapsed()
    }
}

struct Group {
    n: usize,
    alice: CallSession,
    bob: CallSession,
    newcomer_kp: Vec<u8>,
}

fn group(n: usize, clock: Clock) -> Group {
    let cfg = config();
    let mut alice = CallSession::new(b"alice", cfg).unwrap();
    let mut bob = CallSession::new(b"bob", cfg).unwrap();
    alice.create_group(b"bench", clock.now()).unwrap();
    let mut kps = vec![bob.key_package(false).unwrap()];
    for i in 2..n {
        let c = CallSession::new(format!("m{i}").as_bytes(), cfg).unwrap();
        kps.push(c.key_package(false).unwrap());
    }
    let out = alice.add_members(&kps).unwrap();
    alice.confirm_commit(clock.now()).unwrap();
    bob.join_welcome(out.welcome.as_deref().unwrap(), clock.now())
        .unwrap();
    let newcomer = CallSession::new(b"newcomer", cfg).unwrap();
    Group {
        n,
        alice,
        bob,
        newcomer_kp: newcomer.key_package(false).unwrap(),
    }
}

/// Alice's session as the MLS thread sees it.
trait Member: Send {
    fn with<R>(&mut self, f: impl FnOnce(&mut CallSession) -> R) -> R;
}

/// The old SDK: one mutex, shared with frames, taken for each operation.
struct Locked(Arc<Mutex<CallSession>>);

impl Member for Locked {
    fn with<R>(&mut self, f: impl FnOnce(&mut CallSession) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
}

/// The new SDK: the MLS side owns the session; frames never touch it.
impl Member for CallSession {
    fn with<R>(&mut self, f: impl FnOnce(&mut CallSession) -> R) -> R {
        f(self)
    }
}

/// What the MLS thread did in one condition.
#[derive(Default)]
struct Work {
    loops: u64,
    commits: u64,
    /// Time inside Alice's operations (under the mutex in `old, busy`).
    alice_busy: Duration,
    /// Time Alice spent creating commits.
    creating: Duration,
    wall: Duration,
}

fn new_epoch(p: Processed) {
    match p {
        Processed::EpochChanged { released, .. } => {
            assert!(released.is_empty(), "no frame may wait for an epoch")
        }
        other => panic!("expected a new epoch, got {other:?}"),
    }
}

/// The MLS loop (see the module docs) until `stop`.
fn mls_work<M: Member>(
    alice: &mut M,
    bob: &mut CallSession,
    newcomer: &[Vec<u8>],
    clock: Clock,
    stop: &AtomicBool,
) -> Work {
    let mut w = Work::default();
    let start = Instant::now();
    let mut timed = |w: &mut Work, creates: bool, f: &mut dyn FnMut(&mut CallSession)| {
        let t = Instant::now();
        alice.with(|s| f(s));
        let d = t.elapsed();
        w.alice_busy += d;
        if creates {
            w.creating += d;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        // Alice's commits: create, the service accepts (Alice confirms), Bob processes.
        for step in 0..3 {
            let mut commit = Vec::new();
            timed(&mut w, true, &mut |s| {
                let out = match step {
                    0 => s.add_members(newcomer),
                    1 => s.remove_members(&[b"newcomer"]),
                    _ => s.self_update(),
                };
                commit = out.unwrap().commit;
            });
            timed(&mut w, false, &mut |s| {
                assert!(s.confirm_commit(clock.now()).unwrap().is_empty());
            });
            new_epoch(bob.process(&commit, clock.now()).unwrap());
        }
        // Bob's commit: Alice processes it before Bob confirms.
        let up = bob.self_update().unwrap();
        timed(&mut w, false, &mut |s| {
            new_epoch(s.process(&up.commit, clock.now()).unwrap());
        });
        bob.confirm_commit(clock.now()).unwrap();
        w.loops += 1;
        w.commits += 4;
    }
    w.wall = start.elapsed();
    w
}

/// Alice's publish path.
enum Tx {
    Old(Arc<Mutex<CallSession>>),
    New(FrameKeys),
}

/// Alice's receive path.
enum Rx {
    Old(Arc<Mutex<CallSession>>),
    New(Box<(FrameKeys, FrameDecryptor)>),
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// One op's latencies.
struct Op {
    all: Histogram<u64>,
    /// Calls that are not the first after a new key set nor derive a sender's key.
    steady: Histogram<u64>,
    /// The other calls.
    first: Histogram<u64>,
    /// Calls slower than [`WAITED`].
    waited: u64,
    /// Calls that were the first after the member published a new key set (an epoch change),
    /// or derived a sender's key (a sender's first frame of an epoch).
    changed: u64,
}

impl Op {
    fn new() -> Self {
        Self {
            all: histogram(),
            steady: histogram(),
            first: histogram(),
            waited: 0,
            changed: 0,
        }
    }

    fn record(&mut self, d: Duration, changed: bool) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.all.record(ns).unwrap();
        if changed {
            self.changed += 1;
            self.first.record(ns).unwrap();
        } else {
            self.steady.record(ns).unwrap();
        }
        if d > WAITED {
            self.waited += 1;
        }
    }
}

/// Run `tick` every `period` for `dur`, starting after `offset`. A tick that comes late (the
/// last one waited) is not made up for: the next comes a period after it.
fn paced(dur: Duration, period: Duration, offset: Duration, mut tick: impl FnMut()) {
    let start = Instant::now();
    let mut next = start + offset;
    loop {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
        if start.elapsed() >= dur {
            break;
        }
        tick();
        next += period;
    }
}

fn plaintext() -> Vec<u8> {
    (0..FRAME_LEN).map(|i| (i * 7 + 3) as u8).collect()
}

/// (a) publish → encrypted: Alice encrypts one frame per tick.
fn publish(tx: &Tx, dur: Duration, period: Duration) -> Op {
    let pt = plaintext();
    let mut out = vec![0u8; FRAME_LEN + 64];
    let mut op = Op::new();
    let mut seen = None;
    paced(dur, period, Duration::ZERO, || {
        let t = Instant::now();
        let (r, d, generation) = match tx {
            Tx::Old(s) => {
                let mut s = s.lock().unwrap();
                let r = s.encrypt_frame(METADATA, &pt, &mut out);
                let d = t.elapsed();
                (r, d, [s.frame_keys().generation(); 2])
            }
            Tx::New(keys) => {
                let before = keys.generation();
                let t = Instant::now();
                let r = keys.encrypt(METADATA, &pt, &mut out);
                (r, t.elapsed(), [before, keys.generation()])
            }
        };
        black_box(&out[..r.expect("Alice encrypts")]);
        let changed = seen.is_some_and(|g| g != generation[0]) || generation[0] != generation[1];
        seen = Some(generation[1]);
        op.record(d, changed);
    });
    op
}

/// (b) receive → decrypted: per tick Bob seals one frame (not timed) and Alice decrypts it.
fn receive(
    rx: &mut Rx,
    bob: &FrameKeys,
    bob_index: u32,
    clock: Clock,
    dur: Duration,
    period: Duration,
) -> Op {
    let pt = plaintext();
    let mut buf = vec![0u8; FRAME_LEN + bob.max_overhead()];
    let mut op = Op::new();
    let mut seen = None;
    // Half a period after the publish thread's ticks, as a receiver's frames are not in step
    // with the sender's.
    paced(dur, period, period / 2, || {
        let len = bob.encrypt(METADATA, &pt, &mut buf).unwrap();
        let now = clock.now();
        let t = Instant::now();
        let (r, d, derived, generation) = match rx {
            Rx::Old(s) => {
                let mut s = s.lock().unwrap();
                let before = s.keys().stats().keys_derived;
                let r = s.decrypt_frame(METADATA, &mut buf[..len], now);
                let d = t.elapsed();
                let derived = s.keys().stats().keys_derived != before;
                (r, d, derived, [s.frame_keys().generation(); 2])
            }
            Rx::New(b) => {
                let (keys, rx) = &mut **b;
                let (before, g0) = (rx.stats().keys_derived, keys.generation());
                let t = Instant::now();
                let r = rx.decrypt_in_place(METADATA, &mut buf[..len], now, 0);
                let d = t.elapsed();
                (
                    r,
                    d,
                    rx.stats().keys_derived != before,
                    [g0, keys.generation()],
                )
            }
        };
        let changed =
            derived || seen.is_some_and(|g| g != generation[0]) || generation[0] != generation[1];
        seen = Some(generation[1]);
        match r {
            Ok(Received::Plaintext {
                sender, plaintext, ..
            }) if sender == bob_index && *plaintext == pt[..] => {}
            Ok(Received::Plaintext { sender, .. }) => {
                panic!("decrypted a frame from {sender} that is not Bob's plaintext")
            }
            Ok(Received::Held) => panic!("Bob's frame was held: Alice did not know its epoch"),
            Err(e) => panic!("Bob's frame did not decrypt: {e}"),
        }
        op.record(d, changed);
    });
    op
}

struct Row {
    n: usize,
    old: bool,
    busy: bool,
    encrypt: Op,
    decrypt: Op,
    work: Option<Work>,
}

impl Row {
    fn condition(&self) -> String {
        format!(
            "{}, {}",
            if self.old { "old" } else { "new" },
            if self.busy { "busy" } else { "idle" }
        )
    }
}

struct Run {
    clock: Clock,
    dur: Duration,
    period: Duration,
}

/// One condition on group `g`; the sessions come back in `g`.
fn run(g: &mut Group, old: bool, busy: bool, cfg: &Run) -> Row {
    let (clock, dur, period) = (cfg.clock, cfg.dur, cfg.period);
    let bob_keys = g.bob.frame_keys();
    let bob_index = g.bob.own_index().unwrap();
    let stop = AtomicBool::new(false);
    let placeholder = || CallSession::new(b"placeholder", config()).unwrap();
    let mut alice = std::mem::replace(&mut g.alice, placeholder());
    let mut bob = std::mem::replace(&mut g.bob, placeholder());
    let kp = [g.newcomer_kp.clone()];
    let shared = old.then(|| Arc::new(Mutex::new(std::mem::replace(&mut alice, placeholder()))));
    let (tx, mut rx) = match &shared {
        Some(s) => (Tx::Old(s.clone()), Rx::Old(s.clone())),
        None => {
            let keys = alice.frame_keys();
            let rx = keys.decryptor();
            (Tx::New(keys.clone()), Rx::New(Box::new((keys, rx))))
        }
    };
    let (encrypt, decrypt, work) = thread::scope(|sc| {
        let (bob, kp, stop, alice) = (&mut bob, &kp[..], &stop, &mut alice);
        let mls = busy.then(|| match &shared {
            Some(s) => {
                let mut member = Locked(s.clone());
                sc.spawn(move || mls_work(&mut member, bob, kp, clock, stop))
            }
            None => sc.spawn(move || mls_work(alice, bob, kp, clock, stop)),
        });
        let tx = &tx;
        let publisher = sc.spawn(move || publish(tx, dur, period));
        let decrypt = receive(&mut rx, &bob_keys, bob_index, clock, dur, period);
        let encrypt = publisher.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (encrypt, decrypt, mls.map(|h| h.join().unwrap()))
    });
    drop((tx, rx));
    if let Some(s) = shared {
        alice = Arc::try_unwrap(s)
            .expect("frame path and MLS thread are done")
            .into_inner()
            .unwrap();
    }
    g.alice = alice;
    g.bob = bob;
    Row {
        n: g.n,
        old,
        busy,
        encrypt,
        decrypt,
        work,
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn ops(r: &Row) -> [(&'static str, &Op); 2] {
    [("encrypt", &r.encrypt), ("decrypt", &r.decrypt)]
}

fn p99(rows: &[Row], n: usize, old: bool, busy: bool, op: usize, steady: bool) -> u64 {
    let r = rows
        .iter()
        .find(|r| r.n == n && r.old == old && r.busy == busy)
        .unwrap();
    let o = ops(r)[op].1;
    if steady { &o.steady } else { &o.all }.value_at_quantile(0.99)
}

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        fmt_ns(h.value_at_quantile(0.5)),
        fmt_ns(h.value_at_quantile(0.99)),
        fmt_ns(h.value_at_quantile(0.999)),
        fmt_ns(h.max()),
        h.len(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; there is no filter.
    let secs = env_u64("VEIL_BENCH_SECS", 5);
    let cfg = Run {
        clock: Clock(Instant::now()),
        dur: Duration::from_secs(secs),
        period: Duration::from_micros(env_u64("VEIL_BENCH_PERIOD_US", 1000)),
    };
    println!(
        "frame_latency: {FRAME_LEN}-byte frames; Alice encrypts one every {0} µs and decrypts \
         one of Bob's every {0} µs (two threads); {secs} s per condition",
        cfg.period.as_micros()
    );
    let mut rows = Vec::new();
    for n in SIZES {
        let t = Instant::now();
        let mut g = group(n, cfg.clock);
        println!("n={n}: group built in {:.1} s", t.elapsed().as_secs_f64());
        for (old, busy) in [(true, false), (true, true), (false, false), (false, true)] {
            let row = run(&mut g, old, busy, &cfg);
            println!(
                "n={n} {}: done, Alice at epoch {}",
                row.condition(),
                g.alice.epoch().unwrap()
            );
            rows.push(row);
        }
    }

    println!();
    println!("All frames:");
    println!();
    println!(
        "| n | condition | op | p50 | p99 | p99.9 | max | frames | > 1 ms | first after new keys |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        for (op, o) in ops(r) {
            println!(
                "| {} | {} | {op} | {} | {} | {} |",
                r.n,
                r.condition(),
                quantiles(&o.all),
                o.waited,
                o.changed,
            );
        }
    }

    println!();
    println!(
        "New path, split: \"first\" frames are the first after a new key set or derive a \
         sender's key, \"steady\" the others (not split for the old path: there a frame that \
         waited behind the commit that installs an epoch is a first one too):"
    );
    println!();
    println!("| n | condition | op | frames | p50 | p99 | p99.9 | max | count |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| !r.old) {
        for (op, o) in ops(r) {
            for (which, h) in [("steady", &o.steady), ("first", &o.first)] {
                if h.is_empty() {
                    continue;
                }
                println!(
                    "| {} | {} | {op} | {which} | {} |",
                    r.n,
                    r.condition(),
                    quantiles(h)
                );
            }
        }
    }

    println!();
    println!("MLS thread (busy conditions):");
    println!();
    println!(
        "| n | condition | MLS loops | commits (epochs) | Alice's MLS operations, share of the \
         window | Alice's mean commit creation |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        if let Some(w) = &r.work {
            println!(
                "| {} | {} | {} | {} | {:.0} % | {} |",
                r.n,
                r.condition(),
                w.loops,
                w.commits,
                100.0 * w.alice_busy.as_secs_f64() / w.wall.as_secs_f64(),
                fmt_ns(
                    u64::try_from(w.creating.as_nanos()).unwrap_or(u64::MAX) / (3 * w.loops).max(1)
                ),
            );
        }
    }

    println!();
    println!("p99 ratios:");
    println!();
    println!(
        "| n | op | old: busy / idle | new: busy / idle | new: busy / idle, steady frames | \
         old busy / new busy |"
    );
    println!("|---|---|---|---|---|---|");
    for n in SIZES {
        for (i, op) in ["encrypt", "decrypt"].into_iter().enumerate() {
            let ratio = |a: u64, b: u64| a as f64 / b as f64;
            let p = |old, busy, steady| p99(&rows, n, old, busy, i, steady);
            println!(
                "| {n} | {op} | {:.0}× | {:.2}× | {:.2}× | {:.0}× |",
                ratio(p(true, true, false), p(true, false, false)),
                ratio(p(false, true, false), p(false, false, false)),
                ratio(p(false, true, true), p(false, false, true)),
                ratio(p(true, true, false), p(false, true, false)),
            );
        }
    }
}
