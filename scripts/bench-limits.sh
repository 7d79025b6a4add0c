#!/usr/bin/env bash
# Cache hits with tenant limits on against limits off, in one run (issue #25's
# benchmark): one gateway on a Redis index (the limits' counters live there),
# two tenants: "free" (no limits) and "limited" (rpm, tpm and a day's budget,
# set high enough never to refuse, so every hit pays the counters). After a
# warm-up, each is measured five times, alternating, at 1 and 16
# connections. This VM drifts by up to a third between runs, so the ratio is
# the median of the five paired ratios (each limited run over the free run
# just before it), next to the medians of each.
# Target: limited hit throughput at least 0.9 of free.
# Usage: bash scripts/bench-limits.sh [SECONDS]   (default 5 per run; loopback only, ~2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
cargo build --release -p recache -p recache-stub-provider >&2
exec bash scripts/with-engines.sh bash -c '
set -euo pipefail
SECS='"$SECS"'
source scripts/lib-bench.sh
bench_bins
STUB_PORT=$(port); GW_PORT=$(port)
cat > $W/gw.toml <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[index]
engine = "redis"
url = "$RECACHE_TEST_REDIS_URL"
key_prefix = "benchlimits:"
[artifacts]
path = "$W/artifacts"
[metadata]
path = "$W/metadata.db"
spool_path = "$W/spool.jsonl"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[[tenants]]
name = "free"
keys = ["sk-free"]
[[tenants]]
name = "limited"
keys = ["sk-limited"]
rpm = 100000000
tpm = 100000000
budget_usd_day = 1000000.0
TOML
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
RUST_LOG=warn bench_bg $B serve --config $W/gw.toml >$W/serve.log 2>&1; GP=$!
until curl -sf http://127.0.0.1:$GW_PORT/health/live >/dev/null; do kill -0 $GP 2>/dev/null || { cat $W/serve.log >&2; exit 1; }; sleep 0.05; done
run() { # name key connections
  $B bench load --url http://127.0.0.1:$GW_PORT --key "$2" --mode hit --connections "$3" --duration "$SECS" --format json > "$W/$1.json"
  python3 - "$W/$1.json" "$1" >&2 <<PY
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]
print("  %s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, errors %s" % (sys.argv[2], r["throughput_rps"], l["p50"], l["p99"], r["errors"]))
PY
}
# A short warm-up of both tenants (connections, the first spend seed of the day) before measuring.
$B bench load --url http://127.0.0.1:$GW_PORT --key sk-free --mode hit --connections 16 --duration 1 >/dev/null
$B bench load --url http://127.0.0.1:$GW_PORT --key sk-limited --mode hit --connections 16 --duration 1 >/dev/null
for c in 1 16; do
  echo "== $c connection(s)" >&2
  for round in 1 2 3 4 5; do run free-$c-$round sk-free $c; run limited-$c-$round sk-limited $c; done
done
curl -s -D - -o /dev/null http://127.0.0.1:$GW_PORT/v1/chat/completions -H "authorization: Bearer sk-limited" \
  -H "content-type: application/json" -d "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"headers?\"}]}" \
  | grep -i "^x-ratelimit" >&2 || { echo "no x-ratelimit headers: the limits were not on" >&2; exit 1; }
python3 - "$W" <<PY
import json, sys
w = sys.argv[1]
def r(name): return json.load(open("%s/%s.json" % (w, name)))
print()
print("| conns | free hit req/s (median) | limited hit req/s (median) | ratio (median of paired) | paired ratios | free p50 / p99 ms | limited p50 / p99 ms | errors | target |")
print("|---|---|---|---|---|---|---|---|---|")
for c in (1, 16):
    f = [r("free-%d-%d" % (c, i)) for i in (1, 2, 3, 4, 5)]
    l = [r("limited-%d-%d" % (c, i)) for i in (1, 2, 3, 4, 5)]
    ft = sorted(x["throughput_rps"] for x in f)[2]
    lt = sorted(x["throughput_rps"] for x in l)[2]
    pairs = [b["throughput_rps"] / a["throughput_rps"] for a, b in zip(f, l)]
    ratio = sorted(pairs)[2]
    errs = sum(x["errors"] for x in f + l)
    ok = "at least 0.9" if ratio >= 0.9 else "MISSED (at least 0.9)"
    print("| %d | %.0f | %.0f | %.2f | %s | %.3f / %.3f | %.3f / %.3f | %d | %s |" % (
        c, ft, lt, ratio, " ".join("%.2f" % p for p in pairs), f[2]["latency_ms"]["p50"], f[2]["latency_ms"]["p99"],
        l[2]["latency_ms"]["p50"], l[2]["latency_ms"]["p99"], errs, ok))
PY
'
