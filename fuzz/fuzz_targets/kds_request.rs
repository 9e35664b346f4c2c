#![no_main]
//! libFuzzer entry of [`veil_fuzz::kds_request::kds_request`] (the body lives in `src/kds_request/`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::kds_request::kds_request(data));
