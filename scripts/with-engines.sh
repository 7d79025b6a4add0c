#!/usr/bin/env bash
# Runs a command with real storage engines started for it, each on an
# ephemeral loopback port with its data in a temporary directory:
#   Redis (redis-server), PostgreSQL (initdb + postgres), S3 (s3s-fs), and
#   Qdrant when a server binary is at hand: $QDRANT_BIN, or ../shared/bin/qdrant
#   beside the project root (no package ships one; without it the Qdrant tests
#   say they are skipped).
# Installs what is missing (Debian packages, crates.io), hands the endpoints
# to the command through RECACHE_TEST_* environment variables, and tears
# everything down when the command ends, whether it passed or failed.
#
#   bash scripts/with-engines.sh cargo test --workspace
#   bash scripts/with-engines.sh --print     # start them, print the env, wait for Ctrl-C
set -euo pipefail

log() { echo "[engines] $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || need_apt+=(postgresql)
# Headless Chromium renders the drill reports' charts in the tests.
command -v chromium >/dev/null || need_apt+=(chromium)
# promtool checks the alert rules in deploy/ and the gateway's /metrics page in the tests.
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq "${need_apt[@]}") >&2
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
S3S=$(command -v s3s-fs || true)
[ -z "$S3S" ] && [ -x "$HOME/.cargo/bin/s3s-fs" ] && S3S="$HOME/.cargo/bin/s3s-fs"
if [ -z "$S3S" ]; then
  log "installing s3s-fs from crates.io (about 3 minutes, once)"
  cargo install s3s-fs@0.14.1 --features binary --locked >&2
  S3S="$HOME/.cargo/bin/s3s-fs"
fi

WORK=$(mktemp -d /tmp/recache-engines.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local code=$?
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit $code
}
trap cleanup EXIT INT TERM

# --- Redis: no persistence by default (tests turn it on when they need it).
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no >/dev/null 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID"); disown "$REDIS_PID"

# --- PostgreSQL: a fresh cluster owned by the postgres user, trust auth on loopback.
PG_PORT=$(free_port)
PG_DATA="$WORK/pg"
mkdir -p "$PG_DATA"; chown postgres "$PG_DATA"
if [ "$(id -u)" = 0 ]; then PGRUN=(runuser -u postgres --); else PGRUN=(); fi
"${PGRUN[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust --no-sync >"$WORK/initdb.log" 2>&1 \
  || { cat "$WORK/initdb.log" >&2; exit 1; }
"${PGRUN[@]}" "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_DATA" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
  >"$WORK/pg.log" 2>&1 &
PG_PID=$!; PIDS+=("$PG_PID"); disown "$PG_PID"

# --- S3: s3s-fs with a bucket directory.
S3_PORT=$(free_port)
S3_ROOT="$WORK/s3"; mkdir -p "$S3_ROOT/recache-test"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key recache-test --secret-key recache-test-secret "$S3_ROOT" \
  >"$WORK/s3.log" 2>&1 &
S3_PID=$!; PIDS+=("$S3_PID"); disown "$S3_PID"

# --- Qdrant (optional): a binary from QDRANT_BIN or ../shared/bin/qdrant.
QDRANT=${QDRANT_BIN:-}
SHARED_QDRANT="$(cd "$(dirname "$0")/.." && pwd)/../shared/bin/qdrant"
[ -z "$QDRANT" ] && [ -x "$SHARED_QDRANT" ] && QDRANT=$SHARED_QDRANT
if [ -n "$QDRANT" ] && [ -x "$QDRANT" ]; then
  Q_HTTP=$(free_port); Q_GRPC=$(free_port)
  mkdir -p "$WORK/qdrant"
  (cd "$WORK/qdrant" && exec env QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT="$Q_HTTP" \
    QDRANT__SERVICE__GRPC_PORT="$Q_GRPC" QDRANT__STORAGE__STORAGE_PATH="$WORK/qdrant/storage" \
    QDRANT__STORAGE__SNAPSHOTS_PATH="$WORK/qdrant/snapshots" QDRANT__TELEMETRY_DISABLED=true \
    QDRANT__SERVICE__ENABLE_STATIC_CONTENT=false "$QDRANT" --disable-telemetry) >"$WORK/qdrant.log" 2>&1 &
  Q_PID=$!; PIDS+=("$Q_PID"); disown "$Q_PID"
else
  QDRANT=""
  log "qdrant: no server binary (set QDRANT_BIN, or put one at ../shared/bin/qdrant); the Qdrant tests are skipped"
fi

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  log "$name did not become healthy"; cat "$WORK"/*.log >&2 || true; exit 1
}
wait_for redis redis-cli -p "$REDIS_PORT" ping
wait_for postgres "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
wait_for s3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$S3_PORT"
if [ -n "$QDRANT" ]; then
  wait_for qdrant python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$Q_HTTP/readyz', timeout=1)"
  export RECACHE_TEST_QDRANT_BIN="$QDRANT"
  export RECACHE_TEST_QDRANT_URL="http://127.0.0.1:$Q_GRPC"
  export RECACHE_TEST_QDRANT_HTTP="http://127.0.0.1:$Q_HTTP"
  log "qdrant $RECACHE_TEST_QDRANT_URL (gRPC), $RECACHE_TEST_QDRANT_HTTP (HTTP)"
fi

export RECACHE_TEST_ENGINES=1
# For tests that start (and kill) servers of their own.
export RECACHE_TEST_PG_BIN="$PG_BIN"
export RECACHE_TEST_S3S_BIN="$S3S"
export RECACHE_TEST_REDIS_BIN=$(command -v redis-server)
export RECACHE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export RECACHE_TEST_REDIS_PID=$REDIS_PID
export RECACHE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export RECACHE_TEST_POSTGRES_PID=$(head -n1 "$PG_DATA/postmaster.pid")
export RECACHE_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export RECACHE_TEST_S3_DATA="$S3_ROOT"
export RECACHE_TEST_S3_BUCKET=recache-test
export RECACHE_TEST_S3_PID=$S3_PID
export AWS_ACCESS_KEY_ID=recache-test
export AWS_SECRET_ACCESS_KEY=recache-test-secret
export AWS_REGION=us-east-1
log "redis $RECACHE_TEST_REDIS_URL, postgres $RECACHE_TEST_POSTGRES_URL, s3 $RECACHE_TEST_S3_ENDPOINT (data in $WORK)"

if [ "${1:-}" = "--print" ]; then
  env | grep -E '^(RECACHE_TEST_|AWS_)' | sed 's/^/export /'
  log "engines running; Ctrl-C to stop"
  while true; do sleep 3600; done
fi
set +e
"$@"
code=$?
set -e
exit $code
