//! SF-PERF-01: encrypting and decrypting a frame allocates nothing on the heap.
//!
//! A counting global allocator wraps the system allocator for this test binary only.
#![allow(unsafe_code)]

#[path = "sframe/common.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use veil_sframe::{CipherSuite, KeyStore, SenderKey, derive_key_material};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Only the measuring thread counts: the test harness's own threads may allocate at any
    // time (a loaded CI once caught 4 such allocations in the window).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn per_frame_work_never_allocates() {
    let mut frames = 0;
    for backend in common::backends() {
        for suite in CipherSuite::ALL {
            let m = derive_key_material(suite, 77, b"base").unwrap();
            let mut tx = SenderKey::new(suite, 77, &m, backend).unwrap();
            let mut rx = KeyStore::with_backend(backend);
            rx.insert(suite, 77, &m).unwrap();
            let mut buf = vec![0u8; 17 + 10_000 + 16];
            let meta = [1u8; 12];

            ALLOCS.store(0, Ordering::SeqCst);
            set_counting(true);
            for i in 0..200usize {
                let len = (i * 97) % 10_000;
                buf[17..17 + len].fill(i as u8);
                let r = tx.encrypt_in_place(&meta, &mut buf, 17..17 + len).unwrap();
                let d = rx.decrypt_in_place(&meta, &mut buf[r]).unwrap();
                assert_eq!(d.plaintext.len(), len);
                frames += 1;
            }
            set_counting(false);
            let n = ALLOCS.load(Ordering::SeqCst);
            assert_eq!(
                n,
                0,
                "{suite} via {}: {n} allocations in 200 frames",
                backend.name()
            );
        }
    }
    // The counter works: building a key store allocates.
    set_counting(true);
    let mut s = KeyStore::new();
    s.insert_base_key(CipherSuite::AesGcm128Sha256, 1, b"k")
        .unwrap();
    set_counting(false);
    assert!(
        ALLOCS.load(Ordering::SeqCst) > 0,
        "the counting allocator saw nothing"
    );
    assert_eq!(frames, common::backends().len() * 5 * 200);
}
