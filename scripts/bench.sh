#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md: hit and miss latency/throughput
# through the gateway on loopback, and index memory/start-up with N entries.
# Usage: bash scripts/bench.sh [ENTRIES]   (default 1000000; bounded: ~3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${1:-1000000}
cargo build --release -p recache -p recache-stub-provider
B=$PWD/target/release/recache
S=$PWD/target/release/recache-stub
W=$(mktemp -d)
GW_PORT=18282; STUB_PORT=19911
cleanup() { pkill -f "serve --config $W/recache.toml" 2>/dev/null || true; kill "$STUB_PID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cat > "$W/recache.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[index]
path = "$W/data/index"
[artifacts]
path = "$W/data/artifacts"
[metadata]
path = "$W/data/metadata.db"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[[tenants]]
name = "bench"
keys = ["sha256:$(printf %s sk-bench | sha256sum | cut -d' ' -f1)"]
TOML
"$S" --listen 127.0.0.1:$STUB_PORT > "$W/stub.log" 2>&1 & STUB_PID=$!
start_gateway() {
  local t0 t1
  t0=$(date +%s%N)
  RUST_LOG=info "$B" serve --config "$W/recache.toml" > "$W/serve.$1.log" 2>&1 &
  until curl -sf "http://127.0.0.1:$GW_PORT/health/live" >/dev/null; do sleep 0.02; done
  t1=$(date +%s%N)
  echo "start-up ($1): $(( (t1 - t0) / 1000000 )) ms to ready; $(curl -s http://127.0.0.1:$GW_PORT/metrics | grep -E '^(process_resident_memory_bytes|cache_index_entries)' | tr '\n' ' ')"
}
stop_gateway() { pkill -TERM -f "serve --config $W/recache.toml"; while pgrep -f "serve --config $W/recache.toml" >/dev/null; do sleep 0.1; done; }
echo "== seeding $ENTRIES entries"
"$B" bench seed --config "$W/recache.toml" --entries "$ENTRIES" 2>/dev/null
echo "== first start: index rebuilt from metadata"
start_gateway rebuild
L="$B bench load --url http://127.0.0.1:$GW_PORT --key sk-bench"
echo "== hits, 1 connection";  $L --mode hit --connections 1 --duration 5
echo "== hits, 32 connections"; $L --mode hit --connections 32 --duration 8
echo "== misses, 1 connection";  $L --mode miss --connections 1 --duration 5
echo "== misses, 32 connections"; $L --mode miss --connections 32 --duration 5
stop_gateway
echo "== second start: index log replayed"
start_gateway log
stop_gateway
