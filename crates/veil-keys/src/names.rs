//! Room names and identities at the API edge (specs/key-service.md §9, KDS-LIM-03): the rule
//! a request's names follow (the tokens' rule, auth.md AUTH-10). What is echoed into a status
//! message or a log line is clipped by `veil_proto::status::clip`.

use crate::error::KdsError;

/// Check a room name or identity that a request carries outside its token: 1 to 255 bytes of
/// UTF-8 without control characters, as in a token (`veil_auth::name_rule`). `what` says which
/// field it was, e.g. `"the request's room name"`.
///
/// # Errors
/// [`KdsError::BadName`], which never contains the value itself.
pub fn check(what: &'static str, name: &str) -> Result<(), KdsError> {
    veil_auth::name_rule(name).map_err(|why| KdsError::BadName { what, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_within_the_rule_pass() {
        for ok in ["a", "standup", "José's room", "病房", &"r".repeat(255)] {
            check("room", ok).unwrap();
        }
    }

    #[test]
    fn names_outside_the_rule_fail_without_echoing_them() {
        let long = "x".repeat(256);
        for bad in ["", "tab\there", "nul\0", "del\u{7f}", &long] {
            let e = check("room", bad).unwrap_err();
            assert!(matches!(e, KdsError::BadName { .. }), "{bad:?}");
            assert!(e.to_string().len() < 120, "{e}");
            if bad.len() > 3 {
                assert!(!e.to_string().contains(bad), "{e} echoes {bad:?}");
            }
        }
    }
}
