#!/usr/bin/env bash
# Creates the virtual environment whose provider SDKs the tests use as real
# clients (`anthropic`, `openai` for the Responses API, `google-genai`), from PyPI, pinned.
# Idempotent: a venv whose stamp matches the pins is reused. Prints the
# venv's python on stdout.
#   SDK_VENV=path   where to put it (default: <repo>/target/sdk-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SDK_VENV:-$(pwd)/target/sdk-venv}"
pins=("anthropic==2.17.0" "openai==3.63.0" "google-genai==3.6.1")
stamp="${pins[*]}"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$venv/bin/python"
  exit 0
fi
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "sdk-venv.sh: python3 is required for the SDK tests" >&2
  exit 1
fi
rm -rf "$venv"
"$py" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
echo "$stamp" > "$venv/.stamp"
echo "$venv/bin/python"
