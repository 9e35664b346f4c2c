//! Frame sources and the schedule that interleaves them in media time.

use std::io::Read;
use std::time::Duration;

use super::ivf::{IvfReader, VP8, vp8_is_key_frame};
use super::ogg::{OggOpusReader, opus_packet_samples};
use super::{MediaFileError, MediaFrame, Track};

/// An endless supply of encoded frames of one track (files loop at their end).
pub trait FrameSource: Send {
    /// Which track this feeds.
    fn track(&self) -> Track;
    /// The next frame; its timestamp is not below the previous one's.
    ///
    /// # Errors
    /// When the input cannot be read.
    fn next_frame(&mut self) -> Result<MediaFrame, MediaFileError>;
}

/// Video frames from an IVF (VP8) file, opened again by `open` at each end of file; timestamps
/// continue across loops, one frame interval after the last frame.
pub struct IvfSource<R, F> {
    open: F,
    reader: IvfReader<R>,
    /// Media time (90 kHz) that the current pass's first frame maps to.
    base: u64,
    pass_first: Option<u64>,
    pass_frames: u64,
    last: Option<u64>,
    step: u64,
}

impl<R, F> core::fmt::Debug for IvfSource<R, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IvfSource")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

fn open_ivf<R: Read>(r: R) -> Result<IvfReader<R>, MediaFileError> {
    let reader = IvfReader::new(r)?;
    let cc = reader.header().fourcc;
    if cc != VP8 {
        return Err(MediaFileError::Unsupported(format!(
            "IVF codec {}; only VP8 (VP80) can be published",
            String::from_utf8_lossy(&cc)
        )));
    }
    Ok(reader)
}

impl<R: Read + Send, F: FnMut() -> std::io::Result<R> + Send> IvfSource<R, F> {
    /// Open the file and check that it is VP8.
    ///
    /// # Errors
    /// As [`IvfReader::new`]; [`MediaFileError::Unsupported`] for another codec.
    pub fn new(mut open: F) -> Result<Self, MediaFileError> {
        let reader = open_ivf(open()?)?;
        Ok(Self {
            open,
            reader,
            base: 0,
            pass_first: None,
            pass_frames: 0,
            last: None,
            // One frame at 30 frames/s, until the file shows its own interval.
            step: 3000,
        })
    }
}

impl<R: Read + Send, F: FnMut() -> std::io::Result<R> + Send> FrameSource for IvfSource<R, F> {
    fn track(&self) -> Track {
        Track::Video
    }

    fn next_frame(&mut self) -> Result<MediaFrame, MediaFileError> {
        loop {
            if let Some(f) = self.reader.next_frame()? {
                let t = self
                    .reader
                    .header()
                    .to_clock(f.pts, Track::Video.clock_rate())
                    .ok_or_else(|| MediaFileError::Malformed(format!("IVF timestamp {}", f.pts)))?;
                let first = *self.pass_first.get_or_insert(t);
                // Frames stamped before the first one, or out of order, go out at once.
                let mut ts = self.base.saturating_add(t.saturating_sub(first));
                if let Some(last) = self.last {
                    if ts > last {
                        self.step = ts - last;
                    }
                    ts = ts.max(last);
                }
                self.last = Some(ts);
                self.pass_frames += 1;
                return Ok(MediaFrame {
                    track: Track::Video,
                    timestamp: ts,
                    key_frame: vp8_is_key_frame(&f.data),
                    data: f.data,
                });
            }
            if self.pass_frames == 0 {
                return Err(MediaFileError::Empty {
                    what: "video frames",
                });
            }
            self.base = self.last.unwrap_or(0).saturating_add(self.step);
            self.pass_first = None;
            self.pass_frames = 0;
            self.reader = open_ivf((self.open)()?)?;
        }
    }
}

/// Audio packets from an Ogg Opus file, opened again by `open` at each end of stream. Each
/// packet's duration comes from its TOC byte (RFC 6716 §3.1), so a 20 ms packet advances the
/// 48 kHz timestamp by 960; in a valid file that is also the step between granule positions.
pub struct OggOpusSource<R, F> {
    open: F,
    reader: OggOpusReader<R>,
    next_ts: u64,
    pass_packets: u64,
}

