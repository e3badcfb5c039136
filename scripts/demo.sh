#!/usr/bin/env bash
# Lanyard local demo: starts a server and a node agent on this machine,
# registers an identity for the current user, runs an unmodified SPIFFE
# workload (the `spiffe` crate) that fetches and prints its X.509-SVID, then
# loads a Cedar policy and runs one permitted and one denied task, hands a
# task a credential from a provider, decides an allowed and a denied tool
# call, and verifies the audit log.
# Everything lives in a temporary directory and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${LANYARD_DEMO_PORT:-8081}"
TD=example.org
NODE="spiffe://$TD/node/demo"

# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

step "Building (first run takes a few minutes)"
cargo build --quiet --bin lanyard-server --bin lanyard-agent --bin fetch-svid
BIN=target/debug

demo_workdir lanyard-demo

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

step "Registering an AI agent identity that may only work inside tasks"
PLANNER="spiffe://$TD/agent/planner"
$BIN/lanyard-server entry create --spiffe-id "$PLANNER" \
  --parent-id "$NODE" --selector "unix:uid:$(id -u)" --x509-ttl 60s \
  --require-task --allow-task-type report.generate \
  --allow-tool crm.read --allow-tool email.send --allow-tool shell.exec \
  --allow-credential internal \
  --max-task-ttl 10m --max-sensitivity confidential --admin-socket "$ADMIN"

step "Loading the Cedar policies in examples/policies/agents.cedar"
$BIN/lanyard-server policy set examples/policies/agents.cedar --admin-socket "$ADMIN"
# A dry run: exit status 0 when everything asked is allowed, 1 when
# something is denied (shell.exec is, here), 2 when it cannot answer.
rc=0
$BIN/lanyard-server policy test --spiffe-id "$PLANNER" --task-type report.generate \
  --tool crm.read --tool shell.exec --on-behalf-of user:alice@example.com \
  --admin-socket "$ADMIN" || rc=$?
[ "$rc" -eq 1 ] || { echo "error: policy test should deny shell.exec (exit $rc)" >&2; exit 1; }

# Wait until the agent has the new entry.
for _ in $(seq 1 50); do
  $BIN/lanyard-server entry list --spiffe-id "$PLANNER" --admin-socket "$ADMIN" >/dev/null && break
  sleep 0.1
done
sleep 0.5

step "A permitted task: the command runs holding a task SVID with the grant"
$BIN/lanyard-agent task run --spiffe-id "$PLANNER" --type report.generate \
  --tool crm.read --tool email.send --ttl 2m --sensitivity internal \
  --on-behalf-of user:alice@example.com --intent "weekly pipeline report" \
  -- "$BIN/lanyard-agent" api fetch x509

step "Inside a task, a credential from a provider instead of a standing secret"
# A transaction token the server signs for internal services: it carries
# the task and whom it acts for, and never outlives the task.
$BIN/lanyard-server credential add internal --kind txn-token --audience "spiffe://$TD" \
  --admin-socket "$ADMIN"
$BIN/lanyard-agent task run --spiffe-id "$PLANNER" --type report.generate \
  --tool crm.read --ttl 2m --on-behalf-of user:alice@example.com \
  --credential internal=TXN_TOKEN -- sh -c '
  echo "the command starts with \$TXN_TOKEN: ${#TXN_TOKEN} characters"
  "$0" credential get internal --scope reports:read --output json
  if why=$("$0" credential get internal --scope reports:write 2>&1); then exit 1; fi
  echo "$why"' "$BIN/lanyard-agent"

step "Tool calls decided at the tool: one allowed, one denied by policy"
# The tool server's side: this user's lanyard-agent program may ask the
# node agent for decisions (an enforcement-point entry).
$BIN/lanyard-server entry create --spiffe-id "spiffe://$TD/tool/mail" \
  --parent-id "$NODE" --selector "unix:uid:$(id -u)" \
  --selector "unix:path:$(realpath "$BIN/lanyard-agent")" --enforcement-point \
  --admin-socket "$ADMIN" >/dev/null
sleep 1
# The AI agent's task writes its SVID; the tool checks each call it makes.
$BIN/lanyard-agent task run --spiffe-id "$PLANNER" --type report.generate \
  --tool crm.read --tool email.send --ttl 2m \
  --on-behalf-of user:alice@example.com --write "$WORK/task" -- sh -c '
  "$0" tool check --svid "$1/svid.0.pem" --tool email.send \
    --context "{\"to\": \"bob@example.com\"}" || exit 1
  if "$0" tool check --svid "$1/svid.0.pem" --tool email.send \
    --context "{\"to\": \"eve@attacker.example\"}"; then exit 1; fi' \
  "$BIN/lanyard-agent" "$WORK/task"

step "A denied task: the policy names the rule and its reason"
if $BIN/lanyard-agent task run --spiffe-id "$PLANNER" --type report.generate \
  --tool shell.exec --on-behalf-of user:alice@example.com -- true; then
  echo "error: the shell task was permitted" >&2; exit 1
fi

step "Tasks as the server recorded them (the first ended with its process)"
sleep 1
$BIN/lanyard-server task list --all --admin-socket "$ADMIN"

step "The audit log: the latest records, then an export verified offline with the public key"
$BIN/lanyard-server audit tail -n 8 --admin-socket "$ADMIN"
$BIN/lanyard-server audit export --format jsonl --admin-socket "$ADMIN" > "$WORK/audit.jsonl"
$BIN/lanyard-server audit key --admin-socket "$ADMIN" > "$WORK/audit-key.pem"
$BIN/lanyard-server audit verify --file "$WORK/audit.jsonl" --key "$WORK/audit-key.pem"

step "Done: the server, agent and all files are removed now"
