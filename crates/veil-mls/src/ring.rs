//! The frame path's side of the key schedule (checks MLS-KEY-07..09 of
//! `specs/key-schedule.md` §9): frames never wait for MLS.
//!
//! - A [`KeyRing`] belongs to the member (the MLS side). At every epoch it publishes a new,
//!   immutable [`KeySet`] (the epoch's exporter secret, its members' leaf indices, the previous
//!   epochs still retained, and this member's sender key) with one atomic pointer swap.
//! - A [`FrameKeys`] handle, cloned to every encoder and receiver, reads the current set without
//!   a lock that MLS work could hold: encrypting a frame locks only the sender key's counter,
//!   which only frames use.
//! - A [`FrameDecryptor`] per receiver derives a sender's SFrame key from the epoch's secret
//!   when that sender's first frame of the epoch arrives (most members of a large call never
//!   speak), keeps the replay windows, and holds frames of an epoch it does not know yet until
//!   the member publishes it.
//!
//! Sans-I/O: no clock is read; `now` is the caller's monotonic time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use veil_sframe::{
    EpochKdf, KeyMaterial, KeyStore, MlsKidLayout, Secret, SenderKey, SframeError, default_backend,
    derive_key_material, mls_sender_key,
};
use veil_wire::SframeHeader;

use crate::error::MlsError;
use crate::keys::{KeyConfig, Received, Released};

/// One epoch's secret and members, immutable once published. The secret is zeroized when the
/// last set that holds it is dropped.
struct EpochSecret {
    epoch: u64,
    base: Secret,
    /// Leaf indices, sorted.
    members: Vec<u32>,
    /// Key material the member derived ahead for the senders heard in the previous epoch, so a
    /// receiver's first frame of a speaker costs a table lookup, not an HKDF (MLS-KEY-09).
    ahead: Vec<(u32, KeyMaterial)>,
}

#[derive(Clone)]
struct Slot {
    secret: Arc<EpochSecret>,
    /// When a previous epoch's keys stop decrypting (MLS-KEY-02); `None` for the current one.
    retire_at: Option<Duration>,
}

/// One published state of a member's SFrame keys. Immutable: a member publishes a new one at
/// every change.
pub struct KeySet {
    generation: u64,
    /// The current epoch first, then retained ones, newest first.
    epochs: Vec<Slot>,
    sender: Option<Arc<Mutex<SenderKey>>>,
    /// Removed from the group: no later epoch will come, so nothing is held (MLS-SEC-05).
    removed: bool,
}

impl core::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeySet")
            .field("generation", &self.generation)
            .field("epochs", &self.epochs())
            .field("sending", &self.sender.is_some())
            .field("removed", &self.removed)
            .finish()
    }
}

impl KeySet {
    /// Epochs whose keys decrypt, newest first (current, then retained).
    #[must_use]
    pub fn epochs(&self) -> Vec<u64> {
        self.epochs.iter().map(|s| s.secret.epoch).collect()
    }

    /// The current epoch.
    #[must_use]
    pub fn current(&self) -> Option<u64> {
        self.epochs
            .first()
            .filter(|s| s.retire_at.is_none())
            .map(|s| s.secret.epoch)
    }

    /// A counter that changes with every published set.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest epoch whose low bits are `bits`.
    fn slot_for_bits(&self, bits: u64, mask: u64) -> Option<&Slot> {
        self.epochs.iter().find(|s| s.secret.epoch & mask == bits)
    }
}

struct Shared {
    cfg: KeyConfig,
    layout: MlsKidLayout,
    set: ArcSwap<KeySet>,
    /// One bit per leaf index (the first [`SPEAKER_BITS`]): set by a receiver that derived
    /// that sender's key, taken by the member at the next install. Atomics, not a lock: the
    /// frame path never waits for the member.
    speakers: Vec<AtomicU64>,
}

/// Leaf indices whose senders are tracked for keys derived ahead.
const SPEAKER_BITS: usize = 4096;

impl Shared {
    fn heard(&self, index: u64) {
        if let Some(w) = self.speakers.get((index / 64) as usize) {
            w.fetch_or(1 << (index % 64), Ordering::Relaxed);
        }
    }

    /// The senders heard since the last call, and forget them.
    fn take_speakers(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, w) in self.speakers.iter().enumerate() {
            let mut bits = w.swap(0, Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                out.push((i * 64) as u32 + b);
            }
        }
        out
    }

    fn epoch_mask(&self) -> u64 {
        (1u64 << self.cfg.epoch_bits) - 1
    }
}