impl<R, F> core::fmt::Debug for OggOpusSource<R, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OggOpusSource")
            .field("next_ts", &self.next_ts)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Send, F: FnMut() -> std::io::Result<R> + Send> OggOpusSource<R, F> {
    /// Open the file and read its Opus headers.
    ///
    /// # Errors
    /// As [`OggOpusReader::new`].
    pub fn new(mut open: F) -> Result<Self, MediaFileError> {
        let reader = OggOpusReader::new(open()?)?;
        Ok(Self {
            open,
            reader,
            next_ts: 0,
            pass_packets: 0,
        })
    }
}

impl<R: Read + Send, F: FnMut() -> std::io::Result<R> + Send> FrameSource for OggOpusSource<R, F> {
    fn track(&self) -> Track {
        Track::Audio
    }

    fn next_frame(&mut self) -> Result<MediaFrame, MediaFileError> {
        loop {
            if let Some(p) = self.reader.next_packet()? {
                let samples = opus_packet_samples(&p.data).ok_or_else(|| {
                    MediaFileError::Malformed(format!(
                        "audio packet {} is not Opus (its TOC byte gives no duration)",
                        self.pass_packets
                    ))
                })?;
                let ts = self.next_ts;
                self.next_ts += u64::from(samples);
                self.pass_packets += 1;
                return Ok(MediaFrame {
                    track: Track::Audio,
                    timestamp: ts,
                    data: p.data,
                    key_frame: false,
                });
            }
            if self.pass_packets == 0 {
                return Err(MediaFileError::Empty {
                    what: "audio packets",
                });
            }
            self.pass_packets = 0;
            self.reader = OggOpusReader::new((self.open)()?)?;
        }
    }
}

/// Several sources interleaved in media time: [`due`](Self::due) says when the earliest
/// pending frame should go out (from the start of publishing), [`pop`](Self::pop) takes it.
pub struct Schedule {
    sources: Vec<(Box<dyn FrameSource>, MediaFrame)>,
}

impl core::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Schedule")
            .field("sources", &self.sources.len())
            .finish()
    }
}

fn media_time(f: &MediaFrame) -> Duration {
    let ns = u128::from(f.timestamp) * 1_000_000_000 / u128::from(f.track.clock_rate());
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// A source failed: which one (its index in the list given to [`Schedule::new`]) and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SourceError {
    /// Index of the source in [`Schedule::new`]'s list.
    pub source_index: usize,
    /// What went wrong.
    pub error: MediaFileError,
}

impl Schedule {
    /// Take the first frame of every source (so a bad file fails here, before joining).
    ///
    /// # Errors
    /// The first source that fails.
    pub fn new(sources: Vec<Box<dyn FrameSource>>) -> Result<Self, SourceError> {
        let mut out = Vec::with_capacity(sources.len());
        for (source_index, mut s) in sources.into_iter().enumerate() {
            let f = s.next_frame().map_err(|error| SourceError {
                source_index,
                error,
            })?;
            out.push((s, f));
        }
        Ok(Self { sources: out })
    }

    fn earliest(&self) -> Option<usize> {
        (0..self.sources.len()).min_by_key(|&i| media_time(&self.sources[i].1))
    }

    /// When the next frame is due, measured from the start; `None` without sources.
    #[must_use]
    pub fn due(&self) -> Option<Duration> {
        self.earliest().map(|i| media_time(&self.sources[i].1))
    }

