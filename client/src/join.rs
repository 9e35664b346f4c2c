//! `veil join`: a participant with media. It joins the room, then publishes frames from
//! files or the synthetic source, paced in real time. Optionally it saves what the others
//! publish, and once a second it prints a status line. When a link to the server is lost it
//! prints a line, and another when the SDK has reconnected it.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use veil_cli::media_files::{
    FrameSource, IvfSource, OggOpusSource, Schedule, SyntheticAudio, SyntheticVideo, Track,
};
use veil_client::link::LinkStatus;
use veil_client::media::MediaKind;
use veil_client::room::{Room, RoomConfig, RoomEvent, RoomStats};

use crate::save::Recorder;

/// Audio level sent with every published packet (RFC 6464: voice, 40 dB below overload).
/// The files carry no level and the synthetic source has no samples to measure.
const AUDIO_LEVEL: (bool, u8) = (true, 40);

/// How far publishing may fall behind media time before it skips ahead (the frames are still
/// all sent, in order, but no longer in a catch-up burst).
const MAX_LATE: Duration = Duration::from_millis(500);

/// What to publish.
#[derive(Debug, Clone)]
pub(crate) enum Publish {
    /// Files (either or both).
    Files {
        video: Option<PathBuf>,
        audio: Option<PathBuf>,
    },
    /// The synthetic source, a key frame every this many video frames.
    Synthetic { key_interval: u64 },
    /// Nothing.
    Nothing,
}

/// Everything `veil join` needs.
#[derive(Debug, Clone)]
pub(crate) struct Join {
    pub(crate) url: String,
    pub(crate) room: String,
    pub(crate) token: String,
    pub(crate) identity: String,
    pub(crate) seconds: Option<u64>,
    pub(crate) publish: Publish,
    pub(crate) save: Option<PathBuf>,
    /// A private CA, plaintext beyond loopback (`--ca-file`, `--insecure-plaintext`).
    pub(crate) security: veil_client::endpoint::Security,
    /// Where media leaves from (`--media-ip`; default: the route to the server).
    pub(crate) media_ip: Option<std::net::IpAddr>,
    /// ICE-TCP as well as UDP (`--tcp`).
    pub(crate) tcp: bool,
}

fn open(
    path: &Path,
) -> impl FnMut() -> std::io::Result<std::io::BufReader<std::fs::File>> + Send + use<> {
    let path = path.to_owned();
    move || std::fs::File::open(&path).map(std::io::BufReader::new)
}

/// Frame sources, and the name each one's errors are reported under.
type Sources = (Vec<Box<dyn FrameSource>>, Vec<String>);

fn sources(p: &Publish, seed: u64) -> Result<Sources, String> {
    let mut out: Vec<Box<dyn FrameSource>> = Vec::new();
    let mut names = Vec::new();
    match p {
        Publish::Files { video, audio } => {
            if let Some(v) = video {
                let s = IvfSource::new(open(v)).map_err(|e| format!("{}: {e}", v.display()))?;
                out.push(Box::new(s));
                names.push(v.display().to_string());
            }
            if let Some(a) = audio {
                let s = OggOpusSource::new(open(a)).map_err(|e| format!("{}: {e}", a.display()))?;
                out.push(Box::new(s));
                names.push(a.display().to_string());
            }
        }
        Publish::Synthetic { key_interval } => {
            out.push(Box::new(SyntheticAudio::new(seed)));
            out.push(Box::new(SyntheticVideo::new(*key_interval, seed)));
            names.extend(["synthetic audio".to_owned(), "synthetic video".to_owned()]);
        }
        Publish::Nothing => {}
    }
    Ok((out, names))
}

/// Counters the status line shows beyond the SDK's.
#[derive(Debug, Default)]
struct Counts {
    frames_in: u64,
    publish_errors: u64,
}

