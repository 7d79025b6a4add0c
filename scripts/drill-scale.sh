#!/usr/bin/env bash
# Runs DR drills at scale on real Redis + S3 + PostgreSQL (started on loopback by
# scripts/with-engines.sh) with the release build, and prints one line of figures
# per scenario (the reports stay under $OUT). Each scenario gets a fresh database,
# key prefix and object prefix. Bounded: ENTRIES seeded, RPS for about 40 s each.
# Usage: bash scripts/drill-scale.sh [ENTRIES] [SCENARIO...]
#   ENTRIES (default 20000), RPS (default 200), FAULT (default 20 s), OUT (default a temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${1:-20000}
shift || true
SCENARIOS=${*:-index-down artifacts-down vectors-down metadata-down all-down provider-down index-loss artifacts-loss metadata-loss full-restore}
if [ -z "${RECACHE_TEST_REDIS_URL:-}" ]; then
  cargo build --release -p recache -p recache-stub-provider >&2
  exec bash scripts/with-engines.sh bash "$0" "$ENTRIES" $SCENARIOS
fi
RPS=${RPS:-200}
FAULT=${FAULT:-20}
B=$PWD/target/release/recache
W=$(mktemp -d /tmp/recache-drill-scale.XXXXXX)
OUT=${OUT:-$W/reports}
STUB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$PWD/target/release/recache-stub" --listen "127.0.0.1:$STUB_PORT" >/dev/null 2>&1 &
STUB=$!
trap 'kill $STUB 2>/dev/null || true' EXIT
sleep 0.5
PG_BASE=${RECACHE_TEST_POSTGRES_URL%/*}
printf "%-15s %-8s %9s %9s %9s %8s %7s %9s %9s %10s %10s\n" scenario verdict RTO_s healthy_s RPO_s lost errors integrity p99_during spend_usd predicted
for s in $SCENARIOS; do
  id=drill_$(date +%s%N)
  psql -q "$RECACHE_TEST_POSTGRES_URL" -c "CREATE DATABASE $id" >/dev/null
  cat > "$W/$id.toml" <<TOML
[index]
engine = "redis"
url = "$RECACHE_TEST_REDIS_URL"
key_prefix = "$id:"
[artifacts]
engine = "s3"
bucket = "$RECACHE_TEST_S3_BUCKET"
endpoint = "$RECACHE_TEST_S3_ENDPOINT"
prefix = "$id"
[metadata]
engine = "postgres"
url = "$PG_BASE/$id"
spool_path = "$W/$id.spool"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[drill]
out_dir = "$OUT"
recovery_timeout = "5m"
[drill.engines.index]
allow_destructive = true
[drill.engines.artifacts]
allow_destructive = true
[drill.engines.metadata]
allow_destructive = true
TOML
  set +e
  "$B" drill run --config "$W/$id.toml" --managed --scenario "$s" --entries "$ENTRIES" --rps "$RPS" \
    --duration 40s --steady 10s --fault-seconds "$FAULT" --fraction 0.1 --probe-max 2000 --format json \
    > "$W/$s.json" 2> "$W/$s.err"
  set -e
  python3 - "$W/$s.json" "$s" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print(f"{sys.argv[2]:<15} did not run (see its .err)"); sys.exit(0)
m = r["measures"]
f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
i = m.get("integrity") or {}
integ = "-" if not i else f"{100 * (1 - min(i['problems'], i['entries']) / max(i['entries'], 1)):.2f}%"
print(f"{r['scenario']:<15} {r['verdict']:<8} {f(m['rto_seconds']):>9} {f(m['healthy_after_seconds']):>9} {f(m['rpo_seconds']):>9} "
      f"{m['lost_entries']:>8} {m['client_errors']:>7} {integ:>9} {f(m['p99_ms_during']):>9} {f(m['spend_during_usd'], 4):>10} {f(m['predicted_spend_usd'], 4):>10}")
PY
done
echo "reports: $OUT"
