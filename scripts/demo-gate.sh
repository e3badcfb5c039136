#!/usr/bin/env bash
# Lanyard gateway demo: a server, a node agent, an MCP tool server written
# with the official MCP SDK (it knows nothing of Lanyard) behind
# lanyard-gate, and an AI agent using the same SDK's client with its task
# SVID. Shows the tool list cut to what the task may call, an allowed call,
# a tool outside the task and a call a policy forbids (both returned to the
# model as tool errors with the reason), and the CRM's credential reaching
# the tool while the agent never holds it. Everything lives in a temporary
# directory and is removed on exit; the Python packages (pinned in
# examples/python/requirements.txt, and the lanyard package from sdk/python)
# go into target/demo-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${LANYARD_DEMO_PORT:-8081}"
TD=example.org
NODE="spiffe://$TD/node/demo"
GATE_ID="spiffe://$TD/gate/crm"
AGENT_ID="spiffe://$TD/agent/assistant"

# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

step "Building (first run takes a few minutes) and the Python venv"
cargo build --quiet --bin lanyard-server --bin lanyard-agent --bin lanyard-gate
BIN="$PWD/target/debug"
VENV="$PWD/target/demo-venv"
if [ "$(cat "$VENV/installed" 2>/dev/null)" != "$(cat examples/python/requirements.txt)" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt
  cp examples/python/requirements.txt "$VENV/installed"
fi
# The AI agent example is written with Lanyard's Python package.
rm -rf sdk/python/build
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall ./sdk/python
PY="$VENV/bin/python3"
# The program the agent attests (the venv's python is a symlink to it).
PY_EXE="$(readlink -f "$PY")"

demo_workdir lanyard-gate

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
# The CRM's own key: only the gateway (an enforcement point) may hold it.
printf 'crm-secret-123' >"$WORK/crm.key"
srv credential add crm-key --kind secret --from-file "$WORK/crm.key" >/dev/null
srv entry create --spiffe-id "$GATE_ID" --parent-id "$NODE" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/lanyard-gate" \
  --enforcement-point --allow-credential crm-key >/dev/null
srv entry create --spiffe-id "$AGENT_ID" --parent-id "$NODE" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$PY_EXE" \
  --allow-task-type crm.assist --allow-tool crm.read --allow-tool crm.delete \
  --allow-tool email.send --allow-credential crm-key --max-task-ttl 10m >/dev/null
srv policy set examples/policies/gate.cedar
"$BIN/lanyard-agent" run --server "127.0.0.1:$PORT" --trust-domain "$TD" \
  --join-token "$TOKEN" --trust-bundle "$WORK/bundle.pem" \
  --socket "$SOCKET" --data-dir "$WORK/agent" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
wait_for "$SOCKET" lanyard-agent "$WORK/agent.log" "${PIDS[-1]}"

step "Starting the MCP tool server (official MCP SDK, loopback only)"
"$PY" examples/python/mcp_tool_server.py --port-file "$WORK/crm.port" >"$WORK/crm.log" 2>&1 &
PIDS+=($!)
wait_for "$WORK/crm.port" "the tool server" "$WORK/crm.log" "${PIDS[-1]}"
CRM_PORT="$(cat "$WORK/crm.port")"

step "Starting lanyard-gate in front of it"
cat >"$WORK/gate.toml" <<TOML
listen = "127.0.0.1:0"
agent_socket = "unix://$SOCKET"
trust_domain = "$TD"

[[upstream]]
name = "crm"
kind = "mcp"
path = "/mcp/crm"
url = "http://127.0.0.1:$CRM_PORT/mcp"
[upstream.tools]
read_contact = "crm.read"
delete_contact = "crm.delete"
send_email = "email.send"
[upstream.credential]
provider = "crm-key"
TOML
cat "$WORK/gate.toml"
"$BIN/lanyard-gate" run --config "$WORK/gate.toml" >"$WORK/gate.out" 2>"$WORK/gate.log" &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q "listening on" "$WORK/gate.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$WORK/gate.out" || { cat "$WORK/gate.log" >&2; exit 1; }
GATE="$(sed -n 's/^lanyard-gate listening on //p' "$WORK/gate.out")"

step "The AI agent (MCP SDK client, task SVID for mTLS): a task granted crm.read and email.send"
STEPS='[{"list": true},
        {"call": "read_contact", "args": {"id": "42"}},
        {"call": "delete_contact", "args": {"id": "42"}},
        {"call": "send_email", "args": {"to": "eve@outside.example", "body": "the numbers"}}]'
SPIFFE_ENDPOINT_SOCKET="unix://$SOCKET" "$PY" examples/python/mcp_agent.py \
  --url "https://$GATE/mcp/crm" --tool crm.read --tool email.send \
  --destination 127.0.0.1 --steps "$STEPS" | tee "$WORK/agent.out"
grep -q '"tools": \["read_contact", "send_email"\]' "$WORK/agent.out" \
  || { echo "error: the tool list was not filtered" >&2; exit 1; }
grep -q '"call": "read_contact", "is_error": false' "$WORK/agent.out" \
  || { echo "error: the allowed call failed" >&2; exit 1; }
grep -q '"call": "delete_contact", "is_error": true' "$WORK/agent.out" \
  || { echo "error: a tool outside the task went through" >&2; exit 1; }
grep -q 'no email outside example.com' "$WORK/agent.out" \
  || { echo "error: the forbidden mail went through" >&2; exit 1; }
if grep -q crm-secret-123 "$WORK/agent.out"; then
  echo "error: the agent saw the CRM's key" >&2; exit 1
fi

step "What the tool server received (the gateway's credential on every request)"
"$PY" - "$CRM_PORT" <<'PY'
import json, sys, urllib.request
log = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_log"))
for r in log:
    print(r["method"], r["path"], r["mcp_method"] or "-", "authorization:", r["authorization"])
assert all(r["authorization"] == "Bearer crm-secret-123" for r in log)
PY

step "The decisions, as the gateway logged them"
grep "tool call decided" "$WORK/gate.log" | sed 's/\x1b\[[0-9;]*m//g'

step "Done: the server, agent, gateway, tool server and all files are removed now"
