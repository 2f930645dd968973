//! cargo-fuzz target `broker_config`: the broker's config loader on any text.
//! The input format and the invariants are on `mqedge_fuzz::checks::broker_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::broker_config(data));
