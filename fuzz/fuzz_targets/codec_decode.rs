//! cargo-fuzz target `codec_decode`: the MQTT codec (3.1, 3.1.1, 5.0) on a client's or a backend's bytes.
//! The input format and the invariants are on `mqedge_fuzz::checks::codec_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::codec_decode(data));
