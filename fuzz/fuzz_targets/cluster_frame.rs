//! cargo-fuzz target `cluster_frame`: the node channel's frames and the messages they carry.
//! The input format and the invariants are on `mqedge_fuzz::checks::cluster_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::cluster_frame(data));
