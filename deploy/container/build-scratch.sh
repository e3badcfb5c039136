#!/usr/bin/env bash
# Builds Lanyard's image FROM scratch out of binaries built on this machine
# (no base image is pulled): the binaries, the shared libraries they link
# (from ldd), /etc/passwd and /etc/group with a nonroot user (65532), /run
# and /tmp. Imported with `docker import`, so no image builder is needed.
#
#   deploy/container/build-scratch.sh [--profile release|debug] [--tag NAME] [--extra BIN]...
#
# --extra adds another binary from the same target directory (the
# end-to-end run adds its kubelet stand-in).
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=release
TAG=lanyard:dev
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --extra) EXTRA+=("$2"); shift 2 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  release) cargo build --release --locked --quiet --bin lanyard-server --bin lanyard-agent --bin lanyard-gate ;;
  debug) cargo build --locked --quiet --bin lanyard-server --bin lanyard-agent --bin lanyard-gate ;;
  *) echo "error: --profile is release or debug" >&2; exit 2 ;;
esac
BIN="target/$PROFILE"

ROOT="$(mktemp -d "${TMPDIR:-/tmp}/lanyard-rootfs.XXXXXX")"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc" "$ROOT/run" "$ROOT/tmp" "$ROOT/data"
chmod 1777 "$ROOT/tmp"
chmod 0755 "$ROOT/run"
for b in lanyard-server lanyard-agent lanyard-gate "${EXTRA[@]}"; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b is missing (build it first)" >&2; exit 1; }
  install -m 0755 "$BIN/$b" "$ROOT/usr/local/bin/$b"
  # Debug info stays on the host; line tables are enough for backtraces.
  strip --strip-debug "$ROOT/usr/local/bin/$b" 2>/dev/null || true
  # Every shared library the binary links, at the same path.
  ldd "$BIN/$b" | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
done
cat >"$ROOT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$ROOT/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
chown -R 65532:65532 "$ROOT/data" 2>/dev/null || true

tar -C "$ROOT" --numeric-owner -cf - . | docker import \
  --change 'USER 65532:65532' \
  --change 'ENV PATH=/usr/local/bin' \
  --change 'ENTRYPOINT ["/usr/local/bin/lanyard-server"]' \
  --change 'CMD ["--help"]' \
  - "$TAG" >/dev/null
echo "built $TAG from $BIN ($(docker image inspect "$TAG" --format '{{.Size}}') bytes)"
