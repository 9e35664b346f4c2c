#![no_main]
//! libFuzzer entry of [`veil_fuzz::dd_parse::dd_parse`] (the body lives in `src/dd_parse.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::dd_parse::dd_parse(data));
