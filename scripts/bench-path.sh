#!/usr/bin/env bash
# The request path against its floors, in one run (issues #12 and #28):
#  - misses through the gateway next to the same load sent straight to the
#    stub provider (zero latency): throughput ratio, added p50/p99;
#  - the same misses through a bare proxy to the stub (`recache-stub
#    --proxy-floor`): what any proxy reaches on this machine, the floor a
#    stored miss is held to (target: at least 0.6 of it at 16 connections);
#  - hits through the gateway next to a bare axum server returning a fixed
#    completion with no lookup (`recache-stub --floor`);
# at 1 and 16 connections, on the embedded engines and, when the engine
# harness can start them, on Redis + S3 + PostgreSQL.
# Usage: bash scripts/bench-path.sh [SECONDS]   (default 5 per run; loopback only, ~3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
if [ -z "${RECACHE_BENCH_INNER:-}" ]; then
  cargo build --release -p recache -p recache-stub-provider >&2
  RECACHE_BENCH_INNER=1 exec bash scripts/with-engines.sh bash "$0" "$SECS"
fi
source scripts/lib-bench.sh
bench_bins
STUB_PORT=$(port); FLOOR_PORT=$(port); PROXY_PORT=$(port); GW_PORT=$(port)
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
bench_bg $S --floor --listen 127.0.0.1:$FLOOR_PORT >/dev/null 2>&1
bench_bg $S --proxy-floor http://127.0.0.1:$STUB_PORT/v1 --listen 127.0.0.1:$PROXY_PORT >/dev/null 2>&1
wait_http $PROXY_PORT
common() { cat <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[[tenants]]
name = "bench"
keys = ["sk-bench"]
TOML
}
{ common; cat <<TOML
[index]
path = "$W/e/index"
[artifacts]
path = "$W/e/artifacts"
[metadata]
path = "$W/e/metadata.db"
TOML
} > $W/embedded.toml
CONFIGS="embedded"
if [ -n "${RECACHE_TEST_REDIS_URL:-}" ] && [ -n "${RECACHE_TEST_S3_ENDPOINT:-}" ] && [ -n "${RECACHE_TEST_POSTGRES_URL:-}" ]; then
  psql -q "$RECACHE_TEST_POSTGRES_URL" -c "CREATE DATABASE benchpath" >/dev/null
  { common; cat <<TOML
[index]
engine = "redis"
url = "$RECACHE_TEST_REDIS_URL"
key_prefix = "benchpath:"
[artifacts]
engine = "s3"
bucket = "$RECACHE_TEST_S3_BUCKET"
endpoint = "$RECACHE_TEST_S3_ENDPOINT"
prefix = "benchpath"
[metadata]
engine = "postgres"
url = "${RECACHE_TEST_POSTGRES_URL%/*}/benchpath"
TOML
  } > $W/engines.toml
  CONFIGS="embedded engines"
else
  echo "(no engine harness: Redis + S3 + PostgreSQL skipped)" >&2
fi
run() { # name url mode connections [extra bench load arguments]
  $B bench load --url "$2" --key sk-bench --mode "$3" --connections "$4" --duration "$SECS" --format json "${@:5}" > "$W/$1.json"
  report_run "$W/$1.json" "$1"
}
# Answers still waiting for their store would compete with the next run.
settle() {
  for _ in $(seq 1 600); do
    curl -s http://127.0.0.1:$GW_PORT/metrics | grep -q "^cache_stores_in_progress 0$" && return
    sleep 0.1
  done
}
for c in 1 16; do
  echo "== straight to the stub (misses), to the floor (fixed answer) and through the bare proxy (misses), $c connection(s)" >&2
  run stub-$c http://127.0.0.1:$STUB_PORT miss $c
  run floor-$c http://127.0.0.1:$FLOOR_PORT hit $c
  run proxy-$c http://127.0.0.1:$PROXY_PORT miss $c
done
for cfg in $CONFIGS; do
  bench_bg env RUST_LOG=warn $B serve --config $W/$cfg.toml >$W/serve-$cfg.log 2>&1
  GP=$!
  wait_live $GW_PORT
  for c in 1 16; do
    echo "== gateway on $cfg, $c connection(s)" >&2
    run $cfg-miss-$c http://127.0.0.1:$GW_PORT miss $c
    settle
    # The same misses with nothing stored: the gateway as a plain proxy, the
    # ceiling a stored miss can approach on this machine.
    run $cfg-pass-$c http://127.0.0.1:$GW_PORT miss $c --header "cache-control: no-store"
    run $cfg-hit-$c http://127.0.0.1:$GW_PORT hit $c
  done
  echo "  rss after the runs: $(curl -s http://127.0.0.1:$GW_PORT/metrics | grep -E "^process_resident_memory_bytes" | cut -d" " -f2) bytes" >&2
  kill $GP; wait $GP 2>/dev/null || true
done
python3 - "$W" $CONFIGS <<PY
import json, sys
w, configs = sys.argv[1], sys.argv[2:]
def r(name): return json.load(open("%s/%s.json" % (w, name)))
def rps(x): return x["throughput_rps"]
def p50(x): return x["latency_ms"]["p50"]
def p99(x): return x["latency_ms"]["p99"]
print()
print("| engines | load | conns | gateway req/s | reference req/s | ratio | gateway p50 / p99 ms | added p50 / p99 ms | target |")
print("|---|---|---|---|---|---|---|---|---|")
def miss_row(cfg, load, c, g, s, target):
    print("| %s | %s | %d | %.0f | %.0f | %.2f | %.3f / %.3f | %+.3f / %+.3f | %s |" % (
        cfg, load, c, rps(g), rps(s), rps(g) / rps(s), p50(g), p99(g), p50(g) - p50(s), p99(g) - p99(s), target))
for c in (1, 16):
    miss_row("none", "bare proxy (proxy floor) vs stub", c, r("proxy-%d" % c), r("stub-%d" % c), "floor for misses")
for cfg in configs:
    for c in (1, 16):
        s = r("stub-%d" % c)
        target = {1: "added p50 < 0.3, p99 < 1 (embedded)", 16: "-"}[c]
        miss_row(cfg, "miss vs stub", c, r("%s-miss-%d" % (cfg, c)), s, target)
        miss_row(cfg, "miss, not stored (no-store) vs stub", c, r("%s-pass-%d" % (cfg, c)), s, "ceiling")
        target = {1: "-", 16: "ratio >= 0.6 (embedded)"}[c]
        miss_row(cfg, "miss vs bare proxy", c, r("%s-miss-%d" % (cfg, c)), r("proxy-%d" % c), target)
        g, f = r("%s-hit-%d" % (cfg, c)), r("floor-%d" % c)
        target = {1: "p99 <= 3x floor", 16: "ratio >= 0.6"}[c]
        print("| %s | hit vs floor | %d | %.0f | %.0f | %.2f | %.3f / %.3f | %+.3f / %+.3f (p99 %.1fx) | %s |" % (
            cfg, c, rps(g), rps(f), rps(g) / rps(f), p50(g), p99(g), p50(g) - p50(f), p99(g) - p99(f), p99(g) / p99(f), target))
PY
