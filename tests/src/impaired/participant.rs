//! One participant of the impaired call: it owns its [`Room`], publishes audio every 20 ms and
//! video every 60 ms on a grid shared by everyone (so a frame's timestamp says when it was
//! sent), answers key-frame requests, receives every frame, and samples its group status and
//! decrypt failures as it goes.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomEvent, RoomStats};
use veil_client::transport::NetworkStats;

use crate::{audio_frame, video_frame};

/// The publishing grid: one audio frame per tick.
pub const TICK: Duration = Duration::from_millis(20);
/// Video goes out every this many ticks (about 16.7 frames/s).
pub(super) const VIDEO_EVERY: u32 = 3;
/// RTP clock step per tick, audio (48 kHz) and per video frame (90 kHz).
const AUDIO_STEP: u32 = 960;
const VIDEO_STEP: u32 = 5_400;

/// What made a frame's bytes: [`audio_frame`] or [`video_frame`].
type FrameFn = fn(usize, u32) -> Vec<u8>;

/// One frame received and decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// When it arrived, from the run's start.
    pub at: Duration,
    /// The publisher's index in [`super::NAMES`].
    pub from: usize,
    /// Audio or video.
    pub kind: MediaKind,
    /// The grid tick it was published on (its send time is `tick × TICK` from the start).
    pub tick: u32,
}

/// What one participant saw.
#[derive(Debug, Clone)]
pub struct Log {
    /// Its index in [`super::NAMES`].
    pub who: usize,
    /// Every frame received.
    pub arrivals: Vec<Arrival>,
    /// Frames delivered twice (the same publisher, kind and timestamp): replays accepted.
    pub replays_accepted: u64,
    /// Frames whose bytes differ from what was published.
    pub corrupt: u64,
    /// Frames from a participant not in [`super::NAMES`] or with an unknown timestamp.
    pub unknown: u64,
    /// `(when, epoch, members)` each time the group status changed.
    pub epochs: Vec<(Duration, Option<u64>, usize)>,
    /// `(when, total decrypt failures)` each time the total grew.
    pub failures: Vec<(Duration, u64)>,
    /// Key-frame requests the SFU sent this publisher (each answered with a key frame).
    pub key_frame_requests: u64,
    /// Statistics at the end.
    pub stats: RoomStats,
    /// Network statistics at the end.
    pub net: NetworkStats,
}

fn failures(s: &RoomStats) -> u64 {
    s.received
        .values()
        .map(|t| t.decrypt_failures.values().sum::<u64>())
        .sum()
}

/// Run participant `who` on `room` from now until `until` (times from `start`), then leave if
/// `leave` (else stay joined: the caller drops the room).
pub(super) async fn run(
    who: usize,
    mut room: Room,
    start: Instant,
    until: Instant,
    leave: bool,
) -> (Log, Option<Room>) {
    let mut events = room.events();
    // Align to the shared grid: the next whole tick from the start.
    let elapsed = start.elapsed();
    let mut tick = (elapsed.as_micros() / TICK.as_micros()) as u32 + 1;
    let mut ticks = tokio::time::interval_at(start + TICK * tick, TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    let mut log = Log {
        who,
        arrivals: Vec::new(),
        replays_accepted: 0,
        corrupt: 0,
        unknown: 0,
        epochs: Vec::new(),
        failures: Vec::new(),
        key_frame_requests: 0,
        stats: RoomStats::default(),
        net: NetworkStats::default(),
    };
    let mut seen = HashSet::new();
    let mut key_frame = true;
    let mut last_status = None;
    let mut last_failures = 0;
    let stop = tokio::time::sleep_until(until);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {
                let i = tick;
                tick += 1;
                // Refused frames (no key yet while joining) are counted in the send stats.
                let _ = room
                    .publish_audio(&audio_frame(who, i), i * AUDIO_STEP, (true, 30))
                    .await;
                if i.is_multiple_of(VIDEO_EVERY) {
                    let k = i / VIDEO_EVERY;
                    if room
                        .publish_video(&video_frame(who, k), k * VIDEO_STEP, key_frame)
                        .await
                        .is_ok()
                    {
                        key_frame = false;
                    }
                }
            }
            e = events.recv() => {
                if let Ok(RoomEvent::KeyFrameRequested { .. }) = e {
                    log.key_frame_requests += 1;
                    key_frame = true;
                }
            }
            f = room.next_frame() => {
                let Some(f) = f else { break };
                let at = start.elapsed();
                let from = super::NAMES.iter().position(|n| *n == f.participant);
                let (step, make): (u32, FrameFn) = match f.kind {
                    MediaKind::Audio => (AUDIO_STEP, audio_frame),
                    MediaKind::Video => (VIDEO_STEP, video_frame),
                };
                let Some(from) = from.filter(|_| f.timestamp % step == 0) else {
                    log.unknown += 1;
                    continue;
                };
                let n = f.timestamp / step;
                if !seen.insert((from, f.kind, f.timestamp)) {
                    log.replays_accepted += 1;
                    continue;
                }
                if f.frame != make(from, n) {
                    log.corrupt += 1;
                }
                let tick = if f.kind == MediaKind::Video { n * VIDEO_EVERY } else { n };
                log.arrivals.push(Arrival { at, from, kind: f.kind, tick });
            }
            _ = sample.tick() => {
                let at = start.elapsed();
                let s = room.group().status();
                let now = (s.epoch, s.members.len());
                if last_status != Some(now) {
                    log.epochs.push((at, now.0, now.1));
                    last_status = Some(now);
                }
                let f = failures(&room.stats());
                if f > last_failures {
                    log.failures.push((at, f));
                    last_failures = f;
                }
            }
        }
    }
    log.stats = room.stats();
    let f = failures(&log.stats);
    if f > last_failures {
        log.failures.push((start.elapsed(), f));
    }
    log.net = room.network_stats().await;
    if leave {
        room.leave().await.expect("leave");
        (log, None)
    } else {
        (log, Some(room))
    }
}
