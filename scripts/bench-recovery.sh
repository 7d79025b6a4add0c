#!/usr/bin/env bash
# Reproduces the recovery figures in docs/benchmarks.md:
#   - index rebuild of N entries: SQLite -> embedded index, PostgreSQL -> Redis
#   - audit --check all over N entries (embedded stores, one artifact per entry)
# Each prints seconds, entries/s and peak RSS. Servers are started on loopback
# by scripts/with-engines.sh. Usage: bash scripts/bench-recovery.sh [ENTRIES]
# (default 1000000; bounded: about 12 minutes on 2 cores, ~9 GB of temporary disk).
# PARTS=embedded or PARTS=real runs one half.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${1:-1000000}
if [ -z "${RECACHE_TEST_REDIS_URL:-}" ]; then
  cargo build --release -p recache >&2
  exec bash scripts/with-engines.sh bash "$0" "$ENTRIES"
fi
source scripts/lib-bench.sh
bench_bins
T='/usr/bin/time -f "    wall %e s, peak RSS %M KB"'
common() {
  cat <<TOML
[warmer]
page_size = 5000
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:9/v1"
[[tenants]]
name = "bench"
keys = ["sha256:$(printf %s sk-bench | sha256sum | cut -d' ' -f1)"]
TOML
}
cat > "$W/embedded.toml" <<TOML
[index]
path = "$W/e/index"
[artifacts]
path = "$W/e/artifacts"
[metadata]
path = "$W/e/metadata.db"
$(common)
TOML
PGDB="bench_recovery_$$"
psql "$RECACHE_TEST_POSTGRES_URL" -qc "CREATE DATABASE $PGDB" >/dev/null
PGURL="${RECACHE_TEST_POSTGRES_URL%/*}/$PGDB"
cat > "$W/real.toml" <<TOML
[index]
engine = "redis"
url = "$RECACHE_TEST_REDIS_URL"
key_prefix = "bench:"
timeout_ms = 2000
[artifacts]
path = "$W/r/artifacts"
[metadata]
engine = "postgres"
url = "$PGURL"
timeout_ms = 5000
$(common)
TOML

PARTS=${PARTS:-embedded real}
if [[ " $PARTS " == *" embedded "* ]]; then
echo "== SQLite -> embedded index, $ENTRIES entries (one artifact each)"
eval "$T" "$B" bench seed --config "$W/embedded.toml" --entries "$ENTRIES" --artifacts 2>/dev/null
eval "$T" "$B" bench rebuild --config "$W/embedded.toml"
echo "== audit --check all, embedded stores, $ENTRIES entries"
eval "$T" "$B" audit --check all --config "$W/embedded.toml" --limit 5 || true

rm -rf "$W/e"
fi
if [[ " $PARTS " == *" real "* ]]; then
echo "== PostgreSQL -> Redis, $ENTRIES entries (one artifact each, local directory)"
eval "$T" "$B" bench seed --config "$W/real.toml" --entries "$ENTRIES" --artifacts 2>/dev/null
redis-cli -u "$RECACHE_TEST_REDIS_URL" FLUSHALL >/dev/null
eval "$T" "$B" bench rebuild --config "$W/real.toml"
echo "    redis keys after the rebuild: $(redis-cli -u "$RECACHE_TEST_REDIS_URL" DBSIZE)"
echo "== audit --check all (PostgreSQL + Redis + local artifacts), $ENTRIES entries"
eval "$T" "$B" audit --check all --config "$W/real.toml" --limit 5 || true
fi
