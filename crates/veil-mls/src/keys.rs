//! The epoch → SFrame key schedule of one call member (sans-I/O; `now` is the caller's
//! monotonic time). Checks MLS-KEY-01..06 of `specs/key-schedule.md`.
//!
//! On every epoch the member gives [`EpochKeys::install_epoch`] the epoch's exporter secret
//! (`MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`) and the leaf indices of the members. It:
//!
//! 1. publishes the epoch to the frame path ([`crate::ring`]); each receiver derives a
//!    member's key (RFC 9605 §5.2) on that member's first frame of the epoch;
//! 2. switches the local sender to the new epoch (call it only after the commit is merged);
//! 3. keeps the previous epochs' keys for at most `max_retained_epochs` epochs **and** at most
//!    `retention` time, so frames in flight still decrypt; then retires them (zeroized);
//! 4. decrypts the frames it was holding for this epoch.
//!
//! A frame whose KID names an epoch that is not known yet, but is less than half the epoch space
//! ahead, is **held** instead of dropped. Holding is bounded by count, bytes and age, and an
//! evicted frame is counted.

use std::time::Duration;

use veil_sframe::{CipherSuite, MlsKidLayout};

use crate::error::MlsError;
use crate::ring::{FrameDecryptor, FrameKeys, KeyRing};

/// How a member turns epochs into SFrame keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyConfig {
    /// SFrame cipher suite (default `AES_128_GCM_SHA256_128`).
    pub suite: CipherSuite,
    /// `E`: low epoch bits in the KID (default 8: 256 epochs before a KID repeats).
    pub epoch_bits: u32,
    /// `S`: sender-index bits in the KID (default 12: up to 4096 leaves).
    pub index_bits: u32,
    /// The KID context this member sends under (default 0: shortest KIDs).
    pub context: u64,
    /// Previous epochs whose keys are kept (default 3).
    pub max_retained_epochs: usize,
    /// How long a previous epoch's keys are kept after the next epoch is installed (default 2 s;
    /// the deadline saturates, so `Duration::MAX` leaves only `max_retained_epochs`).
    pub retention: Duration,
    /// Frames held for an epoch not yet known (default 256; 0 holds none).
    pub max_held_frames: usize,
    /// Bytes held for an epoch not yet known (default 4 MiB); a larger frame is not held.
    pub max_held_bytes: usize,
    /// How long a frame is held before it is dropped (default 2 s).
    pub max_hold: Duration,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            suite: CipherSuite::AesGcm128Sha256,
            epoch_bits: 8,
            index_bits: 12,
            context: 0,
            max_retained_epochs: 3,
            retention: Duration::from_secs(2),
            max_held_frames: 256,
            max_held_bytes: 4 << 20,
            max_hold: Duration::from_secs(2),
        }
    }
}

impl KeyConfig {
    /// The KID layout of this configuration.
    ///
    /// # Errors
    /// [`MlsError::Config`] if `E + S` leaves no context bit or `E` is 0, or `context` does
    /// not fit the bits the layout leaves for it (`specs/key-schedule.md` §1).
    pub fn layout(&self) -> Result<MlsKidLayout, MlsError> {
        let layout = MlsKidLayout::new(self.epoch_bits, self.index_bits)
            .map_err(|e| MlsError::Config(e.to_string()))?;
        // Checked here, once, rather than at the first epoch.
        layout
            .kid(self.context, 0, 0)
            .map_err(|e| MlsError::Config(e.to_string()))?;
        Ok(layout)
    }
}

/// What [`EpochKeys::decrypt_in_place`] did with a frame.
#[derive(Debug)]
pub enum Received<'a> {
    /// The frame decrypted; `plaintext` lies in the caller's buffer.
    Plaintext {
        /// The sender's leaf index.
        sender: u32,
        /// The low epoch bits of the frame's KID.
        epoch_bits: u64,
        /// The plaintext.
        plaintext: &'a mut [u8],
    },
    /// The frame names an epoch not known yet; it is held and comes back from `install_epoch`.
    Held,
}

/// A held frame that decrypted once its epoch was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The sender's leaf index.
    pub sender: u32,
    /// The metadata it was held with.
    pub metadata: Vec<u8>,
    /// The caller's tag given with the frame ([`EpochKeys::decrypt_in_place_tagged`]), e.g.
    /// which track and RTP timestamp it belongs to; 0 when none was given.
    pub tag: u64,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

