# Shared by the demo scripts (sourced, not run): step headings, a work
# directory removed on exit with the processes started in it, and waiting
# for a process to create its socket or file.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# demo_workdir NAME: sets WORK to a fresh temporary directory; on exit,
# every pid in PIDS is killed and WORK is removed.
demo_workdir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  PIDS=()
  trap demo_cleanup EXIT
}

demo_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

wait_for() { # path (socket or file), what, log, pid
  for _ in $(seq 1 300); do
    [ -e "$1" ] && return 0
    kill -0 "$4" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: $2 did not start; its log:" >&2; cat "$3" >&2; exit 1
}
