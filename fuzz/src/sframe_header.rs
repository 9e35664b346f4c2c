//! The `sframe_header` target (fuzz/README.md).
use veil_wire::SframeHeader;

/// SFrame header parse: never panics; whatever parses re-encodes to the same bytes (the
/// encoding is canonical, SF-HDR-03).
pub fn sframe_header(data: &[u8]) {
    if let Ok((h, n)) = SframeHeader::parse(data) {
        let mut buf = [0u8; veil_wire::MAX_HEADER_LEN];
        let m = h.write(&mut buf).expect("a parsed header fits");
        assert_eq!(
            &buf[..m],
            &data[..n],
            "parse/write must round-trip byte for byte"
        );
    }
}
