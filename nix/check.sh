#!/usr/bin/env bash
# What this machine can check of the Nix packaging (called by .ci/run as
# `bash nix/check.sh`). No nixpkgs here: only nix itself (Debian nix-bin),
# nixpkgs-fmt and deadnix (crates.io) and haproxy (Debian).
#   1. nix-instantiate --parse on every .nix file
#   2. nixpkgs-fmt --check and deadnix --fail on every .nix file
#   3. pure evaluation of the helpers' tests (nix/tests/lib-test.nix)
#   4. the committed generated files (config/haproxy/haproxy.cfg,
#      containers/mongodb-init.js) regenerated from nix/lib.nix and diffed;
#      haproxy.cfg and other generated variants pass `haproxy -c`; the
#      replica-set init script passes its logic test under node
#   5. the flake's shape, evaluated without fetching nixpkgs
#   6. nix/service.nix (behind both NixOS modules) evaluated with builtins-only
#      stand-ins for lib/pkgs: its TOML goes through the real
#      `linkmesh check-config` with the build-time placeholder environment
# Idempotent; installs missing tools; exits non-zero on any failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
export NIX_CONFIG="experimental-features = nix-command flakes
substituters =
warn-dirty = false"

say() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
apt_pkgs=()
command -v nix-instantiate >/dev/null 2>&1 || apt_pkgs+=(nix-bin)
command -v haproxy >/dev/null 2>&1 || apt_pkgs+=(haproxy)
command -v openssl >/dev/null 2>&1 || apt_pkgs+=(openssl)
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  say "installing ${apt_pkgs[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi
for tool in nixpkgs-fmt deadnix; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "installing $tool (cargo install --locked)"
    nice -n 19 cargo install --locked --quiet "$tool"
  fi
done

