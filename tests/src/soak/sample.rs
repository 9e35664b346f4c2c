//! What the soak samples from `/metrics` ([`Sample`]) and the least-squares slope of a series
//! ([`slope_per_hour`]); plain functions of the exposition's text.

use std::time::Duration;

/// A sampled figure: its column header, and the series it sums in the exposition (a name
/// followed by `{` sums every labelled series of that name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// The column header.
    pub header: &'static str,
    /// The series.
    pub series: &'static str,
    /// Whether it is per-room state: back to 0 once every room has ended.
    pub per_room: bool,
}

const fn fig(header: &'static str, series: &'static str, per_room: bool) -> Figure {
    Figure {
        header,
        series,
        per_room,
    }
}

/// Every sampled figure, in column order.
pub const FIGURES: [Figure; 13] = [
    fig("RSS (MiB)", "process_resident_memory_bytes", false),
    fig("fds", "process_open_fds", false),
    fig("threads", "process_threads", false),
    fig("server tasks", "veil_server_tokio_alive_tasks", false),
    fig("connections", "veil_server_connections{", false),
    fig("key-service rooms", "veil_keys_rooms", true),
    fig("members", "veil_keys_members", true),
    fig("streams", "veil_keys_streams", true),
    fig("SFU rooms", "veil_sfu_rooms", true),
    fig("sessions", "veil_sfu_participants", true),
    fig("tracks", "veil_sfu_tracks", true),
    fig("subscriptions", "veil_sfu_subscriptions", true),
    fig("placed rooms", "veil_sfu_placed_rooms", true),
];

/// Index of resident memory in [`FIGURES`].
pub const RSS: usize = 0;
/// Index of open descriptors in [`FIGURES`].
pub const FDS: usize = 1;
/// Index of the server's tasks in [`FIGURES`].
pub const TASKS: usize = 3;
/// Index of the key service's rooms in [`FIGURES`].
pub const KEYS_ROOMS: usize = 5;
/// Index of the SFU's rooms in [`FIGURES`].
pub const SFU_ROOMS: usize = 8;
/// Index of the SFU's sessions (participants) in [`FIGURES`].
pub const SESSIONS: usize = 9;
/// Index of the SFU's subscriptions in [`FIGURES`].
pub const SUBSCRIPTIONS: usize = 11;

/// One sample: every figure at `at` from the run's start, plus the participants' own tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, from the run's start.
    pub at: Duration,
    /// Each of [`FIGURES`] (RSS in bytes); `None` where the exposition lacked it.
    pub values: [Option<f64>; FIGURES.len()],
    /// Tasks alive on the participants' runtime (the test's own, not the server's).
    pub client_tasks: usize,
}

impl Sample {
    /// Read every figure from the exposition `text`.
    #[must_use]
    pub fn parse(at: Duration, text: &str, client_tasks: usize) -> Self {
        Self {
            at,
            values: FIGURES.map(|f| sum_series(text, f.series)),
            client_tasks,
        }
    }

    /// Figure `i`, 0 when absent.
    #[must_use]
    pub fn get(&self, i: usize) -> f64 {
        self.values[i].unwrap_or(0.0)
    }

    /// The per-room figures that are not 0: `(header, value)`.
    #[must_use]
    pub fn room_state_left(&self) -> Vec<(&'static str, f64)> {
        FIGURES
            .iter()
            .zip(self.values)
            .filter(|(f, v)| f.per_room && v.is_some_and(|v| v != 0.0))
            .map(|(f, v)| (f.header, v.unwrap_or(0.0)))
            .collect()
    }
}

/// The value of `series` in `text`: the one unlabelled line, or the sum of every labelled
/// line when `series` ends with `{`.
#[must_use]
pub fn sum_series(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(series) else {
            continue;
        };
        let value = if series.ends_with('{') {
            rest.rsplit_once(' ').map(|(_, v)| v)
        } else {
            rest.strip_prefix(' ')
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The least-squares slope of `points` (time, value), in value per hour; `None` with fewer
/// than two distinct times.
#[must_use]
pub fn slope_per_hour(points: &[(Duration, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let hours = |d: Duration| d.as_secs_f64() / 3600.0;
    let mx = points.iter().map(|(t, _)| hours(*t)).sum::<f64>() / n;
    let my = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|(t, _)| (hours(*t) - mx).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|(t, v)| (hours(*t) - mx) * (v - my))
        .sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_alone_or_summed_over_their_labels() {
        let text = "# TYPE veil_sfu_rooms gauge\nveil_sfu_rooms 2\nveil_sfu_rooms_total 9\n\
            veil_server_connections{listener=\"grpc\"} 3\n\
            veil_server_connections{listener=\"metrics\"} 1\n\
            process_open_fds 17\n# EOF\n";
        assert_eq!(sum_series(text, "veil_sfu_rooms"), Some(2.0));
        assert_eq!(sum_series(text, "veil_server_connections{"), Some(4.0));
        assert_eq!(sum_series(text, "veil_keys_rooms"), None);
        let s = Sample::parse(Duration::ZERO, text, 5);
        assert_eq!(s.get(FDS), 17.0);
        assert_eq!(FIGURES[KEYS_ROOMS].series, "veil_keys_rooms");
        assert_eq!(FIGURES[SFU_ROOMS].series, "veil_sfu_rooms");
        assert_eq!(FIGURES[SESSIONS].series, "veil_sfu_participants");
        assert_eq!(FIGURES[SUBSCRIPTIONS].series, "veil_sfu_subscriptions");
        assert_eq!(FIGURES[TASKS].series, "veil_server_tokio_alive_tasks");
        assert_eq!(s.values[RSS], None);
        assert_eq!(s.room_state_left(), vec![("SFU rooms", 2.0)]);
    }

    #[test]
    fn the_slope_is_per_hour_and_flat_for_a_constant() {
        let secs = |s: u64| Duration::from_secs(s);
        // 1 per minute = 60 per hour.
        let line: Vec<_> = (0..10).map(|m| (secs(m * 60), m as f64 + 5.0)).collect();
        let s = slope_per_hour(&line).unwrap();
        assert!((s - 60.0).abs() < 1e-9, "{s}");
        let flat: Vec<_> = (0..10).map(|m| (secs(m), 3.0)).collect();
        assert_eq!(slope_per_hour(&flat), Some(0.0));
        assert_eq!(slope_per_hour(&flat[..1]), None);
        assert_eq!(slope_per_hour(&[(secs(1), 1.0), (secs(1), 2.0)]), None);
    }
}
