#!/usr/bin/env bash
# Renders the Kubernetes manifests with kustomize (kubectl) and validates
# every object against the Kubernetes OpenAPI schemas of a pinned version
# (kubernetes-validate, offline, strict: unknown fields are errors).
#
#   scripts/check-manifests.sh
#
# Installs Debian's kubectl when missing and kubernetes-validate into a
# venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${LANYARD_K8S_VERSION:-1.32.0}"
VALIDATE_VERSION=1.37.0
VENV=target/manifest-venv

if ! command -v kubectl >/dev/null; then
  echo "installing kubectl (Debian)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q kubectl >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q kubectl >/dev/null
  }
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi

OUT="$(mktemp -d "${TMPDIR:-/tmp}/lanyard-manifests.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
for k in deploy/kubernetes/base deploy/kubernetes/overlays/example deploy/kubernetes/overlays/dev-insecure-kubelet; do
  name="$(echo "$k" | tr / -)"
  kubectl kustomize "$k" >"$OUT/$name.yaml"
  echo "rendered $k: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
done
cp deploy/kubernetes/examples/*.yaml "$OUT/"
"$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" --quiet "$OUT"/*.yaml
echo "every object is valid against Kubernetes $K8S_VERSION (strict)"