fn status_line(room: &str, s: &RoomStats, c: &Counts) -> String {
    let failures: u64 = s
        .received
        .values()
        .map(|t| t.decrypt_failures.values().sum::<u64>())
        .sum();
    let incomplete: u64 = s.received.values().map(|t| t.incomplete).sum();
    let mut line = format!(
        "room {room} | epoch {} | {} participant{}: {} | out {} audio, {} video | in {} | incomplete {incomplete} | decrypt failures {failures}",
        s.group
            .epoch
            .map_or_else(|| "-".to_owned(), |e| e.to_string()),
        s.group.members.len(),
        if s.group.members.len() == 1 { "" } else { "s" },
        s.group.members.join(", "),
        s.audio_sent.frames,
        s.video_sent.frames,
        c.frames_in,
    );
    // The safety code people compare aloud (MEM-SAFE-01): the same in every client of the epoch.
    if let Some(a) = &s.group.epoch_authenticator {
        line.push_str(&format!(" | safety {}", veil_call::safety_code(a)));
    }
    if c.publish_errors > 0 {
        line.push_str(&format!(" | publish errors {}", c.publish_errors));
    }
    for (name, l) in [("SFU", &s.sfu), ("key service", &s.group.key_service)] {
        if !l.is_up() {
            line.push_str(&format!(" | {name} reconnecting{}", attempts(l)));
        }
    }
    line
}

/// How reconnecting goes: the failed attempts and the last one's error (shortened).
fn attempts(l: &LinkStatus) -> String {
    match &l.last_error {
        None => String::new(),
        Some(e) => {
            let mut e = e.clone();
            if let Some((i, _)) = e.char_indices().nth(80) {
                e.truncate(i);
                e.push('…');
            }
            format!(" ({} failed, last: {e})", l.attempts)
        }
    }
}

/// The line printed for a link's loss or return; `None` for other events.
fn link_line(e: &RoomEvent) -> Option<String> {
    match e {
        RoomEvent::Reconnecting { link, reason } => Some(format!(
            "connection to the {link} lost ({reason}); reconnecting"
        )),
        RoomEvent::Reconnected {
            link,
            attempts,
            down_for,
        } => Some(format!(
            "reconnected to the {link} after {:.1} s ({attempts} attempt{})",
            down_for.as_secs_f64(),
            if *attempts == 1 { "" } else { "s" }
        )),
        _ => None,
    }
}

/// Prints the status line: rewritten in place on a terminal, one line per update otherwise.
struct Status {
    tty: bool,
}

