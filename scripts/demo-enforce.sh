#!/usr/bin/env bash
# Lanyard enforcement demo: a server, a node agent, an example tool server
# (mTLS with the Lanyard verifier, one AuthorizeToolCall per request) and an
# AI agent client working inside tasks. Shows an allowed call, a denied call
# with its reason, quarantine after a forbidden tool (the client's next
# handshake is refused), and `task revoke` cutting off a live client.
# Everything lives in a temporary directory and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${LANYARD_DEMO_PORT:-8081}"
TOOL_PORT="${LANYARD_DEMO_TOOL_PORT:-8443}"
TD=example.org
NODE="spiffe://$TD/node/demo"
TOOLSRV="spiffe://$TD/tool/crm"
AGENT_ID="spiffe://$TD/agent/planner"

# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

step "Building (first run takes a few minutes)"
cargo build --quiet --bin lanyard-server --bin lanyard-agent --bin tool-server --bin tool-client
BIN="$PWD/target/debug"

demo_workdir lanyard-enforce
wait_log() { # file, text
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "error: $1 never said \"$2\":" >&2; cat "$1" >&2; exit 1
}

ADMIN="$WORK/admin.sock"
SOCKET="$WORK/agent.sock"
srv() { "$BIN/lanyard-server" "$@" --admin-socket "$ADMIN"; }

step "Starting lanyard-server and lanyard-agent"
"$BIN/lanyard-server" run --trust-domain "$TD" --data-dir "$WORK/server" \
  --bind "127.0.0.1:$PORT" --admin-socket "$ADMIN" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_for "$ADMIN" lanyard-server "$WORK/server.log" "${PIDS[-1]}"
TOKEN="$(srv token generate --agent-id "$NODE")"
srv bundle show --format pem >"$WORK/bundle.pem"
# The tool server is an enforcement point; the AI agent works only in tasks.
srv entry create --spiffe-id "$TOOLSRV" --parent-id "$NODE" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/tool-server" \
  --enforcement-point --x509-ttl 5m >/dev/null
srv entry create --spiffe-id "$AGENT_ID" --parent-id "$NODE" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/tool-client" \
  --require-task --allow-task-type report.generate \
  --allow-tool crm.read --allow-tool email.send --allow-tool payments.transfer \
  --max-task-ttl 10m >/dev/null
srv policy set examples/policies/tools.cedar
"$BIN/lanyard-agent" run --server "127.0.0.1:$PORT" --trust-domain "$TD" \
  --join-token "$TOKEN" --trust-bundle "$WORK/bundle.pem" \
  --socket "$SOCKET" --data-dir "$WORK/agent" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
wait_for "$SOCKET" lanyard-agent "$WORK/agent.log" "${PIDS[-1]}"
export SPIFFE_ENDPOINT_SOCKET="unix://$SOCKET"

step "Starting the example tool server (mTLS, AuthorizeToolCall per request)"
"$BIN/tool-server" --listen "127.0.0.1:$TOOL_PORT" --trust-domain "$TD" >"$WORK/tools.log" 2>&1 &
PIDS+=($!)
wait_log "$WORK/tools.log" "listening"
cat "$WORK/tools.log"

client() { # task tools..., then -- client args
  "$BIN/lanyard-agent" task run --spiffe-id "$AGENT_ID" --type report.generate "$@"
}
CONNECT=(--connect "127.0.0.1:$TOOL_PORT" --server-id "$TOOLSRV")

step "Allowed: a task granted crm.read reads an account"
client --tool crm.read --tool email.send --ttl 2m -- \
  "$BIN/tool-client" "${CONNECT[@]}" crm.read account/42 '{}'

step "Denied: the same task sends mail to a domain the policy forbids"
client --tool crm.read --tool email.send --ttl 2m -- \
  "$BIN/tool-client" "${CONNECT[@]}" email.send bob '{"to": "bob@rival.example"}'

step "Quarantine: a transfer over the limit is forbidden with @quarantine"
client --tool crm.read --tool payments.transfer --ttl 2m -- \
  "$BIN/tool-client" "${CONNECT[@]}" --every 300 \
  payments.transfer acct/7 '{"amount": 50000}' crm.read account/42 '{}' || true
srv quarantine list

step "The quarantine holds the workload: the same program started again is refused"
if client --tool crm.read --ttl 2m -- "$BIN/tool-client" "${CONNECT[@]}" crm.read account/42 '{}'; then
  echo "error: a quarantined workload began a task" >&2; exit 1
fi
step "An operator releases it: served again, with fresh SVIDs"
Q="$(srv quarantine list --output json | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)"
srv quarantine release "$Q"
# The release reaches the agent over its push stream: wait until a task
# can begin again.
for _ in $(seq 1 100); do
  client --tool crm.read --ttl 1m -- true 2>/dev/null && break
  sleep 0.2
done

step "task revoke: a live client is cut off and its next handshake refused"
client --tool crm.read --ttl 2m -- \
  "$BIN/tool-client" "${CONNECT[@]}" --every 300 crm.read account/42 '{}' >"$WORK/live.log" 2>&1 &
LIVE=$!
wait_log "$WORK/live.log" "crm.read account/42 -> allow"
# The live client's task, as the tool server saw it.
TASK="$(grep -o 'allow crm.read account/42 for task [0-9a-f]*' "$WORK/tools.log" | tail -1 | awk '{print $NF}')"
echo "revoking task $TASK"
srv task revoke "$TASK" >/dev/null
# The client is cut off within a second; give it 30 s on a loaded machine.
for _ in $(seq 1 150); do
  kill -0 "$LIVE" 2>/dev/null || break
  sleep 0.2
done
if kill -0 "$LIVE" 2>/dev/null; then
  kill "$LIVE"; cat "$WORK/live.log"
  echo "error: the live client was not cut off after task revoke" >&2; exit 1
fi
wait "$LIVE" || true
cat "$WORK/live.log"

step "The CRL peers read (openssl prints it)"
srv bundle show --format crl >"$WORK/crl.pem"
if command -v openssl >/dev/null 2>&1; then
  openssl crl -in "$WORK/crl.pem" -noout -text
else
  cat "$WORK/crl.pem"
fi

step "What the tool server saw"
cat "$WORK/tools.log"

step "Done: the server, agent, tool server and all files are removed now"
