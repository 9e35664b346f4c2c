//! Interop with the independent `sframe` crate (2.x, RustCrypto backend) in both directions, for
//! every suite both implement, random frame sizes 0–64 KiB and random KIDs/CTRs (SF-INT-01).

use crate::common;

use common::backends;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use veil_sframe::{CipherSuite, KeyStore, SenderKey, derive_key_material};

const FRAMES_PER_SUITE: usize = 60;

fn theirs(s: CipherSuite) -> sframe::CipherSuite {
    match s {
        CipherSuite::AesCtr128HmacSha256_80 => sframe::CipherSuite::AesCtr128HmacSha256_80,
        CipherSuite::AesCtr128HmacSha256_64 => sframe::CipherSuite::AesCtr128HmacSha256_64,
        CipherSuite::AesCtr128HmacSha256_32 => sframe::CipherSuite::AesCtr128HmacSha256_32,
        CipherSuite::AesGcm128Sha256 => sframe::CipherSuite::AesGcm128Sha256,
        CipherSuite::AesGcm256Sha512 => sframe::CipherSuite::AesGcm256Sha512,
    }
}

/// A random KID or CTR, spread over every encoded length (1..=8 bytes and the short form).
fn random_field(rng: &mut StdRng) -> u64 {
    let bits = rng.random_range(0..=64u32);
    if bits == 0 {
        0
    } else {
        rng.next_u64() >> (64 - bits)
    }
}

/// Frame sizes 0..=64 KiB, half of them small (≤ 1500 B) as audio and small video frames are.
fn random_size(rng: &mut StdRng) -> usize {
    if rng.random_bool(0.5) {
        rng.random_range(0..=1500)
    } else {
        rng.random_range(0..=65536)
    }
}

fn random_case(rng: &mut StdRng) -> (u64, u64, Vec<u8>, Vec<u8>, Vec<u8>) {
    let (kid, ctr) = (random_field(rng), random_field(rng));
    let mut base_key = vec![0u8; rng.random_range(16..=64)];
    rng.fill_bytes(&mut base_key);
    let mut pt = vec![0u8; random_size(rng)];
    rng.fill_bytes(&mut pt);
    let mut meta = vec![
        0u8;
        if rng.random_bool(0.3) {
            rng.random_range(1..=64)
        } else {
            0
        }
    ];
    rng.fill_bytes(&mut meta);
    (kid, ctr, base_key, pt, meta)
}

