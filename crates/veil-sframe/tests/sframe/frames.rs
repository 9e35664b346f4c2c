//! Frame-level behaviour: replay (SF-RPL-01..04), tampering (SF-AEAD-04), counters (SF-KEY-04),
//! key lifetime (SF-KEY-01..03), in-place layouts and MLS epochs (SF-MLS-01..02).

use crate::common;

use std::time::Duration;

use common::backends;
use veil_sframe::{
    CipherSuite, KeyStore, MlsKidLayout, SenderKey, SframeError, derive_key_material,
    mls_sender_key,
};

const BASE: &[u8] = b"a base key of some length";

fn pair(suite: CipherSuite, kid: u64) -> (SenderKey, KeyStore) {
    let sender = SenderKey::from_base_key(suite, kid, BASE).unwrap();
    let mut store = KeyStore::new();
    store.insert_base_key(suite, kid, BASE).unwrap();
    (sender, store)
}

fn seal(sender: &mut SenderKey, meta: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; pt.len() + sender.max_overhead()];
    let n = sender.encrypt(meta, pt, &mut out).unwrap();
    out.truncate(n);
    out
}

fn open(store: &mut KeyStore, meta: &[u8], frame: &[u8]) -> Result<Vec<u8>, SframeError> {
    let mut buf = frame.to_vec();
    store
        .decrypt_in_place(meta, &mut buf)
        .map(|d| d.plaintext.to_vec())
}

#[test]
fn every_duplicate_in_the_window_is_rejected_and_older_frames_are_too_old() {
    // The default window: the last 1024 counters (SF-LIM-02).
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm128Sha256, 9);
    let frames: Vec<_> = (0..1300)
        .map(|i| seal(&mut tx, b"", &[i as u8; 20]))
        .collect();
    for f in &frames {
        open(&mut rx, b"", f).unwrap();
    }
    for (ctr, f) in frames.iter().enumerate().skip(1300 - 1024) {
        assert_eq!(
            open(&mut rx, b"", f),
            Err(SframeError::Replayed {
                kid: 9,
                ctr: ctr as u64
            })
        );
    }
    for f in &frames[..1300 - 1024] {
        assert!(matches!(
            open(&mut rx, b"", f),
            Err(SframeError::TooOld { .. })
        ));
    }
}

#[test]
fn reordered_new_frames_are_accepted_once() {
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm256Sha512, 1);
    let frames: Vec<_> = (0..200)
        .map(|i| seal(&mut tx, b"m", &[i as u8; 3]))
        .collect();
    // Deliver in a scrambled order that stays within even a 128-counter window.
    let mut order: Vec<usize> = (0..200).collect();
    for chunk in order.chunks_mut(50) {
        chunk.reverse();
    }
    for &i in &order {
        assert_eq!(
            open(&mut rx, b"m", &frames[i]).unwrap(),
            vec![i as u8; 3],
            "frame {i}"
        );
    }
    for &i in &order[150..] {
        assert!(
            open(&mut rx, b"m", &frames[i]).is_err(),
            "second copy of frame {i}"
        );
    }
}

#[test]
fn forged_frames_never_move_the_window() {
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm128Sha256, 4);
    let good: Vec<_> = (0..10).map(|_| seal(&mut tx, b"", b"payload")).collect();
    open(&mut rx, b"", &good[0]).unwrap();
    // A forgery claiming a far-future counter: same KID, counter 10_000, garbage body.
    let mut forged = vec![0u8; 40];
    let n = veil_sframe::SframeHeader::new(4, 10_000)
        .write(&mut forged)
        .unwrap();
    forged[n..].fill(0x5A);
    assert!(matches!(
        open(&mut rx, b"", &forged),
        Err(SframeError::AuthenticationFailed { kid: 4 })
    ));
    // Had the forgery moved the window, counters 1..9 would now be "too old".
    for f in &good[1..] {
        open(&mut rx, b"", f).unwrap();
    }
    // And a forgery of an already-seen counter is caught by the screen, not the tag.
    let mut replay_forgery = good[3].clone();
    *replay_forgery.last_mut().unwrap() ^= 1;
    assert!(matches!(
        open(&mut rx, b"", &replay_forgery),
        Err(SframeError::Replayed { .. })
    ));
}

