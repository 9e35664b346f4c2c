//! Which packets of a stream have arrived: a retransmission of one that has is redundant
//! (a bandwidth probe, or a repair that crossed its late original) and is dropped rather than
//! handed on twice (SFU-RTX-07).

/// How far back [`Arrivals`] remembers, in sequence numbers: the send history's length, so
/// that anything the sender can still resend is covered.
const WINDOW: usize = super::HISTORY_PACKETS;
const WORDS: usize = WINDOW / 64;

/// The sequence numbers of one stream that arrived, over the last 1 024 numbers (the send
/// history's length).
#[derive(Debug, Clone)]
pub struct Arrivals {
    newest: Option<u16>,
    bits: [u64; WORDS],
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            newest: None,
            bits: [0; WORDS],
        }
    }
}

impl Arrivals {
    fn bit(seq: u16) -> (usize, u64) {
        let i = usize::from(seq) % WINDOW;
        (i / 64, 1 << (i % 64))
    }

    /// Record that `seq` arrived. Returns false if it had already (within the window); a number
    /// older than the window counts as new, since nothing is known of it.
    pub fn insert(&mut self, seq: u16) -> bool {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        };
        let ahead = seq.wrapping_sub(newest);
        if ahead != 0 && ahead < 0x8000 {
            // Newer: the numbers skipped (and their slots' old occupants) have not arrived.
            for i in 1..=usize::from(ahead).min(WINDOW) {
                let (w, b) = Self::bit(newest.wrapping_add(i as u16));
                self.bits[w] &= !b;
            }
            self.newest = Some(seq);
        } else if usize::from(newest.wrapping_sub(seq)) >= WINDOW {
            return true;
        }
        let (w, b) = Self::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_arrives_once_and_gaps_stay_open_until_filled() {
        let mut a = Arrivals::default();
        assert!(a.insert(65_530));
        assert!(!a.insert(65_530), "again");
        // Across the wrap, with a gap at 65 533..=1.
        assert!(a.insert(65_532));
        assert!(a.insert(2));
        assert!(a.insert(0), "a repair fills the gap");
        assert!(!a.insert(0));
        assert!(a.insert(65_533));
        // Far behind the newest: unknown, so new (and not recorded over a live slot).
        assert!(a.insert(2u16.wrapping_sub(WINDOW as u16)));
        assert!(!a.insert(2));
        // A jump past the whole window forgets everything before it.
        assert!(a.insert(30_000));
        assert!(a.insert(30_000u16.wrapping_sub(1)));
        assert!(a.insert(30_000u16.wrapping_sub(WINDOW as u16 - 1)));
    }
}
