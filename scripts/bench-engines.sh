#!/usr/bin/env bash
# Hit latency/throughput through the gateway on Redis + S3 + PostgreSQL, next
# to redis-benchmark GET on the same Redis at the same concurrency.
# Usage: bash scripts/bench-engines.sh [CONNECTIONS] [SECONDS]   (bounded, loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-32}; SECS=${2:-8}
if [ -z "${RECACHE_BENCH_INNER:-}" ]; then
  cargo build --release -p recache -p recache-stub-provider >&2
  RECACHE_BENCH_INNER=1 exec bash scripts/with-engines.sh bash "$0" "$C" "$SECS"
fi
source scripts/lib-bench.sh
bench_bins
STUB_PORT=$(port); GW_PORT=$(port)
psql -q "$RECACHE_TEST_POSTGRES_URL" -c "CREATE DATABASE bench" >/dev/null
PG_BENCH=${RECACHE_TEST_POSTGRES_URL%/*}/bench
cat > $W/recache.toml <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[index]
engine = "redis"
url = "$RECACHE_TEST_REDIS_URL"
[artifacts]
engine = "s3"
bucket = "$RECACHE_TEST_S3_BUCKET"
endpoint = "$RECACHE_TEST_S3_ENDPOINT"
prefix = "bench"
[metadata]
engine = "postgres"
url = "$PG_BENCH"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[[tenants]]
name = "bench"
keys = ["sk-bench"]
TOML
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
bench_bg env RUST_LOG=warn $B serve --config $W/recache.toml >$W/serve.log 2>&1
GP=$!
wait_live $GW_PORT
L="$B bench load --url http://127.0.0.1:$GW_PORT --key sk-bench"
echo "== gateway hits on Redis+S3+PostgreSQL, 1 connection"; $L --mode hit --connections 1 --duration 5
echo "== gateway hits on Redis+S3+PostgreSQL, $C connections"; $L --mode hit --connections $C --duration $SECS --format json > $W/gw.json
cat $W/gw.json
echo "== gateway hits, memory tier off (every hit reads Redis and S3), $C connections"
kill $GP; wait $GP 2>/dev/null || true
bench_bg env RECACHE_ARTIFACTS__MEMORY_CACHE_MB=0 RUST_LOG=warn $B serve --config $W/recache.toml >$W/serve2.log 2>&1
wait_live $GW_PORT
$L --mode hit --connections $C --duration $SECS --format json > $W/gw2.json; cat $W/gw2.json
echo "== gateway misses on Redis+S3+PostgreSQL, $C connections"; $L --mode miss --connections $C --duration 5
PORT=${RECACHE_TEST_REDIS_URL##*:}
echo "== redis-benchmark -t get -c $C on the same Redis"
redis-benchmark -h 127.0.0.1 -p $PORT -t get -c $C -n 400000 -q | tr "\r" "\n" | grep -E "GET:" | tail -1 | tee $W/rb.txt
python3 - "$W/gw.json" "$W/gw2.json" "$W/rb.txt" <<PY
import json,re,sys
gw=json.load(open(sys.argv[1])); gw2=json.load(open(sys.argv[2]))
rb=float(re.search(r"GET: ([0-9.]+) requests per second", open(sys.argv[3]).read()).group(1))
a=gw["throughput_rps"]; b=gw2["throughput_rps"]
print("ratio (memory tier on):  gateway %.0f hits/s / redis GET %.0f/s = %.1f%%" % (a, rb, a/rb*100))
print("ratio (memory tier off): gateway %.0f hits/s / redis GET %.0f/s = %.1f%%" % (b, rb, b/rb*100))
PY
