//! Status messages of both services (KDS-LIM-03, SFU-ERR-01): a refusal may quote what the
//! client sent (a room name, a track id), so every message is clipped to
//! [`MAX_MESSAGE_BYTES`], and a client with default gRPC limits can always read why it was
//! refused.
//!
//! ```
//! let long = "x".repeat(20_000);
//! let msg = veil_proto::status::clip(&long);
//! assert!(msg.len() <= veil_proto::status::MAX_MESSAGE_BYTES);
//! assert!(msg.ends_with("(20000 bytes clipped)"));
//! ```

/// Longest status message either service sends, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary, with a note of its
/// full length; shorter text is returned as it is.
#[must_use]
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let note = format!("… ({} bytes clipped)", text.len());
    let mut end = MAX_MESSAGE_BYTES.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(clip(&exact), exact);
        let long = "é".repeat(10_000);
        let c = clip(&long);
        assert!(c.len() <= MAX_MESSAGE_BYTES, "{}", c.len());
        assert!(c.ends_with("(20000 bytes clipped)"), "{c}");
        assert!(c.starts_with('é'));
    }
}
