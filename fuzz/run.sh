#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after the other on one core (nice), and prints
# executions and coverage per target. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Usage: fuzz/run.sh SECONDS [TARGET...]
#   - seeds: the committed fuzz/corpus/<target>/ (read only), plus configs/**/*.toml for the
#     config loaders; what the fuzzer learns goes to fuzz/target/corpus/<target>/ (ignored by git,
#     kept between runs, so a second run starts where the first stopped)
#   - a crash stops that target, leaves its input in fuzz/artifacts/<target>/ and makes the
#     script exit 1 after the others ran; keep the input in fuzz/regressions/<target>/ once fixed
#   - built without a sanitizer (the product is safe Rust: `#![forbid(unsafe_code)]`), with
#     debug assertions and overflow checks on
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(codec_decode peek_connect proxy_header cluster_frame broker_config lb_config)

mkdir -p target
nice cargo +nightly fuzz build -s none -a >target/build.log 2>&1 || { cat target/build.log >&2; exit 2; }
bin=target/x86_64-unknown-linux-gnu/release

failed=0
rows=()
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  seeds=()
  [ -d "corpus/$t" ] && seeds+=("corpus/$t")
  case "$t" in
    *_config)
      mkdir -p "target/seeds/$t"
      find ../configs -name '*.toml' -exec cp {} "target/seeds/$t/" \;
      seeds+=("target/seeds/$t") ;;
  esac
  log="target/$t.log"
  start=$(date +%s)
  nice "$bin/$t" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "$work" "${seeds[@]}" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  crash="0"
  if [ "$rc" -ne 0 ]; then
    crash="1 ($(ls -t "artifacts/$t" | head -1))"
    failed=1
    grep -m3 -E 'panicked|ERROR' "$log" >&2
  fi
  rows+=("$(printf '%-14s %6ss %12s %9s %6s %7s %6s  %s' "$t" "$took" "${execs:-?}" \
    "$(( ${execs:-0} / (took > 0 ? took : 1) ))" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crash")")
done
printf '%-14s %7s %12s %9s %6s %7s %6s  %s\n' target time executions exec/s cov ft corpus crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
