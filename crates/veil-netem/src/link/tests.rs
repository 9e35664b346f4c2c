//! The model in virtual time: rates within tolerance for a seed, order and duplicates counted,
//! the same outputs for the same seed (specs/netem.md).

use std::time::{Duration, Instant};

use super::*;
use crate::impairment::{GilbertElliott, RateCap};

const MS: Duration = Duration::from_millis(1);

/// Push `n` datagrams (their index as 4 bytes) `gap` apart through `link`, polling at every
/// step and then until it is empty; what came out, with when.
fn run(link: &mut Link, t0: Instant, n: u32, gap: Duration) -> Vec<(u32, Instant)> {
    fn drain(link: &mut Link, now: Instant, out: &mut Vec<(u32, Instant)>) {
        while let Some(d) = link.poll(now) {
            out.push((u32::from_be_bytes(d[..4].try_into().unwrap()), now));
        }
    }
    let mut out = Vec::new();
    let mut now = t0;
    for i in 0..n {
        // Poll at every due time before the next push, as a shell's timer would.
        while let Some(t) = link.next_timeout().filter(|t| *t <= now) {
            drain(link, t, &mut out);
        }
        link.push(now, i.to_be_bytes().to_vec());
        drain(link, now, &mut out);
        now += gap;
    }
    while let Some(t) = link.next_timeout() {
        drain(link, t, &mut out);
    }
    out
}

/// NETEM-LOSS-01: 5 % random loss over 20,000 datagrams is 5 % ± 0.6 %, and what is not lost
/// arrives.
#[test]
fn random_loss_is_within_tolerance_over_many_datagrams() {
    let t0 = Instant::now();
    let imp = Impairment {
        loss: Loss::Random(0.05),
        ..Impairment::default()
    };
    let mut link = Link::new(imp, 42, t0);
    let out = run(&mut link, t0, 20_000, MS);
    let c = link.counters();
    let rate = c.lost as f64 / 20_000.0;
    assert!((0.044..=0.056).contains(&rate), "{rate}: {c:?}");
    assert_eq!(out.len() as u64, 20_000 - c.lost);
    assert_eq!(c.forwarded, out.len() as u64);
    // Nothing else was done to them: in order, no delay.
    assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(out.iter().all(|(i, at)| *at == t0 + MS * *i));
}

/// NETEM-LOSS-02: a Gilbert–Elliott chain loses its mean rate, in bursts: the mean run of
/// consecutive losses is well above random loss's (about 1.05 at 5 %).
#[test]
fn burst_loss_has_its_mean_rate_and_comes_in_runs() {
    let t0 = Instant::now();
    let ge = GilbertElliott {
        to_bad: 0.01,
        to_good: 0.1,
        loss_good: 0.0,
        loss_bad: 0.5,
    };
    let imp = Impairment {
        loss: Loss::Bursts(ge),
        ..Impairment::default()
    };
    let mut link = Link::new(imp, 9, t0);
    let n = 50_000u32;
    let out = run(&mut link, t0, n, MS);
    let rate = link.counters().lost as f64 / f64::from(n);
    assert!(
        (ge.mean_loss() * 0.8..=ge.mean_loss() * 1.2).contains(&rate),
        "{rate} vs {}",
        ge.mean_loss()
    );
    let mut got = vec![false; n as usize];
    for (i, _) in &out {
        got[*i as usize] = true;
    }
    let runs: Vec<usize> = got
        .split(|&g| g)
        .map(<[bool]>::len)
        .filter(|&l| l > 0)
        .collect();
    let mean_run = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
    assert!(mean_run > 1.5, "mean loss run {mean_run}");
}

/// NETEM-LOSS-03: a window's loss applies to datagrams pushed inside it, and only there.
#[test]
fn a_loss_window_loses_only_inside_it() {
    let t0 = Instant::now();
    let window = LossWindow {
        from: Duration::from_secs(2),
        to: Duration::from_secs(4),
        loss: 0.2,
    };
    let mut link = Link::new(Impairment::default(), 3, t0).with_windows(vec![window]);
    // 6 s at one datagram per ms.
    let out = run(&mut link, t0, 6_000, MS);
    let mut got = [0usize; 3];
    for (i, _) in &out {
        got[(*i / 2_000) as usize] += 1;
    }
    assert_eq!(got[0], 2_000);
    assert_eq!(got[2], 2_000);
    let rate = 1.0 - got[1] as f64 / 2_000.0;
    assert!((0.17..=0.23).contains(&rate), "{rate}");
}

