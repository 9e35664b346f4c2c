//! Shared helpers of the veil-sframe integration tests.
#![allow(dead_code, unreachable_pub)]

use veil_sframe::AeadBackend;

// Not every test binary reads vector files.
#[allow(unused_imports)]
pub use veil_vectors::json as read_json;

/// Hex field `k` of `v`.
pub fn hex_field(v: &serde_json::Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap_or_else(|| panic!("missing field {k}"))).unwrap()
}

/// Every backend this build has.
pub fn backends() -> Vec<&'static dyn AeadBackend> {
    let mut v: Vec<&'static dyn AeadBackend> = vec![&veil_sframe::RustCrypto];
    #[cfg(feature = "ring")]
    v.push(&veil_sframe::Ring);
    v
}
