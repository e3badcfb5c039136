#!/usr/bin/env bash
# The Python package (sdk/python): its generated stubs are current, it
# passes `mypy --strict`, and its tests pass against the real
# lanyard-server and lanyard-agent (built here, debug profile). Run by
# scripts/test.sh; needs python3 (3.10 or later) with venv, and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

cargo build --quiet --bin lanyard-server --bin lanyard-agent

VENV="$ROOT/target/sdk-venv"
REQS="$ROOT/sdk/python/requirements-dev.txt"
if ! cmp -s "$REQS" "$VENV/requirements.installed" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/requirements.installed"
fi
# Installed as a user would (not from the source tree): the tests also
# check what the package ships (py.typed, the generated stubs). setuptools
# builds in the tree and never removes a stale file from build/: start clean.
rm -rf "$ROOT/sdk/python/build" "$ROOT/sdk/python/src/"*.egg-info
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall "$ROOT/sdk/python"

cd "$ROOT/sdk/python"
PATH="$VENV/bin:$PATH" python gen_stubs.py --check 2>/dev/null
"$VENV/bin/python" -m mypy src/lanyard tests
# The tests import the installed package (src/ is not on the path).
LANYARD_BIN_DIR="$ROOT/target/debug" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
