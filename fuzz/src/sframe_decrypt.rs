//! The `sframe_decrypt` target (fuzz/README.md).
use veil_sframe::{CipherSuite, KeyStore};

/// SFrame decrypt of attacker-controlled frames: never panics, never accepts a frame that was
/// not produced by the key holder. The store holds keys for KIDs 0..4 of every suite's layout;
/// the first input byte picks the suite and how much of the rest is metadata.
pub fn sframe_decrypt(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let suite = CipherSuite::ALL[usize::from(sel % 5)];
    let meta_len = usize::from(sel >> 3).min(rest.len());
    let (meta, frame) = rest.split_at(meta_len);
    let mut store = KeyStore::new();
    for kid in 0..4u64 {
        store.insert_base_key(suite, kid, b"fuzz base key").unwrap();
    }
    let mut buf = frame.to_vec();
    // A random frame must never authenticate (2^-32 at worst for the 32-bit tag suite).
    if let Ok(d) = store.decrypt_in_place(meta, &mut buf) {
        assert!(suite.tag_len() < 16, "forged a GCM frame: {:?}", d.header);
    }
}
