//! Room names and identities at the API edge (specs/key-service.md §9, KDS-LIM-03): the rule
//! a request's names follow (the tokens' rule, auth.md AUTH-10), and how anything a client
//! chose is clipped before it is echoed into a status message or a log line.

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

/// `text` cut to at most `max` bytes on a character boundary, with a note of how much was cut.
#[must_use]
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let note = format!("… ({} bytes clipped)", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
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

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short", 64), "short");
        let long = "é".repeat(10_000);
        let c = clip(&long, 100);
        assert!(c.len() <= 100, "{}", c.len());
        assert!(c.ends_with("(20000 bytes clipped)"), "{c}");
        assert!(c.starts_with('é'));
    }
}
