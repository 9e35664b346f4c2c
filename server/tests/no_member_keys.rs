//! KDS-SEC-01: the key service is never a member. It may link openmls (for `PublicGroup`
//! validation) but none of Veil's member-side crates: `cargo tree` of the normal dependencies
//! of veil-keys (the key service) and of veil-server (the process that hosts it and the SFU)
//! must not contain veil-sframe (SFrame keys), veil-mls (member sessions) or veil-client.
//! veil-keys' unit tests build real MLS members, with openmls as a dev-dependency only.

use std::process::Command;

const MEMBER_SIDE: [&str; 3] = ["veil-sframe", "veil-mls", "veil-client"];

/// The crate names in `cargo tree -p package -e normal`.
fn normal_dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            package,
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
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_no_member_key_code(package: &str) {
    let crates = normal_dependencies(package);
    let has = |c: &str| crates.iter().any(|x| x == c);
    assert!(has(package) && has("openmls"), "{crates:?}");
    for banned in MEMBER_SIDE {
        assert!(
            !has(banned),
            "{package} links the member-side crate {banned}:\n{crates:?}"
        );
    }
}

#[test]
fn veil_keys_links_no_member_key_code() {
    assert_no_member_key_code("veil-keys");
}

#[test]
fn veil_server_links_no_member_key_code() {
    assert_no_member_key_code("veil-server");
    // The key service reaches the server through veil-keys.
    assert!(
        normal_dependencies("veil-server")
            .iter()
            .any(|c| c == "veil-keys")
    );
}
