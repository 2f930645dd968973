//! cargo-fuzz target `websocket`: the WebSocket Upgrade request and client frames.
//! The input format and the invariants are on `mqedge_fuzz::checks::websocket`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mqedge_fuzz::checks::websocket(data));