/// Counters of an [`EpochKeys`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Epochs installed.
    pub epochs_installed: u64,
    /// Epoch key sets retired (by count or by time).
    pub epochs_retired: u64,
    /// Senders' keys derived, each on its sender's first frame of an epoch (MLS-KEY-08).
    pub keys_derived: u64,
    /// Frames held for an unknown epoch.
    pub held: u64,
    /// Held frames released (decrypted) when their epoch arrived.
    pub released: u64,
    /// Held frames dropped (bounds, age, or failed to decrypt once released).
    pub held_dropped: u64,
    /// Largest number of frames held at once.
    pub max_held: usize,
}

/// The SFrame keys of one member across epochs: a [`KeyRing`] and one [`FrameDecryptor`] over
/// it, for callers that keep both in one place (tests, tools, a single-threaded member). The
/// SDK's frame path instead takes [`frames`](Self::frames) and a decryptor per receiver.
pub struct EpochKeys {
    ring: KeyRing,
    rx: FrameDecryptor,
}

impl core::fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochKeys")
            .field("epochs", &self.installed_epochs())
            .field("held", &self.rx.held_frames())
            .finish_non_exhaustive()
    }
}

impl EpochKeys {
    /// An empty schedule.
    ///
    /// # Errors
    /// [`MlsError::Config`] for an impossible KID layout.
    pub fn new(cfg: KeyConfig) -> Result<Self, MlsError> {
        let ring = KeyRing::new(cfg)?;
        let rx = ring.frames().decryptor();
        Ok(Self { ring, rx })
    }

    /// The frame path's handle on these keys (MLS-KEY-07).
    #[must_use]
    pub fn frames(&self) -> FrameKeys {
        self.ring.frames()
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &KeyConfig {
        self.ring.config()
    }

    /// The KID layout.
    #[must_use]
    pub fn layout(&self) -> MlsKidLayout {
        self.ring.layout()
    }

    /// The current epoch, once one is installed.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.ring.frames().epoch()
    }

    /// Epochs whose keys are still installed, newest first (current, then retained).
    #[must_use]
    pub fn installed_epochs(&self) -> Vec<u64> {
        self.ring.frames().snapshot().epochs()
    }

    /// Frames held right now.
    #[must_use]
    pub fn held_frames(&self) -> usize {
        self.rx.held_frames()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> KeyStats {
        let (r, d) = (self.ring.stats(), self.rx.stats());
        KeyStats {
            epochs_installed: r.epochs_installed,
            epochs_retired: r.epochs_retired,
            keys_derived: d.keys_derived,
            held: d.held,
            released: d.released,
            held_dropped: d.held_dropped,
            max_held: d.max_held,
        }
    }

    /// The local sender's KID, if this member sends.
    #[must_use]
    pub fn sender_kid(&self) -> Option<u64> {
        self.ring.frames().sender_kid()
    }

    /// Install `epoch` (MLS-KEY-01..04): see [`KeyRing::install_epoch`]. Returns the held frames
    /// of this epoch, decrypted.
    ///
    /// # Errors
    /// [`MlsError::Sframe`] if a leaf index does not fit the KID layout, or the secret has the
    /// wrong length; nothing changes then.
    pub fn install_epoch(
        &mut self,
        epoch: u64,
        exporter_secret: &[u8],
        members: &[u32],
        own: Option<u32>,
        now: Duration,
    ) -> Result<Vec<Released>, MlsError> {
        self.ring
            .install_epoch(epoch, exporter_secret, members, own, now)?;
        self.rx.refresh(now);
        Ok(self.rx.take_released())
    }

    /// Retire retained epochs past their deadline and drop frames held too long (MLS-KEY-02,
    /// MLS-KEY-05). Call it periodically; every other method calls it too.
    pub fn expire(&mut self, now: Duration) {
        self.ring.expire(now);
        self.rx.refresh(now);
    }

    /// Stop sending: drop the sender key (zeroized). Called when this member is removed, so
    /// it cannot keep sending under the epoch it was removed from (MLS-SEC-03).
    pub fn stop_sending(&mut self) {
        self.ring.stop_sending();
    }

    /// This member was removed: stop sending, drop every held frame, and hold no more. Frames
    /// of later epochs then fail with an unknown key instead of waiting for a commit that will
    /// never reach this member (MLS-SEC-05). Installing an epoch (a rejoin) undoes it.
    pub fn removed(&mut self) {
        self.ring.removed();
        self.rx.refresh(Duration::ZERO);
    }

    /// Encrypt `plaintext` as this member in the current epoch into `out`; returns the length.
    ///
    /// # Errors
    /// [`MlsError::NotSending`] before an epoch with an own leaf was installed; SFrame errors.
    pub fn encrypt(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, MlsError> {
        self.ring.frames().encrypt(metadata, plaintext, out)
    }

    /// Upper bound of the bytes [`encrypt`](Self::encrypt) adds.
    #[must_use]
    pub fn max_overhead(&self) -> usize {
        veil_sframe::MAX_HEADER_LEN + self.config().suite.tag_len()
    }

    /// Decrypt a frame in place, or hold it if it names a newer epoch (MLS-KEY-05).
    ///
    /// # Errors
    /// Any [`SframeError`](veil_sframe::SframeError) for a frame that can be neither decrypted
    /// nor held (unknown sender in a known epoch, a retired epoch, a forgery, a replay).
    pub fn decrypt_in_place<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
        now: Duration,
    ) -> Result<Received<'a>, MlsError> {
        self.decrypt_in_place_tagged(metadata, buf, now, 0)
    }

