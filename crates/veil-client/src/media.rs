//! The frame path of a participant, without I/O: a [`TrackSender`] SFrame-encrypts each
//! encoded frame with the member's current key and cuts it into RTP packets (payload and
//! header extensions; SSRC and payload type are the transport's); a [`TrackReceiver`]
//! reassembles packets into frames and decrypts them.
//!
//! Neither touches the MLS session: a sender encrypts with the member's [`FrameKeys`] and a
//! receiver decrypts with a [`FrameDecryptor`], both swapped atomically at every epoch, so a
//! commit being created (tens of milliseconds in a large group) never delays a frame
//! (MLS-KEY-07).
//!
//! Packetization follows specs/rtp.md: by default the browser-compatible form (VP8 payload
//! descriptor in front of the ciphertext, or one Opus frame per packet), or the IETF SFrame
//! payload format. Video packets carry the AV1 dependency descriptor (DD) on every packet, with
//! the template structure on the first packet of each key frame, and frame numbers from a
//! [`FrameCounter`] that simulcast layers share, as Chromium does. Audio packets carry the RFC
//! 6464 audio level.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use veil_mls::{FrameDecryptor, FrameKeys, Received};
use veil_wire::audio_level::AudioLevel;
use veil_wire::dd::{DependencyDescriptor, TemplateStructure};
use veil_wire::packetize::{
    Output, PacketFormat, Packetizer, Reassembler, ReassemblerConfig, RtpIn, Vp8Descriptor,
};

use crate::error::ClientError;

/// Largest RTP payload the sender produces (fits a 1,200-byte packet with header and
/// extensions, as WebRTC stacks send).
pub const MAX_PAYLOAD: usize = 1100;

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MediaKind {
    /// Opus audio (48 kHz RTP clock).
    Audio,
    /// VP8 video (90 kHz RTP clock).
    Video,
}

/// How frames become RTP payloads (specs/rtp.md RTP-PKT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packetization {
    /// As Chromium sends frames from an encoded transform: VP8 descriptor + ciphertext, or the
    /// ciphertext as the Opus payload. Browsers can join.
    #[default]
    Browser,
    /// The IETF SFrame payload format (one `S E T` descriptor byte per packet).
    Ietf,
}

