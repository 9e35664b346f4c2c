//! SFrame throughput: Veil against the raw AEAD and the `sframe` crate.
//!
//! `cargo bench -p veil-sframe --features ring --bench sframe`
//!
//! One run measures, for AES_128_GCM_SHA256_128 and frames of 100 B, 1 KiB, 10 KiB and 100 KiB:
//! Veil's SFrame encrypt/decrypt through each backend, the raw AEAD seal/open of the same backend
//! on the same bytes (the ceiling), and the `sframe` crate on both of the same backends
//! (RustCrypto and ring, its allocation-free view API with reused buffers), so every
//! "× sframe crate" ratio compares Veil with the `sframe` crate on one AEAD library.
//! `scripts/bench_table.py` turns the results into the table in BENCHMARKS.md.
//!
//! The `sframe` crate compiles exactly one backend per build (its features are exclusive, and
//! Cargo unifies them), so its ring backend comes in as a port through the crate's generic key
//! types: see `support/sframe_ring.rs`, which checks at start-up that the port gives the built-in
//! backend's bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use sframe::crypto::{AeadDecrypt, AeadEncrypt, KeyDerivation};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey, GenericDecryptionKey, GenericEncryptionKey};
use veil_sframe::{AeadBackend, CipherSuite, KeyStore, SenderKey, derive_key_material};

#[path = "support/sframe_ring.rs"]
mod sframe_ring;
use sframe_ring::{RingDecryptionKey, RingEncryptionKey};

const SIZES: [usize; 4] = [100, 1024, 10 * 1024, 100 * 1024];
const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
const KID: u64 = 0x0123;
const BASE: &[u8] = b"benchmark base key";
const HEAD: usize = veil_sframe::MAX_HEADER_LEN;

fn backends() -> Vec<&'static dyn AeadBackend> {
    let mut v: Vec<&'static dyn AeadBackend> = vec![&veil_sframe::RustCrypto];
    #[cfg(feature = "ring")]
    v.push(&veil_sframe::Ring);
    v
}

/// Frames per timed batch. All three decrypt variants cycle through the same number of
/// distinct frames, so they see the same cache behaviour; the batch stays around 256 KiB (in L2,
/// as a freshly received frame is) and is refilled untimed between batches.
fn batch_for(size: usize) -> usize {
    (256 * 1024 / size.max(1)).clamp(2, 256)
}

/// Time `run(i)` for `iters` iterations in batches, calling the untimed `refill` between batches
/// (decryption destroys its input in place, and a replay window refuses repeated counters).
fn batched<S>(
    iters: u64,
    batch: usize,
    state: &mut S,
    refill: impl Fn(&mut S),
    run: impl Fn(&mut S, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        refill(state);
        let n = (iters - done).min(batch as u64) as usize;
        let t = Instant::now();
        for i in 0..n {
            run(state, i);
        }
        total += t.elapsed();
        done += n as u64;
    }
    total
}

fn encrypt(c: &mut Criterion) {
    sframe_ring::check_matches_builtin(KID, BASE);
    let mut g = c.benchmark_group("encrypt");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let m = derive_key_material(SUITE, KID, BASE).unwrap();
        for backend in backends() {
            let mut tx = SenderKey::new(SUITE, KID, &m, backend).unwrap();
            let mut buf = vec![7u8; HEAD + size + 16];
            g.bench_function(
                BenchmarkId::new(format!("veil/{}", backend.name()), size),
                |b| {
                    b.iter(|| {
                        let r = tx.encrypt_in_place(b"", black_box(&mut buf), HEAD..HEAD + size);
                        black_box(r.unwrap());
                    });
                },
            );
            let raw = backend.new_key(SUITE, m.key()).unwrap();
            let mut tag = [0u8; 16];
            let hdr = [0x99u8, 1, 0x23, 0, 0];
            g.bench_function(
                BenchmarkId::new(format!("raw/{}", backend.name()), size),
                |b| {
                    b.iter(|| {
                        let aad = veil_sframe::backend::Aad {
                            header: &hdr,
                            metadata: b"",
                        };
                        raw.seal(&[3u8; 12], aad, black_box(&mut buf[..size]), &mut tag)
                            .unwrap();
                    });
                },
            );
        }
        let pt = vec![7u8; size];
        let key =
            EncryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, KID, BASE).unwrap();
        crate_encrypt(&mut g, "rustcrypto", size, &key, &pt);
        let key = RingEncryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, KID, BASE)
            .unwrap();
        crate_encrypt(&mut g, "ring", size, &key, &pt);
    }
    g.finish();
}

