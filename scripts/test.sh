#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is
# missing (PostgreSQL's server binaries for the shared-database tests,
# Python's venv for the interop tests), then runs every test: the Rust
# workspace's, then the Python package's (scripts/test-sdk-python.sh).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --locked`);
# `scripts/test.sh --install-only` installs and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else
    echo "error: need root to install packages: $*" >&2
    exit 1
  fi
}

need_apt=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  need_apt+=(postgresql)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv)
fi
for tool in unshare openssl; do
  command -v "$tool" >/dev/null || need_apt+=(util-linux openssl)
done
# The console's browser tests: Debian's Chromium and its WebDriver (the
# Python package drives them; nothing downloads a browser).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  need_apt+=(chromium chromium-driver)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  as_root apt-get update -qq
  # A package's own service is not started (a test cluster is started by
  # the tests themselves).
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
cargo test --workspace "$@"
# The Python package: its tests against the real binaries, its type check.
./scripts/test-sdk-python.sh