/// Header-extension ids negotiated on the sending connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtIds {
    /// `urn:ietf:params:rtp-hdrext:ssrc-audio-level`.
    pub audio_level: Option<u8>,
    /// The AV1 dependency descriptor.
    pub dependency_descriptor: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:mid` (simulcast layers announce their stream with it).
    pub mid: Option<u8>,
    /// `urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id` (the simulcast layer's rid).
    pub rid: Option<u8>,
}

/// DD frame numbers shared by the simulcast layers of one video source (one counter across
/// layers, as Chromium numbers them; specs/sfu.md relies on it).
#[derive(Debug, Clone, Default)]
pub struct FrameCounter(Arc<AtomicU16>);

impl FrameCounter {
    fn next(&self) -> u16 {
        self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

/// One RTP packet's contents, without SSRC and payload type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (last packet of a frame).
    pub marker: bool,
    /// Header extensions `(id, data)`.
    pub extensions: Vec<(u8, Vec<u8>)>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The DD structure Veil video uses for one stream: one spatial and one temporal layer, a key
/// template and a delta template referring to the previous frame, with the stream's resolution.
/// Simulcast layers use [`simulcast_layer_structure`].
#[must_use]
pub fn single_layer_structure(width: u32, height: u32) -> Arc<TemplateStructure> {
    Arc::new(TemplateStructure::single_layer(width, height, 1))
}

/// The DD structure of one of `layers` simulcast layers that share one frame counter and send
/// each capture instant in turn: its delta frames reference the same layer's previous frame,
/// `layers` frame numbers back, as Chromium's layers reference only their own frames.
#[must_use]
pub fn simulcast_layer_structure(width: u32, height: u32, layers: u16) -> Arc<TemplateStructure> {
    Arc::new(TemplateStructure::single_layer(
        width,
        height,
        layers.max(1),
    ))
}

/// Encrypts and packetizes one track's frames.
#[derive(Debug)]
pub struct TrackSender {
    kind: MediaKind,
    packetizer: Packetizer,
    ext: ExtIds,
    seq: u16,
    picture_id: u16,
    structure: Arc<TemplateStructure>,
    frames: FrameCounter,
    buf: Vec<u8>,
    stats: SendStats,
    /// Simulcast: the (mid, rid) this layer announces, and how many more packets carry them.
    announce: Option<(Vec<u8>, Vec<u8>)>,
    announce_left: u32,
}

/// Packets that carry mid and rid after a simulcast layer starts (and every key frame's):
/// the receiver latches the layer's SSRC from them, as browsers do (SFU-STR-01).
const ANNOUNCE_PACKETS: u32 = 32;

/// What a [`TrackSender`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Frames encrypted and packetized.
    pub frames: u64,
    /// RTP packets produced.
    pub packets: u64,
    /// Payload bytes produced (ciphertext plus descriptors).
    pub bytes: u64,
    /// Frames refused (no sender key yet, or a frame too large).
    pub refused: u64,
}

/// What a [`TrackReceiver`] received, like WebRTC's inbound-rtp stats plus SFrame outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// RTP packets pushed.
    pub packets: u64,
    /// Frames reassembled.
    pub frames: u64,
    /// Frames decrypted at once.
    pub decrypted: u64,
    /// Frames held for an epoch not known yet (they come back from the decryptor's
    /// [`take_released`](FrameDecryptor::take_released) once it is published).
    pub held: u64,
    /// Frames that lost packets.
    pub incomplete: u64,
    /// Decryption failures by reason (`unknown_key`, `retired_key`, `auth_failed`, `replay`, `too_old`,
    /// `malformed`, `other`).
    pub decrypt_failures: std::collections::BTreeMap<&'static str, u64>,
    /// Packets lost: expected (from the extended highest sequence number) minus received,
    /// RFC 3550 §6.4.1 / A.3 (negative when duplicates arrived).
    pub packets_lost: i64,
    /// Interarrival jitter, RFC 3550 §6.4.1 / A.8 (packets pushed with an arrival time only).
    pub jitter: Duration,
}

/// RFC 3550 reception statistics of one stream: loss from sequence numbers (A.3) and
/// interarrival jitter (A.8). Sans-I/O: the caller gives arrival times.
#[derive(Debug, Clone, Default)]
pub struct Reception {
    /// `(base, extended highest)` sequence numbers once a packet arrived.
    seq: Option<(u32, u32)>,
    received: u64,
    clock_rate: u32,
    /// Previous `arrival − timestamp`, in timestamp units.
    transit: Option<f64>,
    /// Jitter in timestamp units.
    jitter: f64,
}

impl Reception {
    /// A stream whose RTP clock runs at `clock_rate` Hz.
    #[must_use]
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            ..Self::default()
        }
    }

    /// One packet: its sequence number and RTP timestamp, and when it arrived (on any clock
    /// that only moves forward), if known.
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, arrival: Option<Duration>) {
        self.received += 1;
        self.seq = Some(match self.seq {
            None => (u32::from(seq), u32::from(seq)),
            Some((base, max)) => {
                let delta = seq.wrapping_sub(max as u16);
                if delta != 0 && delta < 0x8000 {
                    (base, max.wrapping_add(u32::from(delta)))
                } else {
                    (base, max)
                }
            }
        });
        if let Some(at) = arrival {
            let transit = at.as_secs_f64() * f64::from(self.clock_rate) - f64::from(timestamp);
            if let Some(prev) = self.transit {
                let d = (transit - prev).abs();
                // Only the same frame's packets share a timestamp; a later frame can wrap it.
                if d < f64::from(self.clock_rate) * 60.0 {
                    self.jitter += (d - self.jitter) / 16.0;
                }
            }
            self.transit = Some(transit);
        }
    }

    /// Packets lost so far (expected − received).
    #[must_use]
    pub fn lost(&self) -> i64 {
        self.seq.map_or(0, |(base, max)| {
            i64::from(max.wrapping_sub(base)) + 1 - self.received as i64
        })
    }

    /// Interarrival jitter.
    #[must_use]
    pub fn jitter(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.jitter / f64::from(self.clock_rate))
    }
}

impl TrackSender {
    /// A sender for `kind` in `packetization`, starting at sequence number `first_seq`.
    ///
    /// # Errors
    /// [`ClientError::Config`] if the packetizer cannot be built.
    pub fn new(
        kind: MediaKind,
        packetization: Packetization,
        ext: ExtIds,
        first_seq: u16,
        frames: FrameCounter,
    ) -> Result<Self, ClientError> {
        let format = match (kind, packetization) {
            (_, Packetization::Ietf) => PacketFormat::Sframe,
            (MediaKind::Audio, Packetization::Browser) => PacketFormat::Opus,
            (MediaKind::Video, Packetization::Browser) => PacketFormat::Vp8,
        };
        let packetizer = Packetizer::new(format, MAX_PAYLOAD)
            .map_err(|e| ClientError::config_by("packetizer", e))?;
        Ok(Self {
            kind,
            packetizer,
            ext,
            seq: first_seq,
            picture_id: 0,
            structure: single_layer_structure(640, 360),
            frames,
            buf: Vec::new(),
            stats: SendStats::default(),
            announce: None,
            announce_left: 0,
        })
    }

    /// A simulcast layer: the first packets and every key frame carry the transceiver's `mid`
    /// and this layer's `rid` (when those extensions were negotiated).
    #[must_use]
    pub fn with_layer(mut self, mid: &str, rid: &str) -> Self {
        self.announce = Some((mid.as_bytes().to_vec(), rid.as_bytes().to_vec()));
        self.announce_left = ANNOUNCE_PACKETS;
        self
    }

    /// Use `structure` for the DD (e.g. this layer's resolution).
    #[must_use]
    pub fn with_structure(mut self, structure: Arc<TemplateStructure>) -> Self {
        self.structure = structure;
        self
    }

    /// Encrypt `frame` under the member's current sender key (`keys`, never the MLS session's
    /// lock) and packetize it. `key_frame` matters for video (DD template and structure);
    /// `audio_level` (0..=127 -dBov) for audio.
    ///
    /// # Errors
    /// [`ClientError::Mls`] (e.g. `NotSending` before the first epoch); packetization errors.
    pub fn send(
        &mut self,
        keys: &FrameKeys,
        frame: &[u8],
        timestamp: u32,
        key_frame: bool,
        audio_level: Option<(bool, u8)>,
    ) -> Result<Vec<RtpOut>, ClientError> {
        let out = self.encrypt_and_packetize(keys, frame, timestamp, key_frame, audio_level);
        match &out {
            Ok(pkts) => {
                self.stats.frames += 1;
                self.stats.packets += pkts.len() as u64;
                self.stats.bytes += pkts.iter().map(|p| p.payload.len() as u64).sum::<u64>();
            }
            Err(_) => self.stats.refused += 1,
        }
        out
    }

    fn encrypt_and_packetize(
        &mut self,
        keys: &FrameKeys,
        frame: &[u8],
        timestamp: u32,
        key_frame: bool,
        audio_level: Option<(bool, u8)>,
    ) -> Result<Vec<RtpOut>, ClientError> {
        self.buf.resize(frame.len() + keys.max_overhead(), 0);
        let n = keys.encrypt(b"", frame, &mut self.buf)?;
        let wire = |e: veil_wire::WireError| ClientError::config_by("packetize", e);
        let vp8 = Vp8Descriptor {
            picture_id: Some(self.picture_id & 0x7fff),
            ..Default::default()
        };
        self.picture_id = self.picture_id.wrapping_add(1);
        let fragments = self
            .packetizer
            .packetize(&self.buf[..n], Some(&vp8))
            .map_err(wire)?;
        let count = veil_wire::packetize::Fragments::count(&fragments);
        let frame_number = (self.kind == MediaKind::Video).then(|| self.frames.next());
        let mut out = Vec::with_capacity(count);
        let mut body = [0u8; MAX_PAYLOAD];
        for (i, frag) in fragments.enumerate() {
            let len = frag.write_to(&mut body).map_err(wire)?;
            let mut extensions = Vec::new();
            if let Some((mid, rid)) = &self.announce
                && (self.announce_left > 0 || key_frame)
            {
                self.announce_left = self.announce_left.saturating_sub(1);
                if let Some(id) = self.ext.mid {
                    extensions.push((id, mid.clone()));
                }
                if let Some(id) = self.ext.rid {
                    extensions.push((id, rid.clone()));
                }
            }
            if let (Some(id), Some((voice, level))) = (self.ext.audio_level, audio_level) {
                let al = AudioLevel { voice, level };
                extensions.push((id, vec![al.to_byte().map_err(wire)?]));
            }
            if let (Some(id), Some(number)) = (self.ext.dependency_descriptor, frame_number) {
                let template = u8::from(!key_frame);
                let mut dd = DependencyDescriptor::new(
                    i == 0,
                    i + 1 == count,
                    template,
                    number,
                    &self.structure,
                )
                .map_err(wire)?;
                if key_frame && i == 0 {
                    dd = dd.with_structure(self.structure.clone());
                }
                let mut b = [0u8; 256];
                let m = dd.write(&self.structure, &mut b).map_err(wire)?;
                extensions.push((id, b[..m].to_vec()));
            }
            out.push(RtpOut {
                seq: self.seq,
                timestamp,
                marker: frag.marker,
                extensions,
                payload: body[..len].to_vec(),
            });
            self.seq = self.seq.wrapping_add(1);
        }
        Ok(out)
    }

    /// What this sender sent so far.
    #[must_use]
    pub fn stats(&self) -> SendStats {
        self.stats
    }
}

/// The tag a [`TrackReceiver`] gives a held frame: the track's tag and the frame's RTP
/// timestamp, which [`split_held_tag`] recovers from a released frame
/// ([`FrameDecryptor::take_released`]).
#[must_use]
pub fn held_tag(track: u32, timestamp: u32) -> u64 {
    (u64::from(track) << 32) | u64::from(timestamp)
}

/// `(track, timestamp)` of a released frame's tag.
#[must_use]
pub fn split_held_tag(tag: u64) -> (u32, u32) {
    ((tag >> 32) as u32, tag as u32)
}

/// Why a received frame did not come out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameLoss {
    /// Packets were missing (the reassembler gave up on the frame).
    Incomplete,
    /// The frame did not decrypt (unknown key, bad tag, replay).
    Undecryptable(String),
}

/// A frame that came out of a [`TrackReceiver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceivedFrame {
    /// Decrypted: the sender's leaf index, the RTP timestamp and the plaintext.
    Frame {
        /// The sender's MLS leaf index (from the SFrame KID).
        sender: u32,
        /// RTP timestamp.
        timestamp: u32,
        /// The encoded frame as the sender's encoder produced it.
        data: Vec<u8>,
    },
    /// Held for an epoch whose commit has not arrived (returned later by the decryptor's
    /// [`take_released`](FrameDecryptor::take_released), tagged with [`held_tag`]).
    Held,
    /// Lost.
    Lost(FrameLoss),
}

