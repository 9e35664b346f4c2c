//! The soak (issue 23, specs/netem.md SOAK-01..04): a constant base of participants in
//! one room for a long time, a churner joining and leaving it every few seconds, side rooms
//! created and ended; the server's `/metrics` sampled every few seconds (resident memory, open
//! descriptors, threads, tasks, per-room state of both services). [`run`] plays a [`Plan`] and
//! returns a [`Report`]; `tests/e2e/soak.rs` asserts on a short plan, `cargo run -p veil-e2e
//! --example soak -- --minutes 5` runs a long one and writes RELIABILITY.md's soak section.

mod host;
mod member;
mod report;
mod sample;

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use veil_client::room::Room;

pub use host::Host;
pub use member::{MemberLog, identity};
pub use report::{Report, SECTION};
pub use sample::{
    FDS, FIGURES, Figure, KEYS_ROOMS, RSS, SESSIONS, SFU_ROOMS, SUBSCRIPTIONS, Sample, TASKS,
    slope_per_hour, sum_series,
};

/// Decrypt failures this long after a member reached the epoch a switch made still count as
/// the switch's (as in the impaired call's report).
pub const SWITCH_SLACK: Duration = Duration::from_secs(1);

/// What to play.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long the base stays, from when it is one group.
    pub duration: Duration,
    /// The stable base (publishing audio and video all along).
    pub stable: usize,
    /// A join or a leave of the churner this often (it stays this long, then is away this long).
    pub churn_every: Duration,
    /// A side room (two participants, audio only) starts this often...
    pub side_every: Duration,
    /// ... and ends this long after its second member joined.
    pub side_life: Duration,
    /// `/metrics` is read this often.
    pub sample_every: Duration,
    /// The key service unloads a room idle this long (KDS-GC-01).
    pub room_idle: Duration,
    /// The server's tokio worker threads (in this process).
    pub server_workers: usize,
    /// Run this `veil-server` binary as a child process instead of the server in this process:
    /// every figure is then the server's alone.
    pub server_binary: Option<std::path::PathBuf>,
}

impl Plan {
    /// The issue's soak, `duration` long: 3 stable participants, a join or a leave every 3 s,
    /// a side room every 15 s living 5 s, a sample every 10 s.
    #[must_use]
    pub fn issue(duration: Duration) -> Self {
        Self {
            duration,
            stable: 3,
            churn_every: Duration::from_secs(3),
            side_every: Duration::from_secs(15),
            side_life: Duration::from_secs(5),
            sample_every: Duration::from_secs(10),
            room_idle: Duration::from_secs(1),
            server_workers: 2,
            server_binary: None,
        }
    }
}

/// A churner's or a side room's switches: when each join and leave began.
#[derive(Debug, Default)]
struct Switches(Vec<Duration>);

/// Join `room` as `name`, retrying for 60 s: a join refused while the group is moving (a
/// commit racing another) is tried again, as an application would.
async fn join(host: &Host, room: &str, name: &str) -> Room {
    let started = Instant::now();
    loop {
        match Room::join(host.room(room, name)).await {
            Ok(r) => return r,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{name} could not join {room} in 60 s: {e}"),
        }
    }
}

/// The churner's life: every `2 × churn_every` a new identity joins the main room, stays
/// `churn_every` publishing audio, and leaves.
async fn churn(
    host: &Host,
    plan: &Plan,
    start: Instant,
    end: Instant,
    first_number: usize,
) -> (Switches, Vec<MemberLog>) {
    let mut switches = Switches::default();
    let mut logs = Vec::new();
    let mut at = start + plan.churn_every;
    let mut who = first_number;
    while at + plan.churn_every * 2 <= end {
        tokio::time::sleep_until(at).await;
        let name = identity("churn", who);
        switches.0.push(start.elapsed());
        let room = join(host, "soak", &name).await;
        let until = Instant::now().max(at + plan.churn_every);
        let log = member::run(name, room, start, until, false).await;
        // The leave began when the member loop ended.
        switches.0.push(until - start);
        logs.push(log);
        at += plan.churn_every * 2;
        who += 1;
    }
    (switches, logs)
}

/// One side room: two participants join `name`, publish audio for `life` once both are in,
/// and leave; the room ends.
async fn side_room(
    host: &Host,
    name: String,
    first: usize,
    life: Duration,
    start: Instant,
) -> (MemberLog, MemberLog) {
    let a = identity(&format!("{name}a"), first);
    let b = identity(&format!("{name}b"), first + 1);
    let ra = join(host, &name, &a).await;
    let rb = join(host, &name, &b).await;
    for r in [&ra, &rb] {
        let _ = r
            .group()
            .wait(Duration::from_secs(30), |s| s.members.len() == 2)
            .await;
    }
    let until = Instant::now() + life;
    tokio::join!(
        member::run(a, ra, start, until, false),
        member::run(b, rb, start, until, false)
    )
}

