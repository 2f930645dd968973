//! cargo-fuzz target `lb_config`: the LB's config loader on any text.
//! The input format and the invariants are on `mqedge_fuzz::checks::lb_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::lb_config(data));
