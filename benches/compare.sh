#!/usr/bin/env bash
# Side-by-side benchmarks on this machine: mqedge lb vs HAProxy vs NGINX (stream), mqedge broker
# vs Mosquitto, and mqedge's cluster; `mqedge bench` is the client for all of them. Installs the
# peers from Debian's packages, builds mqedge (release profile), runs every scenario and writes
# docs/benchmarks.md (+ docs/benchmarks.svg). `--quick` runs each scenario for a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null
fi
export PATH="$PATH:/usr/sbin"
ulimit -n 20000 2>/dev/null || true
# The shipped (stripped) release build by default; MQEDGE_PROFILE=profiling measures the same
# optimized code with symbols and line tables, for `perf record -g -p PID` during a run.
profile="${MQEDGE_PROFILE:-release}"
cargo build --profile "$profile" --quiet --bin mqedge
export MQEDGE_BIN="$PWD/target/$profile/mqedge"
exec python3 benches/compare.py "$@"
