#!/usr/bin/env bash
# Build the LinkMesh OCI image (containers/Containerfile, FROM scratch) with
# podman: compiles a statically linked linkmesh, stages a build context with
# fixed file modes and builds with --timestamp 0 --no-cache, so that the same
# binary always gives the same image id. No registry is contacted.
#
# Usage: bash containers/build.sh [--tag NAME[:TAG]] [--binary PATH]
#   --tag     image name (default localhost/linkmesh:<Cargo.toml version>)
#   --binary  use this static binary instead of building one
# The last line printed on stdout is the image id (sha256:...).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
tag="localhost/linkmesh:${version}"
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build.sh: $*" >&2; }

if [ -z "$binary" ]; then
  target=$(rustc -vV | sed -n 's/^host: //p')
  case "$target" in
    *-linux-gnu) ;;
    *) log "expected a *-linux-gnu host, got $target"; exit 1 ;;
  esac
  # Static glibc binary; --target keeps the flag away from build scripts and
  # proc macros. Its own target dir so it does not wait on the debug build.
  log "building a static linkmesh for $target (release)"
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$repo/target/static" \
    nice -n 19 cargo build --release --locked --target "$target" --bin linkmesh >&2
  binary="$repo/target/static/$target/release/linkmesh"
fi
[ -x "$binary" ] || { log "no executable at $binary"; exit 1; }
log "binary $binary sha256 $(sha256sum "$binary" | cut -d' ' -f1)"

# FROM scratch has no dynamic loader: refuse a dynamically linked binary.
if command -v readelf >/dev/null 2>&1; then
  if readelf -l "$binary" | grep -q 'program interpreter'; then
    log "$binary is dynamically linked (it has a program interpreter)"
    exit 1
  fi
else
  log "readelf not found: not checking that the binary is static"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
umask 022
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib" "$ctx/data/linkmesh"
install -m 0644 containers/rootfs/etc/passwd containers/rootfs/etc/group \
  containers/rootfs/etc/nsswitch.conf "$ctx/rootfs/etc/"
chmod 1777 "$ctx/rootfs/tmp"
chmod 0700 "$ctx/data/linkmesh"
install -m 0644 containers/linkmesh.toml "$ctx/linkmesh.toml"
install -m 0755 "$binary" "$ctx/linkmesh"
install -m 0644 containers/Containerfile "$ctx/Containerfile"

log "building $tag"
podman build \
  --timestamp 0 --no-cache --layers=false --pull=never --format oci \
  --build-arg "VERSION=$version" \
  --iidfile "$ctx/iid" \
  --tag "$tag" \
  --file "$ctx/Containerfile" \
  "$ctx" >&2
id=$(cat "$ctx/iid")
log "image $tag = $id"
echo "$id"
