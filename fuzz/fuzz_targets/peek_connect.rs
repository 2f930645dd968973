//! cargo-fuzz target `peek_connect`: the LB's CONNECT peek on a client's first bytes.
//! The input format and the invariants are on `mqedge_fuzz::checks::peek_connect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::peek_connect(data));
