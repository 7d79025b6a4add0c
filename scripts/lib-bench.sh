# Shared prologue of the bench scripts (sourced, not run):
#   bench_build PKG...   cargo build --release of the packages; sets B (recache)
#                        and S (recache-stub)
#   bench_bins           sets B and S only (inside `with-engines.sh bash -c`,
#                        after the outer script built them)
#   W                    a fresh work directory, removed at exit
#   port                 prints a free loopback port
#   bench_bg CMD...      runs CMD in the background, killed at exit (its pid in $!)
#   wait_live PORT       waits until a gateway on PORT answers /health/live
#   wait_http PORT       waits until anything answers HTTP on PORT (stubs, floors)
#   report_run FILE NAME prints one `bench load --format json` result on stderr
# Loopback only; every process started here ends with the script.
W=$(mktemp -d "${TMPDIR:-/tmp}/recache-bench.XXXXXX")
BENCH_PIDS=()
bench_cleanup() {
  local p
  for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap bench_cleanup EXIT
bench_build() {
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  cargo build --release "${args[@]}" >&2
  bench_bins
}
bench_bins() {
  B=$PWD/target/release/recache
  S=$PWD/target/release/recache-stub
}
port() { python3 -c "import socket;s=socket.socket();s.bind((\"127.0.0.1\",0));print(s.getsockname()[1])"; }
bench_bg() {
  "$@" &
  BENCH_PIDS+=($!)
}
wait_live() { until curl -sf "http://127.0.0.1:$1/health/live" >/dev/null; do sleep 0.05; done; }
wait_http() { until curl -s -o /dev/null "http://127.0.0.1:$1/"; do sleep 0.05; done; }
report_run() {
  python3 - "$1" "$2" >&2 <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]
print("  %s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, errors %s, %s" % (sys.argv[2], r["throughput_rps"], l["p50"], l["p99"], r["errors"], r["cache_status"]))
PY
}