/// NETEM-DELAY-01: every datagram is delayed by 50 ± 20 ms (sparse enough that order never
/// holds one back), and jitter alone keeps the order even when datagrams are dense.
#[test]
fn delay_and_jitter_stay_in_bounds_and_keep_order() {
    let t0 = Instant::now();
    let imp = Impairment {
        delay: 50 * MS,
        jitter: 20 * MS,
        ..Impairment::default()
    };
    let mut link = Link::new(imp.clone(), 1, t0);
    let out = run(&mut link, t0, 1_000, 100 * MS);
    assert_eq!(out.len(), 1_000);
    let delays: Vec<Duration> = out
        .iter()
        .map(|(i, at)| *at - (t0 + 100 * MS * *i))
        .collect();
    assert!(delays.iter().all(|d| (30 * MS..=70 * MS).contains(d)));
    let min = delays.iter().min().unwrap();
    let max = delays.iter().max().unwrap();
    assert!(*min < 33 * MS && *max > 67 * MS, "{min:?} {max:?}");

    let mut dense = Link::new(imp, 2, t0);
    let out = run(&mut dense, t0, 5_000, MS);
    assert_eq!(out.len(), 5_000);
    assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "jitter reordered");
}

/// NETEM-ORD-01, NETEM-DUP-01: 1 % reordering and 1 % duplication over 20,000 datagrams are
/// each 1 % ± 0.3 %; every duplicate arrives twice, every held datagram is overtaken.
#[test]
fn reordering_and_duplication_are_counted_and_happen() {
    let t0 = Instant::now();
    let imp = Impairment {
        delay: 50 * MS,
        jitter: 20 * MS,
        reorder: 0.01,
        duplicate: 0.01,
        ..Impairment::default()
    };
    let mut link = Link::new(imp, 5, t0);
    let n = 20_000u32;
    let out = run(&mut link, t0, n, 2 * MS);
    let c = link.counters();
    for (what, count) in [("reordered", c.reordered), ("duplicated", c.duplicated)] {
        let rate = count as f64 / f64::from(n);
        assert!((0.007..=0.013).contains(&rate), "{what} {rate}");
    }
    assert_eq!(out.len() as u64, u64::from(n) + c.duplicated);
    let mut seen = vec![0u8; n as usize];
    for (i, _) in &out {
        seen[*i as usize] += 1;
    }
    assert_eq!(
        seen.iter().filter(|&&s| s == 2).count() as u64,
        c.duplicated
    );
    assert!(seen.iter().all(|&s| s >= 1));
    // A datagram is out of order if one pushed after it came out before it.
    let mut highest = 0;
    let mut late = 0u64;
    for (i, _) in &out {
        if *i < highest {
            late += 1;
        }
        highest = highest.max(*i);
    }
    // Held 30 ms with datagrams every 2 ms: each held one is overtaken (a held duplicate
    // counts twice).
    assert!(
        late >= c.reordered && late <= c.reordered * 2,
        "{late} {c:?}"
    );
}

/// NETEM-DET-01: the same seed and inputs give the same outputs at the same times; another
/// seed does not.
#[test]
fn a_seed_determines_the_run() {
    let t0 = Instant::now();
    let imp = Impairment::lossy_call();
    let a = run(&mut Link::new(imp.clone(), 77, t0), t0, 5_000, 3 * MS);
    let b = run(&mut Link::new(imp.clone(), 77, t0), t0, 5_000, 3 * MS);
    let c = run(&mut Link::new(imp, 78, t0), t0, 5_000, 3 * MS);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// NETEM-BLK-01: a blackout drops everything pushed during it; lifted, datagrams pass again.
#[test]
fn a_blackout_drops_everything_until_lifted() {
    let t0 = Instant::now();
    let mut link = Link::new(Impairment::default().with_blackout(true), 1, t0);
    let out = run(&mut link, t0, 100, MS);
    assert!(out.is_empty());
    assert_eq!(link.counters().blacked_out, 100);
    link.set_impairment(Impairment::default());
    let out = run(&mut link, t0 + Duration::from_secs(1), 100, MS);
    assert_eq!(out.len(), 100);
    assert_eq!(link.counters().dropped(), 100);
}

/// NETEM-RATE-01: at 1 Mbit/s 1,250-byte datagrams leave 10 ms apart; a burst larger than the
/// queue loses what does not fit.
#[test]
fn a_rate_cap_spaces_datagrams_and_drops_what_overflows() {
    let t0 = Instant::now();
    let imp = Impairment {
        rate: Some(RateCap {
            bits_per_second: 1_000_000,
            queue_bytes: 12_500,
        }),
        ..Impairment::default()
    };
    let mut link = Link::new(imp, 1, t0);
    // 20 datagrams at once: ten fit in the queue (the first leaves after 10 ms).
    for i in 0u32..20 {
        let mut d = i.to_be_bytes().to_vec();
        d.resize(1_250, 0);
        link.push(t0, d);
    }
    assert_eq!(link.counters().queue_drops, 10);
    let mut times = Vec::new();
    while let Some(t) = link.next_timeout() {
        while link.poll(t).is_some() {
            times.push(t - t0);
        }
    }
    assert_eq!(times.len(), 10);
    for (k, t) in times.iter().enumerate() {
        let want = 10 * MS * (k as u32 + 1);
        assert!(
            t.abs_diff(want) < Duration::from_micros(10),
            "{t:?} vs {want:?}"
        );
    }
}
