//! Per-stream reader state: the latest template structure and active decode targets
//! (RTP-DD-03, RTP-DD-09).

use std::sync::Arc;

use super::types::TemplateStructure;
use super::{DependencyDescriptor, all_targets};
use crate::error::Result;

/// Per-stream (per-SSRC) reader state: the newest template structure and the active decode
/// targets.
///
/// Rules (RTP-DD-03, RTP-DD-09):
/// - a descriptor without a structure is read against the latched one;
/// - a structure replaces the latched one unless its frame number is older (16-bit serial
///   arithmetic) than the frame that delivered the latched one. That is a key-frame packet
///   reordered behind a newer key frame, and later packets refer to the newer structure.
///   libwebrtc's receiver drops such packets for the same reason. The stale descriptor is still
///   returned, read against its own structure;
/// - the active decode targets are all of them when a structure latches, and whatever a packet
///   says after that, until the next update (AV1 RTP spec A.4, in arrival order here);
/// - RTX packets must not go through the latch of the stream they repair: read them with
///   [`DependencyDescriptor::parse`] and [`DdLatch::structure`].
#[derive(Debug, Clone, Default)]
pub struct DdLatch {
    structure: Option<Arc<TemplateStructure>>,
    /// Frame number of the descriptor that delivered `structure`.
    structure_frame: u16,
    active: u32,
    structures_seen: u64,
    stale_structures: u64,
}

impl DdLatch {
    /// Parse one packet's descriptor against the latched structure, and latch what it carries.
    ///
    /// # Errors
    /// As [`DependencyDescriptor::parse`]; the latch is unchanged on error.
    pub fn parse(&mut self, data: &[u8]) -> Result<DependencyDescriptor> {
        let dd = DependencyDescriptor::parse(data, self.structure.as_ref())?;
        if let Some(s) = &dd.attached_structure {
            let older = self.structure.is_some()
                && (dd.frame_number.wrapping_sub(self.structure_frame) as i16) < 0;
            if older {
                self.stale_structures += 1;
                return Ok(dd);
            }
            if self.structure.as_deref() != Some(&**s) {
                self.structures_seen += 1;
            }
            self.structure = Some(s.clone());
            self.structure_frame = dd.frame_number;
            self.active = all_targets(s.decode_target_count);
        }
        if let Some(mask) = dd.active_decode_targets {
            self.active = mask;
        }
        Ok(dd)
    }

    /// The latched structure.
    #[must_use]
    pub fn structure(&self) -> Option<&Arc<TemplateStructure>> {
        self.structure.as_ref()
    }

    /// The active decode targets (bit `i` = decode target `i`), once a structure is latched.
    #[must_use]
    pub fn active_decode_targets(&self) -> Option<u32> {
        self.structure.as_ref().map(|_| self.active)
    }

    /// How many distinct structures this stream has latched.
    #[must_use]
    pub fn structures_seen(&self) -> u64 {
        self.structures_seen
    }