/// The `sframe` crate's encrypt on `backend`: `encrypt_into` with a reused buffer.
fn crate_encrypt<A, D>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    backend: &str,
    size: usize,
    key: &GenericEncryptionKey<A, D>,
    pt: &[u8],
) where
    A: AeadEncrypt<Secret = D::Secret>,
    D: KeyDerivation,
{
    let mut counter = MonotonicCounter::default();
    let mut out: Vec<u8> = Vec::with_capacity(size + 64);
    g.bench_function(
        BenchmarkId::new(format!("sframe-crate/{backend}"), size),
        |b| {
            b.iter(|| {
                let f = MediaFrameView::try_new(&mut counter, black_box(pt)).unwrap();
                black_box(f.encrypt_into(key, &mut out).unwrap());
            });
        },
    );
}

fn decrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("decrypt");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let batch = batch_for(size);
        let m = derive_key_material(SUITE, KID, BASE).unwrap();
        for backend in backends() {
            // Veil: a batch of frames with consecutive counters, decrypted in place.
            let mut tx = SenderKey::new(SUITE, KID, &m, backend).unwrap();
            let frames: Vec<Vec<u8>> = (0..batch)
                .map(|_| {
                    let mut out = vec![0u8; size + tx.max_overhead()];
                    let n = tx.encrypt(b"", &vec![5u8; size], &mut out).unwrap();
                    out.truncate(n);
                    out
                })
                .collect();
            let mut state = (
                frames.clone(),
                KeyStore::with_backend(backend).with_replay_window(128),
            );
            g.bench_function(
                BenchmarkId::new(format!("veil/{}", backend.name()), size),
                |b| {
                    b.iter_custom(|iters| {
                        batched(
                            iters,
                            batch,
                            &mut state,
                            |(work, rx)| {
                                for (w, f) in work.iter_mut().zip(&frames) {
                                    w.copy_from_slice(f);
                                }
                                rx.insert(SUITE, KID, &m).unwrap();
                            },
                            |(work, rx), i| {
                                let d = rx.decrypt_in_place(b"", black_box(&mut work[i])).unwrap();
                                black_box(d.plaintext.len());
                            },
                        )
                    });
                },
            );
            // Raw AEAD open of the same bytes.
            let raw = backend.new_key(SUITE, m.key()).unwrap();
            let hdr = [0x99u8, 1, 0x23, 0, 0];
            let aad = veil_sframe::backend::Aad {
                header: &hdr,
                metadata: b"",
            };
            let mut sealed = vec![5u8; size];
            let mut tag = [0u8; 16];
            raw.seal(&[3u8; 12], aad, &mut sealed, &mut tag).unwrap();
            let mut work: Vec<Vec<u8>> = vec![sealed.clone(); batch];
            g.bench_function(
                BenchmarkId::new(format!("raw/{}", backend.name()), size),
                |b| {
                    b.iter_custom(|iters| {
                        batched(
                            iters,
                            batch,
                            &mut work,
                            |work| work.iter_mut().for_each(|w| w.copy_from_slice(&sealed)),
                            |work, i| {
                                raw.open(&[3u8; 12], aad, black_box(&mut work[i]), &tag)
                                    .unwrap();
                            },
                        )
                    });
                },
            );
        }
        let suite = sframe::CipherSuite::AesGcm128Sha256;
        let ekey = EncryptionKey::derive_from(suite, KID, BASE).unwrap();
        let dkey = DecryptionKey::derive_from(suite, KID, BASE).unwrap();
        crate_decrypt(&mut g, "rustcrypto", size, batch, &ekey, &dkey);
        let ekey = RingEncryptionKey::derive_from(suite, KID, BASE).unwrap();
        let dkey = RingDecryptionKey::derive_from(suite, KID, BASE).unwrap();
        crate_decrypt(&mut g, "ring", size, batch, &ekey, &dkey);
    }
    g.finish();
}

/// The `sframe` crate's decrypt on `backend`: `decrypt_into` with a reused buffer, over a batch
/// of distinct frames as Veil's decrypt sees.
fn crate_decrypt<A, D>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    backend: &str,
    size: usize,
    batch: usize,
    ekey: &GenericEncryptionKey<A, D>,
    dkey: &GenericDecryptionKey<A, D>,
) where
    A: AeadEncrypt<Secret = D::Secret> + AeadDecrypt<Secret = D::Secret>,
    D: KeyDerivation,
{
    let mut counter = MonotonicCounter::default();
    let pt = vec![5u8; size];
    let frames: Vec<Vec<u8>> = (0..batch)
        .map(|_| {
            let media = MediaFrameView::try_new(&mut counter, &pt).unwrap();
            media.encrypt(ekey).unwrap().sframe_cipher_text().to_vec()
        })
        .collect();
    let mut out: Vec<u8> = Vec::with_capacity(size + 64);
    g.bench_function(
        BenchmarkId::new(format!("sframe-crate/{backend}"), size),
        |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch,
                    &mut out,
                    |_| {},
                    |out, i| {
                        let f = EncryptedFrameView::try_new(black_box(&frames[i])).unwrap();
                        black_box(f.decrypt_into(dkey, out).unwrap());
                    },
                )
            });
        },
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = encrypt, decrypt }
criterion_main!(benches);
