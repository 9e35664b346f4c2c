//! Per-subscriber header-extension rewriting (SFU-EXT-01..02).
//!
//! Each connection negotiates its own `a=extmap` ids, and webrtc-rs writes only extensions
//! negotiated on the connection it sends on. So before forwarding, the SFU maps every element from
//! the publisher's id to the subscriber's id for the same URI. It drops elements the subscriber did
//! not negotiate, and writes the block again in the smallest form that fits. Element data is copied
//! unchanged. The DD in particular is forwarded as it came.

use veil_wire::ext::{Extension, Extensions, write_block};

use crate::error::SfuError;

/// Publisher id → subscriber id, for the URIs both connections negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtMap {
    map: [Option<u8>; 256],
}

impl Default for ExtMap {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl ExtMap {
    /// Build from pairs of (publisher id, subscriber id).
    #[must_use]
    pub fn new(pairs: &[(u8, u8)]) -> Self {
        let mut map = [None; 256];
        for &(from, to) in pairs {
            map[usize::from(from)] = Some(to);
        }
        Self { map }
    }

    /// The subscriber's id for the publisher's `id`, if the subscriber negotiated that URI
    /// (SFU-EXT-01). The shell maps already-parsed elements with it and picks the form with
    /// [`veil_wire::ext::form_for`] (SFU-EXT-02), so element data is never copied or changed.
    #[must_use]
    pub fn map_id(&self, id: u8) -> Option<u8> {
        self.map[usize::from(id)]
    }

    /// Rewrite one packet's extension block into `out`; returns the new profile and length
    /// (0 and 0 if nothing is left to send).
    ///
    /// # Errors
    /// [`SfuError::Metadata`] for a malformed block, or `out` too small (the block can grow by
    /// one byte per element when it must switch to the two-byte form).
    pub fn rewrite(
        &self,
        profile: u16,
        body: &[u8],
        out: &mut [u8],
    ) -> Result<(u16, usize), SfuError> {
        let mut els: [Extension<'_>; 32] = [Extension { id: 0, data: &[] }; 32];
        let mut n = 0;
        for e in Extensions::with_profile(profile, body)? {
            let e = e?;
            if let Some(to) = self.map[usize::from(e.id)] {
                if n == els.len() {
                    break; // more than 32 negotiated elements on one packet: keep the first 32
                }
                els[n] = Extension {
                    id: to,
                    data: e.data,
                };
                n += 1;
            }
        }
        if n == 0 {
            return Ok((0, 0));
        }
        Ok(write_block(&els[..n], out)?)
    }
}

// Caller input never panics (issue 19): any list of id pairs, duplicates included, builds a
// map; the last pair for an id wins.
#[cfg(test)]
mod caller_input {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_pairs(pairs in proptest::collection::vec(any::<(u8, u8)>(), 0..300)) {
            let m = ExtMap::new(&pairs);
            for (from, _) in &pairs {
                let last = pairs.iter().rev().find(|p| p.0 == *from).map(|p| p.1);
                prop_assert_eq!(m.map_id(*from), last);
            }
        }
    }
}
