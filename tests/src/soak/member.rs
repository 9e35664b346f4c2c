//! One participant of the soak: it publishes audio every 20 ms (and video every 60 ms if told),
//! receives and checks every frame, and logs its group status and decrypt failures as they
//! change, until its deadline; then it leaves.

use std::time::Duration;

use tokio::time::Instant;
use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomStats};

use crate::{audio_frame, is_audio_frame_of, is_video_frame_of, video_frame};

const TICK: Duration = Duration::from_millis(20);
const VIDEO_EVERY: u32 = 3;

/// What one participant saw, times from the run's start.
#[derive(Debug, Clone, Default)]
pub struct MemberLog {
    /// Its identity.
    pub name: String,
    /// Frames received and decrypted.
    pub frames: u64,
    /// Frames whose bytes differ from what their publisher made for that timestamp (or from a
    /// publisher whose identity does not end in its number).
    pub corrupt: u64,
    /// `(when, epoch, members)` each time its group status changed.
    pub epochs: Vec<(Duration, Option<u64>, usize)>,
    /// `(when, decrypt failures since the last entry)` each time the count grew.
    pub failures: Vec<(Duration, u64)>,
    /// Decrypt failures by reason, at the end.
    pub reasons: std::collections::BTreeMap<&'static str, u64>,
    /// The group at the end: epoch and members.
    pub last: (Option<u64>, usize),
}

impl MemberLog {
    /// Every decrypt failure.
    #[must_use]
    pub fn failures_total(&self) -> u64 {
        self.failures.iter().map(|(_, n)| n).sum()
    }
}

fn failures(s: &RoomStats) -> u64 {
    s.received
        .values()
        .map(|t| t.decrypt_failures.values().sum::<u64>())
        .sum()
}

/// The identity of participant number `who`: `label-who`.
#[must_use]
pub fn identity(label: &str, who: usize) -> String {
    format!("{label}-{who}")
}

/// The number at the end of an [`identity`].
fn number(identity: &str) -> Option<usize> {
    identity.rsplit_once('-')?.1.parse().ok()
}

/// Whether `frame` is what its publisher made: one of its [`audio_frame`]s or
/// [`video_frame`]s. The frame's index is read back from its bytes, not from its RTP timestamp:
/// a track that reaches a subscriber on a transceiver an earlier track used is re-timed to go
/// on from that transceiver's clock (specs/sfu.md SFU-FWD-07).
fn genuine(participant: &str, kind: MediaKind, frame: &[u8]) -> bool {
    number(participant).is_some_and(|who| match kind {
        MediaKind::Audio => is_audio_frame_of(who, frame),
        MediaKind::Video => is_video_frame_of(who, frame),
    })
}

/// Run `room` as [`identity`] `name` until `until`, with video if `video`; then leave. Times
/// are logged from `start`.
///
/// # Panics
/// If `name` is not an [`identity`], or leaving fails.
pub(super) async fn run(
    name: String,
    mut room: Room,
    start: Instant,
    until: Instant,
    video: bool,
) -> MemberLog {
    let who = number(&name).expect("an identity ending in its number");
    let mut log = MemberLog {
        name,
        ..MemberLog::default()
    };
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    let mut tick = 0u32;
    let mut key_frame = true;
    let mut last_status = None;
    // Track counts restart with a new SFU connection: count growth from the last reading.
    let mut last_failures = 0;
    let stop = tokio::time::sleep_until(until);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {
                tick += 1;
                // Refused frames (no key yet while joining) are counted in the send stats.
                let _ = room.publish_audio(&audio_frame(who, tick), tick * 960, (true, 30)).await;
                if video && tick.is_multiple_of(VIDEO_EVERY) {
                    let k = tick / VIDEO_EVERY;
                    // A key frame every 2 s, so a new subscriber starts soon without asking.
                    let key = key_frame || k.is_multiple_of(33);
                    if room.publish_video(&video_frame(who, k), k * 5_400, key).await.is_ok() {
                        key_frame = false;
                    }
                }
            }
            f = room.next_frame() => {
                let Some(f) = f else { break };
                log.frames += 1;
                if !genuine(&f.participant, f.kind, &f.frame) {
                    log.corrupt += 1;
                }
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
                    log.failures.push((at, f - last_failures));
                }
                last_failures = f;
            }
        }
    }
    let stats = room.stats();
    let f = failures(&stats);
    if f > last_failures {
        log.failures.push((start.elapsed(), f - last_failures));
    }
    for t in stats.received.values() {
        for (reason, n) in &t.decrypt_failures {
            *log.reasons.entry(reason).or_default() += n;
        }
    }
    log.last = (stats.group.epoch, stats.group.members.len());
    room.leave().await.expect("leave");
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_genuine_only_from_its_own_publisher_whatever_its_index() {
        for i in [0, 1, 39, 255, 1279, 1280, 15_001, 96_001] {
            assert!(
                genuine("stable-2", MediaKind::Audio, &audio_frame(2, i)),
                "audio {i}"
            );
            assert!(
                genuine("stable-2", MediaKind::Video, &video_frame(2, i)),
                "video {i}"
            );
            assert!(
                !genuine("stable-1", MediaKind::Audio, &audio_frame(2, i)),
                "audio {i}"
            );
            assert!(
                !genuine("stable-1", MediaKind::Video, &video_frame(2, i)),
                "video {i}"
            );
        }
        let mut f = audio_frame(2, 7);
        f[5] ^= 1;
        assert!(!genuine("stable-2", MediaKind::Audio, &f));
        assert!(!genuine("stable-2", MediaKind::Audio, &[]));
        assert!(!genuine("nobody", MediaKind::Audio, &audio_frame(2, 7)));
    }
}
