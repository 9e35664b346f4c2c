//! The call's safety code (specs/member.md §7): the epoch authenticator as twelve digits that
//! people compare aloud. Every member of an epoch shows the same code; it changes with every
//! epoch, so a server that split the call into two groups (or slipped a member in) shows as
//! codes that differ.

/// Twelve decimal digits in three groups of four, from the first 8 bytes of `authenticator`
/// (RFC 9420 §8.7 `epoch_authenticator`), read big-endian, modulo 10^12. 40 bits of the
/// authenticator decide the code: an attacker who must match a code by trying group states
/// needs about 2^39 tries.
///
/// ```
/// assert_eq!(veil_call::safety_code(&[0; 32]), "0000 0000 0000");
/// assert_eq!(veil_call::safety_code(&[0xff; 32]).len(), 14);
/// ```
#[must_use]
pub fn safety_code(authenticator: &[u8]) -> String {
    let mut first = [0u8; 8];
    let n = authenticator.len().min(8);
    first[..n].copy_from_slice(&authenticator[..n]);
    let digits = format!("{:012}", u64::from_be_bytes(first) % 1_000_000_000_000);
    format!("{} {} {}", &digits[..4], &digits[4..8], &digits[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_differ_with_the_authenticator_and_keep_their_shape() {
        let a = safety_code(&[1; 32]);
        let b = safety_code(&[2; 32]);
        assert_ne!(a, b);
        for c in [&a, &b, &safety_code(&[]), &safety_code(&[0xff; 3])] {
            assert_eq!(c.len(), 14, "{c}");
            assert!(
                c.split(' ')
                    .all(|g| g.len() == 4 && g.bytes().all(|d| d.is_ascii_digit())),
                "{c}"
            );
        }
        // Only the first 8 bytes count.
        let mut c = [1u8; 32];
        c[20] = 9;
        assert_eq!(safety_code(&c), a);
    }
}