/// Reassembles and decrypts one incoming track.
pub struct TrackReceiver {
    reassembler: Reassembler,
    track_tag: u32,
    stats: ReceiveStats,
    reception: Reception,
}

impl core::fmt::Debug for TrackReceiver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrackReceiver")
            .field("pending_frames", &self.reassembler.pending_frames())
            .finish_non_exhaustive()
    }
}

impl TrackReceiver {
    /// A receiver for `kind` in `packetization`.
    #[must_use]
    pub fn new(kind: MediaKind, packetization: Packetization) -> Self {
        let format = match (kind, packetization) {
            (_, Packetization::Ietf) => PacketFormat::Sframe,
            (MediaKind::Audio, Packetization::Browser) => PacketFormat::Opus,
            (MediaKind::Video, Packetization::Browser) => PacketFormat::Vp8,
        };
        let clock_rate = match kind {
            MediaKind::Audio => 48_000,
            MediaKind::Video => 90_000,
        };
        Self {
            reassembler: Reassembler::with_config(format, ReassemblerConfig::default()),
            track_tag: 0,
            stats: ReceiveStats::default(),
            reception: Reception::new(clock_rate),
        }
    }

    /// What this receiver got so far.
    #[must_use]
    pub fn stats(&self) -> &ReceiveStats {
        &self.stats
    }

