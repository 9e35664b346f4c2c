//! The scanner: every secret in every encoding a log line or a message could carry it in, and
//! windows of plaintext frames, searched for at once (Aho-Corasick) in each haystack.

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// The length of the plaintext windows searched for.
pub(super) const WINDOW: usize = 24;

/// The encodings of `bytes` searched for: raw; hex lower and upper case; base64 standard and
/// URL-safe, padded and not; and Rust's `Debug` of a byte slice, in decimal and `{:x?}`
/// (without brackets, so a longer slice that holds it matches too).
pub(super) fn encodings(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let list = |f: fn(&u8) -> String| {
        bytes
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .join(", ")
            .into_bytes()
    };
    vec![
        ("raw", bytes.to_vec()),
        ("hex", hex::encode(bytes).into_bytes()),
        ("HEX", hex::encode_upper(bytes).into_bytes()),
        ("base64", STANDARD.encode(bytes).into_bytes()),
        (
            "base64 unpadded",
            STANDARD_NO_PAD.encode(bytes).into_bytes(),
        ),
        ("base64url", URL_SAFE.encode(bytes).into_bytes()),
        (
            "base64url unpadded",
            URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
        ),
        ("Debug", list(|b| b.to_string())),
        ("Debug hex", list(|b| format!("{b:x}"))),
    ]
}

/// Patterns with the name of what each one is.
#[derive(Clone, Default)]
pub(super) struct Needles {
    patterns: Vec<Vec<u8>>,
    names: Vec<String>,
}

impl Needles {
    /// `bytes` in every encoding of [`encodings`], named `name`.
    pub(super) fn secret(&mut self, name: &str, bytes: &[u8]) {
        for (enc, p) in encodings(bytes) {
            self.patterns.push(p);
            self.names.push(format!("{name} ({enc})"));
        }
    }

    /// `text` as it is (an access token is text already).
    pub(super) fn text(&mut self, name: &str, text: &str) {
        self.patterns.push(text.as_bytes().to_vec());
        self.names.push(name.to_owned());
    }

    /// Every [`WINDOW`]-byte window of `frame` that starts at a multiple of `WINDOW`, raw, hex
    /// and base64; returns how many windows.
    pub(super) fn plaintext(&mut self, name: &str, frame: &[u8]) -> usize {
        let mut n = 0;
        for (i, w) in frame.chunks_exact(WINDOW).enumerate() {
            for (enc, p) in encodings(w).into_iter().take(4) {
                self.patterns.push(p);
                self.names.push(format!("{name} window {i} ({enc})"));
            }
            n += 1;
        }
        n
    }

    pub(super) fn len(&self) -> usize {
        self.patterns.len()
    }

    pub(super) fn build(self) -> Scanner {
        Scanner {
            ac: AhoCorasick::new(&self.patterns).unwrap(),
            names: self.names,
        }
    }
}

/// Finds needles in haystacks.
pub(super) struct Scanner {
    ac: AhoCorasick,
    names: Vec<String>,
}

impl Scanner {
    /// What of the needles `haystack` holds, with the offset of the first hit of each.
    pub(super) fn find(&self, haystack: &[u8]) -> Vec<(String, usize)> {
        let mut hits: Vec<(String, usize)> = Vec::new();
        for m in self.ac.find_overlapping_iter(haystack) {
            let name = &self.names[m.pattern().as_usize()];
            if !hits.iter().any(|(n, _)| n == name) {
                hits.push((name.clone(), m.start()));
            }
        }
        hits
    }
}

/// A few hundred bytes around `at`, printable, for a failure message.
pub(super) fn context(haystack: &[u8], at: usize) -> String {
    let from = at.saturating_sub(200);
    let to = (at + 200).min(haystack.len());
    String::from_utf8_lossy(&haystack[from..to]).into_owned()
}