#[test]
fn every_single_bit_flip_is_rejected_for_every_suite_and_backend() {
    let meta = b"rtp-meta";
    let mut flips = 0;
    for backend in backends() {
        for suite in CipherSuite::ALL {
            let m = derive_key_material(suite, 0x1234, BASE).unwrap();
            let mut tx = SenderKey::new(suite, 0x1234, &m, backend)
                .unwrap()
                .with_counter(77);
            let frame = seal(&mut tx, meta, b"twenty-one bytes here");
            // Flip every bit of header, ciphertext and tag ...
            for bit in 0..frame.len() * 8 {
                let mut store = KeyStore::with_backend(backend);
                store.insert(suite, 0x1234, &m).unwrap();
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    open(&mut store, meta, &bad).is_err(),
                    "{suite} frame bit {bit}"
                );
                assert_eq!(
                    open(&mut store, meta, &frame).unwrap(),
                    b"twenty-one bytes here"
                );
                flips += 1;
            }
            // ... and of the metadata.
            for bit in 0..meta.len() * 8 {
                let mut store = KeyStore::with_backend(backend);
                store.insert(suite, 0x1234, &m).unwrap();
                let mut bad_meta = meta.to_vec();
                bad_meta[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    open(&mut store, &bad_meta, &frame).is_err(),
                    "{suite} meta bit {bit}"
                );
                flips += 1;
            }
        }
    }
    assert!(flips > 5 * 300);
}

#[test]
fn truncated_frames_are_rejected_not_panicking() {
    for suite in CipherSuite::ALL {
        let (mut tx, mut rx) = pair(suite, 300);
        let frame = seal(&mut tx, b"", b"xyz");
        for cut in 0..frame.len() {
            assert!(
                open(&mut rx, b"", &frame[..cut]).is_err(),
                "{suite} cut {cut}"
            );
        }
        assert_eq!(open(&mut rx, b"", &frame).unwrap(), b"xyz");
    }
}

#[test]
fn counters_run_out_with_a_typed_error() {
    let mut tx = SenderKey::from_base_key(CipherSuite::AesGcm128Sha256, 1, BASE)
        .unwrap()
        .with_counter(u64::MAX - 1);
    seal(&mut tx, b"", b"a");
    seal(&mut tx, b"", b"b");
    let mut out = [0u8; 64];
    assert_eq!(
        tx.encrypt(b"", b"c", &mut out),
        Err(SframeError::CounterExhausted { kid: 1 })
    );
    let mut limited = SenderKey::from_base_key(CipherSuite::AesGcm128Sha256, 1, BASE)
        .unwrap()
        .with_counter_limit(2);
    for _ in 0..3 {
        seal(&mut limited, b"", b"x");
    }
    assert!(matches!(
        limited.encrypt(b"", b"d", &mut out),
        Err(SframeError::CounterExhausted { .. })
    ));
}

#[test]
fn retired_and_expired_keys_stop_decrypting() {
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm128Sha256, 5);
    let f1 = seal(&mut tx, b"", b"one");
    let f2 = seal(&mut tx, b"", b"two");
    open(&mut rx, b"", &f1).unwrap();
    assert!(rx.set_expiry(5, Duration::from_secs(10)));
    assert_eq!(rx.expire(Duration::from_secs(9)), 0);
    assert_eq!(rx.expire(Duration::from_secs(10)), 1);
    assert_eq!(
        open(&mut rx, b"", &f2),
        Err(SframeError::KeyRetired { kid: 5 })
    );
    assert_eq!(
        open(
            &mut rx,
            b"",
            &seal(
                &mut SenderKey::from_base_key(CipherSuite::AesGcm128Sha256, 6, BASE).unwrap(),
                b"",
                b"x"
            )
        ),
        Err(SframeError::UnknownKid { kid: 6 })
    );
    rx.insert_base_key(CipherSuite::AesGcm128Sha256, 5, BASE)
        .unwrap();
    assert!(rx.retire(5));
    assert!(!rx.retire(5));
    assert!(rx.is_empty());
}