/// The frame path's handle on a member's keys: cheap to clone, shared by every encoder and
/// receiver, never the MLS group (MLS-KEY-07).
#[derive(Clone)]
pub struct FrameKeys {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("FrameKeys")
            .field(&*self.shared.set.load())
            .finish()
    }
}

impl FrameKeys {
    /// The set published last.
    #[must_use]
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.shared.set.load_full()
    }

    /// The current epoch, once one is installed.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.shared.set.load().current()
    }

    /// A counter that changes with every published set: a receiver whose decryptor saw an
    /// older one may have frames to release ([`FrameDecryptor::refresh`]).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.shared.set.load().generation
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &KeyConfig {
        &self.shared.cfg
    }

    /// The local sender's KID, if this member sends.
    #[must_use]
    pub fn sender_kid(&self) -> Option<u64> {
        let set = self.shared.set.load();
        let s = set.sender.as_ref()?;
        Some(s.lock().unwrap_or_else(PoisonError::into_inner).kid())
    }

    /// Upper bound of the bytes [`encrypt`](Self::encrypt) adds.
    #[must_use]
    pub fn max_overhead(&self) -> usize {
        veil_sframe::MAX_HEADER_LEN + self.shared.cfg.suite.tag_len()
    }

    /// Encrypt `plaintext` as this member in the current epoch into `out`; returns the length.
    /// Takes the sender key's own lock (one counter for every track, so no nonce repeats), never
    /// one that MLS work holds.
    ///
    /// # Errors
    /// [`MlsError::NotSending`] before an epoch with an own leaf was installed, or after
    /// removal; SFrame errors.
    pub fn encrypt(
        &self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, MlsError> {
        let sender = self
            .shared
            .set
            .load()
            .sender
            .clone()
            .ok_or(MlsError::NotSending)?;
        let mut s = sender.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(s.encrypt(metadata, plaintext, out)?)
    }

    /// A receiver of its own: replay windows, derived keys and held frames (MLS-KEY-08).
    #[must_use]
    pub fn decryptor(&self) -> FrameDecryptor {
        FrameDecryptor::new(self.shared.clone())
    }

    /// The current epoch as [`KeyRing::install_epoch`] takes it, for a frame path that shares
    /// no memory with the member (MLS-KEY-11): a browser runs SFrame in an
    /// `RTCRtpScriptTransform` worker, with a [`KeyRing`] of its own fed from the page's
    /// member at every epoch (specs/browser.md §4). `None` before an epoch is installed.
    /// The copy of the secret is zeroized when the export is dropped.
    #[must_use]
    pub fn export_current(&self) -> Option<EpochExport> {
        let set = self.shared.set.load();
        let current = set.epochs.first().filter(|s| s.retire_at.is_none())?;
        let own = set.sender.as_ref().map(|s| {
            let kid = s.lock().unwrap_or_else(PoisonError::into_inner).kid();
            self.shared.layout.split(kid).1 as u32
        });
        Some(EpochExport {
            epoch: current.secret.epoch,
            secret: zeroize::Zeroizing::new(current.secret.base.expose().to_vec()),
            members: current.secret.members.clone(),
            own,
        })
    }
}

/// One epoch's keying input, exported from a member's [`FrameKeys`] for a [`KeyRing`] in
/// another address space ([`FrameKeys::export_current`]). Never logged: `Debug` leaves the
/// secret out.
pub struct EpochExport {
    /// The epoch.
    pub epoch: u64,
    /// The epoch's `MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`.
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    /// The group's leaf indices, sorted.
    pub members: Vec<u32>,
    /// The exporting member's own leaf index, while it sends.
    pub own: Option<u32>,
}

