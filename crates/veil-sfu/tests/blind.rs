//! SFU-BLIND-01: the SFU cannot link key-holding code. `cargo tree` of veil-sfu's normal
//! dependencies must not contain veil-sframe, veil-mls, veil-client, openmls, aes-gcm or hkdf.

use std::process::Command;

#[test]
fn veil_sfu_depends_on_no_key_holding_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "veil-sfu",
            "-e",
            "normal",
            "--prefix",
            "none",
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
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"veil-sfu") && crates.contains(&"veil-wire"),
        "{tree}"
    );
    for c in &crates {
        let banned = ["veil-sframe", "veil-mls", "veil-client", "aes-gcm", "hkdf"].contains(c)
            || c.starts_with("openmls");
        assert!(!banned, "veil-sfu links the key-holding crate {c}:\n{tree}");
    }
}