    /// The next frame in media-time order.
    ///
    /// # Errors
    /// When its source cannot supply the frame after it.
    pub fn pop(&mut self) -> Result<Option<MediaFrame>, SourceError> {
        let Some(i) = self.earliest() else {
            return Ok(None);
        };
        let (src, pending) = &mut self.sources[i];
        let next = src.next_frame().map_err(|error| SourceError {
            source_index: i,
            error,
        })?;
        Ok(Some(std::mem::replace(pending, next)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::ivf::{IvfHeader, IvfWriter};
    use super::super::ogg::{OggOpusWriter, OpusHead};
    use super::super::{SyntheticAudio, SyntheticVideo};
    use super::*;

    fn ivf(rate: u32, frames: &[(u64, &[u8])]) -> Vec<u8> {
        let h = IvfHeader {
            rate,
            ..IvfHeader::vp8(2, 2)
        };
        let mut w = IvfWriter::new(Vec::new(), &h).unwrap();
        for (pts, f) in frames {
            w.write_frame(*pts, f).unwrap();
        }
        // Not seekable: the frame count stays 0, which readers ignore.
        w.into_inner()
    }

    #[test]
    fn ivf_loops_with_continuing_timestamps() {
        // 30 frames/s time base; three frames, the first a key frame.
        let file = ivf(30, &[(0, &[0x10, 1]), (1, &[0x11, 2]), (2, &[0x11, 3])]);
        let mut s = IvfSource::new(|| Ok(Cursor::new(file.clone()))).unwrap();
        let got: Vec<(u64, bool, u8)> = (0..7)
            .map(|_| {
                let f = s.next_frame().unwrap();
                (f.timestamp, f.key_frame, f.data[1])
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, true, 1),
                (3000, false, 2),
                (6000, false, 3),
                (9000, true, 1),
                (12000, false, 2),
                (15000, false, 3),
                (18000, true, 1)
            ]
        );
    }

    #[test]
    fn ivf_source_refuses_other_codecs_and_empty_files() {
        let mut vp9 = ivf(30, &[(0, &[0])]);
        vp9[8..12].copy_from_slice(b"VP90");
        let e = IvfSource::new(|| Ok(Cursor::new(vp9.clone()))).unwrap_err();
        assert!(e.to_string().contains("VP90"), "{e}");
        let empty = ivf(30, &[]);
        let mut s = IvfSource::new(|| Ok(Cursor::new(empty.clone()))).unwrap();
        assert!(matches!(s.next_frame(), Err(MediaFileError::Empty { .. })));
    }

    #[test]
    fn ogg_loops_with_continuing_timestamps() {
        let head = OpusHead {
            channels: 1,
            pre_skip: 0,
            input_rate: 48_000,
        };
        let mut w = OggOpusWriter::new(Vec::new(), 1, &head).unwrap();
        w.write_packet(&[0x78, 1], 960).unwrap(); // 20 ms
        w.write_packet(&[0x18, 2], 960 + 2880).unwrap(); // 60 ms
        let file = w.finish().unwrap();
        let mut s = OggOpusSource::new(|| Ok(Cursor::new(file.clone()))).unwrap();
        let got: Vec<(u64, u8)> = (0..5)
            .map(|_| {
                let f = s.next_frame().unwrap();
                (f.timestamp, f.data[1])
            })
            .collect();
        assert_eq!(got, [(0, 1), (960, 2), (3840, 1), (4800, 2), (7680, 1)]);

        let mut w = OggOpusWriter::new(Vec::new(), 1, &head).unwrap();
        w.write_packet(&[], 0).unwrap();
        let bad = w.finish().unwrap();
        let mut s = OggOpusSource::new(|| Ok(Cursor::new(bad.clone()))).unwrap();
        assert!(matches!(s.next_frame(), Err(MediaFileError::Malformed(_))));
    }

    #[test]
    fn schedule_interleaves_in_media_time() {
        let mut s = Schedule::new(vec![
            Box::new(SyntheticAudio::new(1)),
            Box::new(SyntheticVideo::new(30, 1)),
        ])
        .unwrap();
        let mut last = Duration::ZERO;
        let (mut audio, mut video) = (0, 0);
        while s.due().unwrap() < Duration::from_secs(1) {
            let due = s.due().unwrap();
            assert!(due >= last);
            last = due;
            match s.pop().unwrap().unwrap().track {
                Track::Audio => audio += 1,
                Track::Video => video += 1,
            }
        }
        assert_eq!((audio, video), (50, 30));
        assert!(Schedule::new(Vec::new()).unwrap().due().is_none());
    }
}
