#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a bounded time
# (LANYARD_FUZZ_SECONDS, 20 by default), as many at once as the machine
# has cores: a libFuzzer run is one process on one core.
# Needs the nightly toolchain (cargo-fuzz is installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${LANYARD_FUZZ_SECONDS:-20}"
jobs="${LANYARD_FUZZ_JOBS:-$(nproc)}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: the nightly toolchain is missing (cargo fuzz needs it)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

cargo +nightly fuzz build -O

# One target: new inputs go to a scratch corpus (the checked-in seeds are
# read only); the log is shown only when the target fails.
run_one() {
  local target="$1" seconds="$2" work
  work="$(mktemp -d)"
  if cargo +nightly fuzz run -O "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 >"$work.log" 2>&1; then
    echo "fuzz $target: ok ($(grep -Eo 'Done [0-9]+ runs' "$work.log" | tail -n 1))"
    rm -rf "$work" "$work.log"
  else
    tail -n 80 "$work.log"
    echo "fuzz $target: FAILED (the crashing input is under fuzz/artifacts/$target)" >&2
    rm -rf "$work" "$work.log"
    return 1
  fi
}
export -f run_one

# xargs exits non-zero when any target failed, after all have run.
cargo +nightly fuzz list | xargs -P "$jobs" -I '{}' bash -c 'run_one "$1" "$2"' _ '{}' "$seconds"
