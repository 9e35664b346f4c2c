//! Choosing a simulcast layer per subscriber from its bandwidth estimate (SFU-BWE-02..04).
//!
//! The SFU cannot change a layer's bitrate: the publisher's encoder sets it. What it can do is
//! pick, per subscriber, which layer to forward. [`RateMeter`] measures each layer's bitrate from
//! packet sizes over a one-second window; [`LayerChoice`] picks the highest layer at or below the
//! subscriber's requested one whose measured bitrate fits the subscriber's share of its
//! connection's estimate, with hysteresis so that it does not flap. The [`LayerForwarder`] then
//! switches at the chosen layer's next key frame, as for any other switch (SFU-FWD-02).
//!
//! Sans-I/O: time is passed in, nothing here reads a clock.
//!
//! [`LayerForwarder`]: crate::routing::LayerForwarder

use std::time::Duration;

/// Width of one [`RateMeter`] bucket.
pub const RATE_BUCKET: Duration = Duration::from_millis(100);
/// Buckets in a [`RateMeter`]'s window (one second).
const BUCKETS: usize = 10;

/// Bytes sent on one stream over the last second, in 100 ms buckets.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    buckets: [u64; BUCKETS],
    /// Index (time / bucket width) of the newest bucket.
    head: u64,
    first: Option<Duration>,
}

fn bucket_of(now: Duration) -> u64 {
    (now.as_nanos() / RATE_BUCKET.as_nanos()) as u64
}

impl RateMeter {
    /// Count a packet of `bytes` at `now` (monotonic, in arrival order).
    pub fn add(&mut self, now: Duration, bytes: usize) {
        let idx = bucket_of(now);
        if self.first.is_none() {
            self.first = Some(now);
            self.head = idx;
        }
        if idx > self.head {
            let stale = (idx - self.head).min(BUCKETS as u64);
            for k in 1..=stale {
                self.buckets[((self.head + k) % BUCKETS as u64) as usize] = 0;
            }
            self.head = idx;
        }
        // A packet stamped before the head (a caller's clock that stepped back) is counted in
        // the head bucket rather than lost.
        self.buckets[(self.head % BUCKETS as u64) as usize] += bytes as u64;
    }

    /// The bitrate over the last second (or since the first packet, if that is more recent),
    /// in bits per second. Zero when nothing was sent in the window.
    #[must_use]
    pub fn bits_per_second(&self, now: Duration) -> u64 {
        let Some(first) = self.first else {
            return 0;
        };
        let idx = bucket_of(now).max(self.head);
        let oldest = idx.saturating_sub(BUCKETS as u64 - 1);
        let bytes: u64 = (oldest..=self.head)
            .map(|b| self.buckets[(b % BUCKETS as u64) as usize])
            .sum();
        if bytes == 0 {
            return 0;
        }
        // The window: nine whole buckets and the part of the current one that has passed,
        // or less if the stream is younger than that.
        let into_current = Duration::from_nanos((now.as_nanos() % RATE_BUCKET.as_nanos()) as u64);
        let window = (RATE_BUCKET * (BUCKETS as u32 - 1) + into_current)
            .min(now.saturating_sub(first))
            .max(RATE_BUCKET);
        (bytes as u128 * 8 * 1_000_000_000 / window.as_nanos().max(1)) as u64
    }
}

/// How eagerly [`LayerChoice`] follows the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerPolicy {
    /// Go up to a layer only if the estimate is at least its bitrate times this.
    pub up_headroom: f64,
    /// Stay on a layer while the estimate is at least its bitrate times this. Below `1.0` on
    /// purpose: on congestion GCC falls to 0.85 × what arrives, so a layer that really does not
    /// fit falls well below this, while one spurious overuse signal on a path that carries the
    /// layer leaves the estimate at 0.85 × its bitrate, above this.
    pub keep_fraction: f64,
    /// A higher layer must fit for this long before the choice goes up.
    pub up_hold: Duration,
    /// The current layer must not fit for this long before the choice goes down.
    pub down_hold: Duration,
    /// No step up for this long after a step down (the step up is the probe that found the
    /// ceiling; trying again at once would flap).
    pub up_cooldown: Duration,
}

impl Default for LayerPolicy {
    fn default() -> Self {
        Self {
            up_headroom: 1.15,
            keep_fraction: 0.75,
            up_hold: Duration::from_secs(1),
            down_hold: Duration::from_millis(500),
            up_cooldown: Duration::from_secs(4),
        }
    }
}

/// One subscriber's choice of layer for one track (SFU-BWE-02..04).
#[derive(Debug, Clone)]
pub struct LayerChoice {
    policy: LayerPolicy,
    requested: u8,
    chosen: u8,
    estimated: bool,
    /// Since when the chosen layer has not fitted.
    low_since: Option<Duration>,
    /// Since when some higher layer (up to the requested one) has fitted.
    high_since: Option<Duration>,
    last_down: Option<Duration>,
    downs: u64,
    ups: u64,
}

