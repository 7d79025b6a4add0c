#!/usr/bin/env bash
# Per-request costs for docs/capacity.md: gateway CPU per hit and per miss
# (from /proc, so the load generator's own CPU is not counted), Redis commands,
# PostgreSQL transactions and rows, and S3 objects per request, on the embedded
# engines and on Redis + S3 + PostgreSQL.
# Usage: bash scripts/bench-capacity.sh [SECONDS]   (default 5 per run; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
if [ -z "${RECACHE_BENCH_INNER:-}" ]; then
  cargo build --release -p recache -p recache-stub-provider >&2
  RECACHE_BENCH_INNER=1 exec bash scripts/with-engines.sh bash "$0" "$SECS"
fi
source scripts/lib-bench.sh
bench_bins
STUB_PORT=$(port); GW_PORT=$(port)
TICKS=$(getconf CLK_TCK)
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
common() { printf "[server]\nlisten = \"127.0.0.1:%s\"\n[[upstreams]]\nname = \"stub\"\nbase_url = \"http://127.0.0.1:%s/v1\"\n[[tenants]]\nname = \"bench\"\nkeys = [\"sk-bench\"]\n" $GW_PORT $STUB_PORT; }
{ common; printf "[index]\npath = \"%s/e/index\"\n[artifacts]\npath = \"%s/e/artifacts\"\n[metadata]\npath = \"%s/e/metadata.db\"\n" $W $W $W; } > $W/embedded.toml
CONFIGS=embedded
if [ -n "${RECACHE_TEST_REDIS_URL:-}" ] && [ -n "${RECACHE_TEST_S3_ENDPOINT:-}" ] && [ -n "${RECACHE_TEST_POSTGRES_URL:-}" ]; then
  psql -q "$RECACHE_TEST_POSTGRES_URL" -c "CREATE DATABASE capacity" >/dev/null
  PG=${RECACHE_TEST_POSTGRES_URL%/*}/capacity
  { common; printf "[index]\nengine = \"redis\"\nurl = \"%s\"\nkey_prefix = \"cap:\"\n[artifacts]\nengine = \"s3\"\nbucket = \"%s\"\nendpoint = \"%s\"\nprefix = \"capacity\"\n[metadata]\nengine = \"postgres\"\nurl = \"%s\"\n" "$RECACHE_TEST_REDIS_URL" "$RECACHE_TEST_S3_BUCKET" "$RECACHE_TEST_S3_ENDPOINT" "$PG"; } > $W/engines.toml
  CONFIGS="embedded engines"
fi
cpu() { awk "{print \$14 + \$15}" /proc/$GP/stat; }
redis_cmds() { [ "$1" = engines ] && redis-cli -u "$RECACHE_TEST_REDIS_URL" info stats | tr -d "\r" | awk -F: "/^total_commands_processed/{print \$2}" || echo 0; }
pg_stats() { [ "$1" = engines ] && psql -qtA "$PG" -c "SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database WHERE datname = current_database()" | tr "|" " " || echo "0 0"; }
redis_mem() { [ "$1" = engines ] && echo "$(redis-cli -u "$RECACHE_TEST_REDIS_URL" info memory | tr -d "\r" | awk -F: "/^used_memory:/{print \$2}") $(redis-cli -u "$RECACHE_TEST_REDIS_URL" dbsize)" || echo "0 0"; }
s3_objects() { [ "$1" = engines ] && find "$RECACHE_TEST_S3_DATA" -path "*capacity/sha256*" -type f 2>/dev/null | wc -l || find $W/e/artifacts -type f | wc -l; }
for cfg in $CONFIGS; do
  bench_bg env RUST_LOG=warn $B serve --config $W/$cfg.toml >$W/serve-$cfg.log 2>&1
  GP=$!
  wait_live $GW_PORT
  for mode in miss hit; do
    for c in 1 16; do
      sleep 1.5 # hit counters and stores of the previous run settle
      c0=$(cpu); r0=$(redis_cmds $cfg); read x0 t0 <<<"$(pg_stats $cfg)"; o0=$(s3_objects $cfg); read m0 k0 <<<"$(redis_mem $cfg)"
      $B bench load --url http://127.0.0.1:$GW_PORT --key sk-bench --mode $mode --connections $c --duration $SECS --format json > $W/run.json
      sleep 1.5
      c1=$(cpu); r1=$(redis_cmds $cfg); read x1 t1 <<<"$(pg_stats $cfg)"; o1=$(s3_objects $cfg); read m1 k1 <<<"$(redis_mem $cfg)"
      python3 - $W/run.json $cfg $mode $c $((c1-c0)) $TICKS $((r1-r0)) $((x1-x0)) $((t1-t0)) $((o1-o0)) $((m1-m0)) $((k1-k0)) <<PY
import json, sys
r = json.load(open(sys.argv[1])); cfg, mode, c = sys.argv[2], sys.argv[3], int(sys.argv[4])
ticks, hz, redis, xacts, rows, objs, mem, keys = (int(v) for v in sys.argv[5:13])
n = max(r["requests"], 1)
print("| %s | %s | %d | %.0f | %.0f | %s | %s | %.2f | %s | %.0f |" % (cfg, mode, c, r["throughput_rps"], ticks / hz * 1e6 / n,
      "%.2f" % (redis / n) if cfg == "engines" else "-", "%.3f / %.2f" % (xacts / n, rows / n) if cfg == "engines" else "-",
      objs / n, "%.0f" % (mem / keys) if keys > 100 else "-", r["gateway_rss_mb"]))
PY
    done
  done
  kill $GP; wait $GP 2>/dev/null || true
done | { echo "| engines | mode | conns | req/s | gateway CPU us/request | Redis commands/request | PG transactions / rows per request | new artifacts per request | Redis bytes per new key | gateway RSS MB |"; echo "|---|---|---|---|---|---|---|---|---|---|"; cat; }
