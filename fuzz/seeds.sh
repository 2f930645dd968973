#!/usr/bin/env bash
# Regenerates the committed seed corpora (fuzz/corpus/<target>/) from the encoders' own sample
# values: every sample MQTT packet (3.1, 3.1.1, 5.0), every node-channel frame, PROXY v1/v2
# headers. Run it after a wire format changes; the config targets are seeded from configs/ by
# run.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export MQEDGE_FUZZ_SEEDS="$PWD/fuzz/corpus" CARGO_PROFILE_DEV_DEBUG=0
rm -rf fuzz/corpus/{codec_decode,peek_connect,cluster_frame,proxy_header}
cargo test -q -p mqedge-protocol --lib write_fuzz_seeds -- --ignored
cargo test -q -p mqedge-broker --lib write_fuzz_seeds -- --ignored
cargo test -q --test fuzz_regressions write_fuzz_seeds -- --ignored
for d in fuzz/corpus/*/; do echo "$d: $(ls "$d" | wc -l) files, $(du -sk "$d" | cut -f1) KiB"; done