    /// Tag this track's held frames with `track` (see [`held_tag`]), so a frame released later
    /// by a decryptor that several tracks share can be put back on its track.
    #[must_use]
    pub fn with_track_tag(mut self, track: u32) -> Self {
        self.track_tag = track;
        self
    }

    /// Take one RTP packet (sequence number, timestamp, marker, payload). A malformed payload
    /// is counted by the reassembler and otherwise ignored.
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) {
        self.push_at(seq, timestamp, marker, payload, None);
    }

    /// [`push`](Self::push), with the packet's arrival time for the jitter (RFC 3550 A.8).
    pub fn push_at(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        arrival: Option<Duration>,
    ) {
        self.reception.on_packet(seq, timestamp, arrival);
        self.stats.packets_lost = self.reception.lost();
        self.stats.jitter = self.reception.jitter();
        self.stats.packets += 1;
        let _ = self.reassembler.push(RtpIn {
            seq,
            timestamp,
            marker,
            payload,
            start: None,
            end: None,
        });
    }

    /// Decrypt every frame completed so far with `decryptor` (this receiver's replay windows;
    /// one decryptor may serve several tracks). `now` is the member's monotonic clock, for key
    /// retention and how long frames are held. A frame of an epoch not published yet comes
    /// out as [`ReceivedFrame::Held`]; it comes back, decrypted and tagged with [`held_tag`],
    /// from [`FrameDecryptor::take_released`] after a later `drain` or
    /// [`refresh`](FrameDecryptor::refresh).
    pub fn drain(&mut self, decryptor: &mut FrameDecryptor, now: Duration) -> Vec<ReceivedFrame> {
        let mut out = Vec::new();
        while let Some(o) = self.reassembler.poll() {
            let st = &mut self.stats;
            out.push(match o {
                Output::Complete(mut f) => {
                    st.frames += 1;
                    let tag = held_tag(self.track_tag, f.timestamp);
                    match decryptor.decrypt_in_place(b"", &mut f.data, now, tag) {
                        Ok(Received::Plaintext {
                            sender, plaintext, ..
                        }) => {
                            st.decrypted += 1;
                            ReceivedFrame::Frame {
                                sender,
                                timestamp: f.timestamp,
                                data: plaintext.to_vec(),
                            }
                        }
                        Ok(Received::Held) => {
                            st.held += 1;
                            ReceivedFrame::Held
                        }
                        Err(e) => {
                            *st.decrypt_failures
                                .entry(e.frame_failure_reason())
                                .or_default() += 1;
                            ReceivedFrame::Lost(FrameLoss::Undecryptable(e.to_string()))
                        }
                    }
                }
                Output::Incomplete(_) => {
                    st.incomplete += 1;
                    ReceivedFrame::Lost(FrameLoss::Incomplete)
                }
            });
        }
        out
    }

    /// Give up on frames still waiting for packets.
    pub fn flush(&mut self) {
        self.reassembler.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use super::*;
    use veil_mls::{CallSession, KeyConfig};
    use veil_wire::dd::DdLatch;

    const T0: Duration = Duration::ZERO;

    fn pair() -> (CallSession, CallSession) {
        let mut alice = CallSession::new(b"alice", KeyConfig::default()).unwrap();
        alice.create_group(b"room", T0).unwrap();
        let mut bob = CallSession::new(b"bob", KeyConfig::default()).unwrap();
        let out = alice
            .add_members(&[bob.key_package(false).unwrap()])
            .unwrap();
        alice.confirm_commit(T0).unwrap();
        bob.join_welcome(&out.welcome.unwrap(), T0).unwrap();
        (alice, bob)
    }

    /// Alice's frame keys and a decryptor of Bob's: the frame path of a two-member call.
    fn frame_path() -> (FrameKeys, FrameDecryptor) {
        let (alice, bob) = pair();
        (alice.frame_keys(), bob.frame_keys().decryptor())
    }

    const EXT: ExtIds = ExtIds {
        audio_level: Some(1),
        dependency_descriptor: Some(11),
        mid: Some(2),
        rid: Some(3),
    };

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn video_frames_arrive_decrypted_with_dd_on_every_packet() {
        for p in [Packetization::Browser, Packetization::Ietf] {
            let (alice, mut bob) = frame_path();
            let mut tx =
                TrackSender::new(MediaKind::Video, p, EXT, 65530, FrameCounter::default()).unwrap();
            let mut rx = TrackReceiver::new(MediaKind::Video, p);
            let mut latch = DdLatch::default();
            let mut last_number = None;
            for i in 0..12u8 {
                let key = i % 5 == 0;
                let f = frame(300 + usize::from(i) * 700, i);
                let ts = 90_000 + u32::from(i) * 3000;
                let mut pkts = tx.send(&alice, &f, ts, key, None).unwrap();
                assert!(pkts.len() > 1 || f.len() < MAX_PAYLOAD);
                assert!(pkts.last().unwrap().marker);
                for (j, pkt) in pkts.iter().enumerate() {
                    assert_eq!(pkt.extensions.len(), 1, "DD only, no audio level on video");
                    let (id, data) = &pkt.extensions[0];
                    assert_eq!(*id, 11);
                    let dd = latch.parse(data).unwrap();
                    assert_eq!(dd.start_of_frame, j == 0);
                    assert_eq!(dd.end_of_frame, j + 1 == pkts.len());
                    assert_eq!(dd.attached_structure.is_some(), key && j == 0);
                    // A key frame references nothing; its first packet is a switch point.
                    assert_eq!(dd.frame.fdiffs.is_empty(), key);
                    assert_eq!(dd.is_key_frame_start(), key && j == 0);
                    if j == 0 {
                        if let Some(n) = last_number {
                            assert_eq!(dd.frame_number, u16::wrapping_add(n, 1));
                        }
                        last_number = Some(dd.frame_number);
                    }
                }
                // Packets arrive out of order.
                pkts.reverse();
                for pkt in &pkts {
                    rx.push(pkt.seq, pkt.timestamp, pkt.marker, &pkt.payload);
                }
                let got = rx.drain(&mut bob, T0);
                assert_eq!(
                    got,
                    vec![ReceivedFrame::Frame {
                        sender: 0,
                        timestamp: ts,
                        data: f
                    }],
                    "{p:?} frame {i}"
                );
            }
            assert_eq!((tx.stats().frames, rx.stats().frames), (12, 12));
            assert_eq!(rx.stats().decrypted, 12);
            assert_eq!(rx.stats().packets, tx.stats().packets);
            assert!(rx.stats().decrypt_failures.is_empty());
        }
    }

    #[test]
    fn audio_carries_its_level_and_a_tampered_frame_is_lost() {
        let (alice, mut bob) = frame_path();
        let mut tx = TrackSender::new(
            MediaKind::Audio,
            Packetization::Browser,
            EXT,
            0,
            FrameCounter::default(),
        )
        .unwrap();
        let mut rx = TrackReceiver::new(MediaKind::Audio, Packetization::Browser);
        let f = frame(120, 3);
        let pkts = tx.send(&alice, &f, 960, false, Some((true, 30))).unwrap();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].extensions, vec![(1, vec![0x80 | 30])]);
        let mut bad = pkts[0].payload.clone();
        *bad.last_mut().unwrap() ^= 1;
        rx.push(pkts[0].seq, 960, true, &bad);
        assert!(matches!(
            rx.drain(&mut bob, T0)[..],
            [ReceivedFrame::Lost(FrameLoss::Undecryptable(_))]
        ));
        let pkts = tx
            .send(&alice, &f, 1920, false, Some((false, 127)))
            .unwrap();
        rx.push(pkts[0].seq, 1920, true, &pkts[0].payload);
        assert_eq!(
            rx.drain(&mut bob, T0),
            vec![ReceivedFrame::Frame {
                sender: 0,
                timestamp: 1920,
                data: f
            }]
        );
    }

    #[test]
    fn reception_counts_loss_across_a_sequence_wrap_and_duplicates() {
        let mut r = Reception::new(48_000);
        // 65530..=65535, 0..=9 with 65533 and 4 missing: 16 expected, 14 received.
        for seq in (65530u16..=65535)
            .chain(0..10)
            .filter(|s| ![65533, 4].contains(s))
        {
            r.on_packet(seq, 0, None);
        }
        assert_eq!(r.lost(), 2);
        // A late packet fills a gap; an old one (before the wrap) does not move the maximum.
        r.on_packet(4, 0, None);
        assert_eq!(r.lost(), 1);
        // A duplicate makes the count negative-going, as RFC 3550 says it may.
        r.on_packet(9, 0, None);
        assert_eq!(r.lost(), 0);
    }

    #[test]
    fn reception_jitter_follows_rfc_3550() {
        let ms = |m: u64| Some(Duration::from_millis(m));
        // Perfect pacing (20 ms frames at 48 kHz, arriving 20 ms apart, any fixed delay).
        let mut r = Reception::new(48_000);
        for i in 0..100u32 {
            r.on_packet(i as u16, 1000 + i * 960, ms(500 + 20 * u64::from(i)));
        }
        assert_eq!(r.jitter(), Duration::ZERO);
        // Arrivals alternate 5 ms early and late: every |D| is 10 ms and J converges to it.
        let mut r = Reception::new(48_000);
        for i in 0..400u32 {
            let at = 500 + 20 * u64::from(i) + if i % 2 == 0 { 0 } else { 10 };
            r.on_packet(i as u16, i * 960, ms(at));
        }
        let j = r.jitter().as_secs_f64() * 1000.0;
        assert!((j - 10.0).abs() < 0.01, "{j} ms");
        // A frame 33.3 ms of media later arriving 193 ms later: |D| = 159.67 ms, J = |D|/16.
        let mut r = Reception::new(90_000);
        r.on_packet(0, 0, ms(0));
        r.on_packet(1, 3000, ms(33 + 160));
        let j = r.jitter().as_secs_f64() * 1000.0;
        assert!((j - (160.0 - 1.0 / 3.0) / 16.0).abs() < 0.001, "{j} ms");
    }

    #[test]
    fn frames_without_a_sender_key_are_refused_and_counted() {
        // Not in a group yet: no sender key.
        let lonely = CallSession::new(b"carol", KeyConfig::default()).unwrap();
        let (alice, _) = frame_path();
        let mut tx = TrackSender::new(
            MediaKind::Audio,
            Packetization::Browser,
            EXT,
            0,
            FrameCounter::default(),
        )
        .unwrap();
        assert!(
            tx.send(&lonely.frame_keys(), &frame(80, 1), 960, false, None)
                .is_err()
        );
        assert!(
            tx.send(&lonely.frame_keys(), &frame(80, 2), 1920, false, None)
                .is_err()
        );
        let pkts = tx.send(&alice, &frame(80, 3), 2880, false, None).unwrap();
        assert_eq!(
            tx.stats(),
            SendStats {
                frames: 1,
                packets: 1,
                bytes: pkts[0].payload.len() as u64,
                refused: 2,
            }
        );
        // A refused frame used no sequence number.
        assert_eq!(pkts[0].seq, 0);
    }

    #[test]
    fn simulcast_layers_share_one_frame_counter() {
        let (alice, _) = frame_path();
        let counter = FrameCounter::default();
        let mut layers: Vec<TrackSender> = [(320, 180), (640, 360), (1280, 720)]
            .into_iter()
            .map(|(w, h)| {
                TrackSender::new(
                    MediaKind::Video,
                    Packetization::Browser,
                    EXT,
                    0,
                    counter.clone(),
                )
                .unwrap()
                .with_structure(single_layer_structure(w, h))
                .with_layer(
                    "1",
                    ["q", "h", "f"][usize::from(w > 320) + usize::from(w > 640)],
                )
            })
            .collect();
        let mut latches: Vec<DdLatch> = (0..3).map(|_| DdLatch::default()).collect();
        let mut numbers = Vec::new();
        for i in 0..4u32 {
            for (l, tx) in layers.iter_mut().enumerate() {
                let pkts = tx
                    .send(&alice, &frame(500, 1), i * 3000, i == 0, None)
                    .unwrap();
                let dd = latches[l].parse(&ext(&pkts[0], 11).unwrap()).unwrap();
                numbers.push(dd.frame_number);
                if i == 0 {
                    let res = dd.resolution().unwrap();
                    assert_eq!(res.width, [320, 640, 1280][l]);
                }
            }
        }
        // One counter across the three layers: strictly increasing, no duplicates.
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    fn ext(p: &RtpOut, id: u8) -> Option<Vec<u8>> {
        p.extensions
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, d)| d.clone())
    }

    #[test]
    fn a_simulcast_layer_announces_mid_and_rid_on_its_first_packets_and_key_frames() {
        let (alice, _) = frame_path();
        let mut tx = TrackSender::new(
            MediaKind::Video,
            Packetization::Browser,
            EXT,
            0,
            FrameCounter::default(),
        )
        .unwrap()
        .with_layer("v0", "h");
        let mut announced = Vec::new();
        for i in 0..60u32 {
            // Small frames: one packet each. A key frame at 0 and 50.
            let key = i.is_multiple_of(50);
            let pkts = tx
                .send(&alice, &frame(200, 1), i * 3000, key, None)
                .unwrap();
            assert_eq!(pkts.len(), 1);
            let (mid, rid) = (ext(&pkts[0], 2), ext(&pkts[0], 3));
            assert_eq!(mid.is_some(), rid.is_some());
            if let (Some(mid), Some(rid)) = (mid, rid) {
                assert_eq!((&mid[..], &rid[..]), (&b"v0"[..], &b"h"[..]));
                announced.push(i);
            }
        }
        let mut want: Vec<u32> = (0..ANNOUNCE_PACKETS).collect();
        want.push(50);
        assert_eq!(announced, want);
    }

    #[test]
    fn frames_flow_while_another_thread_holds_the_sessions_for_a_commit() {
        // MLS-KEY-07: the frame path never takes the session's lock, so a commit created under
        // it (here: both members' sessions locked by another thread until every frame is
        // through) delays no frame. A regression that locks would time out, not hang.
        let (alice, bob) = pair();
        let (keys, mut decryptor) = (alice.frame_keys(), bob.frame_keys().decryptor());
        let (alice, bob) = (Arc::new(Mutex::new(alice)), Arc::new(Mutex::new(bob)));
        let (locked_tx, locked_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let mls = {
            let (alice, bob) = (alice.clone(), bob.clone());
            std::thread::spawn(move || {
                let mut a = alice.lock().unwrap();
                let mut b = bob.lock().unwrap();
                let out = a.self_update().unwrap();
                locked_tx.send(()).unwrap();
                done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the frame path finished while the sessions were locked");
                a.confirm_commit(T0).unwrap();
                b.process(&out.commit, T0).unwrap();
            })
        };
        locked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut tx = TrackSender::new(
            MediaKind::Audio,
            Packetization::Browser,
            EXT,
            0,
            FrameCounter::default(),
        )
        .unwrap();
        let mut rx = TrackReceiver::new(MediaKind::Audio, Packetization::Browser);
        let mut exchange = |i: u32| {
            let f = frame(100, i as u8);
            let pkts = tx
                .send(&keys, &f, i * 960, false, Some((true, 30)))
                .unwrap();
            for p in &pkts {
                rx.push(p.seq, p.timestamp, p.marker, &p.payload);
            }
            assert_eq!(
                rx.drain(&mut decryptor, T0),
                vec![ReceivedFrame::Frame {
                    sender: 0,
                    timestamp: i * 960,
                    data: f
                }],
                "frame {i}"
            );
        };
        for i in 0..50 {
            exchange(i);
        }
        assert!(
            alice.try_lock().is_err() && bob.try_lock().is_err(),
            "the sessions were locked throughout"
        );
        done_tx.send(()).unwrap();
        mls.join().unwrap();
        // The commit is merged at both: the same handles moved to its epoch.
        assert_eq!(keys.epoch(), Some(2));
        exchange(50);
    }

    #[test]
    fn a_frame_of_an_epoch_not_yet_published_comes_back_on_its_track_when_it_is() {
        let (mut alice, mut bob) = pair();
        let keys = alice.frame_keys();
        let mut decryptor = bob.frame_keys().decryptor();
        // Alice is on epoch 2 before Bob processed its commit.
        let out = alice.self_update().unwrap();
        alice.confirm_commit(T0).unwrap();
        let mut tx = TrackSender::new(
            MediaKind::Video,
            Packetization::Browser,
            EXT,
            0,
            FrameCounter::default(),
        )
        .unwrap();
        let mut rx = TrackReceiver::new(MediaKind::Video, Packetization::Browser).with_track_tag(7);
        let f = frame(3000, 9);
        for p in tx.send(&keys, &f, 12_345, true, None).unwrap() {
            rx.push(p.seq, p.timestamp, p.marker, &p.payload);
        }
        assert_eq!(rx.drain(&mut decryptor, T0), vec![ReceivedFrame::Held]);
        assert_eq!((rx.stats().held, decryptor.held_frames()), (1, 1));
        decryptor.refresh(T0);
        assert!(decryptor.take_released().is_empty());
        bob.process(&out.commit, T0).unwrap();
        // No packet arrives: refreshing on the key change releases it, with its track and
        // RTP timestamp in the tag.
        decryptor.refresh(T0);
        let released = decryptor.take_released();
        assert_eq!(released.len(), 1);
        assert_eq!(split_held_tag(released[0].tag), (7, 12_345));
        assert_eq!((released[0].sender, &released[0].plaintext), (0, &f));
        assert_eq!(decryptor.held_frames(), 0);
    }
}
