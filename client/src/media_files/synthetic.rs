//! Deterministic stand-ins for encoders: the same seed gives the same frames, byte for byte.
//! They are not decodable media, but they are shaped like it. Audio is 50 Opus packets per
//! second: a hybrid full-band 20 ms TOC byte and 60–100 bytes, as a voice encoder at about
//! 32 kbit/s makes. Video is 30 VP8 frames per second, with a real frame tag. A key frame, every
//! `key_interval` frames, carries the start code and 640×360 and is 8–12 KB. Delta frames are
//! 0.9–1.9 KB, about 400 kbit/s in all.

use super::{FrameSource, MediaFileError, MediaFrame, Track};

/// Synthetic width and height written into key frames.
pub const SYNTHETIC_SIZE: (u16, u16) = (640, 360);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fill `out` with bytes derived from `seed` alone.
fn fill(seed: u64, out: &mut [u8]) {
    let mut s = seed;
    for chunk in out.chunks_mut(8) {
        s = splitmix(s);
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
}

/// Synthetic Opus packets, 50 per second.
#[derive(Debug, Clone)]
pub struct SyntheticAudio {
    seed: u64,
    n: u64,
}

impl SyntheticAudio {
    /// Packets derived from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { seed, n: 0 }
    }
}

impl FrameSource for SyntheticAudio {
    fn track(&self) -> Track {
        Track::Audio
    }

    fn next_frame(&mut self) -> Result<MediaFrame, MediaFileError> {
        let r = splitmix(self.seed ^ splitmix(self.n << 1));
        let mut data = vec![0u8; 60 + (r % 41) as usize];
        fill(r, &mut data);
        data[0] = 15 << 3; // TOC: config 15 (hybrid, full band, 20 ms), mono, one frame
        let f = MediaFrame {
            track: Track::Audio,
            timestamp: self.n * 960,
            data,
            key_frame: false,
        };
        self.n += 1;
        Ok(f)
    }
}

/// Synthetic VP8 frames, 30 per second, a key frame every `key_interval`.
#[derive(Debug, Clone)]
pub struct SyntheticVideo {
    seed: u64,
    n: u64,
    key_interval: u64,
}

impl SyntheticVideo {
    /// Frames derived from `seed`; `key_interval` of 0 counts as 1.
    #[must_use]
    pub fn new(key_interval: u64, seed: u64) -> Self {
        Self {
            seed,
            n: 0,
            key_interval: key_interval.max(1),
        }
    }
}

impl FrameSource for SyntheticVideo {
    fn track(&self) -> Track {
        Track::Video
    }

    fn next_frame(&mut self) -> Result<MediaFrame, MediaFileError> {
        let key = self.n.is_multiple_of(self.key_interval);
        let r = splitmix(self.seed ^ splitmix((self.n << 1) | 1));
        let len = if key {
            8000 + (r % 4001) as usize
        } else {
            900 + (r % 1001) as usize
        };
        let mut data = vec![0u8; len];
        fill(r, &mut data);
        // RFC 6386 §9.1 frame tag: key-frame bit (0 = key), version 0, show_frame, and the
        // first partition's size (19 bits), here a tenth of the frame.
        let first_part = (len / 10) as u32;
        let tag = u32::from(!key) | (1 << 4) | (first_part << 5);
        data[..3].copy_from_slice(&tag.to_le_bytes()[..3]);
        if key {
            data[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            data[6..8].copy_from_slice(&SYNTHETIC_SIZE.0.to_le_bytes());
            data[8..10].copy_from_slice(&SYNTHETIC_SIZE.1.to_le_bytes());
        }
        let f = MediaFrame {
            track: Track::Video,
            timestamp: self.n * 3000,
            data,
            key_frame: key,
        };
        self.n += 1;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ivf::{vp8_is_key_frame, vp8_key_frame_size};
    use super::super::ogg::opus_packet_samples;
    use super::*;

    #[test]
    fn deterministic_per_seed() {
        let take = |s: &mut dyn FrameSource| -> Vec<MediaFrame> {
            (0..40).map(|_| s.next_frame().unwrap()).collect()
        };
        let a = take(&mut SyntheticVideo::new(10, 7));
        assert_eq!(a, take(&mut SyntheticVideo::new(10, 7)));
        assert_ne!(a, take(&mut SyntheticVideo::new(10, 8)));
        let a = take(&mut SyntheticAudio::new(7));
        assert_eq!(a, take(&mut SyntheticAudio::new(7)));
        assert_ne!(a, take(&mut SyntheticAudio::new(8)));
    }

    #[test]
    fn audio_is_shaped_like_opus() {
        let mut s = SyntheticAudio::new(1);
        for i in 0..100u64 {
            let f = s.next_frame().unwrap();
            assert_eq!(f.timestamp, i * 960);
            assert_eq!(opus_packet_samples(&f.data), Some(960));
            assert!((60..=100).contains(&f.data.len()));
        }
    }

    #[test]
    fn video_is_shaped_like_vp8() {
        let mut s = SyntheticVideo::new(30, 1);
        for i in 0..90u64 {
            let f = s.next_frame().unwrap();
            assert_eq!(f.timestamp, i * 3000);
            let key = i % 30 == 0;
            assert_eq!((f.key_frame, vp8_is_key_frame(&f.data)), (key, key));
            if key {
                assert_eq!(vp8_key_frame_size(&f.data), Some(SYNTHETIC_SIZE));
                assert!((8000..=12000).contains(&f.data.len()));
            } else {
                assert!((900..=1900).contains(&f.data.len()));
            }
        }
    }
}
