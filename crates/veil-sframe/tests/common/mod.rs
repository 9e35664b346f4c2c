//! Shared helpers of the veil-sframe integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use veil_sframe::AeadBackend;

/// `../shared/vectors` (or `$VEIL_VECTORS_DIR`). Panics if missing: vectors are never
/// regenerated, and a test that silently skips proves nothing.
pub fn vectors_dir() -> PathBuf {
    let dir = std::env::var_os("VEIL_VECTORS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
        PathBuf::from,
    );
    assert!(
        dir.is_dir(),
        "test vectors not found at {}: check out ../shared next to the repository or set VEIL_VECTORS_DIR",
        dir.display()
    );
    dir
}

/// Read and parse a JSON vector file; panics with the path if it is missing.
pub fn read_json(rel: &str) -> serde_json::Value {
    let path = vectors_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read vector file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

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
