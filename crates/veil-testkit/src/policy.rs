//! Servers cannot link key code (STYLE item 3): one table, [`RULES`], of the crates each
//! server-side crate must not link, checked against `cargo tree -e normal` by [`check`].
//!
//! The table merges what three separate tests used to check: SFU-BLIND-01..02
//! (`specs/sfu.md`), KDS-SEC-01 (`specs/key-service.md`) and AUTH-DEP-01 (`specs/auth.md`).

use std::collections::BTreeSet;
use std::process::Command;

/// Veil's member-side, key-holding crates: SFrame keys, MLS member sessions, the call core,
/// the client SDK.
pub const MEMBER_SIDE: &[&str] = &["veil-sframe", "veil-mls", "veil-call", "veil-client"];

/// Crates that implement ciphers, MACs, hashes or key agreement (SFU-BLIND-02).
pub const CRYPTO: &[&str] = &[
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

/// What one server-side crate may and may not link.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The check's id in `specs/`.
    pub id: &'static str,
    /// The package whose normal dependencies are checked.
    pub package: &'static str,
    /// Crates that must be in the tree (so an empty or wrong tree cannot pass).
    pub must_link: &'static [&'static str],
    /// Crates that must not be in the tree.
    pub banned: &'static [&'static str],
    /// Name prefixes that must not be in the tree (`openmls` covers every openmls crate).
    pub banned_prefixes: &'static [&'static str],
    /// If set, every [`CRYPTO`] crate in the tree must be imported by one of these crates,
    /// a crate starting `rtc-`, or another crypto crate, never by the package itself
    /// (SFU-BLIND-02: only hop-by-hop transport and token crypto).
    pub crypto_only_via: Option<&'static [&'static str]>,
}

/// The crates MEMBER_SIDE lists, plus SFrame's AEAD and MLS's key schedule.
const MEMBER_SIDE_AND_MEDIA_CRYPTO: &[&str] =
    &["veil-sframe", "veil-mls", "veil-client", "aes-gcm", "hkdf"];

/// The table: each server-side crate and its bans.
pub const RULES: &[Rule] = &[
    // SFU-BLIND-01..02: the SFU links no key-holding crate, and its only crypto is webrtc-rs's
    // DTLS-SRTP and veil-auth's token MAC.
    Rule {
        id: "SFU-BLIND-01",
        package: "veil-sfu",
        must_link: &["veil-sfu", "veil-wire", "webrtc"],
        banned: MEMBER_SIDE_AND_MEDIA_CRYPTO,
        banned_prefixes: &["openmls"],
        crypto_only_via: Some(&[
            "rtc",
            "webrtc",
            "rustls",
            "rustls-webpki",
            "rcgen",
            "x509-parser",
            "veil-auth",
            "rand",
        ]),
    },
    // AUTH-DEP-01: the SFU links veil-auth, so it must not pull in media-key crypto either.
    Rule {
        id: "AUTH-DEP-01",
        package: "veil-auth",
        must_link: &["veil-auth", "hmac"],
        banned: &[
            "veil-sframe",
            "veil-mls",
            "veil-client",
            "aes-gcm",
            "hkdf",
            "ring",
        ],
        banned_prefixes: &["openmls", "aes"],
        crypto_only_via: None,
    },
    // KDS-SEC-01: the key service is never a member. It links openmls (PublicGroup
    // validation) but no member-side crate.
    Rule {
        id: "KDS-SEC-01",
        package: "veil-keys",
        must_link: &["veil-keys", "openmls"],
        banned: MEMBER_SIDE,
        banned_prefixes: &[],
        crypto_only_via: None,
    },
    // KDS-SEC-01: the process hosting the key service (reached through veil-keys) and the SFU.
    Rule {
        id: "KDS-SEC-01",
        package: "veil-server",
        must_link: &["veil-server", "openmls", "veil-keys", "veil-sfu"],
        banned: MEMBER_SIDE,
        banned_prefixes: &[],
        crypto_only_via: None,
    },
    // The crates the SFU builds on: wire formats, gRPC types, the WebRTC profile.
    Rule {
        id: "SFU-BLIND-01",
        package: "veil-wire",
        must_link: &["veil-wire"],
        banned: MEMBER_SIDE_AND_MEDIA_CRYPTO,
        banned_prefixes: &["openmls"],
        crypto_only_via: None,
    },
    Rule {
        id: "SFU-BLIND-01",
        package: "veil-proto",
        must_link: &["veil-proto"],
        banned: MEMBER_SIDE_AND_MEDIA_CRYPTO,
        banned_prefixes: &["openmls"],
        crypto_only_via: None,
    },
    Rule {
        id: "SFU-BLIND-01",
        package: "veil-rtc",
        must_link: &["veil-rtc"],
        banned: MEMBER_SIDE_AND_MEDIA_CRYPTO,
        banned_prefixes: &["openmls"],
        crypto_only_via: None,
    },
];

/// `cargo tree -p package -e normal` as crate names and (parent, child) edges.
#[derive(Debug)]
pub struct Tree {
    /// Every crate name in the tree.
    pub crates: BTreeSet<String>,
    /// Every dependency edge.
    pub edges: BTreeSet<(String, String)>,
    /// The raw output, for failure messages.
    pub text: String,
}

/// Run `cargo tree -p package -e normal --prefix depth --offline` in this workspace.
///
/// # Panics
/// If cargo fails.
#[must_use]
pub fn tree(package: &str) -> Tree {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            package,
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
        "cargo tree -p {package} failed: {}",
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
    Tree {
        crates,
        edges,
        text,
    }
}

/// Check `rule` against `cargo tree`.
///
/// # Panics
/// On the first violation, naming the rule and printing the tree.
pub fn check(rule: &Rule) {
    let Rule {
        id,
        package,
        must_link,
        banned,
        banned_prefixes,
        crypto_only_via,
    } = *rule;
    let t = tree(package);
    for m in must_link {
        assert!(
            t.crates.contains(*m),
            "{id}: {package} should link {m}:\n{}",
            t.text
        );
    }
    for c in &t.crates {
        let bad = banned.contains(&c.as_str()) || banned_prefixes.iter().any(|p| c.starts_with(p));
        assert!(
            !bad,
            "{id}: {package} links the banned crate {c}:\n{}",
            t.text
        );
    }
    if let Some(via) = crypto_only_via {
        let importer_ok =
            |p: &str| p.starts_with("rtc-") || via.contains(&p) || CRYPTO.contains(&p);
        let mut seen = 0;
        for (parent, child) in &t.edges {
            if CRYPTO.contains(&child.as_str()) {
                seen += 1;
                assert_ne!(
                    parent, package,
                    "{id}: {package} depends on {child} directly"
                );
                assert!(
                    importer_ok(parent),
                    "{id}: {parent} brings the crypto crate {child} into {package}:\n{}",
                    t.text
                );
            }
        }
        assert!(
            seen > 0,
            "{id}: some crypto (e.g. webrtc-rs's DTLS-SRTP) should be in {package}'s tree:\n{}",
            t.text
        );
    }
}
