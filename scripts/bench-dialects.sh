#!/usr/bin/env bash
# Cache hits per provider dialect, in one run (issue #24's benchmark): the same
# question asked in OpenAI Chat Completions, OpenAI Responses, Anthropic
# Messages and Gemini shapes against one gateway (embedded engines, the stub
# provider behind it), next to the floor (`recache-stub --floor`: a fixed
# answer with no lookup), at 1 and 16 connections. Target: every dialect's
# hit throughput within 15 % of the Chat Completions figure.
# Usage: bash scripts/bench-dialects.sh [SECONDS]   (default 5 per run; loopback only, ~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
source scripts/lib-bench.sh
bench_build recache recache-stub-provider
STUB_PORT=$(port); FLOOR_PORT=$(port); GW_PORT=$(port)
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
bench_bg $S --floor --listen 127.0.0.1:$FLOOR_PORT >/dev/null 2>&1
cat > $W/gw.toml <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[index]
path = "$W/index"
[artifacts]
path = "$W/artifacts"
[metadata]
path = "$W/metadata.db"
spool_path = "$W/spool.jsonl"
[[upstreams]]
name = "openai"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
models = ["gpt-*"]
[[upstreams]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
models = ["claude-*"]
[[upstreams]]
name = "gemini"
kind = "gemini"
base_url = "http://127.0.0.1:$STUB_PORT/v1beta"
models = ["gemini-*"]
[[tenants]]
name = "bench"
keys = ["sk-bench"]
TOML
RUST_LOG=warn bench_bg $B serve --config $W/gw.toml >$W/serve.log 2>&1
wait_live $GW_PORT
wait_http $FLOOR_PORT
run() { # name url dialect connections
  $B bench load --url "$2" --key sk-bench --mode hit --dialect "$3" --connections "$4" --duration "$SECS" --format json > "$W/$1.json"
  report_run "$W/$1.json" "$1"
}
DIALECTS="chat responses messages gemini"
for c in 1 16; do
  echo "== $c connection(s)" >&2
  run floor-$c http://127.0.0.1:$FLOOR_PORT chat $c
  for d in $DIALECTS; do run $d-$c http://127.0.0.1:$GW_PORT $d $c; done
done
echo "  gateway rss after the runs: $(curl -s http://127.0.0.1:$GW_PORT/metrics -H 'authorization: Bearer x' | grep -E '^process_resident_memory_bytes' | cut -d' ' -f2) bytes" >&2
python3 - "$W" $DIALECTS <<PY
import json, sys
w, dialects = sys.argv[1], sys.argv[2:]
def r(name): return json.load(open("%s/%s.json" % (w, name)))
print()
print("| dialect | conns | hit req/s | floor req/s | vs floor | vs chat | p50 / p99 ms | errors | target |")
print("|---|---|---|---|---|---|---|---|---|")
for c in (1, 16):
    f, chat = r("floor-%d" % c), r("chat-%d" % c)
    for d in dialects:
        x = r("%s-%d" % (d, c)); l = x["latency_ms"]
        vs_chat = x["throughput_rps"] / chat["throughput_rps"]
        ok = "within 15 % of chat" if vs_chat >= 0.85 else "MISSED (within 15 % of chat)"
        print("| %s | %d | %.0f | %.0f | %.2f | %.2f | %.3f / %.3f | %d | %s |" % (
            d, c, x["throughput_rps"], f["throughput_rps"], x["throughput_rps"] / f["throughput_rps"], vs_chat,
            l["p50"], l["p99"], x["errors"], "reference" if d == "chat" else ok))
PY
