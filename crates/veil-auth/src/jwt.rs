//! Compact JWS plumbing shared by minting and verification.

use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// HMAC-SHA256 (RFC 7518 §3.2, `HS256`).
pub(crate) type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes in an HS256 signature.
pub(crate) const SIG_LEN: usize = 32;

/// base64url without padding (RFC 7515 §2). Decoding is strict: no `=`, no characters outside
/// the URL-safe alphabet, and the unused low bits of the last character must be zero, so each
/// byte string has exactly one encoding and no two token strings carry the same signature.
pub(crate) const B64: GeneralPurpose = URL_SAFE_NO_PAD;

/// The three segments of a compact JWS (AUTH-02).
pub(crate) struct Segments<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
}

impl<'a> Segments<'a> {
    /// Splits at the two dots, or `None` if there are not exactly two.
    pub(crate) fn split(token: &'a str) -> Option<Self> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        if payload.contains('.') {
            return None;
        }
        Some(Self {
            header,
            payload,
            signature,
            signing_input,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_exactly_three_segments() {
        let s = Segments::split("a.b.c").unwrap();
        assert_eq!(
            (s.header, s.payload, s.signature, s.signing_input),
            ("a", "b", "c", "a.b")
        );
        let s = Segments::split("a.b.").unwrap();
        assert_eq!(s.signature, "");
        for bad in ["", "a", "a.b", "a.b.c.d", "a.b.c.d.e"] {
            assert!(Segments::split(bad).is_none(), "{bad}");
        }
    }
}
