#![no_main]
//! libFuzzer entry of [`veil_fuzz::route::route`] (the body lives in `src/route.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::route::route(data));