/// Read `/metrics` into a sample.
async fn sample(host: &Host, start: Instant) -> Sample {
    let text = host.scrape().await.expect("/metrics answers");
    let client_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    Sample::parse(start.elapsed(), &text, client_tasks)
}

/// The first of two samples 250 ms apart that agree on descriptors, threads and tasks (the
/// SFU's worker threads set up their polls after the server answers), within 10 s.
async fn settled(host: &Host, start: Instant) -> Sample {
    let same = |a: &Sample, b: &Sample| [FDS, 2, TASKS].iter().all(|&i| a.values[i] == b.values[i]);
    let mut last = sample(host, start).await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let next = sample(host, start).await;
        if same(&last, &next) {
            return last;
        }
        last = next;
    }
    last
}

/// Play `plan`: start the server, take a baseline, run the base, the churner and the side
/// rooms, sample all along; once everyone has left, wait (up to 60 s) for every per-room
/// figure to return to 0, then take the final sample.
///
/// # Panics
/// If the server does not start, a join fails for 60 s, or the base is not one group within
/// 60 s.
pub async fn run(plan: &Plan) -> Report {
    let grace = Duration::from_secs(2);
    let host = match &plan.server_binary {
        Some(binary) => Host::spawn(binary, plan.room_idle, grace),
        None => Host::start(plan.server_workers, plan.room_idle, grace).await,
    };
    let t0 = Instant::now();
    let baseline = settled(&host, t0).await;

    let mut base = Vec::new();
    for who in 0..plan.stable {
        let name = identity("stable", who);
        base.push((name.clone(), join(&host, "soak", &name).await));
    }
    for (_, r) in &base {
        r.group()
            .wait(Duration::from_secs(60), |s| s.members.len() == plan.stable)
            .await
            .expect("the base is one group");
    }
    let start = t0;
    let began = start.elapsed();
    let end = Instant::now() + plan.duration;
    let stable: Vec<JoinHandle<MemberLog>> = base
        .into_iter()
        .map(|(name, r)| tokio::spawn(member::run(name, r, start, end, true)))
        .collect();

    // The sampler, until everyone has left.
    let (stop_sampling, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let host = std::sync::Arc::new(host);
    let sampler = {
        let (host, every) = (host.clone(), plan.sample_every);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => samples.push(sample(&host, start).await),
                    _ = &mut stopped => return samples,
                }
            }
        })
    };
    let churner = {
        let (host, plan) = (host.clone(), plan.clone());
        tokio::spawn(async move { churn(&host, &plan, start, end, 1_000).await })
    };
    let mut sides = Vec::new();
    let mut at = Instant::now() + plan.side_every / 2;
    let mut k = 0;
    while at + plan.side_life + Duration::from_secs(5) <= end {
        tokio::time::sleep_until(at).await;
        let (host, life) = (host.clone(), plan.side_life);
        sides.push(tokio::spawn(async move {
            side_room(&host, format!("side{k}"), 10_000 + 2 * k, life, start).await
        }));
        at += plan.side_every;
        k += 1;
    }
    let logs: Vec<MemberLog> = futures_join(stable).await;
    let (switches, churn_logs) = churner.await.expect("the churner");
    let mut side_logs = Vec::new();
    for s in sides {
        let (a, b) = s.await.expect("a side room");
        side_logs.extend([a, b]);
    }
    let left_at = start.elapsed();
    // Every room has ended: per-room state goes, descriptors and tasks return.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut idle_after = None;
    let mut last = sample(&host, start).await;
    while Instant::now() < deadline {
        if idle_after.is_none() && last.room_state_left().is_empty() {
            idle_after = Some(last.at.saturating_sub(left_at));
        }
        // After the rooms, a few seconds more for the last connections and timers to close.
        if idle_after.is_some_and(|d| last.at >= left_at + d + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = sample(&host, start).await;
    }
    let _ = stop_sampling.send(());
    let mut samples = sampler.await.expect("the sampler");
    samples.push(last.clone());
    let host = std::sync::Arc::into_inner(host).expect("every task is done with the server");
    let host_was_child = host.is_child();
    host.stop();
    Report {
        child: host_was_child,
        plan: plan.clone(),
        baseline,
        began,
        ended: end - start,
        samples,
        after: last,
        left_at,
        idle_after,
        stable: logs,
        churners: churn_logs,
        switches: switches.0,
        sides: side_logs,
    }
}

/// Await every handle, in order.
async fn futures_join<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a participant task"));
    }
    out
}