#[test]
fn in_place_encryption_with_and_without_headroom() {
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm128Sha256, 0x4242);
    let pt = b"frame payload bytes";
    // Headroom: the header lands just before the payload, nothing moves.
    let mut buf = vec![0u8; 17 + pt.len() + 16];
    buf[17..17 + pt.len()].copy_from_slice(pt);
    let r = tx
        .encrypt_in_place(b"", &mut buf, 17..17 + pt.len())
        .unwrap();
    assert_eq!(r.end, 17 + pt.len() + 16);
    assert_eq!(open(&mut rx, b"", &buf[r]).unwrap(), pt);
    // No headroom: the payload is shifted right.
    let mut buf = vec![0u8; pt.len() + tx.max_overhead()];
    buf[..pt.len()].copy_from_slice(pt);
    let r = tx.encrypt_in_place(b"", &mut buf, 0..pt.len()).unwrap();
    assert_eq!(r.start, 0);
    assert_eq!(open(&mut rx, b"", &buf[r]).unwrap(), pt);
    // Too small a buffer is a typed error, and does not burn a counter.
    let before = tx.next_counter();
    let mut small = vec![0u8; pt.len()];
    assert!(matches!(
        tx.encrypt_in_place(b"", &mut small, 0..pt.len()),
        Err(SframeError::BufferTooSmall { .. })
    ));
    assert_eq!(tx.next_counter(), before);
    // Oversized metadata is refused for GCM.
    let mut out = vec![0u8; 64];
    assert!(matches!(
        tx.encrypt(&[0u8; 513], b"x", &mut out),
        Err(SframeError::MetadataTooLarge { .. })
    ));
}

#[test]
fn mls_epoch_keys_let_every_member_read_every_other_member() {
    let suite = CipherSuite::AesGcm128Sha256;
    let layout = MlsKidLayout::for_group(4, 5).unwrap();
    let secret = [9u8; 16];
    let mut stores: Vec<KeyStore> = (0..5)
        .map(|_| {
            let mut s = KeyStore::new();
            s.insert_mls_epoch(suite, &secret, layout, 0, 42, 0..5)
                .unwrap();
            s
        })
        .collect();
    for sender in 0..5u32 {
        let (kid, m) = mls_sender_key(suite, &secret, layout, 0, sender, 42).unwrap();
        assert_eq!(layout.split(kid), (0, u64::from(sender), 42 % 16));
        let mut tx = SenderKey::new(suite, kid, &m, veil_sframe::default_backend()).unwrap();
        let f = seal(&mut tx, b"", &[sender as u8; 9]);
        for (i, store) in stores.iter_mut().enumerate() {
            assert_eq!(
                open(store, b"", &f).unwrap(),
                vec![sender as u8; 9],
                "member {i}"
            );
        }
    }
    // A different epoch's secret does not decrypt (it derives different keys for the same KID
    // once the epoch bits wrap: epoch 42 + 16 has the same low 4 bits).
    let (kid, m) = mls_sender_key(suite, &[8u8; 16], layout, 0, 1, 42 + 16).unwrap();
    let mut tx = SenderKey::new(suite, kid, &m, veil_sframe::default_backend())
        .unwrap()
        .with_counter(1000);
    let f = seal(&mut tx, b"", b"later epoch");
    assert!(matches!(
        open(&mut stores[0], b"", &f),
        Err(SframeError::AuthenticationFailed { .. })
    ));
    assert!(matches!(
        mls_sender_key(suite, &secret, layout, 0, 8, 42),
        Err(SframeError::KidOverflow { .. })
    ));
}
