#!/usr/bin/env bash
# Measure the web console with a large fleet (not part of the test suite:
# benchmarks measure, tests assert behaviour).
#
#   scripts/bench-ui.sh [COLLECTORS] [REQUESTS]
#
# Starts one server on a fresh embedded store, connects COLLECTORS
# (default 10,000) simulated collectors over gRPC (1 in 10 labelled
# env=dev, the others env=prod), then times REQUESTS (default 50) sequential
# requests of each console page with a logged-in session: the collectors
# table (first page, with a label filter, sorted by name and by last seen)
# and the overview, then the API's collectors page and fleet summary with
# an API token, and reports p50 / p99 / max. Last, the gzip-compressed
# bytes of the CSS and JS a console page downloads.
#
# Binaries: LINKMESH_BIN_DIR if set, else a debug build (`cargo build`);
# PROFILE=release builds and uses release binaries instead.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
requests=${2:-50}
if [[ -n "${LINKMESH_BIN_DIR:-}" ]]; then
  bin=$LINKMESH_BIN_DIR
elif [[ "${PROFILE:-debug}" == release ]]; then
  cargo build --release --locked --bin linkmesh --bin linkmesh-sim >&2
  bin=${CARGO_TARGET_DIR:-target}/release
else
  cargo build --locked --bin linkmesh --bin linkmesh-sim >&2
  bin=${CARGO_TARGET_DIR:-target}/debug
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
pw=bench-password-$RANDOM$RANDOM$RANDOM
port=$((20000 + RANDOM % 20000))
base=http://127.0.0.1:$port

# The example fleet config, served from a git repository of its own.
cp -r config/examples/fleet-config "$work/fleet-config"
git -C "$work/fleet-config" init -q -b main
git -C "$work/fleet-config" add -A
git -C "$work/fleet-config" -c user.name=bench -c user.email=bench@example.invalid commit -q -m "Bench fleet config"
cat > "$work/linkmesh.toml" <<TOML
[server]
http_listen = "127.0.0.1:$port"
grpc_listen = "127.0.0.1:$((port + 1))"
[storage.embedded]
path = "$work/linkmesh.redb"
[config_store]
url = "$work/fleet-config"
[telemetry]
log_level = "warn"
TOML

LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD=$pw "$bin/linkmesh" serve --config "$work/linkmesh.toml" &
pids+=($!)
for _ in $(seq 300); do curl -sf "$base/readyz" >/dev/null && break; sleep 0.1; done

cookie=$(curl -sf -D - -o /dev/null -H "origin: $base" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$pw\"}" "$base/api/v1/auth/login" |
  tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -1)
api() { curl -sf -H "cookie: $cookie" -H "origin: $base" -H 'content-type: application/json' "$@"; }
token() { api -d "{\"name\":\"bench $1\",\"labels\":{\"env\":\"$1\"}}" "$base/api/v1/enrollment-tokens" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }

# Simulated collectors in processes of at most 1,000, started one after the
# other (a debug server enrolls them more slowly than the sim's connect
# deadline allows for 10,000 at once). The first 1 in 10 are env=dev.
chunk=1000
t0=$(date +%s)
started=0
i=0
while (( started < n )); do
  count=$(( n - started < chunk ? n - started : chunk ))
  env=prod
  (( started < n / 10 )) && env=dev
  log="$work/sim-$i.log"
  : > "$log"
  "$bin/linkmesh-sim" --server "$base" --grpc "http://127.0.0.1:$((port + 1))" --collectors "$count" \
    --enrollment-token "$(token "$env")" --label "env=$env" --heartbeat 30s --push-rounds 0 --hold 24h \
    > "$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 3000); do
    grep -q "^connected $count collectors" "$log" && break
    # The sim fails with "error: …"; its "errors: N" summary line is no failure.
    grep -q "^error: " "$log" && { cat "$log"; exit 1; }
    sleep 0.1
  done
  started=$((started + count))
  i=$((i + 1))
done
for _ in $(seq 120); do
  connected=$(api "$base/api/v1/fleet/summary" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connected"])')
  [[ "$connected" == "$n" ]] && break
  sleep 0.5
done
echo "collectors: $connected of $n connected after $(( $(date +%s) - t0 )) s"
[[ "$connected" == "$n" ]] || { tail -n 3 "$work"/sim-*.log; exit 1; }

# p50 / p99 / max in ms of $requests sequential GETs of a page, with the
# session cookie (AUTH unset) or the header AUTH.
measure() {
  local name=$1 path=$2
  for _ in $(seq "$requests"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "${AUTH:-cookie: $cookie}" "$base$path"
  done | python3 -c '
import sys
rows = [l.split() for l in sys.stdin]
bad = [c for c, _ in rows if c != "200"]
t = sorted(float(s) * 1000 for _, s in rows)
pick = lambda p: t[min(len(t) - 1, int(round(p / 100 * (len(t) - 1))))]
print(f"{sys.argv[1]:<38} p50 {pick(50):7.1f} ms   p99 {pick(99):7.1f} ms   max {t[-1]:7.1f} ms" + (f"   NON-200: {len(bad)}" if bad else ""))
' "$name"
}
echo "page timings, $requests sequential requests each, $n collectors stored and connected:"
measure "/collectors" "/collectors"
measure "/collectors?selector=env=dev" "/collectors?selector=env%3Ddev"
measure "/collectors?sort=name" "/collectors?sort=name"
measure "/collectors?sort=last_seen" "/collectors?sort=last_seen"
measure "/ (overview)" "/"
# The API's collectors page as automation reads it (figure 8 of
# scripts/bench-fleet.sh): an API token, 100 of the fleet, a label filter.
bearer=$(api -d '{"name":"bench"}' "$base/api/v1/api-tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
AUTH="authorization: Bearer $bearer" measure "API collectors, 100, env=dev (token)" "/api/v1/collectors?limit=100&selector=env%3Ddev"
AUTH="authorization: Bearer $bearer" measure "API fleet summary (token)" "/api/v1/fleet/summary"

# What a console page downloads besides its HTML (gzip, as browsers ask).
page=$(curl -sf -H "cookie: $cookie" "$base/")
total=0
while read -r a; do
  size=$(curl -sf -H 'accept-encoding: gzip' -o /dev/null -w '%{size_download}' "$base$a")
  echo "asset $a: $size B gzip"
  total=$((total + size))
done < <(grep -o '/assets/[^"]*' <<< "$page" | sort -u)
echo "console page CSS+JS: $total B gzip"
