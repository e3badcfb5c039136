#!/usr/bin/env bash
# Lanyard the way a cluster runs it, in containers on this machine's Docker
# Engine: the server in one container; the agent in another with the host's
# PID namespace and the socket directory on a volume shared with workload
# containers; a kubelet stand-in serving the pod list for those workloads;
# and two workload containers running as the same uid, told apart only by
# their real cgroup paths (Docker's own naming) and the pod each belongs
# to. The one with an entry gets its SVID through the shared socket; the
# other gets "no identity issued".
#
#   scripts/e2e-docker.sh            (needs a Docker daemon; ~2 min warm)
#
# The image is built FROM scratch with deploy/container/build-scratch.sh
# from debug binaries (the ones the demo and the tests build), plus the
# e2e helper (kubelet stand-in, idle process).
set -euo pipefail
cd "$(dirname "$0")/.."

TD=example.org
NODE="spiffe://$TD/node/docker-node"
IMAGE=lanyard:e2e
NET=lanyard-e2e
P=lanyard-e2e
SOCKVOL="$P-socket"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

docker info >/dev/null 2>&1 || { echo "error: no Docker daemon" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lanyard-e2e.XXXXXX")"
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    for c in server agent kubelet wl-planner wl-stranger; do
      echo "--- logs of $P-$c" >&2
      docker logs "$P-$c" 2>&1 | tail -n 40 >&2 || true
    done
  fi
  docker rm -f "$P-server" "$P-agent" "$P-kubelet" "$P-wl-planner" "$P-wl-stranger" "$P-filler" >/dev/null 2>&1 || true
  docker volume rm "$SOCKVOL" "$P-shared" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  # The image is rebuilt on every run: keep no copy of it around.
  docker image rm "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
docker rm -f "$P-server" "$P-agent" "$P-kubelet" "$P-wl-planner" "$P-wl-stranger" >/dev/null 2>&1 || true
docker volume rm "$SOCKVOL" "$P-shared" >/dev/null 2>&1 || true
docker network rm "$NET" >/dev/null 2>&1 || true

step "Building the image FROM scratch"
cargo build --locked --quiet -p lanyard-integration-tests --bin lanyard_e2e
deploy/container/build-scratch.sh --profile debug --tag "$IMAGE" --extra lanyard_e2e

docker network create "$NET" >/dev/null
docker volume create "$SOCKVOL" >/dev/null
docker volume create "$P-shared" >/dev/null
step "Server container (non-root, data and admin socket on tmpfs)"
docker run -d --name "$P-server" --network "$NET" --network-alias lanyard-server \
  --tmpfs /data:rw,uid=65532,gid=65532,mode=0700 \
  --tmpfs /run/lanyard:rw,uid=65532,gid=65532,mode=0700 \
  -e LANYARD_LOG=info \
  "$IMAGE" run --trust-domain "$TD" --bind 0.0.0.0:8081 --data-dir /data >/dev/null
admin() { docker exec "$P-server" /usr/local/bin/lanyard-server "$@"; }
for _ in $(seq 1 100); do admin healthcheck >/dev/null 2>&1 && break; sleep 0.2; done
admin bundle show >"$WORK/bundle.pem"
TOKEN="$(admin token generate --agent-id "$NODE")"

step "Two workload containers, both uid 1000, the socket volume read-only"
for w in planner stranger; do
  docker run -d --name "$P-wl-$w" --network "$NET" --user 1000:1000 \
    -v "$SOCKVOL:/run/lanyard/agent:ro" \
    -e SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
    --entrypoint /usr/local/bin/lanyard_e2e "$IMAGE" idle >/dev/null
done
PLANNER_ID="$(docker inspect --format '{{.Id}}' "$P-wl-planner")"
STRANGER_ID="$(docker inspect --format '{{.Id}}' "$P-wl-stranger")"
echo "planner container   $PLANNER_ID"
echo "stranger container  $STRANGER_ID"

step "Kubelet stand-in: the pod list naming those containers"
cat >"$WORK/pods.json" <<JSON
{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
 {"metadata":{"name":"planner-7d9c5-abcde","namespace":"agents","uid":"6a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b","labels":{"app":"planner"}},
  "spec":{"serviceAccountName":"planner","nodeName":"docker-node"},
  "status":{"phase":"Running","containerStatuses":[{"name":"planner","image":"lanyard:e2e","imageID":"docker://lanyard-e2e","containerID":"docker://$PLANNER_ID","ready":true}]}},
 {"metadata":{"name":"stranger-5f6a7-fghij","namespace":"agents","uid":"7b2a3d4e-5c6f-4a71-9b8c-0d1e2f3a4b5c","labels":{"app":"stranger"}},
  "spec":{"serviceAccountName":"stranger","nodeName":"docker-node"},
  "status":{"phase":"Running","containerStatuses":[{"name":"stranger","image":"lanyard:e2e","imageID":"docker://lanyard-e2e","containerID":"docker://$STRANGER_ID","ready":true}]}}]}