#[test]
fn veil_encrypts_and_the_sframe_crate_decrypts() {
    let mut rng = StdRng::seed_from_u64(0x5F_0001);
    let mut checked = 0;
    for backend in backends() {
        for suite in CipherSuite::ALL {
            for _ in 0..FRAMES_PER_SUITE {
                let (kid, ctr, base_key, pt, meta) = random_case(&mut rng);
                let m = derive_key_material(suite, kid, &base_key).unwrap();
                let mut sender = SenderKey::new(suite, kid, &m, backend)
                    .unwrap()
                    .with_counter(ctr);
                let mut out = vec![0u8; pt.len() + sender.max_overhead()];
                let n = sender.encrypt(&meta, &pt, &mut out).unwrap();

                let key = DecryptionKey::derive_from(theirs(suite), kid, &base_key).unwrap();
                let frame = EncryptedFrameView::try_with_meta_data(&out[..n], &meta).unwrap();
                assert_eq!(frame.header().key_id(), kid);
                assert_eq!(frame.header().counter(), ctr);
                let got = frame.decrypt(&key).unwrap_or_else(|e| {
                    panic!("{suite} kid={kid} ctr={ctr} len={}: {e}", pt.len())
                });
                assert_eq!(got.payload(), &pt[..], "{suite} kid={kid} ctr={ctr}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, backends().len() * 5 * FRAMES_PER_SUITE);
}

#[test]
fn the_sframe_crate_encrypts_and_veil_decrypts() {
    let mut rng = StdRng::seed_from_u64(0x5F_0002);
    let mut checked = 0;
    for backend in backends() {
        for suite in CipherSuite::ALL {
            for _ in 0..FRAMES_PER_SUITE {
                let (kid, ctr, base_key, pt, meta) = random_case(&mut rng);
                let key = EncryptionKey::derive_from(theirs(suite), kid, &base_key).unwrap();
                let mut counter = MonotonicCounter::with_start_value(ctr, u64::MAX);
                let media = MediaFrameView::try_with_meta_data(&mut counter, &pt, &meta).unwrap();
                let enc = media.encrypt(&key).unwrap();

                let mut store = KeyStore::with_backend(backend);
                store.insert_base_key(suite, kid, &base_key).unwrap();
                let mut buf = enc.sframe_cipher_text().to_vec();
                let d = store.decrypt_in_place(&meta, &mut buf).unwrap_or_else(|e| {
                    panic!("{suite} kid={kid} ctr={ctr} len={}: {e}", pt.len())
                });
                assert_eq!(d.header.kid, kid);
                assert_eq!(d.header.ctr, ctr);
                assert_eq!(d.plaintext, &pt[..], "{suite} kid={kid} ctr={ctr}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, backends().len() * 5 * FRAMES_PER_SUITE);
}

#[test]
fn mls_kids_and_keys_match_the_sframe_crate() {
    use sframe::mls::{MlsExporter, MlsKeyId, MlsKeyIdBitRange};
    use veil_sframe::{MlsKidLayout, mls_sender_key};

    /// Stands in for an MLS group: returns the epoch's exporter secret.
    struct Exporter(Vec<u8>);
    impl MlsExporter for Exporter {
        type BaseKey = Vec<u8>;
        type Error = std::convert::Infallible;
        fn export_secret(
            &self,
            label: &str,
            ctx: &[u8],
            len: usize,
        ) -> Result<Vec<u8>, Self::Error> {
            assert_eq!(label, veil_sframe::MLS_EXPORTER_LABEL);
            assert!(ctx.is_empty());
            assert_eq!(len, self.0.len());
            Ok(self.0.clone())
        }
    }
    let suite = CipherSuite::AesGcm128Sha256;
    let mut rng = StdRng::seed_from_u64(0x5F_0003);
    for _ in 0..200 {
        let e = rng.random_range(1..=16u32);
        let s = rng.random_range(0..=16u32);
        let ours = MlsKidLayout::new(e, s).unwrap();
        let theirs_range = MlsKeyIdBitRange::new(e as u8, s as u8);
        let idx = if s == 0 {
            0
        } else {
            rng.random_range(0..(1u32 << s))
        };
        let ctx = rng.random_range(0..16u64);
        let epoch = rng.next_u64();
        let kid = ours.kid(ctx, idx, epoch).unwrap();
        let theirs_kid: u64 = MlsKeyId::try_new(ctx, epoch, u64::from(idx), theirs_range)
            .unwrap()
            .into();
        assert_eq!(
            kid, theirs_kid,
            "E={e} S={s} idx={idx} ctx={ctx} epoch={epoch}"
        );

        // The same exporter secret gives both implementations the same sender key.
        let mut secret = vec![0u8; suite.key_len()];
        rng.fill_bytes(&mut secret);
        let (kid, m) = mls_sender_key(suite, &secret, ours, ctx, idx, epoch).unwrap();
        let mut sender = SenderKey::new(suite, kid, &m, veil_sframe::default_backend()).unwrap();
        let mut out = [0u8; 64];
        let n = sender.encrypt(b"", b"mls frame", &mut out).unwrap();
        let key_id = MlsKeyId::try_new(ctx, epoch, u64::from(idx), theirs_range).unwrap();
        let key = DecryptionKey::derive_from_mls(theirs(suite), &Exporter(secret), key_id).unwrap();
        let got = EncryptedFrameView::try_new(&out[..n])
            .unwrap()
            .decrypt(&key)
            .unwrap();
        assert_eq!(got.payload(), b"mls frame");
    }
}
