//! KDS-SEC-01: the key service is never a member. It may link openmls (for `PublicGroup`
//! validation) but none of Veil's member-side crates: `cargo tree` of veil-server's normal
//! dependencies must not contain veil-sframe (SFrame keys), veil-mls (member sessions) or
//! veil-client.

use std::process::Command;

#[test]
fn veil_server_links_no_member_key_code() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "veil-server",
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
        crates.contains(&"veil-server") && crates.contains(&"openmls"),
        "{tree}"
    );
    for banned in ["veil-sframe", "veil-mls", "veil-client"] {
        assert!(
            !crates.contains(&banned),
            "veil-server links the member-side crate {banned}:\n{tree}"
        );
    }
}