JSON
echo "kubelet-token-$RANDOM$RANDOM" >"$WORK/kubelet-token"
cat >"$WORK/agent.toml" <<TOML
trust_domain = "$TD"
server = "lanyard-server:8081"
trust_bundle = "/shared/bundle.pem"
join_token_file = "/shared/join-token"
socket = "/run/lanyard/agent/api.sock"
data_dir = "/var/lib/lanyard-agent"

[k8s]
node_name = "docker-node"
kubelet_url = "https://kubelet:10250"
# The kubelet's own (self-signed) serving certificate, pinned, naming this
# node.
kubelet_cert_file = "/shared/kubelet-ca.pem"
token_file = "/shared/kubelet-token"
# The host's cgroupfs, where a caller's container cgroup must be root-owned
# and of the runtime's shape; plain Docker (cgroupfs driver) makes
# /docker/<ID> instead of the kubelet's kubepods tree.
cgroup_root = "/host/sys/fs/cgroup"
kubelet_cgroup_roots = ["docker"]
TOML
echo "$TOKEN" >"$WORK/join-token"
# The shared volume gets the files through a container that mounts it.
docker create --name "$P-filler" --user 0 -v "$P-shared:/shared" --entrypoint /usr/local/bin/lanyard_e2e "$IMAGE" idle >/dev/null
for f in bundle.pem pods.json kubelet-token agent.toml join-token; do
  docker cp "$WORK/$f" "$P-filler:/shared/$f" >/dev/null
done
docker rm "$P-filler" >/dev/null
docker run -d --name "$P-kubelet" --network "$NET" --network-alias kubelet --user 0 \
  -v "$P-shared:/shared" --entrypoint /usr/local/bin/lanyard_e2e "$IMAGE" \
  kubelet --bind 0.0.0.0:10250 --name docker-node --pods /shared/pods.json \
  --token-file /shared/kubelet-token --ca-out /shared/kubelet-ca.pem >/dev/null

step "Agent container: host PID namespace, the socket volume, the Kubernetes attestor"
for _ in $(seq 1 100); do docker logs "$P-kubelet" 2>&1 | grep -q "kubelet stand-in on" && break; sleep 0.2; done
docker run -d --name "$P-agent" --network "$NET" --pid host --user 0 --cap-add SYS_PTRACE \
  -v "$SOCKVOL:/run/lanyard/agent" -v "$P-shared:/shared:ro" -v /sys/fs/cgroup:/host/sys/fs/cgroup:ro \
  --tmpfs /var/lib/lanyard-agent:rw,mode=0700 \
  -e LANYARD_LOG=info,lanyard_agent::attestor=debug -e NO_COLOR=1 \
  --entrypoint /usr/local/bin/lanyard-agent "$IMAGE" run --config /shared/agent.toml >/dev/null
for _ in $(seq 1 150); do
  docker exec "$P-agent" /usr/local/bin/lanyard-agent healthcheck --socket /run/lanyard/agent/api.sock >/dev/null 2>&1 && break
  sleep 0.2
done

step "An entry for the planner pod: namespace and label, parent the node"
admin entry create --spiffe-id "spiffe://$TD/agent/planner" --parent-id "$NODE" \
  --selector k8s:ns:agents --selector k8s:pod-label:app:planner --selector k8s:container-name:planner

step "The planner fetches its SVID through the shared socket"
ok=""
for _ in $(seq 1 50); do
  if out="$(docker exec "$P-wl-planner" /usr/local/bin/lanyard-agent api fetch x509 --timeout 5s 2>&1)"; then
    ok=1; break
  fi
  sleep 0.3
done
echo "$out"
[ -n "$ok" ] || { echo "error: the planner got no SVID" >&2; exit 1; }
echo "$out" | grep -q "spiffe://$TD/agent/planner" || { echo "error: wrong SPIFFE ID" >&2; exit 1; }

step "The stranger, same uid, another pod, gets no identity"
if out="$(docker exec "$P-wl-stranger" /usr/local/bin/lanyard-agent api fetch x509 --timeout 3s 2>&1)"; then
  echo "$out"; echo "error: the stranger got an SVID" >&2; exit 1
fi
echo "$out"
echo "$out" | grep -q "no identity issued" || { echo "error: expected \"no identity issued\"" >&2; exit 1; }

step "What the agent saw: each selector from the runtime's cgroup path"
docker logs "$P-agent" 2>&1 | grep "caller attested in a pod" | tail -n 2
docker logs "$P-agent" 2>&1 | grep "caller attested in a pod" | grep "$PLANNER_ID" | grep -q "k8s:pod-label:app:planner" \
  || { echo "error: the agent did not attest the planner by its container ID" >&2; exit 1; }
docker logs "$P-agent" 2>&1 | grep "caller attested in a pod" | grep "$STRANGER_ID" | grep -q "k8s:pod-label:app:stranger" \
  || { echo "error: the agent did not attest the stranger by its container ID" >&2; exit 1; }
step "Containerised run passed"
