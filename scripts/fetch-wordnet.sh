#!/usr/bin/env bash
# WordNet 3.0 (Debian's wordnet-base) for the lexical guards of semantic
# matching (`recache semantic eval --guards lexical`; docs/semantic.md).
# Installs the package once; prints the database's directory.
set -euo pipefail
DIR=/usr/share/wordnet
if [ ! -f "$DIR/index.noun" ]; then
  echo "installing wordnet-base (WordNet 3.0) from Debian ..." >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q wordnet-base >&2 || { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q wordnet-base >&2; }
fi
test -f "$DIR/index.noun" || { echo "wordnet-base did not install $DIR/index.noun" >&2; exit 1; }
echo "$DIR"
