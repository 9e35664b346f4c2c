#![no_main]
//! libFuzzer entry of [`veil_fuzz::sfu_sdp::sfu_sdp`] (the body lives in `src/sfu_sdp.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::sfu_sdp::sfu_sdp(data));
