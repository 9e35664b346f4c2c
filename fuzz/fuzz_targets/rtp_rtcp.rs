#![no_main]
//! libFuzzer entry of [`veil_fuzz::rtp_rtcp::rtp_rtcp`] (the body lives in `src/rtp_rtcp.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_fuzz::rtp_rtcp::rtp_rtcp(data));
