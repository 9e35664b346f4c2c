#![no_main]
//! libFuzzer entry of [`veil_fuzz::sframe_header::sframe_header`] (the body lives in `src/sframe_header.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::sframe_header::sframe_header(data));
