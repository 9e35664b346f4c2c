//! Servers cannot link key code (STYLE item 3; SFU-BLIND-01..02, KDS-SEC-01, AUTH-DEP-01):
//! each server-side crate in veil-testkit's one table, checked against `cargo tree -e normal`.

use veil_testkit::policy::{RULES, check};

/// Every rule of `package` (there is at least one).
fn check_package(package: &str) {
    let rules: Vec<_> = RULES.iter().filter(|r| r.package == package).collect();
    assert!(!rules.is_empty(), "{package} is not in the table");
    for rule in rules {
        check(rule);
    }
}

/// SFU-BLIND-01..02.
#[test]
fn veil_sfu_links_no_key_code_and_only_transport_and_token_crypto() {
    check_package("veil-sfu");
}

/// KDS-SEC-01.
#[test]
fn veil_keys_links_no_member_key_code() {
    check_package("veil-keys");
}

/// KDS-SEC-01: the key service reaches the server through veil-keys.
#[test]
fn veil_server_links_no_member_key_code() {
    check_package("veil-server");
}

/// AUTH-DEP-01.
#[test]
fn veil_auth_links_no_key_holding_crate() {
    check_package("veil-auth");
}

#[test]
fn veil_wire_links_no_key_holding_crate() {
    check_package("veil-wire");
}

#[test]
fn veil_proto_links_no_key_holding_crate() {
    check_package("veil-proto");
}

#[test]
fn veil_rtc_links_no_key_holding_crate() {
    check_package("veil-rtc");
}

/// The tests above cover every package in the table.
#[test]
fn every_rule_is_checked() {
    for rule in RULES {
        assert!(
            [
                "veil-sfu",
                "veil-keys",
                "veil-server",
                "veil-auth",
                "veil-wire",
                "veil-proto",
                "veil-rtc"
            ]
            .contains(&rule.package),
            "{} has no test here",
            rule.package
        );
    }
}
