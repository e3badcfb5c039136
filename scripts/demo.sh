#!/usr/bin/env bash
# Lanyard local demo: starts a server and a node agent on this machine,
# registers an identity for the current user, and runs an unmodified SPIFFE
# workload (the `spiffe` crate) that fetches and prints its X.509-SVID.
# Everything lives in a temporary directory and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${LANYARD_DEMO_PORT:-8081}"
TD=example.org
NODE="spiffe://$TD/node/demo"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building (first run takes a few minutes)"
cargo build --quiet --bin lanyard-server --bin lanyard-agent --bin fetch-svid
BIN=target/debug

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lanyard-demo.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # socket, what, log, pid
  for _ in $(seq 1 300); do
    [ -S "$1" ] && return 0
    kill -0 "$4" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: $2 did not start; its log:" >&2; cat "$3" >&2; exit 1
}

ADMIN="$WORK/admin.sock"
SOCKET="$WORK/agent.sock"

step "Starting lanyard-server (trust domain $TD, 127.0.0.1:$PORT)"
$BIN/lanyard-server run --trust-domain "$TD" --data-dir "$WORK/server" \
  --bind "127.0.0.1:$PORT" --admin-socket "$ADMIN" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_for "$ADMIN" lanyard-server "$WORK/server.log" "${PIDS[-1]}"

step "Creating a join token and exporting the trust bundle"
TOKEN="$($BIN/lanyard-server token generate --agent-id "$NODE" --admin-socket "$ADMIN")"
$BIN/lanyard-server bundle show --format pem --admin-socket "$ADMIN" >"$WORK/bundle.pem"
echo "agent ID: $NODE"

step "Registering spiffe://$TD/demo/workload for uid $(id -u) on that node"
$BIN/lanyard-server entry create --spiffe-id "spiffe://$TD/demo/workload" \
  --parent-id "$NODE" --selector "unix:uid:$(id -u)" --x509-ttl 60s \
  --admin-socket "$ADMIN"

step "Starting lanyard-agent (attests with the token, serves $SOCKET)"
$BIN/lanyard-agent run --server "127.0.0.1:$PORT" --trust-domain "$TD" \
  --join-token "$TOKEN" --trust-bundle "$WORK/bundle.pem" \
  --socket "$SOCKET" --data-dir "$WORK/agent" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
wait_for "$SOCKET" lanyard-agent "$WORK/agent.log" "${PIDS[-1]}"

export SPIFFE_ENDPOINT_SOCKET="unix://$SOCKET"

step "A workload using the standard spiffe crate fetches its SVID"
$BIN/fetch-svid

step "The same through the agent CLI, writing PEM files"
$BIN/lanyard-agent api fetch x509 --write "$WORK/svid"

if command -v openssl >/dev/null 2>&1; then
  step "openssl verifies the SVID against the bundle"
  openssl verify -CAfile "$WORK/svid/bundle.0.pem" "$WORK/svid/svid.0.pem"
fi

step "Done: the server, agent and all files are removed now"
