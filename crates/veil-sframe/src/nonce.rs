//! Nonce formation (RFC 9605 §4.4.3, check SF-AEAD-01): `nonce = sframe_salt XOR CTR`, with the
//! counter encoded big-endian in the low eight bytes of the twelve.

use crate::suite::NONCE_LEN;

/// `salt XOR encode_big_endian(ctr, Nn)`.
#[inline]
#[must_use]
pub fn form_nonce(salt: &[u8; NONCE_LEN], ctr: u64) -> [u8; NONCE_LEN] {
    let mut n = *salt;
    for (b, c) in n[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
        *b ^= c;
    }
    n
}
