//! cargo-fuzz target `proxy_header`: PROXY v1/v2 headers and their TLVs.
//! The input format and the invariants are on `mqedge_fuzz::checks::proxy_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::proxy_header(data));
