#![no_main]
//! libFuzzer entry of [`veil_fuzz::reassembly::reassembly`] (the body lives in `src/reassembly.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::reassembly::reassembly(data));
