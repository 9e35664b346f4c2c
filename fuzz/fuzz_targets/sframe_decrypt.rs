#![no_main]
//! libFuzzer entry of [`veil_fuzz::sframe_decrypt::sframe_decrypt`] (the body lives in `src/sframe_decrypt.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::sframe_decrypt::sframe_decrypt(data));
