//! The browser's frame path (specs/browser.md §4), plain Rust so it is tested on the host: the
//! page's member exports each epoch as a key blob ([`encode_epoch`]), the transform worker
//! installs it into a [`FrameCrypto`] of its own (the worker shares no memory with the page)
//! and encrypts and decrypts whole encoded frames with it, exactly as a native participant
//! does (RFC 9605 SFrame, empty metadata, one sender counter for every track).

use std::collections::BTreeMap;
use std::time::Duration;

use veil_mls::{EpochExport, FrameDecryptor, FrameKeys, KeyConfig, KeyRing, Received};
use zeroize::Zeroizing;

use crate::error::WebError;

/// First bytes of a key blob: names the format, so a blob of another version is refused.
const BLOB_MAGIC: &[u8; 4] = b"VKB1";
/// `own` when the member does not send.
const NO_LEAF: u32 = u32::MAX;

/// One epoch's keying input as bytes, for `postMessage` from the page to the worker:
/// `"VKB1" | epoch u64 | own u32 (u32::MAX: none) | n u32 | n × leaf u32 | secret`, big-endian.
/// The returned buffer is zeroized on drop; the page transfers its copy to the worker, which
/// zeroes it once installed.
#[must_use]
pub fn encode_epoch(e: &EpochExport) -> Zeroizing<Vec<u8>> {
    let mut out = Vec::with_capacity(20 + 4 * e.members.len() + e.secret.len());
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&e.epoch.to_be_bytes());
    out.extend_from_slice(&e.own.unwrap_or(NO_LEAF).to_be_bytes());
    let n = u32::try_from(e.members.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for m in e.members.iter().take(n as usize) {
        out.extend_from_slice(&m.to_be_bytes());
    }
    out.extend_from_slice(&e.secret);
    Zeroizing::new(out)
}

/// The inverse of [`encode_epoch`].
///
/// # Errors
/// [`WebError::KeyBlob`] for bytes that are not a key blob.
pub fn decode_epoch(b: &[u8]) -> Result<EpochExport, WebError> {
    let bad = |why: &str| WebError::KeyBlob(why.to_owned());
    let rest = b
        .strip_prefix(BLOB_MAGIC)
        .ok_or_else(|| bad("wrong magic"))?;
    let (epoch, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("no epoch"))?;
    let (own, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("no own leaf"))?;
    let (n, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("no count"))?;
    let n = u32::from_be_bytes(*n) as usize;
    if rest.len() < n.saturating_mul(4) {
        return Err(bad("fewer leaves than counted"));
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let (m, r) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("short leaf"))?;
        members.push(u32::from_be_bytes(*m));
        rest = r;
    }
    if rest.is_empty() {
        return Err(bad("no secret"));
    }
    let own = u32::from_be_bytes(*own);
    Ok(EpochExport {
        epoch: u64::from_be_bytes(*epoch),
        secret: Zeroizing::new(rest.to_vec()),
        members,
        own: (own != NO_LEAF).then_some(own),
    })
}

/// What became of a received frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Decrypted: the plaintext, and the sender's leaf index.
    Plaintext(Vec<u8>, u32),
    /// Its epoch is not installed yet: held, and given back by
    /// [`FrameCrypto::take_released`] once it is.
    Held,
}

/// Counters of a worker's frame path, shown in the page's stats panel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames encrypted.
    pub encrypted: u64,
    /// Frames not sent because no epoch with an own leaf was installed (never in the clear).
    pub unsent: u64,
    /// Frames decrypted (held ones included once released).
    pub decrypted: u64,
    /// Frames held for an epoch not installed yet.
    pub held: u64,
    /// Failures by reason ([`veil_mls::MlsError::frame_failure_reason`]).
    pub failures: BTreeMap<&'static str, u64>,
    /// The epoch installed last.
    pub epoch: Option<u64>,
}

/// A transform worker's keys and frame state: its own [`KeyRing`], fed with the page's key
/// blobs, one [`FrameKeys`] for every sending track (one counter: no nonce repeats across
/// audio, video layers and screen) and one [`FrameDecryptor`] for every receiving one.
pub struct FrameCrypto {
    ring: KeyRing,
    keys: FrameKeys,
    rx: FrameDecryptor,
    buf: Vec<u8>,
    stats: FrameStats,
}

impl core::fmt::Debug for FrameCrypto {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameCrypto")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FrameCrypto {
    /// No keys yet: frames to send are refused, received ones held.
    ///
    /// # Errors
    /// [`WebError::Mls`] for an impossible key configuration.
    pub fn new(cfg: KeyConfig) -> Result<Self, WebError> {
        let ring = KeyRing::new(cfg)?;
        let keys = ring.frames();
        let rx = keys.decryptor();
        Ok(Self {
            ring,
            keys,
            rx,
            buf: Vec::new(),
            stats: FrameStats::default(),
        })
    }

    /// Install an epoch from the page's key blob. Frames held for it come back from
    /// [`take_released`](Self::take_released).
    ///
    /// # Errors
    /// [`WebError::KeyBlob`], or [`WebError::Mls`] for a blob the ring refuses.
    pub fn install(&mut self, blob: &[u8], now: Duration) -> Result<(), WebError> {
        let e = decode_epoch(blob)?;
        self.ring
            .install_epoch(e.epoch, &e.secret, &e.members, e.own, now)?;
        self.stats.epoch = Some(e.epoch);
        self.rx.refresh(now);
        Ok(())
    }

    /// The member was removed or left: stop sending, hold nothing more.
    pub fn stop(&mut self) {
        self.ring.removed();
    }

    /// Retire expired epochs and held frames.
    pub fn tick(&mut self, now: Duration) {
        self.ring.expire(now);
        self.rx.refresh(now);
    }