impl core::fmt::Debug for EpochExport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochExport")
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`KeyRing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Epochs installed.
    pub epochs_installed: u64,
    /// Epochs retired (by count, by time, or replaced by an epoch with the same low bits).
    pub epochs_retired: u64,
}

/// The member's side: installs epochs and publishes them to the frame path.
pub struct KeyRing {
    frames: FrameKeys,
    stats: RingStats,
}

impl core::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyRing")
            .field("set", &*self.frames.shared.set.load())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// An empty ring.
    ///
    /// # Errors
    /// [`MlsError::Config`] for an impossible KID layout.
    pub fn new(cfg: KeyConfig) -> Result<Self, MlsError> {
        let layout = cfg.layout()?;
        let set = KeySet {
            generation: 0,
            epochs: Vec::new(),
            sender: None,
            removed: false,
        };
        Ok(Self {
            frames: FrameKeys {
                shared: Arc::new(Shared {
                    cfg,
                    layout,
                    set: ArcSwap::from_pointee(set),
                    speakers: (0..SPEAKER_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
                }),
            },
            stats: RingStats::default(),
        })
    }

    /// The frame path's handle.
    #[must_use]
    pub fn frames(&self) -> FrameKeys {
        self.frames.clone()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    fn shared(&self) -> &Shared {
        &self.frames.shared
    }

    /// The KID layout.
    #[must_use]
    pub fn layout(&self) -> MlsKidLayout {
        self.shared().layout
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &KeyConfig {
        &self.shared().cfg
    }

    fn publish(&self, epochs: Vec<Slot>, sender: Option<Arc<Mutex<SenderKey>>>, removed: bool) {
        let generation = self.shared().set.load().generation + 1;
        self.shared().set.store(Arc::new(KeySet {
            generation,
            epochs,
            sender,
            removed,
        }));
    }

    /// Install `epoch` (MLS-KEY-01..04, MLS-KEY-09): `exporter_secret` is the epoch's
    /// `MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`, `members` the leaf indices in the group,
    /// `own` this member's leaf index (None for a receive-only observer). Derives this member's
    /// sender key only; receivers derive the others' on their first frames. The sender switches
    /// now: call it only after the commit is merged.
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
    ) -> Result<(), MlsError> {
        let (cfg, layout) = (self.shared().cfg, self.shared().layout);
        if exporter_secret.len() != cfg.suite.key_len() {
            return Err(SframeError::InvalidKeyLength {
                what: "MLS exporter secret",
                expected: cfg.suite.key_len(),
                got: exporter_secret.len(),
            }
            .into());
        }
        // Validate every leaf index against the layout before touching any state (MLS-KEY-03).
        for &m in members {
            layout.kid(cfg.context, m, epoch)?;
        }
        let sender = match own {
            Some(i) => {
                let (kid, m) =
                    mls_sender_key(cfg.suite, exporter_secret, layout, cfg.context, i, epoch)?;
                Some(Arc::new(Mutex::new(SenderKey::new(
                    cfg.suite,
                    kid,
                    &m,
                    default_backend(),
                )?)))
            }
            None => None,
        };
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // The senders heard in the previous epoch will most likely speak in this one: derive
        // their material here, on the member's time, not on a receiver's first frame.
        let speakers = self.shared().take_speakers();
        let kdf = (!speakers.is_empty()).then(|| EpochKdf::new(cfg.suite, exporter_secret));
        let mut ahead = Vec::with_capacity(speakers.len());
        for i in speakers {
            if Some(i) == own || sorted.binary_search(&i).is_err() {
                continue;
            }
            if let Some(kdf) = &kdf {
                let kid = layout.kid(cfg.context, i, epoch)?;
                ahead.push((i, kdf.material(kid)?));
            }
        }
        let secret = Arc::new(EpochSecret {
            epoch,
            base: Secret::from_slice(exporter_secret),
            members: sorted,
            ahead,
        });
        let old = self.shared().set.load_full();
        let mask = self.shared().epoch_mask();
        // The previous current epoch becomes retained, with a deadline (MLS-KEY-02); an epoch
        // with the new one's low bits loses its KIDs to it (RFC 9605 §5.2).
        let deadline = now.saturating_add(cfg.retention);
        let mut retained: Vec<Slot> = Vec::with_capacity(old.epochs.len());
        for s in &old.epochs {
            if s.secret.epoch & mask == epoch & mask {
                self.stats.epochs_retired += 1;
                continue;
            }
            retained.push(Slot {
                secret: s.secret.clone(),
                retire_at: Some(s.retire_at.unwrap_or(deadline)),
            });
        }
        while retained.len() > cfg.max_retained_epochs {
            retained.pop();
            self.stats.epochs_retired += 1;
        }
        let before = retained.len();
        retained.retain(|s| s.retire_at.is_none_or(|d| d > now));
        self.stats.epochs_retired += (before - retained.len()) as u64;
        let mut epochs = Vec::with_capacity(retained.len() + 1);
        epochs.push(Slot {
            secret,
            retire_at: None,
        });
        epochs.extend(retained);
        self.stats.epochs_installed += 1;
        self.publish(epochs, sender, false);
        Ok(())
    }

    /// Retire retained epochs past their deadline (MLS-KEY-02): their secrets leave the
    /// published set, and receivers drop their keys. Publishes only if something changed.
    pub fn expire(&mut self, now: Duration) {
        let old = self.shared().set.load_full();
        if !old
            .epochs
            .iter()
            .any(|s| s.retire_at.is_some_and(|d| d <= now))
        {
            return;
        }
        let epochs: Vec<Slot> = old
            .epochs
            .iter()
            .filter(|s| s.retire_at.is_none_or(|d| d > now))
            .cloned()
            .collect();
        self.stats.epochs_retired += (old.epochs.len() - epochs.len()) as u64;
        self.publish(epochs, old.sender.clone(), old.removed);
    }

    /// Stop sending: the sender key leaves the set (zeroized once no encoder holds it), e.g.
    /// when this member is removed (MLS-SEC-03).
    pub fn stop_sending(&mut self) {
        let old = self.shared().set.load_full();
        if old.sender.is_some() {
            self.publish(old.epochs.clone(), None, old.removed);
        }
    }

    /// This member was removed: stop sending, and receivers hold no more frames (MLS-SEC-05).
    /// Installing an epoch (a rejoin) undoes it.
    pub fn removed(&mut self) {
        let old = self.shared().set.load_full();
        self.publish(old.epochs.clone(), None, true);
    }
}

/// Counters of a [`FrameDecryptor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecryptorStats {
    /// Senders' keys derived on their first frame of an epoch.
    pub keys_derived: u64,
    /// Senders' keys installed from material the member derived ahead (MLS-KEY-09).
    pub keys_ahead: u64,
    /// Frames held for an unknown epoch.
    pub held: u64,
    /// Held frames released (decrypted) when their epoch arrived.
    pub released: u64,
    /// Held frames dropped (bounds, age, removal, or failed to decrypt once released).
    pub held_dropped: u64,
    /// Largest number of frames held at once.
    pub max_held: usize,
}

