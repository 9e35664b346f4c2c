//! `veil join --save DIR`: each remote participant's decrypted media in files other tools can
//! open. Video goes to `DIR/<participant>.ivf`: VP8, a 1/90 000 time base, and timestamps
//! counted from the participant's first saved frame. The file starts at their first key frame,
//! because earlier frames cannot be decoded. Audio goes to `DIR/<participant>.ogg`: Ogg Opus,
//! pre-skip 0, with granule positions from RTP timestamps.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use veil_cli::media_files::ivf::{IvfHeader, IvfWriter, vp8_is_key_frame, vp8_key_frame_size};
use veil_cli::media_files::ogg::{OggOpusWriter, OpusHead, opus_packet_samples};
use veil_cli::media_files::{MediaFileError, Track};

/// A file name for `identity`: identities come from other participants' tokens, so anything
/// but ASCII letters, digits, `-` and `_` is replaced, and the length is capped; a path can
/// never leave the directory.
pub(crate) fn file_stem(identity: &str) -> String {
    let s: String = identity
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".to_owned() } else { s }
}

/// RTP timestamps (32 bits, wrapping) to a 64-bit count from the first one.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<(u32, u64)>,
}

impl Unwrap {
    fn next(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => 0,
            Some((last, ext)) => {
                let d = i64::from(ts.wrapping_sub(last) as i32);
                ext.saturating_add_signed(d)
            }
        };
        self.last = Some((ts, ext));
        ext
    }
}

type Sink = BufWriter<File>;

struct Video {
    w: IvfWriter<Sink>,
    clock: Unwrap,
}

struct Audio {
    w: OggOpusWriter<Sink>,
    clock: Unwrap,
    granule: u64,
}

#[derive(Default)]
struct Files {
    stem: String,
    video: Option<Video>,
    audio: Option<Audio>,
    /// Video frames before the first key frame.
    skipped: u64,
}

/// What was saved for one participant.
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) participant: String,
    pub(crate) video: Option<(PathBuf, u32)>,
    pub(crate) audio: Option<(PathBuf, u64)>,
    pub(crate) skipped: u64,
}

/// Writes every remote participant's frames to files under one directory.
pub(crate) struct Recorder {
    dir: PathBuf,
    files: HashMap<String, Files>,
    stems: HashSet<String>,
}

fn create(path: &Path) -> Result<Sink, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("create {}: {e}", path.display()))
}