    /// How many structures arrived older than the latched one and were not latched.
    #[must_use]
    pub fn stale_structures(&self) -> u64 {
        self.stale_structures
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::write::tests::random_structure;
    use super::*;
    use crate::error::WireError;

    fn write(d: &DependencyDescriptor, s: &TemplateStructure) -> Vec<u8> {
        let mut buf = [0u8; 255];
        let n = d.write(s, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Two structures with disjoint template-id ranges, as a sender must choose them.
    fn two_structures() -> (Arc<TemplateStructure>, Arc<TemplateStructure>) {
        let mut rng = StdRng::seed_from_u64(3);
        let a = random_structure(&mut rng);
        let mut b = random_structure(&mut rng);
        b.template_id_offset = a.template_id(a.templates.len());
        (Arc::new(a), Arc::new(b))
    }

    #[test]
    fn a_new_structure_replaces_the_latched_one_and_errors_change_nothing() {
        let (a, b) = two_structures();
        let mut latch = DdLatch::default();
        let delta_a = write(
            &DependencyDescriptor::new(true, true, a.template_id(0), 9, &a).unwrap(),
            &a,
        );
        // RTP-DD-03: nothing latched yet.
        assert!(matches!(
            latch.parse(&delta_a),
            Err(WireError::MissingStructure { .. })
        ));
        assert!(latch.structure().is_none() && latch.active_decode_targets().is_none());
        let key_a = DependencyDescriptor::new(true, false, a.template_id(0), 10, &a)
            .unwrap()
            .with_structure(a.clone());
        latch.parse(&write(&key_a, &a)).unwrap();
        assert_eq!(latch.structure(), Some(&a));
        assert_eq!(
            latch.active_decode_targets(),
            Some(all_targets(a.decode_target_count))
        );
        assert_eq!(latch.parse(&delta_a).unwrap().structure(), Some(&a));
        // A truncated packet leaves the latch as it was.
        assert!(latch.parse(&[0x80]).is_err());
        assert_eq!(latch.structure(), Some(&a));
        let key_b = DependencyDescriptor::new(true, false, b.template_id(0), 20, &b)
            .unwrap()
            .with_structure(b.clone());
        latch.parse(&write(&key_b, &b)).unwrap();
        assert_eq!(latch.structure(), Some(&b));
        assert_eq!(latch.structures_seen(), 2);
        // RTP-DD-04: a late delta of the old structure no longer resolves.
        assert!(matches!(
            latch.parse(&delta_a),
            Err(WireError::Malformed { .. })
        ));
    }

    /// RTP-DD-09: a key-frame packet reordered behind a newer key frame does not win, across
    /// the 16-bit wrap too; the same key frame's later packets (same frame number) do.
    #[test]
    fn an_older_structure_does_not_replace_a_newer_one() {
        let (a, b) = two_structures();
        for (old, new) in [(100u16, 101u16), (65_530, 4)] {
            let mut latch = DdLatch::default();
            let key = |s: &Arc<TemplateStructure>, n| {
                write(
                    &DependencyDescriptor::new(true, false, s.template_id(0), n, s)
                        .unwrap()
                        .with_structure(s.clone()),
                    s,
                )
            };
            latch.parse(&key(&b, new)).unwrap();
            let late = latch.parse(&key(&a, old)).unwrap();
            assert_eq!(late.attached_structure.as_ref(), Some(&a), "still read");
            assert_eq!(latch.structure(), Some(&b), "{old} after {new}");
            assert_eq!(latch.stale_structures(), 1);
            latch.parse(&key(&b, new)).unwrap();
            assert_eq!((latch.structures_seen(), latch.stale_structures()), (1, 1));
        }
    }

    /// RTP-DD-09: the active-targets mask holds until the next update or structure.
    #[test]
    fn active_decode_targets_are_latched_until_updated() {
        let (a, _) = two_structures();
        let all = all_targets(a.decode_target_count);
        let mut latch = DdLatch::default();
        let mut key = DependencyDescriptor::new(true, true, a.template_id(0), 1, &a)
            .unwrap()
            .with_structure(a.clone());
        latch.parse(&write(&key, &a)).unwrap();
        let mut d = DependencyDescriptor::new(true, true, a.template_id(0), 2, &a).unwrap();
        d.active_decode_targets = Some(1);
        latch.parse(&write(&d, &a)).unwrap();
        assert_eq!(latch.active_decode_targets(), Some(1));
        d.active_decode_targets = None;
        d.frame_number = 3;
        let plain = latch.parse(&write(&d, &a)).unwrap();
        assert_eq!(
            plain.active_decode_targets, None,
            "the packet itself says nothing"
        );
        assert_eq!(
            latch.active_decode_targets(),
            Some(1),
            "the stream still knows"
        );
        key.frame_number = 4;
        latch.parse(&write(&key, &a)).unwrap();
        assert_eq!(latch.active_decode_targets(), Some(all));
    }
}
