#!/usr/bin/env bash
# Measure a fleet on one instance with release binaries (not part of the
# test suite: benchmarks measure, tests assert behaviour).
#
#   scripts/bench-fleet.sh [COLLECTORS]
#
# Phase 1: push latency of a fleet-wide config change (the fleet default
#          config), p50/p99 as seen by the simulated collectors, and server
#          memory with the fleet connected.
# Phase 2: the config store: time from `git commit` (local repository,
#          notify path) to every collector APPLIED in the fleet summary.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
target=x86_64-unknown-linux-gnu
bin=target/static/$target/release
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
  cargo build --release --locked --target "$target" --bin linkmesh --bin linkmesh-sim >&2

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
pw=bench-password-$RANDOM$RANDOM

start_server() { # $1: extra config
  cat > "$work/linkmesh.toml" <<TOML
[server]
http_listen = "127.0.0.1:18080"
grpc_listen = "127.0.0.1:14320"
[storage.embedded]
path = "$work/data-$2/linkmesh.redb"
[telemetry]
log_level = "warn"
$1
TOML
  LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD=$pw "$bin/linkmesh" serve --config "$work/linkmesh.toml" &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
  curl -sf -c "$work/cookies" -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$pw\"}" http://127.0.0.1:18080/api/v1/auth/login >/dev/null
  token=$(curl -sf -b "$work/cookies" -H 'origin: http://127.0.0.1:18080' -H 'content-type: application/json' -d '{"name":"bench"}' \
    http://127.0.0.1:18080/api/v1/api-tokens | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
}

echo "== Phase 1: push latency, $n collectors over gRPC"
start_server "" 1
"$bin/linkmesh-sim" --server http://127.0.0.1:18080 --grpc http://127.0.0.1:14320 --api-token "$token" --collectors "$n" --transport grpc --heartbeat 30s \
  --push-rounds 5 --server-pid "$server" --label role=bench
kill "$server"; wait "$server" 2>/dev/null || true

echo "== Phase 2: commit to APPLIED, $n collectors, local config repository"
repo=$work/fleet
mkdir -p "$repo"; cp -r config/examples/fleet-config/. "$repo/"
g() { git -C "$repo" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"; }
g init -q -b main; g add -A; g commit -qm initial
start_server "[config_store]
url = \"$repo\"
poll_interval = \"1h\"" 2
"$bin/linkmesh-sim" --server http://127.0.0.1:18080 --grpc http://127.0.0.1:14320 --api-token "$token" --collectors "$n" --transport grpc --heartbeat 30s \
  --push-rounds 0 --hold 600s --label role=app --label env=prod --label os=linux &
pids+=("$!")
summary() { curl -sf -H "authorization: Bearer $token" http://127.0.0.1:18080/api/v1/fleet/summary; }
applied() { summary | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"].get("applied",0))'; }
for _ in $(seq 1200); do [ "$(applied)" = "$n" ] && break; sleep 0.1; done
echo "initial config applied by $(applied) collectors"
sed -i 's/"drop-health", //' "$repo/pipelines/traces.toml"
t0=$(date +%s.%N)
g commit -qam "Keep health-check spans"
head=$(g rev-parse HEAD)
while :; do
  served=$(curl -sf -H "authorization: Bearer $token" http://127.0.0.1:18080/api/v1/config/revision | python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')
  if [ "$served" = "$head" ] && [ "$(applied)" = "$n" ]; then break; fi
  sleep 0.02
done
t1=$(date +%s.%N)
python3 -c "print(f'commit -> all $n APPLIED in the fleet summary: {($t1 - $t0)*1000:.0f} ms (includes polling the API)')"
echo "server RSS: $(( $(awk '/VmRSS/{print $2}' /proc/$server/status) / 1024 )) MiB"
