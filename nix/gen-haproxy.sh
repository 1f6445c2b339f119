#!/usr/bin/env bash
# Regenerate config/haproxy/haproxy.cfg from nix/haproxy-example.nix
# (nix/lib.nix haproxyConfig). Needs only nix (no nixpkgs).
# Usage: bash nix/gen-haproxy.sh [OUTPUT]   (default: config/haproxy/haproxy.cfg)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-config/haproxy/haproxy.cfg}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
nix --extra-experimental-features nix-command eval --raw -f nix/haproxy-example.nix >"$tmp"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
chmod 0644 "$out"
echo "wrote $out"