impl Recorder {
    pub(crate) fn new(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            files: HashMap::new(),
            stems: HashSet::new(),
        })
    }

    /// Save one decrypted frame of `participant`.
    pub(crate) fn write(
        &mut self,
        participant: &str,
        track: Track,
        timestamp: u32,
        frame: &[u8],
    ) -> Result<(), String> {
        let files = match self.files.get_mut(participant) {
            Some(f) => f,
            None => {
                // Two identities that sanitise alike get distinct files.
                let base = file_stem(participant);
                let mut stem = base.clone();
                let mut n = 1;
                while !self.stems.insert(stem.clone()) {
                    n += 1;
                    stem = format!("{base}-{n}");
                }
                self.files.entry(participant.to_owned()).or_insert(Files {
                    stem,
                    ..Files::default()
                })
            }
        };
        let io = |path: &Path, e: MediaFileError| format!("{}: {e}", path.display());
        match track {
            Track::Video => {
                let path = self.dir.join(format!("{}.ivf", files.stem));
                if files.video.is_none() {
                    if !vp8_is_key_frame(frame) {
                        files.skipped += 1;
                        return Ok(());
                    }
                    let (w, h) = vp8_key_frame_size(frame).unwrap_or((0, 0));
                    let w = IvfWriter::new(create(&path)?, &IvfHeader::vp8(w, h))
                        .map_err(|e| io(&path, e))?;
                    files.video = Some(Video {
                        w,
                        clock: Unwrap::default(),
                    });
                }
                if let Some(v) = &mut files.video {
                    let pts = v.clock.next(timestamp);
                    v.w.write_frame(pts, frame).map_err(|e| io(&path, e))?;
                }
            }
            Track::Audio => {
                let path = self.dir.join(format!("{}.ogg", files.stem));
                if files.audio.is_none() {
                    // The publisher's encoder delay is unknown here; pre-skip 0 keeps every
                    // sample. The serial only has to be unique within the file.
                    let head = OpusHead {
                        channels: 2,
                        pre_skip: 0,
                        input_rate: 48_000,
                    };
                    let w =
                        OggOpusWriter::new(create(&path)?, 1, &head).map_err(|e| io(&path, e))?;
                    files.audio = Some(Audio {
                        w,
                        clock: Unwrap::default(),
                        granule: 0,
                    });
                }
                if let Some(a) = &mut files.audio {
                    let start = a.clock.next(timestamp);
                    // A packet that is not valid Opus is saved as 20 ms; the granule position
                    // never goes backwards (RFC 7845 §4).
                    let samples = opus_packet_samples(frame).unwrap_or(960);
                    a.granule = a.granule.max(start + u64::from(samples));
                    a.w.write_packet(frame, a.granule)
                        .map_err(|e| io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Push buffered bytes to the files (once a second, so they can be watched while running).
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        for f in self.files.values_mut() {
            if let Some(v) = &mut f.video {
                v.w.flush().map_err(|e| e.to_string())?;
            }
            if let Some(a) = &mut f.audio {
                a.w.flush().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Close every file (frame counts, end-of-stream pages) and say what was saved.
    pub(crate) fn finish(self) -> Result<Vec<Saved>, String> {
        let mut out = Vec::new();
        for (participant, f) in self.files {
            let mut saved = Saved {
                participant,
                video: None,
                audio: None,
                skipped: f.skipped,
            };
            if let Some(v) = f.video {
                let path = self.dir.join(format!("{}.ivf", f.stem));
                let n = v.w.frames();
                v.w.finish()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                saved.video = Some((path, n));
            }
            if let Some(a) = f.audio {
                let path = self.dir.join(format!("{}.ogg", f.stem));
                let n = a.w.packets();
                a.w.finish()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                saved.audio = Some((path, n));
            }
            out.push(saved);
        }
        out.sort_by(|a, b| a.participant.cmp(&b.participant));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use veil_cli::media_files::ivf::IvfReader;
    use veil_cli::media_files::ogg::OggOpusReader;

    use super::*;

    #[test]
    fn file_stems_stay_in_the_directory() {
        assert_eq!(file_stem("alice"), "alice");
        assert_eq!(file_stem("../../etc/passwd"), "______etc_passwd");
        assert_eq!(file_stem("a b/c.d"), "a_b_c_d");
        assert_eq!(file_stem(""), "_");
        assert_eq!(file_stem(&"x".repeat(200)).len(), 64);
    }

    #[test]
    fn unwrap_crosses_the_32_bit_boundary() {
        let mut u = Unwrap::default();
        assert_eq!(u.next(u32::MAX - 959), 0);
        assert_eq!(u.next(0), 960);
        assert_eq!(u.next(960), 1920);
        assert_eq!(u.next(0), 960); // an older frame
    }

    #[test]
    fn saves_from_the_first_key_frame_and_names_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::new(dir.path()).unwrap();
        let key = [
            0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 9,
        ];
        r.write("a/b", Track::Video, 100, &[0x51, 1]).unwrap(); // before the key frame
        r.write("a/b", Track::Video, 3100, &key).unwrap();
        r.write("a/b", Track::Video, 6100, &[0x51, 2]).unwrap();
        r.write("a_b", Track::Audio, 5, &[0x78, 1]).unwrap();
        r.write("a_b", Track::Audio, 965, &[0x78, 2]).unwrap();
        let saved = r.finish().unwrap();
        assert_eq!(saved.len(), 2);
        let (video, n) = saved[0].video.clone().unwrap();
        assert_eq!((n, saved[0].skipped), (2, 1));
        assert!(video.ends_with("a_b.ivf"));
        let mut ivf = IvfReader::new(File::open(&video).unwrap()).unwrap();
        assert_eq!((ivf.header().width, ivf.header().height), (640, 360));
        assert_eq!(ivf.header().frames, 2);
        let f = ivf.next_frame().unwrap().unwrap();
        assert_eq!((f.pts, f.data.as_slice()), (0, &key[..]));
        let f = ivf.next_frame().unwrap().unwrap();
        assert_eq!((f.pts, f.data.as_slice()), (3000, &[0x51, 2][..]));
        let (audio, n) = saved[1].audio.clone().unwrap();
        assert_eq!(n, 2);
        assert!(audio.ends_with("a_b-2.ogg"));
        let mut ogg = OggOpusReader::new(File::open(&audio).unwrap()).unwrap();
        let p = ogg.next_packet().unwrap().unwrap();
        assert_eq!((p.data, p.granule), (vec![0x78, 1], Some(960)));
        let p = ogg.next_packet().unwrap().unwrap();
        assert_eq!((p.data, p.granule), (vec![0x78, 2], Some(1920)));
        assert!(ogg.next_packet().unwrap().is_none());
    }
}
