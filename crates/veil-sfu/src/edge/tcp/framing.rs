//! RFC 4571 framing, as ICE-TCP uses it (RFC 6544 §3): on the stream, every STUN, DTLS, SRTP
//! or SRTCP packet follows its length, two bytes in network order. Sans I/O: bytes read from a
//! stream go in, whole packets come out; a packet goes in, its frame comes out.
//!
//! The decoder bounds what one stream can make the SFU hold (SFU-TCP-03): a frame whose length
//! names more than its limit ends the stream at once (nothing of its body is waited for), so
//! the buffer never holds more than one unfinished frame plus the last read.

use bytes::{Buf, BytesMut};

use crate::error::SfuError;

/// The length prefix.
pub const HEADER: usize = 2;

/// The longest packet the SFU takes from an ICE-TCP stream (SFU-TCP-03). What arrives over UDP
/// is at most a path MTU (1,200–1,500 bytes for WebRTC stacks, which also frame their TCP
/// packets at that size); 4 KiB leaves room without letting a stream hold much.
pub const MAX_FRAME: usize = 4096;

/// `packet` with its RFC 4571 length in front.
///
/// # Errors
/// [`SfuError::TcpFrame`] for a packet longer than a frame can say (65,535 bytes).
pub fn encode(packet: &[u8]) -> Result<BytesMut, SfuError> {
    let len = u16::try_from(packet.len()).map_err(|_| SfuError::TcpFrame {
        len: packet.len(),
        max: usize::from(u16::MAX),
    })?;
    let mut out = BytesMut::with_capacity(HEADER + packet.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(out)
}

/// Whole packets out of an RFC 4571 byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
    /// Set once a frame was too long: the stream is out of step and nothing more comes out.
    broken: bool,
}

impl FrameDecoder {
    /// A decoder that takes packets of at most `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            broken: false,
        }
    }

    /// Bytes as they were read from the stream (any split: a frame may arrive in pieces, or
    /// many in one read).
    pub fn extend(&mut self, bytes: &[u8]) {
        if !self.broken {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held: at most one unfinished frame plus what the last [`FrameDecoder::extend`]
    /// added, when every whole packet is taken out after each read.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole packet, if one has arrived. Empty frames carry nothing and are skipped.
    ///
    /// # Errors
    /// [`SfuError::TcpFrame`] once a frame's length is over the limit; every later call says
    /// the same, and the buffer is freed.
    pub fn next_packet(&mut self) -> Result<Option<BytesMut>, SfuError> {
        loop {
            if self.broken {
                return Err(SfuError::TcpFrame {
                    len: 0,
                    max: self.max,
                });
            }
            let Some(head) = self.buf.get(..HEADER) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
            if len > self.max {
                self.broken = true;
                self.buf = BytesMut::new();
                return Err(SfuError::TcpFrame { len, max: self.max });
            }
            if self.buf.len() < HEADER + len {
                return Ok(None);
            }
            self.buf.advance(HEADER);
            let packet = self.buf.split_to(len);
            if !packet.is_empty() {
                return Ok(Some(packet));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = d.next_packet().unwrap() {
            out.push(p.to_vec());
        }
        out
    }

    /// SFU-TCP-03: packets framed one after another come out whole and in order, however the
    /// stream is cut into reads (one byte at a time, or all at once).
    #[test]
    fn packets_come_out_whole_whatever_the_reads() {
        let packets: Vec<Vec<u8>> = (0..20u8)
            .map(|i| (0..usize::from(i) * 37).map(|j| (j as u8) ^ i).collect())
            .collect();
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend_from_slice(&encode(p).unwrap());
        }
        let want: Vec<Vec<u8>> = packets.iter().filter(|p| !p.is_empty()).cloned().collect();
        for chunk in [1, 2, 3, 7, 100, stream.len()] {
            let mut d = FrameDecoder::new(MAX_FRAME);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.extend(piece);
                got.extend(all(&mut d));
                assert!(d.buffered() < HEADER + MAX_FRAME + chunk, "chunk {chunk}");
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    /// SFU-TCP-03: a length over the limit ends the stream before its body arrives, frees
    /// what was held, and stays an error.
    #[test]
    fn a_frame_over_the_limit_breaks_the_stream_at_its_header() {
        let mut d = FrameDecoder::new(100);
        d.extend(&encode(&[1; 100]).unwrap());
        assert_eq!(all(&mut d), vec![vec![1; 100]]);
        d.extend(&[0, 101]);
        assert!(matches!(
            d.next_packet(),
            Err(SfuError::TcpFrame { len: 101, max: 100 })
        ));
        assert_eq!(d.buffered(), 0);
        d.extend(&encode(&[2; 10]).unwrap());
        assert_eq!(d.buffered(), 0);
        assert!(d.next_packet().is_err());
    }

    #[test]
    fn the_header_is_the_length_in_network_order() {
        let f = encode(&[9; 300]).unwrap();
        assert_eq!(&f[..2], &[1, 44]);
        assert_eq!(f.len(), 302);
        assert!(matches!(
            encode(&vec![0; 65_536]),
            Err(SfuError::TcpFrame { len: 65_536, .. })
        ));
        assert_eq!(encode(&vec![0; 65_535]).unwrap().len(), 65_537);
    }
}
