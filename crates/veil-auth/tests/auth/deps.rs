//! AUTH-DEP-01: the blind SFU links this crate, so it must not pull in media-key crypto.

use std::process::Command;

#[test]
fn veil_auth_depends_on_no_key_holding_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "veil-auth",
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
        crates.contains(&"veil-auth") && crates.contains(&"hmac"),
        "{tree}"
    );
    for c in &crates {
        let banned = [
            "veil-sframe",
            "veil-mls",
            "veil-client",
            "aes-gcm",
            "hkdf",
            "ring",
        ]
        .contains(c)
            || c.starts_with("openmls")
            || c.starts_with("aes");
        assert!(
            !banned,
            "veil-auth links the key-holding crate {c}:\n{tree}"
        );
    }
}
