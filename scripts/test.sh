#!/usr/bin/env bash
# The whole test suite: unit, conformance, end-to-end gateway and CLI tests.
# The only fake is the LLM provider (crates/stub-provider).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
