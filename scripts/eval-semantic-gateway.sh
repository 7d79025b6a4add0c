#!/usr/bin/env bash
# Semantic matching measured through the gateway (issue #27's acceptance):
# `recache serve --demo` (embedded stores, the stub provider, the local model)
# with [semantic] guards = $GUARDS; for each labelled pair, in a namespace of
# its own, the first question is asked and its answer stored (vector
# included), then the second is asked; a pair is served when the second comes
# back as SEMANTIC_HIT. Prints, per file, paraphrases and near-misses served.
# `recache semantic eval` prints the whole curve for the same files.
# Usage: bash scripts/eval-semantic-gateway.sh [PAIRS.jsonl...]
#   (default: the test half and the regression set; loopback only, ~2 minutes)
#   GUARDS=strict|lexical (default lexical), THRESHOLD (default the config's),
#   RECACHE_BIN (default target/release/recache, built here), DETAIL=1 (every pair's outcome)
set -euo pipefail
cd "$(dirname "$0")/.."
GUARDS=${GUARDS:-lexical}
D=crates/recache/tests/data
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=("$D/semantic_test.jsonl" "$D/semantic_pairs.jsonl")
bash scripts/fetch-model.sh >&2
bash scripts/fetch-wordnet.sh >&2
source scripts/lib-bench.sh
if [ -z "${RECACHE_BIN:-}" ]; then
  bench_build recache
else
  B=$RECACHE_BIN
fi
P=$(port)
export RECACHE_SEMANTIC__GUARDS=$GUARDS
[ -z "${THRESHOLD:-}" ] || export RECACHE_SEMANTIC__THRESHOLD=$THRESHOLD
bench_bg env RUST_LOG=warn "$B" serve --demo --data-dir "$W/demo" --listen "127.0.0.1:$P" >"$W/serve.log" 2>&1
until curl -sf "http://127.0.0.1:$P/health/live" >/dev/null; do
  kill -0 "${BENCH_PIDS[0]}" 2>/dev/null || { cat "$W/serve.log" >&2; exit 1; }
  sleep 0.1
done
python3 - "$P" "$GUARDS" "${FILES[@]}" <<'PY'
import json, sys, time, urllib.request
port, guards, files = sys.argv[1], sys.argv[2], sys.argv[3:]
base = f"http://127.0.0.1:{port}"
def stored():
    for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
        if line.startswith("cache_semantic_vectors_stored_total"):
            return float(line.split()[-1])
    return 0.0
def ask(text, ns):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={
        "content-type": "application/json", "authorization": "Bearer sk-recache-demo",
        "x-recache-namespace": ns})
    with urllib.request.urlopen(req) as r:
        r.read()
        return r.headers.get("x-recache-status"), r.headers.get("x-recache-similarity")
import os
detail = os.environ.get("DETAIL") == "1"
expected = 0
for f in files:
    pairs = [json.loads(l) for l in open(f) if l.strip() and not l.startswith("#")]
    served = {"paraphrase": 0, "near_miss": 0}; count = {"paraphrase": 0, "near_miss": 0}
    leaked = []
    stem = f.rsplit("/", 1)[-1].split(".")[0]
    for i, p in enumerate(pairs):
        ns = f"{stem}-{i}"
        status, _ = ask(p["a"], ns)
        # Every answer bought stores one vector (the second questions' too):
        # wait for all of them, so the first question's is searchable.
        expected += status == "MISS"
        deadline = time.time() + 10
        while stored() < expected:
            if time.time() > deadline:
                sys.exit(f"{f}:{i + 1}: the first question's vector was not stored within 10 s (status {status})")
            time.sleep(0.01)
        status, sim = ask(p["b"], ns)
        expected += status == "MISS"
        label = "near_miss" if p["label"] in ("near_miss", "near-miss") else "paraphrase"
        count[label] += 1
        if detail:
            print(f"  {label} {status} {sim} | {p['a']} | {p['b']}")
        if status == "SEMANTIC_HIT":
            served[label] += 1
            if label == "near_miss":
                leaked.append((sim, p["a"], p["b"]))
    pct = lambda n, d: 100.0 * n / d if d else 0.0
    print(f"{f} ({guards} guards, through the gateway): paraphrases served {served['paraphrase']}/{count['paraphrase']} "
          f"({pct(served['paraphrase'], count['paraphrase']):.1f} %), near-misses served {served['near_miss']}/{count['near_miss']}")
    for sim, a, b in leaked:
        print(f"  near-miss served at {sim}: {a} | {b}")
PY
