#!/usr/bin/env bash
# Cache hits with answers sealed at rest against plain, in one run (issue #26's
# benchmark): two gateways on embedded engines of their own, the stub behind
# both, one with [encryption] master_key_env (every hit opens its artifact
# with AES-256-GCM), one without. After a warm-up, five alternating runs each
# at 1 and 16 connections; this VM drifts between runs, so the ratio is the
# median of the five paired ratios (each sealed run over the plain run just
# before it). Target: sealed hit throughput at least 0.9 of plain.
# Then the reseal rate: RESEAL_ENTRIES (default 20000) plain entries, each
# with its artifact, seeded into embedded stores of their own, sealed in place
# by `recache encryption reseal`; beside it the floor of the same run, the
# rate at which `bench seed` wrote those entries (one artifact write and one
# metadata row each; a reseal reads, seals, writes, swaps and deletes).
# Usage: bash scripts/bench-encryption.sh [SECONDS]   (default 5 per run; loopback only, ~3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RESEAL_ENTRIES=${RESEAL_ENTRIES:-20000}
source scripts/lib-bench.sh
bench_build recache recache-stub-provider
STUB_PORT=$(port); PLAIN_PORT=$(port); SEALED_PORT=$(port)
bench_bg $S --listen 127.0.0.1:$STUB_PORT >/dev/null 2>&1
config() { # dir port extra
  mkdir -p "$W/$1"
  cat > "$W/$1/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
[index]
path = "$W/$1/index"
[artifacts]
path = "$W/$1/artifacts"
[metadata]
path = "$W/$1/metadata.db"
spool_path = "$W/$1/spool.jsonl"
[[upstreams]]
name = "stub"
base_url = "http://127.0.0.1:$STUB_PORT/v1"
[[tenants]]
name = "bench"
keys = ["sk-bench"]
$3
TOML
}
config plain $PLAIN_PORT ""
config sealed $SEALED_PORT "[encryption]
master_key_env = \"BENCH_MASTER_KEY\""
RUST_LOG=warn bench_bg $B serve --config $W/plain/gw.toml >$W/plain.log 2>&1
export BENCH_MASTER_KEY=$(python3 -c "import base64,os;print(base64.b64encode(os.urandom(32)).decode())")
RUST_LOG=warn bench_bg $B serve --config $W/sealed/gw.toml >$W/sealed.log 2>&1
wait_live $PLAIN_PORT
wait_live $SEALED_PORT
run() { # name port connections
  $B bench load --url http://127.0.0.1:$2 --key sk-bench --mode hit --connections "$3" --duration "$SECS" --format json > "$W/$1.json"
  report_run "$W/$1.json" "$1"
}
$B bench load --url http://127.0.0.1:$PLAIN_PORT --key sk-bench --mode hit --connections 16 --duration 1 >/dev/null
$B bench load --url http://127.0.0.1:$SEALED_PORT --key sk-bench --mode hit --connections 16 --duration 1 >/dev/null
# The sealed gateway's artifacts are sealed (else the comparison is void).
python3 - "$W/sealed/artifacts" "$W/plain/artifacts" <<PY
import os, sys
def heads(d):
    out = []
    for root, _, files in os.walk(d):
        for f in files:
            out.append(open(os.path.join(root, f), "rb").read(4))
    return out
sealed, plain = heads(sys.argv[1]), heads(sys.argv[2])
assert sealed and all(h == b"RCE1" for h in sealed), "the sealed gateway stored plain artifacts"
assert plain and all(h == b"RCA1" for h in plain), "the plain gateway stored sealed artifacts"
print("  artifacts: %d sealed (RCE1), %d plain (RCA1)" % (len(sealed), len(plain)), file=sys.stderr)
PY
for c in 1 16; do
  echo "== $c connection(s)" >&2
  for round in 1 2 3 4 5; do run plain-$c-$round $PLAIN_PORT $c; run sealed-$c-$round $SEALED_PORT $c; done
done
python3 - "$W" <<PY
import json, sys
w = sys.argv[1]
def r(name): return json.load(open("%s/%s.json" % (w, name)))
print()
print("| conns | plain hit req/s (median) | sealed hit req/s (median) | ratio (median of paired) | paired ratios | plain p50 / p99 ms | sealed p50 / p99 ms | errors | target |")
print("|---|---|---|---|---|---|---|---|---|")
for c in (1, 16):
    p = [r("plain-%d-%d" % (c, i)) for i in range(1, 6)]
    s = [r("sealed-%d-%d" % (c, i)) for i in range(1, 6)]
    pt = sorted(x["throughput_rps"] for x in p)[2]
    st = sorted(x["throughput_rps"] for x in s)[2]
    pairs = [b["throughput_rps"] / a["throughput_rps"] for a, b in zip(p, s)]
    ratio = sorted(pairs)[2]
    errs = sum(x["errors"] for x in p + s)
    ok = "at least 0.9" if ratio >= 0.9 else "MISSED (at least 0.9)"
    print("| %d | %.0f | %.0f | %.2f | %s | %.3f / %.3f | %.3f / %.3f | %d | %s |" % (
        c, pt, st, ratio, " ".join("%.2f" % x for x in pairs), p[2]["latency_ms"]["p50"], p[2]["latency_ms"]["p99"],
        s[2]["latency_ms"]["p50"], s[2]["latency_ms"]["p99"], errs, ok))
PY

# The reseal rate, next to the seeding rate of the same entries.
config migrate "$(port)" ""
$B bench seed --config $W/migrate/gw.toml --artifacts --tenant bench --entries "$RESEAL_ENTRIES" > $W/seed.txt 2>/dev/null
printf '[encryption]\nmaster_key_env = "BENCH_MASTER_KEY"\n' >> $W/migrate/gw.toml
RUST_LOG=warn $B encryption reseal --config $W/migrate/gw.toml --format json > $W/reseal.json
python3 - "$W/seed.txt" "$W/reseal.json" "$RESEAL_ENTRIES" <<PY
import json, re, sys
seed = open(sys.argv[1]).read()
secs = float(re.search(r"in ([0-9.]+)s", seed).group(1))
n = int(sys.argv[3])
r = json.load(open(sys.argv[2]))
assert r["resealed"] == n, r
print()
print("| entries | seed (floor) entries/s | reseal entries/s | reseal / seed | reseal seconds (job, with the 2 s grace) |")
print("|---|---|---|---|---|")
print("| %d | %.0f | %.0f | %.2f | %.1f (%.1f) |" % (n, n / secs, r["entries_per_second"], r["entries_per_second"] / (n / secs), r["seconds_this_run"], r["seconds"]))
PY