struct HeldFrame {
    frame: Vec<u8>,
    metadata: Vec<u8>,
    tag: u64,
    epoch_bits: u64,
    since: Duration,
}

/// One receiver's decryption state over a member's [`FrameKeys`] (MLS-KEY-08): the keys it
/// derived, each with its replay window, and the frames it holds for an epoch not known yet.
pub struct FrameDecryptor {
    shared: Arc<Shared>,
    set: Arc<KeySet>,
    store: KeyStore,
    /// Every KID derived from the sets seen, with its epoch. An entry outlives its key's
    /// expiry, so an expired key is never derived again with a fresh replay window; it goes
    /// when its epoch leaves the set.
    derived: HashMap<u64, u64>,
    held: VecDeque<HeldFrame>,
    held_bytes: usize,
    released: Vec<Released>,
    stats: DecryptorStats,
}

impl core::fmt::Debug for FrameDecryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameDecryptor")
            .field("generation", &self.set.generation)
            .field("keys", &self.store.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl FrameDecryptor {
    fn new(shared: Arc<Shared>) -> Self {
        let set = Arc::new(KeySet {
            generation: u64::MAX, // never published: the first refresh loads the real one
            epochs: Vec::new(),
            sender: None,
            removed: false,
        });
        Self {
            store: KeyStore::with_backend(default_backend()),
            shared,
            set,
            derived: HashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            released: Vec::new(),
            stats: DecryptorStats::default(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> DecryptorStats {
        self.stats
    }

    /// Frames held right now.
    #[must_use]
    pub fn held_frames(&self) -> usize {
        self.held.len()
    }

    /// Keys derived and still installed.
    #[must_use]
    pub fn installed_keys(&self) -> usize {
        self.store.len()
    }

    /// Frames released since the last call: held frames whose epoch was published, decrypted.
    /// [`refresh`](Self::refresh) and every decryption can release frames.
    pub fn take_released(&mut self) -> Vec<Released> {
        std::mem::take(&mut self.released)
    }

    /// Catch up with the set the member published last: drop keys of epochs that left it,
    /// set retained keys' deadlines, release held frames whose epoch arrived, expire.
    pub fn refresh(&mut self, now: Duration) {
        let generation = self.shared.set.load().generation;
        if generation != self.set.generation {
            self.set = self.shared.set.load_full();
            let (set, store, mask) = (&self.set, &mut self.store, self.shared.epoch_mask());
            self.derived.retain(
                |&kid, &mut epoch| match set.slot_for_bits(epoch & mask, mask) {
                    Some(s) if s.secret.epoch == epoch => {
                        if let Some(d) = s.retire_at {
                            store.set_expiry(kid, d);
                        }
                        true
                    }
                    _ => {
                        store.retire(kid);
                        false
                    }
                },
            );
            if self.set.removed {
                while !self.held.is_empty() {
                    self.drop_oldest_held();
                }
            } else {
                self.release_held(now);
            }
        }
        self.expire(now);
    }

    fn expire(&mut self, now: Duration) {
        self.store.expire(now);
        while self
            .held
            .front()
            .is_some_and(|h| now.saturating_sub(h.since) > self.shared.cfg.max_hold)
        {
            self.drop_oldest_held();
        }
    }

    fn drop_oldest_held(&mut self) {
        if let Some(h) = self.held.pop_front() {
            self.held_bytes -= h.frame.len() + h.metadata.len();
            self.stats.held_dropped += 1;
        }
    }

    fn release_held(&mut self, now: Duration) {
        let mask = self.shared.epoch_mask();
        let (ready, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| self.set.slot_for_bits(h.epoch_bits, mask).is_some());
        self.held = keep;
        for mut h in ready {
            self.held_bytes -= h.frame.len() + h.metadata.len();
            let kid = match SframeHeader::parse(&h.frame) {
                Ok((hdr, _)) => hdr.kid,
                Err(_) => {
                    self.stats.held_dropped += 1;
                    continue;
                }
            };
            self.derive(kid, now);
            match self.store.decrypt_in_place(&h.metadata, &mut h.frame) {
                Ok(d) => {
                    let sender = self.shared.layout.split(d.header.kid).1 as u32;
                    self.released.push(Released {
                        sender,
                        metadata: h.metadata,
                        tag: h.tag,
                        plaintext: d.plaintext.to_vec(),
                    });
                    self.stats.released += 1;
                }
                Err(_) => self.stats.held_dropped += 1,
            }
        }
    }

    /// Install the key of `kid` from the current set if its epoch is there, not past its
    /// deadline, lists the sender, and this KID was never derived before for that epoch
    /// (MLS-KEY-08). Returns whether the key is installed now.
    fn derive(&mut self, kid: u64, now: Duration) -> bool {
        if self.store.contains(kid) {
            return true;
        }
        let (cfg, layout, mask) = (
            &self.shared.cfg,
            self.shared.layout,
            self.shared.epoch_mask(),
        );
        let (ctx, idx, bits) = layout.split(kid);
        if ctx != cfg.context {
            return false;
        }
        let Ok(idx) = u32::try_from(idx) else {
            return false;
        };
        let Some(slot) = self.set.slot_for_bits(bits, mask) else {
            return false;
        };
        let epoch = slot.secret.epoch;
        if slot.retire_at.is_some_and(|d| d <= now)
            || self.derived.get(&kid) == Some(&epoch)
            || slot.secret.members.binary_search(&idx).is_err()
        {
            return false;
        }
        let ahead = slot.secret.ahead.iter().find(|(i, _)| *i == idx);
        let material = match ahead {
            Some((_, m)) => m.clone(),
            None => match derive_key_material(cfg.suite, kid, slot.secret.base.expose()) {
                Ok(m) => m,
                Err(_) => return false,
            },
        };
        if self.store.insert(cfg.suite, kid, &material).is_err() {
            return false;
        }
        if let Some(d) = slot.retire_at {
            self.store.set_expiry(kid, d);
        }
        self.derived.insert(kid, epoch);
        self.shared.heard(u64::from(idx));
        if ahead.is_some() {
            self.stats.keys_ahead += 1;
        } else {
            self.stats.keys_derived += 1;
        }
        true
    }

    /// Whether the low epoch bits `bits` are ahead of the current epoch by less than half the
    /// epoch space (so not a stale epoch that wrapped; exactly half is ambiguous and refused).
    fn is_ahead(&self, bits: u64) -> bool {
        let Some(cur) = self.set.current() else {
            return true;
        };
        let space = 1u64 << self.shared.cfg.epoch_bits;
        let d = (bits + space - (cur & (space - 1))) % space;
        d > 0 && d < space / 2
    }

    /// Decrypt a frame in place, or hold it if it names a newer epoch (MLS-KEY-05). `tag` comes
    /// back in [`Released`] if the frame is held, so the caller can tell which track a released
    /// frame belongs to.
    ///
    /// # Errors
    /// Any [`SframeError`] for a frame that can be neither decrypted nor held (unknown sender in
    /// a known epoch, a retired epoch, a forgery, a replay).
    pub fn decrypt_in_place<'a>(
        &mut self,
        metadata: &[u8],
        buf: &'a mut [u8],
        now: Duration,
        tag: u64,
    ) -> Result<Received<'a>, MlsError> {
        self.refresh(now);
        let kid = SframeHeader::parse(buf).map_err(SframeError::from)?.0.kid;
        let cfg = self.shared.cfg;
        let (ctx, _, bits) = self.shared.layout.split(kid);
        let size = buf.len().saturating_add(metadata.len());
        if !self.derive(kid, now)
            && !self.set.removed
            && ctx == cfg.context
            && self
                .set
                .slot_for_bits(bits, self.shared.epoch_mask())
                .is_none()
            && self.is_ahead(bits)
            // A frame the bounds could never hold (0 frames, or larger than the byte bound)
            // is not held; it fails below as an unknown KID.
            && cfg.max_held_frames > 0
            && size <= cfg.max_held_bytes
        {
            while self.held.len() >= cfg.max_held_frames
                || self.held_bytes + size > cfg.max_held_bytes
            {
                self.drop_oldest_held();
            }
            self.held_bytes += size;
            self.held.push_back(HeldFrame {
                frame: buf.to_vec(),
                metadata: metadata.to_vec(),
                tag,
                epoch_bits: bits,
                since: now,
            });
            self.stats.held += 1;
            self.stats.max_held = self.stats.max_held.max(self.held.len());
            return Ok(Received::Held);
        }
        let d = self.store.decrypt_in_place(metadata, buf)?;
        Ok(Received::Plaintext {
            sender: self.shared.layout.split(kid).1 as u32,
            epoch_bits: bits,
            plaintext: d.plaintext,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use veil_sframe::{SenderKey, default_backend, mls_sender_key};

    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    fn seal(secret: &[u8], epoch: u64, index: u32, cfg: &KeyConfig, ctr: u64) -> Vec<u8> {
        let layout = cfg.layout().unwrap();
        let (kid, m) = mls_sender_key(cfg.suite, secret, layout, 0, index, epoch).unwrap();
        let mut s = SenderKey::new(cfg.suite, kid, &m, default_backend())
            .unwrap()
            .with_counter(ctr);
        let mut out = vec![0u8; 64];
        let n = s.encrypt(b"", b"frame", &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn open(rx: &mut FrameDecryptor, f: &[u8], now: Duration) -> Result<Option<u32>, MlsError> {
        let mut buf = f.to_vec();
        match rx.decrypt_in_place(b"", &mut buf, now, 0)? {
            Received::Plaintext { sender, .. } => Ok(Some(sender)),
            Received::Held => Ok(None),
        }
    }

    #[test]
    fn an_exported_epoch_keys_a_ring_in_another_address_space() {
        // MLS-KEY-11: a worker's ring fed from the member's export encrypts as the member
        // would, and the member's receivers read it; nothing exported before an epoch.
        let cfg = KeyConfig::default();
        let mut member = KeyRing::new(cfg).unwrap();
        assert!(member.frames().export_current().is_none());
        member
            .install_epoch(7, &A, &[0, 3, 9], Some(3), Duration::ZERO)
            .unwrap();
        let export = member.frames().export_current().unwrap();
        assert_eq!(
            (export.epoch, export.members.as_slice(), export.own),
            (7, &[0, 3, 9][..], Some(3))
        );
        assert_eq!(&export.secret[..], &A[..]);
        assert!(!format!("{export:?}").contains("secret"), "{export:?}");
        let mut worker = KeyRing::new(cfg).unwrap();
        worker
            .install_epoch(
                export.epoch,
                &export.secret,
                &export.members,
                export.own,
                Duration::ZERO,
            )
            .unwrap();
        let mut out = vec![0u8; 64];
        let n = worker.frames().encrypt(b"", b"frame", &mut out).unwrap();
        let mut rx = member.frames().decryptor();
        assert_eq!(open(&mut rx, &out[..n], Duration::ZERO).unwrap(), Some(3));
        // The worker receives the others' frames of the epoch.
        let mut wrx = worker.frames().decryptor();
        assert_eq!(
            open(&mut wrx, &seal(&A, 7, 9, &cfg, 0), Duration::ZERO).unwrap(),
            Some(9)
        );
        // A receive-only member exports no own leaf.
        member.stop_sending();
        assert_eq!(member.frames().export_current().unwrap().own, None);
    }

    #[test]
    fn a_sender_key_is_derived_on_its_first_frame_only() {
        // MLS-KEY-08: installing a 1000-member epoch derives no receive key.
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        let members: Vec<u32> = (0..1000).collect();
        ring.install_epoch(1, &A, &members, Some(0), Duration::ZERO)
            .unwrap();
        let mut rx = ring.frames().decryptor();
        rx.refresh(Duration::ZERO);
        assert_eq!((rx.stats().keys_derived, rx.installed_keys()), (0, 0));
        for ctr in 0..3 {
            assert_eq!(
                open(&mut rx, &seal(&A, 1, 517, &cfg, ctr), Duration::ZERO).unwrap(),
                Some(517)
            );
        }
        assert_eq!((rx.stats().keys_derived, rx.installed_keys()), (1, 1));
    }

    #[test]
    fn the_member_derives_ahead_the_keys_of_senders_heard_in_the_previous_epoch() {
        // MLS-KEY-09: member 7 spoke in epoch 1, so epoch 2 carries its material and a
        // receiver's first frame of it derives nothing; member 8, silent before, is derived
        // lazily. Both decrypt (the material is the RFC's).
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        let members: Vec<u32> = (0..10).collect();
        ring.install_epoch(1, &A, &members, Some(0), Duration::ZERO)
            .unwrap();
        let mut rx = ring.frames().decryptor();
        assert_eq!(
            open(&mut rx, &seal(&A, 1, 7, &cfg, 0), Duration::ZERO).unwrap(),
            Some(7)
        );
        ring.install_epoch(2, &B, &members, Some(0), Duration::ZERO)
            .unwrap();
        let mut other = ring.frames().decryptor();
        for rx in [&mut rx, &mut other] {
            let before = rx.stats();
            assert_eq!(
                open(rx, &seal(&B, 2, 7, &cfg, 0), Duration::ZERO).unwrap(),
                Some(7)
            );
            assert_eq!(
                open(rx, &seal(&B, 2, 8, &cfg, 0), Duration::ZERO).unwrap(),
                Some(8)
            );
            let after = rx.stats();
            assert_eq!(after.keys_ahead - before.keys_ahead, 1);
            assert_eq!(after.keys_derived - before.keys_derived, 1);
        }
        // Heard in epoch 2: 7 and 8 are both ahead in epoch 3; the member's own leaf never is.
        assert!(ring.frames().encrypt(b"", b"x", &mut [0u8; 64]).is_ok());
        ring.install_epoch(3, &A, &members, Some(0), Duration::ZERO)
            .unwrap();
        let ahead: Vec<u32> = ring.frames().snapshot().epochs[0]
            .secret
            .ahead
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(ahead, vec![7, 8]);
    }

    #[test]
    fn a_sender_outside_the_epoch_is_refused_not_held() {
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        ring.install_epoch(1, &A, &[0, 1, 3], Some(0), Duration::ZERO)
            .unwrap();
        let mut rx = ring.frames().decryptor();
        let r = open(&mut rx, &seal(&A, 1, 2, &cfg, 0), Duration::ZERO);
        assert!(
            matches!(r, Err(MlsError::Sframe(SframeError::UnknownKid { .. }))),
            "{r:?}"
        );
        assert_eq!(rx.held_frames(), 0);
    }

    #[test]
    fn an_expired_key_is_never_derived_again_with_a_fresh_replay_window() {
        let cfg = KeyConfig {
            retention: Duration::from_secs(1),
            ..KeyConfig::default()
        };
        let mut ring = KeyRing::new(cfg).unwrap();
        ring.install_epoch(1, &A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        let mut rx = ring.frames().decryptor();
        let f = seal(&A, 1, 1, &cfg, 0);
        assert_eq!(open(&mut rx, &f, Duration::ZERO).unwrap(), Some(1));
        assert!(
            open(&mut rx, &f, Duration::ZERO).is_err(),
            "a replay is refused"
        );
        ring.install_epoch(2, &B, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        // In its retention the old epoch decrypts, past it not (even before the member prunes
        // the set): the replayed frame gets no second chance.
        let g = seal(&A, 1, 1, &cfg, 1);
        assert_eq!(
            open(&mut rx, &g, Duration::from_millis(500)).unwrap(),
            Some(1)
        );
        let late = Duration::from_secs(2);
        let r = open(&mut rx, &f, late);
        assert!(
            matches!(r, Err(MlsError::Sframe(SframeError::KeyRetired { .. }))),
            "{r:?}"
        );
        ring.expire(late);
        assert_eq!(ring.frames().snapshot().epochs(), vec![2]);
        assert!(open(&mut rx, &seal(&A, 1, 1, &cfg, 9), late).is_err());
    }

    #[test]
    fn a_new_epoch_with_the_same_low_bits_replaces_the_old_one() {
        // RFC 9605 §5.2: with E = 2, epoch 5 takes epoch 1's KIDs.
        let cfg = KeyConfig {
            epoch_bits: 2,
            max_retained_epochs: 8,
            retention: Duration::MAX,
            ..KeyConfig::default()
        };
        let mut ring = KeyRing::new(cfg).unwrap();
        let mut rx = ring.frames().decryptor();
        for (e, s) in [(1, A), (2, B), (3, A), (4, B)] {
            ring.install_epoch(e, &s, &[0, 1], Some(0), Duration::ZERO)
                .unwrap();
        }
        assert_eq!(
            open(&mut rx, &seal(&A, 1, 1, &cfg, 0), Duration::ZERO).unwrap(),
            Some(1)
        );
        ring.install_epoch(5, &B, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        assert_eq!(ring.frames().snapshot().epochs(), vec![5, 4, 3, 2]);
        assert!(open(&mut rx, &seal(&A, 1, 1, &cfg, 1), Duration::ZERO).is_err());
        assert_eq!(
            open(&mut rx, &seal(&B, 5, 1, &cfg, 0), Duration::ZERO).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn every_encoder_shares_one_counter_so_no_nonce_repeats() {
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        ring.install_epoch(1, &A, &[0, 1], Some(1), Duration::ZERO)
            .unwrap();
        let (audio, video) = (ring.frames(), ring.frames());
        let mut rx = ring.frames().decryptor();
        let mut seen = std::collections::HashSet::new();
        for i in 0..20 {
            let keys = if i % 2 == 0 { &audio } else { &video };
            let mut out = [0u8; 64];
            let n = keys.encrypt(b"", b"frame", &mut out).unwrap();
            let ctr = SframeHeader::parse(&out[..n]).unwrap().0.ctr;
            assert!(seen.insert(ctr), "counter {ctr} used twice");
            assert_eq!(open(&mut rx, &out[..n], Duration::ZERO).unwrap(), Some(1));
        }
    }

    #[test]
    fn frames_are_encrypted_and_decrypted_while_the_member_holds_its_own_lock() {
        // MLS-KEY-07: the member's MLS work (here: a lock on the ring held across a slow step)
        // does not stop the frame path, which holds only `FrameKeys`.
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        ring.install_epoch(1, &A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        let frames = ring.frames();
        let member = Arc::new(Mutex::new(ring));
        let (locked_tx, locked_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let m = member.clone();
        let mls = std::thread::spawn(move || {
            let mut ring = m.lock().unwrap();
            locked_tx.send(()).unwrap();
            // "Commit creation": holds the member until the frame path has finished.
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            ring.install_epoch(2, &B, &[0, 1], Some(0), Duration::ZERO)
                .unwrap();
        });
        locked_rx.recv().unwrap();
        let mut rx = frames.decryptor();
        for _ in 0..100 {
            let mut out = [0u8; 64];
            let n = frames.encrypt(b"", b"frame", &mut out).unwrap();
            assert_eq!(open(&mut rx, &out[..n], Duration::ZERO).unwrap(), Some(0));
        }
        done_tx.send(()).unwrap();
        mls.join().unwrap();
        assert_eq!(frames.epoch(), Some(2));
    }

    #[test]
    fn held_frames_are_released_when_the_member_publishes_their_epoch() {
        let cfg = KeyConfig::default();
        let mut ring = KeyRing::new(cfg).unwrap();
        ring.install_epoch(1, &A, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        let mut rx = ring.frames().decryptor();
        assert_eq!(
            open(&mut rx, &seal(&B, 2, 1, &cfg, 0), Duration::ZERO).unwrap(),
            None
        );
        rx.refresh(Duration::ZERO);
        assert!(rx.take_released().is_empty());
        ring.install_epoch(2, &B, &[0, 1], Some(0), Duration::ZERO)
            .unwrap();
        rx.refresh(Duration::ZERO);
        let r = rx.take_released();
        assert_eq!(
            (r.len(), r[0].sender, &r[0].plaintext[..]),
            (1, 1, &b"frame"[..])
        );
        // Removal drops what is held and holds nothing more.
        assert_eq!(
            open(&mut rx, &seal(&A, 3, 1, &cfg, 0), Duration::ZERO).unwrap(),
            None
        );
        ring.removed();
        rx.refresh(Duration::ZERO);
        assert_eq!((rx.held_frames(), rx.stats().held_dropped), (0, 1));
        assert!(open(&mut rx, &seal(&A, 3, 1, &cfg, 1), Duration::ZERO).is_err());
        assert!(ring.frames().encrypt(b"", b"x", &mut [0u8; 64]).is_err());
    }
}
