//! A link between a peer and the SFU, one direction: what passes, what a loss model drops.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

/// Which RTP packets a link loses.
#[derive(Debug)]
pub enum Loss {
    /// None.
    None,
    /// Every `n`th RTP packet of payload type `pt` (counted per link).
    EveryNth { pt: u8, n: u64 },
    /// Each RTP packet of payload type `pt` with probability `percent`/100, from a seeded
    /// generator.
    Random {
        pt: u8,
        percent: u32,
        rng: Box<StdRng>,
    },
}

/// One direction between a peer and the SFU.
#[derive(Debug)]
pub struct Link {
    pub loss: Loss,
    /// Whether anything passes at all (a cut cable: nothing in either direction is delivered).
    pub up: bool,
    /// RTP packets of the loss's payload type seen, and (SSRC, sequence number) of those lost.
    pub seen: u64,
    pub lost: Vec<(u32, u16)>,
    /// RTP packets that passed, by payload type, with their clear header's (SSRC, sequence).
    pub passed: HashMap<u8, Vec<(u32, u16)>>,
    /// Datagrams that passed.
    pub datagrams: u64,
    /// When the last STUN message passed (a consent check, on a peer's uplink).
    pub last_stun: Option<Duration>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            loss: Loss::None,
            up: true,
            seen: 0,
            lost: Vec::new(),
            passed: HashMap::new(),
            datagrams: 0,
            last_stun: None,
        }
    }
}

/// RFC 7983: RTP or RTCP; RTCP packet types are 192..=223. SRTP leaves the header clear.
fn rtp_header(d: &[u8]) -> Option<(u8, u32, u16)> {
    if d.len() < 12 || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
        return None;
    }
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((d[1] & 0x7f, ssrc, u16::from_be_bytes([d[2], d[3]])))
}

impl Link {
    /// Whether `d`, at `at`, gets through.
    pub(super) fn pass(&mut self, d: &[u8], at: Duration) -> bool {
        if !self.up {
            return false;
        }
        // RFC 7983: 0..=3 is STUN.
        if d.first().is_some_and(|b| *b < 4) {
            self.last_stun = Some(at);
        }
        if let Some((pt, ssrc, seq)) = rtp_header(d) {
            let lose = match &mut self.loss {
                Loss::None => false,
                Loss::EveryNth { pt: p, n } if *p == pt => {
                    self.seen += 1;
                    self.seen.is_multiple_of(*n)
                }
                Loss::Random {
                    pt: p,
                    percent,
                    rng,
                } if *p == pt => {
                    self.seen += 1;
                    rng.random_range(0..100) < *percent
                }
                _ => false,
            };
            if lose {
                self.lost.push((ssrc, seq));
                return false;
            }
            self.passed.entry(pt).or_default().push((ssrc, seq));
        }
        self.datagrams += 1;
        true
    }

    /// RTP packets of payload type `pt` that passed.
    pub fn passed(&self, pt: u8) -> &[(u32, u16)] {
        self.passed.get(&pt).map_or(&[], Vec::as_slice)
    }
}