impl LayerChoice {
    /// A choice that starts at `requested` (nothing is known of the bandwidth yet).
    #[must_use]
    pub fn new(requested: u8, policy: LayerPolicy) -> Self {
        Self {
            policy,
            requested,
            chosen: requested,
            estimated: false,
            low_since: None,
            high_since: None,
            last_down: None,
            downs: 0,
            ups: 0,
        }
    }

    /// The layer the subscriber asked for.
    #[must_use]
    pub fn requested(&self) -> u8 {
        self.requested
    }

    /// The layer chosen.
    #[must_use]
    pub fn chosen(&self) -> u8 {
        self.chosen
    }

    /// Steps down and up taken because of the estimate.
    #[must_use]
    pub fn steps(&self) -> (u64, u64) {
        (self.downs, self.ups)
    }

    /// The subscriber asks for `layer`. Asking for less takes effect at once; asking for more
    /// does too while no estimate is known, and otherwise only once the layer fits.
    pub fn request(&mut self, layer: u8) -> u8 {
        self.requested = layer;
        if !self.estimated || layer < self.chosen {
            self.chosen = layer;
            self.low_since = None;
            self.high_since = None;
        }
        self.chosen
    }

    /// Decide at `now`, given the subscriber's share of its connection's estimate (None: no
    /// estimate, e.g. no congestion-control feedback yet) and each layer's measured bitrate (0: the
    /// layer sent nothing in the window). Returns the chosen layer.
    pub fn update(&mut self, now: Duration, estimate: Option<u64>, rates: &[u64]) -> u8 {
        let req = usize::from(self.requested).min(rates.len().saturating_sub(1));
        let Some(est) = estimate.filter(|_| rates.iter().any(|r| *r > 0)) else {
            // Nothing to weigh: follow the request.
            self.estimated = estimate.is_some();
            self.chosen = req as u8;
            self.low_since = None;
            self.high_since = None;
            return self.chosen;
        };
        self.estimated = true;
        let est = est as f64;
        let p = self.policy;
        let mut chosen = usize::from(self.chosen).min(req);
        let rate = |l: usize| rates[l] as f64;
        let fits = |l: usize, factor: f64| rates[l] > 0 && rate(l) * factor <= est;

        // Down: the chosen layer has not fitted for `down_hold`. A layer with nothing in the
        // window is not judged: at the start, layers are measured one after the other.
        if chosen > 0 && rates[chosen] > 0 && !fits(chosen, p.keep_fraction) {
            let since = *self.low_since.get_or_insert(now);
            if now.saturating_sub(since) >= p.down_hold {
                let lower = (0..chosen).rev().find(|&l| fits(l, 1.0));
                let lowest = (0..chosen).find(|&l| rates[l] > 0);
                chosen = lower.or(lowest).unwrap_or(0);
                self.last_down = Some(now);
                self.low_since = None;
                self.high_since = None;
                self.downs += 1;
            }
        } else {
            self.low_since = None;
        }

        // Up: the highest layer up to the request that fits with headroom, after `up_hold`,
        // and not within `up_cooldown` of a step down.
        match (chosen + 1..=req).rev().find(|&l| fits(l, p.up_headroom)) {
            Some(higher) => {
                let since = *self.high_since.get_or_insert(now);
                let cooled = self
                    .last_down
                    .is_none_or(|d| now.saturating_sub(d) >= p.up_cooldown);
                if now.saturating_sub(since) >= p.up_hold && cooled {
                    chosen = higher;
                    self.high_since = None;
                    self.ups += 1;
                }
            }
            None => self.high_since = None,
        }
        self.chosen = chosen as u8;
        self.chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
    const KBPS: u64 = 1000;
    /// q, h, f as the loopback test sends them.
    const RATES: [u64; 3] = [100 * KBPS, 300 * KBPS, 900 * KBPS];

    #[test]
    fn the_meter_measures_a_steady_stream_and_forgets_a_stopped_one() {
        let mut m = RateMeter::default();
        // 1000 bytes every 10 ms = 800 kbit/s, for 3 s.
        for i in 0..300u64 {
            m.add(at(i * 10), 1000);
        }
        let r = m.bits_per_second(2995 * MS);
        assert!((780 * KBPS..=820 * KBPS).contains(&r), "{r}");
        // Young stream: 100 ms in, the rate is already right, not a tenth of it.
        let mut young = RateMeter::default();
        for i in 0..10u64 {
            young.add(at(5000 + i * 10), 1000);
        }
        let r = young.bits_per_second(Duration::from_secs(5) + 100 * MS);
        assert!((700 * KBPS..=900 * KBPS).contains(&r), "{r}");
        // Silent for a second: zero.
        assert_eq!(m.bits_per_second(Duration::from_millis(4100)), 0);
    }

    #[test]
    fn without_an_estimate_the_request_is_followed() {
        let mut c = LayerChoice::new(2, LayerPolicy::default());
        assert_eq!(c.update(Duration::ZERO, None, &RATES), 2);
        assert_eq!(c.request(0), 0);
        assert_eq!(c.request(1), 1);
        // Nothing measured yet: the request too.
        assert_eq!(c.update(Duration::ZERO, Some(10 * KBPS), &[0, 0, 0]), 1);
    }

    /// Step at `ms` intervals from `from` to `to` with a constant estimate; return the layers.
    fn run(c: &mut LayerChoice, from: u64, to: u64, est: u64, rates: &[u64]) -> Vec<u8> {
        (from..to)
            .step_by(100)
            .map(|ms| c.update(at(ms), Some(est), rates))
            .collect()
    }

    #[test]
    fn the_highest_layer_that_fits_is_chosen_and_never_above_the_request() {
        let mut c = LayerChoice::new(2, LayerPolicy::default());
        // 500 kbit/s: f (900) does not fit; h (300) does. Down after the 500 ms hold.
        let l = run(&mut c, 0, 1000, 500 * KBPS, &RATES);
        assert_eq!(l[..5], [2; 5]);
        assert_eq!(*l.last().unwrap(), 1);
        // 50 kbit/s: not even q fits; q is the floor.
        let l = run(&mut c, 1000, 2000, 50 * KBPS, &RATES);
        assert_eq!(*l.last().unwrap(), 0);
        // Plenty, but the subscriber asked for h: h.
        c.request(1);
        let l = run(&mut c, 2000, 10_000, 10_000 * KBPS, &RATES);
        assert_eq!(*l.last().unwrap(), 1);
        assert_eq!(c.steps(), (2, 1));
    }

    #[test]
    fn up_waits_for_the_hold_and_the_cooldown_after_a_step_down() {
        let p = LayerPolicy::default();
        let mut c = LayerChoice::new(2, p);
        run(&mut c, 0, 1000, 500 * KBPS, &RATES);
        assert_eq!(c.chosen(), 1);
        let down_at: u64 = 500; // ms: the hold ran out at the sixth update
        // The cap is lifted at once: 2 Mbit/s fits f with headroom, but not before the cooldown.
        let mut up_at = None;
        for ms in (1000..10_000).step_by(100) {
            if c.update(at(ms), Some(2000 * KBPS), &RATES) == 2 {
                up_at = Some(ms);
                break;
            }
        }
        let up_at = up_at.expect("went up");
        assert!(
            up_at >= down_at + p.up_cooldown.as_millis() as u64,
            "up at {up_at} ms"
        );
        assert!(up_at <= down_at + p.up_cooldown.as_millis() as u64 + 200);
    }

    #[test]
    fn an_estimate_near_the_layer_does_not_flap() {
        // The estimate wobbles between 0.8 and 1.1 × f (GCC backing off 0.85 × what arrives on a
        // path that carries f, then climbing): f stays.
        let mut c = LayerChoice::new(2, LayerPolicy::default());
        let mut layers = Vec::new();
        for i in 0..200u64 {
            let est = if i % 20 < 10 { 720 } else { 1000 } * KBPS;
            layers.push(c.update(at(i * 100), Some(est), &RATES));
        }
        assert!(layers.iter().all(|l| *l == 2), "{layers:?}");
        // And one that wobbles around h's up threshold (1.15 × 900 = 1035 kbit/s) from h
        // does not go up and down: the up hold needs a second of fitting in a row.
        let mut c = LayerChoice::new(2, LayerPolicy::default());
        run(&mut c, 0, 1000, 400 * KBPS, &RATES);
        assert_eq!(c.chosen(), 1);
        let mut layers = Vec::new();
        for i in 10..200u64 {
            let est = if i % 8 < 4 { 1100 } else { 900 } * KBPS;
            layers.push(c.update(at(i * 100), Some(est), &RATES));
        }
        assert!(layers.iter().all(|l| *l == 1), "{layers:?}");
    }
}

// Caller input never panics (issue 19): any value the constructor takes, however far out
// of range, gives a working object; ordinary values behave as the unit tests above show.
#[cfg(test)]
mod caller_input {
    use proptest::prelude::*;

    use super::*;
    use crate::routing::caller_input::any_duration;

    proptest! {
        #[test]
        fn any_request_policy_and_rates(
            requested: u8,
            headroom in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), 0.0f64..3.0],
            keep in prop_oneof![Just(f64::NAN), Just(0.0), 0.0f64..2.0],
            hold in any_duration(),
            steps in proptest::collection::vec(
                (
                    any_duration(),
                    proptest::option::of(any::<u64>()),
                    proptest::collection::vec(any::<u64>(), 0..4),
                ),
                1..30,
            ),
        ) {
            let policy = LayerPolicy {
                up_headroom: headroom,
                keep_fraction: keep,
                up_hold: hold,
                down_hold: hold,
                up_cooldown: hold,
            };
            let mut c = LayerChoice::new(requested, policy);
            for (now, estimate, rates) in steps {
                let chosen = c.update(now, estimate, &rates);
                prop_assert!(chosen <= requested);
                prop_assert!(rates.is_empty() || usize::from(chosen) < rates.len());
            }
        }
    }
}