impl Status {
    fn show(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the participant.
        let _ = if self.tty {
            write!(out, "\r{line}\x1b[K")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }

    /// A line of its own, above the status line.
    fn note(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = if self.tty {
            writeln!(out, "\r{line}\x1b[K")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }

    fn end(&self) {
        if self.tty {
            println!();
        }
    }
}

/// `println!` that a closed stdout cannot stop: a participant keeps going when whoever read its
/// output went away.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
pub(crate) use say;

pub(crate) async fn run(args: Join) -> Result<(), String> {
    // Different participants publish different synthetic bytes.
    let seed = args
        .identity
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let (list, names) = sources(&args.publish, seed)?;
    let name = |i: usize| names.get(i).cloned().unwrap_or_default();
    // Reads the first frame of every file: a bad file fails before joining.
    let mut schedule =
        Schedule::new(list).map_err(|e| format!("{}: {}", name(e.source_index), e.error))?;
    let mut recorder = args.save.as_deref().map(Recorder::new).transpose()?;

    let mut cfg = RoomConfig::new(&args.url, &args.token, &args.room, &args.identity);
    cfg.group.security = args.security.clone();
    // The SDK's default is loopback; a server on another machine needs the interface that
    // reaches it.
    let ip = match args.media_ip {
        Some(ip) => ip,
        None => crate::route::local_ip_towards(&args.url).await?,
    };
    let local = std::net::SocketAddr::new(ip, 0).to_string();
    cfg.udp_addrs = vec![local.clone()];
    if args.tcp {
        cfg.tcp_addrs = vec![local];
    }
    let mut room = Room::join(cfg).await.map_err(|e| e.to_string())?;
    let mut events = room.events();
    let mut events_open = true;
    say!("joined room {:?} as {:?}", args.room, args.identity);
    if !names.is_empty() {
        say!("publishing {}", names.join(" and "));
    }
    if let Some(dir) = &args.save {
        say!("saving others' media to {}", dir.display());
    }

    let status = Status {
        tty: std::io::stdout().is_terminal(),
    };
    let mut counts = Counts::default();
    let start = Instant::now();
    // Media time zero; moved forward after a stall so that publishing resumes in real time
    // instead of sending everything it missed in one burst.
    let mut media_zero = start;
    let deadline = args.seconds.map(|s| start + Duration::from_secs(s));
    // Far enough never to fire; `select!` needs a future even for a disabled branch.
    let never = start + Duration::from_secs(100 * 365 * 86_400);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // One Ctrl-C listener for the whole loop: a listener made anew in each turn misses a
    // signal that arrives between turns, and the participant would not leave.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        let due = schedule.due().map(|d| media_zero + d);
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            () = tokio::time::sleep_until(deadline.unwrap_or(never)), if deadline.is_some() => {
                break Ok(());
            }
            e = events.recv(), if events_open => {
                use tokio::sync::broadcast::error::RecvError;
                match e {
                    Ok(e) => {
                        if let Some(line) = link_line(&e) {
                            status.note(&line);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => events_open = false,
                }
            }
            _ = tick.tick() => {
                let s = room.stats();
                status.show(&status_line(&args.room, &s, &counts));
                if s.group.removed {
                    break Err("removed from the room".to_owned());
                }
                if let Some(r) = &mut recorder
                    && let Err(e) = r.flush()
                {
                    break Err(e);
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or(never)), if due.is_some() => {
                // Everything due by now (several frames after a stall), in media-time order.
                let mut elapsed = media_zero.elapsed();
                if let Some(late) = schedule.due().and_then(|d| elapsed.checked_sub(d))
                    && late > MAX_LATE
                {
                    media_zero += late;
                    elapsed -= late;
                }
                let mut failed = None;
                while schedule.due().is_some_and(|d| d <= elapsed) {
                    match schedule.pop() {
                        Ok(Some(f)) => {
                            // RTP timestamps wrap at 2³² (RFC 3550 §5.1).
                            let ts = f.timestamp as u32;
                            let r = match f.track {
                                Track::Audio => room.publish_audio(&f.data, ts, AUDIO_LEVEL).await,
                                Track::Video => {
                                    room.publish_video(&f.data, ts, f.key_frame).await
                                }
                            };
                            if let Err(e) = r {
                                counts.publish_errors += 1;
                                tracing::debug!(error = %e, "frame not published");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("{}: {}", name(e.source_index), e.error));
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
            f = room.next_frame() => {
                let Some(f) = f else {
                    break Err("the media session ended".to_owned());
                };
                counts.frames_in += 1;
                if let Some(r) = &mut recorder {
                    let track = match f.kind {
                        MediaKind::Audio => Track::Audio,
                        MediaKind::Video => Track::Video,
                    };
                    if let Err(e) = r.write(&f.participant, track, f.timestamp, &f.frame) {
                        break Err(e);
                    }
                }
            }
        }
    };
    // A last status line with the final counts.
    status.show(&status_line(&args.room, &room.stats(), &counts));
    status.end();
    let left = room.leave().await.map_err(|e| e.to_string());
    if let Some(r) = recorder {
        for s in r.finish()? {
            let mut parts = Vec::new();
            if let Some((p, n)) = &s.video {
                parts.push(format!("{} ({n} video frames)", p.display()));
            }
            if let Some((p, n)) = &s.audio {
                parts.push(format!("{} ({n} audio packets)", p.display()));
            }
            if s.skipped > 0 {
                parts.push(format!(
                    "{} video frames before the first key frame not saved",
                    s.skipped
                ));
            }
            say!("saved {}: {}", s.participant, parts.join(", "));
        }
    }
    result?;
    left?;
    say!("left room {:?}", args.room);
    Ok(())
}