mapfile -t files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' -not -path './node_modules/*' | sort)
[ ${#files[@]} -gt 0 ] || fail "no .nix files found"
echo "nix files: ${files[*]}"

# --- 1. parse -------------------------------------------------------------------
say "nix-instantiate --parse ($(nix-instantiate --version))"
for f in "${files[@]}"; do
  nix-instantiate --parse "$f" >/dev/null || fail "$f does not parse"
done
echo "parsed ${#files[@]} files"

# --- 2. format and dead code -----------------------------------------------------
say "nixpkgs-fmt --check"
nixpkgs-fmt --check "${files[@]}" || fail "run: nixpkgs-fmt ${files[*]}"
say "deadnix --fail"
NO_COLOR=1 deadnix --fail "${files[@]}" || fail "deadnix found unused code"
echo "deadnix: clean"

# --- 3. pure evaluation of the helpers -----------------------------------------
say "nix-instantiate --eval --strict nix/tests/lib-test.nix"
result=$(nix-instantiate --eval --strict nix/tests/lib-test.nix) || fail "lib tests failed"
echo "lib-test: $result"

# --- 4. haproxy.cfg -------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "regenerate the committed generated files and diff"
bash nix/generate.sh "$work/gen" >/dev/null
for f in config/haproxy/haproxy.cfg containers/mongodb-init.js; do
  diff -u "$f" "$work/gen/$f" || fail "$f is stale: run bash nix/generate.sh"
  echo "$f is up to date"
done

say "haproxy -c ($(haproxy -v | head -n1))"
haproxy -c -f config/haproxy/haproxy.cfg || fail "haproxy rejects config/haproxy/haproxy.cfg"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=linkmesh-check \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"
for variant in loopback tls dns; do
  nix eval --raw -f nix/tests/haproxy-variants.nix --argstr certFile "$work/haproxy.pem" "$variant" \
    >"$work/$variant.cfg"
  haproxy -c -q -f "$work/$variant.cfg" || fail "haproxy rejects the '$variant' variant"
  echo "variant $variant: valid"
done

say "replica-set init script logic (node $(node --version), scripted mongosh stand-in)"
node nix/tests/mongodb-init-test.js containers/mongodb-init.js || fail "mongodb init script test"

# --- 5. flake shape (no nixpkgs fetched) ------------------------------------------
say "flake outputs, evaluated without nixpkgs"
shape=$(nix-instantiate --eval --strict --json -E '
  let
    flake = import ./flake.nix;
    out = flake.outputs { self = out; nixpkgs = throw "nixpkgs is not available here"; };
  in {
    inputs = builtins.attrNames flake.inputs;
    outputs = builtins.attrNames out;
    packages = builtins.attrNames out.packages.x86_64-linux;
    checks = builtins.attrNames out.checks.x86_64-linux;
    modules = builtins.mapAttrs (_: builtins.isFunction) out.nixosModules;
    lib = builtins.attrNames out.lib;
  }') || fail "flake.nix does not evaluate"
echo "$shape"
for want in '"inputs":["nixpkgs"]' '"packages":["default","image","linkmesh"]' \
  '"checks":["ha","haproxy-config","lib","mongodb-init","package"]' '"modules":{"default":true,"ha":true}'; do
  [[ "$shape" == *"$want"* ]] || fail "flake: expected $want"
done

# --- 6. the modules' server TOML through the real check-config -------------------
say "service.nix (stand-in lib/pkgs): generated TOML through linkmesh check-config"
summary=$(nix-instantiate --eval --strict nix/tests/service-eval.nix -A summary) || fail "service.nix does not evaluate"
echo "$summary"
for want in 'errors = [ [ ] [ ] [ ] [ ] ]' 'DynamicUser = true' 'ProtectSystem = "strict"' 'TimeoutStopSec = 15' \
  'embeddedPath = "/var/lib/linkmesh/linkmesh.redb"' 'must be an absolute path outside the Nix store' \
  'would put a secret into the world-readable Nix store' 'tlsPrivileged = [ "CAP_NET_BIND_SERVICE" ]'; do
  [[ "$summary" == *"$want"* ]] || fail "service.nix summary: expected $want"
done
bin=${LINKMESH_BIN:-}
if [ -z "$bin" ]; then
  nice -n 19 cargo build --locked --quiet --bin linkmesh || fail "cargo build failed"
  bin="${CARGO_TARGET_DIR:-$repo/target}/debug/linkmesh"
fi
for case in single ha tls insecure; do
  dir="$work/case-$case"
  mkdir -p "$dir"
  nix eval --raw -f nix/tests/service-eval.nix "$case.toml" >"$dir/linkmesh.toml"
  nix eval --raw -f nix/tests/service-eval.nix "$case.check" \
    | sed -e "s|@CONFIG@|$dir/linkmesh.toml|g" >"$dir/check.sh"
  if (cd "$dir" && out=/dev/null PATH="$(dirname "$bin"):$PATH" bash -e check.sh) >"$dir/log" 2>&1; then
    result=accepted
  else
    result=rejected
  fi
  echo "case $case: $result"
  sed 's/^/    /' "$dir/log"
  case "$case:$result" in
    insecure:rejected | single:accepted | ha:accepted | tls:accepted) ;;
    *) fail "case $case: check-config $result the generated config" ;;
  esac
done

cat <<'NOTE'

NOT RUN HERE (they need nixpkgs, which this machine cannot fetch):
  - nix build .#default              (rustPlatform.buildRustPackage, nix/package.nix)
  - nix build .#image                (dockerTools image, nix/image.nix)
  - evaluation of the NixOS modules with the real module system (nix/module.nix,
    nix/ha.nix; service.nix was only evaluated with stand-ins, step 6)
    and the build-time check derivation itself
  - the init script against a real MongoDB replica set (no mongod here)
  - nix flake check                  (checks.package, checks.lib, checks.haproxy-config,
                                      checks.mongodb-init, and checks.ha: the NixOS VM
                                      test nix/tests/ha.nix)
Run them with nixpkgs available:  nix flake check -L
NOTE
say "nix/check.sh: all checks passed"
