#!/usr/bin/env bash
# Regenerate the committed files produced by nix/lib.nix (see
# nix/generated.nix). Needs only nix (no nixpkgs).
# Usage: bash nix/generate.sh [OUTDIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
gen() { # attribute, path
  mkdir -p "$(dirname "$out/$2")"
  nix --extra-experimental-features nix-command eval --raw -f nix/generated.nix "$1" >"$out/$2.tmp"
  chmod 0644 "$out/$2.tmp"
  mv "$out/$2.tmp" "$out/$2"
  echo "wrote $out/$2"
}
gen haproxy config/haproxy/haproxy.cfg
gen mongodbInit containers/mongodb-init.js
