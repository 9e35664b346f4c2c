//! SFU-BLIND-01..02: the SFU cannot link key-holding code, and the only cryptography it links is
//! webrtc-rs's hop-by-hop transport (DTLS-SRTP) and veil-auth's token MAC.

use std::collections::BTreeSet;
use std::process::Command;

/// `cargo tree -e normal` of veil-sfu as (parent, child) edges, plus the crate names.
fn tree() -> (BTreeSet<(String, String)>, BTreeSet<String>, String) {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "veil-sfu",
            "-e",
            "normal",
            "--prefix",
            "depth",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut edges, mut crates, mut stack) =
        (BTreeSet::new(), BTreeSet::new(), Vec::<String>::new());
    for line in text.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let depth: usize = line[..digits].parse().unwrap();
        let name = line[digits..].split_whitespace().next().unwrap().to_owned();
        stack.truncate(depth);
        if let Some(parent) = stack.last() {
            edges.insert((parent.clone(), name.clone()));
        }
        crates.insert(name.clone());
        stack.push(name);
    }
    (edges, crates, text)
}

/// SFU-BLIND-01: no veil-sframe, veil-mls, veil-client, openmls*, aes-gcm or hkdf.
#[test]
fn veil_sfu_depends_on_no_key_holding_crate() {
    let (_, crates, text) = tree();
    assert!(
        crates.contains("veil-sfu") && crates.contains("veil-wire") && crates.contains("webrtc"),
        "{text}"
    );
    for c in &crates {
        let banned = ["veil-sframe", "veil-mls", "veil-client", "aes-gcm", "hkdf"]
            .contains(&c.as_str())
            || c.starts_with("openmls");
        assert!(!banned, "veil-sfu links the key-holding crate {c}:\n{text}");
    }
}

/// Crates that implement ciphers, MACs, hashes or key agreement.
const CRYPTO: [&str; 25] = [
    "ring",
    "aws-lc-rs",
    "aws-lc-sys",
    "aes",
    "aes-gcm",
    "gcm",
    "ctr",
    "ccm",
    "ghash",
    "polyval",
    "hmac",
    "hkdf",
    "sha1",
    "sha2",
    "md-5",
    "chacha20",
    "chacha20poly1305",
    "p256",
    "p384",
    "x25519-dalek",
    "ed25519-dalek",
    "cipher",
    "aead",
    "digest",
    "universal-hash",
];

/// SFU-BLIND-02: every crypto crate is reached only through webrtc-rs's transport crates (DTLS,
/// SRTP, certificates), veil-auth (the HS256 token MAC), rand (its ChaCha generator) or another
/// crypto crate; veil-sfu itself names none. So the crypto in the SFU's binary is hop-by-hop
/// transport and token checking, never SFrame.
#[test]
fn crypto_is_reached_only_through_the_transport_and_the_token_check() {
    let (edges, _, text) = tree();
    let importer_ok = |p: &str| {
        p == "rtc"
            || p.starts_with("rtc-")
            || [
                "webrtc",
                "rustls",
                "rustls-webpki",
                "rcgen",
                "x509-parser",
                "veil-auth",
                "rand",
            ]
            .contains(&p)
            || CRYPTO.contains(&p)
    };
    let mut seen = 0;
    for (parent, child) in &edges {
        if CRYPTO.contains(&child.as_str()) {
            seen += 1;
            assert_ne!(parent, "veil-sfu", "veil-sfu depends on {child} directly");
            assert!(
                importer_ok(parent),
                "{parent} brings the crypto crate {child} into veil-sfu:\n{text}"
            );
        }
    }
    assert!(
        seen > 0,
        "webrtc-rs's DTLS-SRTP crypto should be in the tree:\n{text}"
    );
}
