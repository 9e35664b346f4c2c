//! The `reassembly` target (fuzz/README.md).
use veil_wire::packetize::{Output, PacketFormat, Reassembler, ReassemblerConfig, RtpIn};

/// Reassembly of attacker-chosen packets in all three formats: never panics, pending state stays
/// within its bounds, and every output frame is no larger than the bytes that went in.
/// Input: a format byte, then packets as [seq(2) ts(1) flags(1) len(1) payload(len)].
pub fn reassembly(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let format =
        [PacketFormat::Vp8, PacketFormat::Opus, PacketFormat::Sframe][usize::from(sel % 3)];
    let cfg = ReassemblerConfig {
        max_pending_frames: 8,
        max_frame_bytes: 4096,
        max_packets_per_frame: 64,
        reorder_window: 32,
    };
    let mut r = Reassembler::with_config(format, cfg);
    let mut fed = 0usize;
    while rest.len() >= 5 {
        let seq = u16::from_be_bytes([rest[0], rest[1]]);
        let (ts, flags) = (u32::from(rest[2]), rest[3]);
        let len = usize::from(rest[4]).min(rest.len() - 5);
        let payload = &rest[5..5 + len];
        rest = &rest[5 + len..];
        fed += len;
        let hint = |bit: u8| (flags & 0x10 != 0).then_some(flags & bit != 0);
        let _ = r.push(RtpIn {
            seq,
            timestamp: ts,
            marker: flags & 1 != 0,
            payload,
            start: hint(2),
            end: hint(4),
        });
        assert!(r.pending_frames() <= 8);
        while let Some(o) = r.poll() {
            if let Output::Complete(f) = o {
                assert!(f.data.len() <= fed && f.data.len() <= 4096);
            }
        }
    }
}
