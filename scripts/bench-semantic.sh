#!/usr/bin/env bash
# Reproduces the semantic-matching figures in docs/benchmarks.md:
#   - local embedding latency (all-MiniLM-L6-v2, candle) for a short and a long prompt;
#   - embedded vector store: lookup p50/p99 at 10,000 and 1,000,000 vectors (one scope:
#     IVF; the same 1M exact; 1M spread over 1,000 scopes), recall@1 against an exact
#     f32 scan, memory;
#   - a semantic hit through the gateway (`serve --demo`, loopback) at 1 and 16
#     connections: the same paraphrase (embedding cached) and a fresh one every time.
# Bounded: about 15 minutes on 2 cores. Usage: bash scripts/bench-semantic.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh >&2
cargo build --release -p recache >&2
B=$PWD/target/release/recache
M=models/all-MiniLM-L6-v2
echo "== local embedding"
"$B" bench embed --model "$M" --runs 200
echo "== vectors: 10,000 in one scope (exact scan), lookup with and without the embedding"
"$B" bench vectors --points 10000 --queries 1000 --model "$M"
echo "== vectors: 1,000,000 in one scope (IVF, built in the background)"
"$B" bench vectors --points 1000000 --queries 300
echo "== vectors: 1,000,000 in one scope, exact scan (for comparison)"
"$B" bench vectors --points 1000000 --queries 100 --exact
echo "== vectors: 1,000,000 over 1,000 scopes (exact scans of 1,000), with the embedding"
"$B" bench vectors --points 1000000 --scopes 1000 --queries 1000 --model "$M"
D=$(mktemp -d /tmp/recache-bench-semantic.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$B" serve --demo --listen "127.0.0.1:$PORT" --data-dir "$D/data" >"$D/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true; wait $GW 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/live" >/dev/null && break; sleep 0.1; done
for mode in hit semantic semantic-fresh; do
  for c in 1 16; do
    echo "== gateway: --mode $mode, $c connection(s)"
    "$B" bench load --url "http://127.0.0.1:$PORT" --mode "$mode" --connections "$c" --duration 8
  done
done
