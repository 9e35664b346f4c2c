//! Which participant may send which SSRC (SFU-SEC-01).
//!
//! The first participant to send an SSRC in a room owns it until it leaves. A packet with an
//! SSRC owned by someone else is a spoof: it is rejected and counted, so one participant cannot
//! inject media as another.

use std::collections::HashMap;

use crate::error::SfuError;

/// SSRC ownership within one room.
#[derive(Debug, Clone, Default)]
pub struct SsrcOwners {
    owners: HashMap<u32, u64>,
    spoofs: u64,
}

impl SsrcOwners {
    /// Check (and, the first time, claim) `ssrc` for `participant`.
    ///
    /// # Errors
    /// [`SfuError::SpoofedSsrc`] if another participant owns it.
    pub fn check(&mut self, participant: u64, ssrc: u32) -> Result<(), SfuError> {
        match *self.owners.entry(ssrc).or_insert(participant) {
            owner if owner == participant => Ok(()),
            owner => {
                self.spoofs += 1;
                Err(SfuError::SpoofedSsrc {
                    ssrc,
                    owner,
                    sender: participant,
                })
            }
        }
    }

    /// Release every SSRC of a participant who left.
    pub fn release(&mut self, participant: u64) {
        self.owners.retain(|_, p| *p != participant);
    }

    /// Spoofed packets rejected so far.
    #[must_use]
    pub fn spoofs(&self) -> u64 {
        self.spoofs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_participant_cannot_send_another_participants_ssrc() {
        let mut o = SsrcOwners::default();
        o.check(1, 0xAAAA).unwrap();
        o.check(1, 0xAAAA).unwrap();
        o.check(2, 0xBBBB).unwrap();
        assert!(matches!(
            o.check(2, 0xAAAA),
            Err(SfuError::SpoofedSsrc {
                ssrc: 0xAAAA,
                owner: 1,
                sender: 2
            })
        ));
        assert_eq!(o.spoofs(), 1);
        o.release(1);
        o.check(2, 0xAAAA).unwrap();
    }
}
