//! The `dd_parse` target (fuzz/README.md).
use veil_wire::dd::{DdLatch, DependencyDescriptor};

/// Dependency descriptor parse through a latch: never panics; whatever parses re-encodes and
/// reads back as the same descriptor. The input is a sequence of descriptors, each prefixed by
/// its length byte, fed to one latch (so structures latch as on a real stream).
pub fn dd_parse(data: &[u8]) {
    let mut latch = DdLatch::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (dd, next) = tail.split_at(len);
        rest = next;
        if let Ok(d) = latch.parse(dd) {
            let s = d
                .structure()
                .expect("a parsed descriptor has a structure")
                .clone();
            let mut buf = [0u8; 255];
            if let Ok(n) = d.write(&s, &mut buf) {
                let back =
                    DependencyDescriptor::parse(&buf[..n], Some(&s)).expect("our output parses");
                assert_eq!(back, d);
            }
        }
    }
}
