//! Test-only access to the data nobody here wrote, kept in the repository's `vectors/` directory:
//! RFC 9605's test vectors (`vectors/sframe/`, from cisco/sframe) and the RTP headers Chromium 156
//! put on the wire (`vectors/chromium156/`). `vectors/README.md` says where each file came from.
//! `$VEIL_VECTORS_DIR` names another directory of the same shape instead. Missing data is a panic
//! that says where it was looked for: the vectors are never regenerated, and a test that silently
//! skipped would prove nothing.
//!
//! ```
//! let capture = veil_vectors::chromium("vp8_sframe_dd.json");
//! let dd = veil_vectors::ext_id(
//!     &capture,
//!     "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
//! );
//! assert!(dd.is_some());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::PathBuf;

use serde_json::Value;

/// The vectors directory: `$VEIL_VECTORS_DIR`, or the repository's `vectors/`.
///
/// # Panics
/// If it is not a directory.
#[must_use]
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("VEIL_VECTORS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../vectors"),
        PathBuf::from,
    );
    assert!(
        dir.is_dir(),
        "test vectors not found at {}: they are part of the repository (`vectors/`); restore \
         them from git, or set VEIL_VECTORS_DIR to a copy of that directory (never regenerate \
         them)",
        dir.display()
    );
    dir
}

/// The JSON file at `rel` below [`dir`].
///
/// # Panics
/// If it is missing or not JSON, naming the path.
#[must_use]
pub fn json(rel: &str) -> Value {
    let path = dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read vector file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// The Chromium 156 capture `name` (`chromium156/<name>`).
///
/// # Panics
/// As [`json`].
#[must_use]
pub fn chromium(name: &str) -> Value {
    json(&format!("chromium156/{name}"))
}

/// The id a capture's SDP (`extmap`) gave the header extension `uri`, if it negotiated it.
///
/// # Panics
/// If the capture has no `extmap` object or an id is not a number.
#[must_use]
pub fn ext_id(capture: &Value, uri: &str) -> Option<u8> {
    capture["extmap"]
        .as_object()
        .expect("a capture has an extmap")
        .iter()
        .find(|(_, u)| u.as_str() == Some(uri))
        .map(|(id, _)| id.parse().expect("extmap ids are numbers"))
}