    /// [`decrypt_in_place`](Self::decrypt_in_place), with a `tag` that comes back in
    /// [`Released`] if the frame is held, so the caller can tell which track a released frame
    /// belongs to.
    ///
    /// # Errors
    /// As [`decrypt_in_place`](Self::decrypt_in_place).
    pub fn decrypt_in_place_tagged<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
        now: Duration,
        tag: u64,
    ) -> Result<Received<'a>, MlsError> {
        self.ring.expire(now);
        self.rx.decrypt_in_place(metadata, buf, now, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_sframe::{SenderKey, SframeError, default_backend, mls_sender_key};

    const SECRET_A: [u8; 16] = [1; 16];
    const SECRET_B: [u8; 16] = [2; 16];

    fn sender(secret: &[u8], epoch: u64, index: u32, cfg: &KeyConfig) -> SenderKey {
        let layout = cfg.layout().unwrap();
        let (kid, m) = mls_sender_key(cfg.suite, secret, layout, 0, index, epoch).unwrap();
        SenderKey::new(cfg.suite, kid, &m, default_backend()).unwrap()
    }

    fn seal(s: &mut SenderKey, pt: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; pt.len() + 40];
        let n = s.encrypt(b"", pt, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn sealed(secret: &[u8], epoch: u64, index: u32, pt: &[u8], cfg: &KeyConfig) -> Vec<u8> {
        seal(&mut sender(secret, epoch, index, cfg), pt)
    }

    #[test]
    fn frames_of_the_next_epoch_are_held_then_released() {
        let cfg = KeyConfig {
            epoch_bits: 2,
            ..KeyConfig::default()
        };
        let mut k = EpochKeys::new(cfg).unwrap();
        k.install_epoch(3, &SECRET_A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        // Epoch 4 wraps to low bits 0: still "ahead" of 3 (mod 4).
        let mut f = sealed(&SECRET_B, 4, 1, b"early", &cfg);
        assert!(matches!(
            k.decrypt_in_place_tagged(b"", &mut f, Duration::ZERO, 77)
                .unwrap(),
            Received::Held
        ));
        let released = k
            .install_epoch(4, &SECRET_B, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        assert_eq!(
            released,
            vec![Released {
                sender: 1,
                metadata: vec![],
                tag: 77,
                plaintext: b"early".to_vec()
            }]
        );
        assert_eq!((k.stats().held, k.stats().released), (1, 1));
    }

    #[test]
    fn a_removed_member_holds_nothing_and_drops_what_it_held() {
        let cfg = KeyConfig::default();
        let mut k = EpochKeys::new(cfg).unwrap();
        k.install_epoch(3, &SECRET_A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        let mut early = sealed(&SECRET_B, 4, 1, b"early", &cfg);
        assert!(matches!(
            k.decrypt_in_place(b"", &mut early, Duration::ZERO).unwrap(),
            Received::Held
        ));
        k.removed();
        assert_eq!((k.held_frames(), k.stats().held_dropped), (0, 1));
        let mut later = sealed(&SECRET_B, 4, 1, b"later", &cfg);
        assert!(matches!(
            k.decrypt_in_place(b"", &mut later, Duration::ZERO),
            Err(MlsError::Sframe(SframeError::UnknownKid { .. }))
        ));
        assert!(k.sender_kid().is_none(), "a removed member does not send");
    }

    #[test]
    fn stale_epochs_are_refused_not_held() {
        let cfg = KeyConfig {
            epoch_bits: 2,
            ..KeyConfig::default()
        };
        let mut k = EpochKeys::new(cfg).unwrap();
        k.install_epoch(5, &SECRET_A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        // Low bits 3 = epoch 3 (two behind 5 mod 4): not ahead by at most half the space.
        let mut f = sealed(&SECRET_B, 3, 1, b"old", &cfg);
        assert!(k.decrypt_in_place(b"", &mut f, Duration::ZERO).is_err());
        assert_eq!(k.held_frames(), 0);
    }

    #[test]
    fn holding_is_bounded_and_evictions_are_counted() {
        let cfg = KeyConfig {
            max_held_frames: 4,
            max_hold: Duration::from_secs(1),
            ..KeyConfig::default()
        };
        let mut k = EpochKeys::new(cfg).unwrap();
        k.install_epoch(1, &SECRET_A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        let mut tx = sender(&SECRET_B, 2, 1, &cfg);
        for i in 0..10u8 {
            let mut f = seal(&mut tx, &[i]);
            k.decrypt_in_place(b"", &mut f, Duration::ZERO).unwrap();
            assert!(k.held_frames() <= 4);
        }
        assert_eq!(k.stats().held_dropped, 6);
        // The four newest are released with their epoch ...
        let r = k
            .install_epoch(2, &SECRET_B, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        assert_eq!(
            r.iter().map(|r| r.plaintext[0]).collect::<Vec<_>>(),
            vec![6, 7, 8, 9]
        );
        // ... and a frame held longer than max_hold is dropped.
        let mut f = sealed(&SECRET_A, 3, 1, b"late", &cfg);
        k.decrypt_in_place(b"", &mut f, Duration::from_secs(5))
            .unwrap();
        k.expire(Duration::from_secs(7));
        assert_eq!(k.held_frames(), 0);
    }

    #[test]
    fn a_bad_install_changes_nothing() {
        let mut k = EpochKeys::new(KeyConfig {
            index_bits: 2,
            ..KeyConfig::default()
        })
        .unwrap();
        k.install_epoch(1, &SECRET_A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        assert!(
            k.install_epoch(2, &SECRET_B, &[0, 9], Some(0), Duration::ZERO)
                .is_err()
        );
        assert!(
            k.install_epoch(2, &[0u8; 15], &[0, 1], Some(0), Duration::ZERO)
                .is_err()
        );
        assert_eq!(k.installed_epochs(), vec![1]);
        assert!(
            EpochKeys::new(KeyConfig {
                epoch_bits: 40,
                index_bits: 40,
                ..KeyConfig::default()
            })
            .is_err()
        );
    }

    // Caller input never panics (issue 19): any KeyConfig is refused with `MlsError::Config`
    // or runs (specs/key-schedule.md §2, §5); a valid one still holds and releases frames,
    // within its bounds.
    proptest::proptest! {
        #[test]
        fn any_key_config_is_refused_or_runs(
            epoch_bits in proptest::prop_oneof![0u32..12, proptest::num::u32::ANY],
            index_bits in proptest::prop_oneof![0u32..64, proptest::num::u32::ANY],
            context in proptest::prop_oneof![0u64..4, proptest::num::u64::ANY],
            max_retained_epochs in proptest::prop_oneof![0usize..4, proptest::strategy::Just(usize::MAX)],
            retention in proptest::prop_oneof![
                proptest::strategy::Just(Duration::ZERO),
                proptest::strategy::Just(Duration::MAX)
            ],
            max_held_frames in proptest::prop_oneof![0usize..3, proptest::strategy::Just(usize::MAX)],
            max_held_bytes in proptest::prop_oneof![0usize..200, proptest::strategy::Just(usize::MAX)],
        ) {
            let cfg = KeyConfig {
                epoch_bits,
                index_bits,
                context,
                max_retained_epochs,
                retention,
                max_held_frames,
                max_held_bytes,
                max_hold: Duration::MAX,
                ..KeyConfig::default()
            };
            let Ok(mut k) = EpochKeys::new(cfg) else {
                let sum = u64::from(epoch_bits) + u64::from(index_bits);
                proptest::prop_assert!(
                    epoch_bits == 0 || sum > 63 || context >> (64 - sum) != 0
                );
                return Ok(());
            };
            let layout = cfg.layout().unwrap();
            let seal_at = |epoch: u64| {
                let (kid, m) =
                    mls_sender_key(cfg.suite, &SECRET_B, layout, context, 0, epoch).unwrap();
                seal(&mut SenderKey::new(cfg.suite, kid, &m, default_backend()).unwrap(), b"f")
            };
            let now = Duration::from_secs(1);
            k.install_epoch(0, &SECRET_A, &[0], Some(0), now).unwrap();
            // Epoch 1 is ahead by one only if the epoch space has more than two values.
            let mut early = seal_at(1);
            let held = matches!(
                k.decrypt_in_place(b"", &mut early, now),
                Ok(Received::Held)
            );
            proptest::prop_assert!(k.held_frames() <= max_held_frames);
            let released = k.install_epoch(1, &SECRET_B, &[0], Some(0), now).unwrap();
            proptest::prop_assert_eq!(released.len(), usize::from(held));
            k.install_epoch(2, &SECRET_A, &[0], Some(0), now.saturating_add(retention))
                .unwrap();
            k.expire(Duration::MAX);
        }
    }
}
