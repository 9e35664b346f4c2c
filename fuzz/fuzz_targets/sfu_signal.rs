#![no_main]
//! libFuzzer entry of [`veil_fuzz::sfu_signal::sfu_signal`] (the body lives in `src/sfu_signal.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::sfu_signal::sfu_signal(data));