    /// Encrypt one whole encoded frame; `None` while this member has no sender key (the
    /// caller drops the frame: nothing leaves in the clear).
    pub fn encrypt(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        self.buf.resize(frame.len() + self.keys.max_overhead(), 0);
        match self.keys.encrypt(b"", frame, &mut self.buf) {
            Ok(n) => {
                self.stats.encrypted += 1;
                Some(self.buf[..n].to_vec())
            }
            Err(_) => {
                self.stats.unsent += 1;
                None
            }
        }
    }

    /// Decrypt one received frame, or hold it for an epoch not installed yet; `tag` comes
    /// back with it from [`take_released`](Self::take_released).
    ///
    /// # Errors
    /// [`WebError::Frame`] with the [`veil_mls::MlsError::frame_failure_reason`] (also counted).
    pub fn decrypt(&mut self, frame: &[u8], tag: u64, now: Duration) -> Result<Opened, WebError> {
        let mut buf = frame.to_vec();
        match self.rx.decrypt_in_place(b"", &mut buf, now, tag) {
            Ok(Received::Plaintext {
                sender, plaintext, ..
            }) => {
                // The plaintext lies inside `buf`: keep that range instead of copying it out.
                let (at, len) = (plaintext.as_ptr() as usize, plaintext.len());
                let start = at - buf.as_ptr() as usize;
                buf.truncate(start + len);
                buf.drain(..start);
                self.stats.decrypted += 1;
                Ok(Opened::Plaintext(buf, sender))
            }
            Ok(Received::Held) => {
                self.stats.held += 1;
                Ok(Opened::Held)
            }
            Err(e) => {
                let reason = e.frame_failure_reason();
                *self.stats.failures.entry(reason).or_default() += 1;
                Err(WebError::Frame { reason, source: e })
            }
        }
    }

    /// Held frames that decrypted since the last call: `(tag, plaintext, sender)`.
    pub fn take_released(&mut self) -> Vec<(u64, Vec<u8>, u32)> {
        let out: Vec<_> = self
            .rx
            .take_released()
            .into_iter()
            .map(|r| (r.tag, r.plaintext, r.sender))
            .collect();
        self.stats.decrypted += out.len() as u64;
        out
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &FrameStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(epoch: u64, secret: u8, members: &[u32], own: Option<u32>) -> Vec<u8> {
        encode_epoch(&EpochExport {
            epoch,
            secret: Zeroizing::new(vec![secret; 16]),
            members: members.to_vec(),
            own,
        })
        .to_vec()
    }

    #[test]
    fn a_key_blob_round_trips_and_garbage_is_refused() {
        let b = export(9, 3, &[0, 2, 5], Some(2));
        let e = decode_epoch(&b).unwrap();
        assert_eq!((e.epoch, e.members, e.own), (9, vec![0, 2, 5], Some(2)));
        assert_eq!(&e.secret[..], &[3; 16]);
        assert_eq!(decode_epoch(&export(1, 1, &[], None)).unwrap().own, None);
        for bad in [&b[..3], &b[..12], &b[..19], &b[..27], b"XXXX1234"] {
            assert!(
                matches!(decode_epoch(bad), Err(WebError::KeyBlob(_))),
                "{bad:?}"
            );
        }
        // A count larger than the leaves present.
        let mut b2 = b.clone();
        b2[16..20].copy_from_slice(&1000u32.to_be_bytes());
        assert!(decode_epoch(&b2).is_err());
    }

    #[test]
    fn two_workers_keyed_by_blobs_talk_and_hold_frames_of_an_unknown_epoch() {
        let cfg = KeyConfig::default();
        let (mut a, mut b) = (
            FrameCrypto::new(cfg).unwrap(),
            FrameCrypto::new(cfg).unwrap(),
        );
        let now = Duration::ZERO;
        // Nothing is sent before keys arrive.
        assert_eq!(a.encrypt(b"frame"), None);
        assert_eq!(a.stats().unsent, 1);
        a.install(&export(1, 7, &[0, 1], Some(0)), now).unwrap();
        b.install(&export(1, 7, &[0, 1], Some(1)), now).unwrap();
        let ct = a.encrypt(b"frame one").unwrap();
        assert_ne!(&ct[..], b"frame one");
        assert_eq!(
            b.decrypt(&ct, 1, now).unwrap(),
            Opened::Plaintext(b"frame one".to_vec(), 0)
        );
        // A replay is refused and counted by reason.
        assert!(matches!(
            b.decrypt(&ct, 2, now),
            Err(WebError::Frame {
                reason: "replay",
                ..
            })
        ));
        // a moves to epoch 2 first: b holds a's frame until its own blob arrives.
        a.install(&export(2, 8, &[0, 1], Some(0)), now).unwrap();
        let ct2 = a.encrypt(b"frame two").unwrap();
        assert_eq!(b.decrypt(&ct2, 42, now).unwrap(), Opened::Held);
        assert!(b.take_released().is_empty());
        b.install(&export(2, 8, &[0, 1], Some(1)), now).unwrap();
        assert_eq!(b.take_released(), vec![(42, b"frame two".to_vec(), 0)]);
        assert_eq!(b.stats().decrypted, 2);
        assert_eq!(b.stats().failures.get("replay"), Some(&1));
        // A forged frame fails authentication.
        let mut forged = a.encrypt(b"frame three").unwrap();
        *forged.last_mut().unwrap() ^= 1;
        assert!(matches!(
            b.decrypt(&forged, 3, now),
            Err(WebError::Frame {
                reason: "auth_failed",
                ..
            })
        ));
        // Stopped: nothing more is sent.
        a.stop();
        assert_eq!(a.encrypt(b"after"), None);
    }
}
