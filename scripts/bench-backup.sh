#!/usr/bin/env bash
# Reproduces the backup figures in docs/benchmarks.md, for N small entries
# (default 1,000,000, one artifact each):
#   full backup, incremental backup after 10,000 new entries, verify (the
#   full `restore` level: hashes, pooled artifacts, test restore, canary,
#   audit), and restore into wiped stores to the point where every entry is
#   a HIT (the restore RTO), each with its wall time and peak RSS.
# PARTS=embedded (SQLite + embedded index + local artifacts, local target)
# and/or PARTS=real (PostgreSQL + Redis + local artifacts, S3 target);
# servers are started on loopback by scripts/with-engines.sh.
# Usage: bash scripts/bench-backup.sh [ENTRIES]   (bounded: ~15 minutes and
# ~12 GB of temporary disk at 1M on 2 cores).
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
run() { # NAME CONFIG
  local name=$1 cfg=$2
  echo "== $name: seed $ENTRIES entries"
  eval "$T" "$B" bench seed --config "$cfg" --entries "$ENTRIES" --artifacts 2>/dev/null | tail -1
  echo "== $name: full backup"
  eval "$T" "$B" backup create --config "$cfg" 2>&1 | grep -v "^recache: warning"
  echo "== $name: 10,000 new entries, incremental backup"
  "$B" bench seed --config "$cfg" --entries 10000 --tenant bench-new --artifacts 2>/dev/null | tail -1
  eval "$T" "$B" backup create --config "$cfg" 2>&1 | grep -v "^recache: warning"
  echo "== $name: verify --latest (level restore)"
  eval "$T" "$B" backup verify --latest --config "$cfg" 2>&1 | grep -v "^recache: warning"
}
if [[ " ${PARTS:-embedded real} " == *" embedded "* ]]; then
cat > "$W/embedded.toml" <<TOML
[index]
path = "$W/e/index"
[artifacts]
path = "$W/e/artifacts"
[metadata]
path = "$W/e/metadata.db"
[backup]
target = "$W/target-e"
verify_after_create = false
$(common)
TOML
run embedded "$W/embedded.toml"
echo "== embedded: wipe every store, restore --latest"
rm -rf "$W/e"
eval "$T" "$B" backup restore --latest --config "$W/embedded.toml" 2>&1 | grep -v "^recache: warning"
echo "== embedded: every entry a HIT? audit --check index (every live entry has its pointer)"
"$B" audit --check index --config "$W/embedded.toml" 2>&1 | grep -v "^recache: warning" | tail -2
rm -rf "$W/e" "$W/target-e"
fi
if [[ " ${PARTS:-embedded real} " == *" real "* ]]; then
PGDB="bench_backup_$$"
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
[backup]
target = "s3://$RECACHE_TEST_S3_BUCKET/bench-backup?endpoint=$RECACHE_TEST_S3_ENDPOINT"
verify_after_create = false
$(common)
TOML
run real "$W/real.toml"
echo "== real: wipe every store (FLUSHALL, artifacts, drop schema), restore --latest"
redis-cli -u "$RECACHE_TEST_REDIS_URL" FLUSHALL >/dev/null
rm -rf "$W/r"
psql "$PGURL" -qc "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null
eval "$T" "$B" backup restore --latest --config "$W/real.toml" 2>&1 | grep -v "^recache: warning"
echo "    redis keys after the restore: $(redis-cli -u "$RECACHE_TEST_REDIS_URL" DBSIZE)"
"$B" audit --check index --config "$W/real.toml" 2>&1 | grep -v "^recache: warning" | tail -2
fi
