#![no_main]
//! libFuzzer entry of [`veil_fuzz::ext_block::ext_block`] (the body lives in `src/ext_block.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::ext_block::ext_block(data));
