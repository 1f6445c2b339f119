#!/usr/bin/env bash
# Checks of the OCI image, runnable on a fresh Debian machine as root
# (called by .ci/run as `bash containers/check.sh`):
#   1. two builds with containers/build.sh give the same image id;
#   2. the image: FROM scratch layout, non-root user, ports, config path, and
#      `linkmesh check-config` accepts the baked-in config;
#   3. podman run: /readyz answers 200 (polled with a deadline), the
#      bootstrap password passed as a mounted file lets the admin log in;
#   4. SIGTERM (podman stop) stops the server (PID 1) within the grace
#      period with exit code 0;
#   5. live HAProxy: three containers of the image behind the haproxy.cfg
#      that nix/lib.nix generates (same generator as the NixOS module and
#      config/haproxy/haproxy.cfg); all three get traffic; one is stopped,
#      HAProxy marks it down on both backends and the rest keeps answering,
#      on the web port and with gRPC calls over HTTP/2 on the collector port.
#      Each container has its own embedded store: this checks the proxy,
#      health checks and failover, not shared data (that needs MongoDB).
# Idempotent; cleans up its container and temp files; exits non-zero on any
# failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

say() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
missing=()
for tool in podman runc curl readelf haproxy nix-instantiate; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  pkgs=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      readelf) pkgs+=(binutils) ;;
      nix-instantiate) pkgs+=(nix-bin) ;;
      *) pkgs+=("$tool") ;;
    esac
  done
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || fail "cargo is needed to build the static binary"

# This sandbox (and CI) forbids raising limits and crun fails on its cgroups.
RUN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
TAG=localhost/linkmesh:check
GRACE=10 # seconds podman stop waits before SIGKILL; the image's shutdown_grace is 8s
name="linkmesh-check-$$"
work=$(mktemp -d)
haproxy_pid=""
# The image this check built last time; removed at the end if it was replaced.
previous=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
cleanup() {
  podman rm -f -v --time 0 "$name" "$name-1" "$name-2" "$name-3" >/dev/null 2>&1 || true
  current=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  if [ -n "$haproxy_pid" ]; then kill "$haproxy_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. reproducible build -----------------------------------------------------
# Build 1 compiles the static binary; build 2 reuses a copy of that binary,
# so that a source edit in between (concurrent work) cannot change it.
say "build 1"
id1=$(bash containers/build.sh --tag "$TAG" | tail -n1)
target=$(rustc -vV | sed -n 's/^host: //p')
cp "target/static/$target/release/linkmesh" "$work/linkmesh"
say "build 2 (same binary: $(sha256sum "$work/linkmesh" | cut -c1-16)...)"
id2=$(bash containers/build.sh --tag "$TAG" --binary "$work/linkmesh" | tail -n1)
echo "image id, build 1: $id1"
echo "image id, build 2: $id2"
if [ -z "$id1" ] || [ "$id1" != "$id2" ]; then fail "two builds gave different image ids"; fi

# --- 2. image layout ----------------------------------------------------------
fmt='{{.Config.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{.Config.StopSignal}}'
meta=$(podman image inspect --format "$fmt" "$TAG")
echo "image config: $meta"
[[ "$meta" == 65532:65532\|* ]] || fail "image does not run as uid/gid 65532"
[[ "$meta" == *'"4320/tcp"'* && "$meta" == *'"8080/tcp"'* ]] || fail "ports 8080 and 4320 are not exposed"
[[ "$meta" == *'/etc/linkmesh/linkmesh.toml'* ]] || fail "config path is not /etc/linkmesh/linkmesh.toml"
layers=$(podman image inspect --format '{{len .RootFS.Layers}}' "$TAG")
echo "layers: $layers (FROM scratch, one layer: --layers=false)"
podman run --rm "${RUN_FLAGS[@]}" --network none "$TAG" --version
podman run --rm "${RUN_FLAGS[@]}" --network none "$TAG" check-config /etc/linkmesh/linkmesh.toml

# --- 3. run -------------------------------------------------------------------
mkdir -p "$work/data" "$work/secrets"
password="check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$password" >"$work/secrets/admin-password"
chmod 0400 "$work/secrets/admin-password"

say "starting $name"
podman run -d --name "$name" "${RUN_FLAGS[@]}" \
  -p 127.0.0.1::8080 -p 127.0.0.1::4320 \
  -v "$work/data:/var/lib/linkmesh:U" \
  -v "$work/secrets:/run/secrets:ro,U" \
  -e LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD_FILE=/run/secrets/admin-password \
  -e LINKMESH_SERVER__INSTANCE_NAME=check \
  "$TAG" >/dev/null
hostport=$(podman port "$name" 8080/tcp | head -n1)
[ -n "$hostport" ] || fail "no published port for 8080"
base="http://$hostport"
echo "published: $base"

deadline=$((SECONDS + 60))
until curl -sf --max-time 2 "$base/readyz" >"$work/readyz" 2>/dev/null; do
  if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != "true" ]; then
    podman logs "$name" >&2 || true
    fail "the container exited before it was ready"
  fi
  [ $SECONDS -lt $deadline ] || { podman logs "$name" >&2 || true; fail "/readyz not 200 within 60 s"; }
  sleep 0.5
done
echo "/readyz: $(cat "$work/readyz")"

code=$(curl -s -o "$work/login" -w '%{http_code}' --max-time 5 \
  -H 'Content-Type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$password\"}" "$base/api/v1/auth/login")
[ "$code" = 200 ] || { cat "$work/login" >&2; fail "admin login returned $code"; }
echo "admin login with the mounted password file: 200"
[ -n "$(ls -A "$work/data")" ] || fail "nothing written to the data volume"
echo "data volume: $(find "$work/data" -mindepth 1 -printf '%f ')"

# --- 4. SIGTERM as PID 1 --------------------------------------------------------
say "podman stop -t $GRACE (SIGTERM)"
start=$(date +%s%N)
podman stop -t "$GRACE" "$name" >/dev/null
end=$(date +%s%N)
elapsed_ms=$(((end - start) / 1000000))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
echo "stopped after ${elapsed_ms} ms with exit code $exit_code"
podman logs "$name" 2>&1 | tail -n 3
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM (137 = killed after the grace period)"
[ "$elapsed_ms" -lt $((GRACE * 1000)) ] || fail "took ${elapsed_ms} ms, not within the ${GRACE}s grace period"

# --- 5. live HAProxy in front of three containers -----------------------------
say "live HAProxy (generated config) in front of three containers"
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
instances=""
for i in 1 2 3; do
  mkdir -p "$work/data-$i"
  podman run -d --name "$name-$i" "${RUN_FLAGS[@]}" \
    -p 127.0.0.1::8080 -p 127.0.0.1::4320 \
    -v "$work/data-$i:/var/lib/linkmesh:U" \
    -e "LINKMESH_SERVER__INSTANCE_NAME=linkmesh-$i" \
    "$TAG" >/dev/null
  hp=$(podman port "$name-$i" 8080/tcp | head -n1 | sed 's/.*://')
  gp=$(podman port "$name-$i" 4320/tcp | head -n1 | sed 's/.*://')
  instances+="{ name = \"linkmesh-$i\"; host = \"127.0.0.1\"; httpPort = $hp; grpcPort = $gp; } "
done
lb_http=$(free_port)
lb_grpc=$(free_port)
lb_stats=$(free_port)
nix --extra-experimental-features nix-command eval --raw -f nix/lib.nix --apply "l: l.haproxyConfig {
  instances = [ $instances];
  httpBind = \"127.0.0.1:$lb_http\";
  grpcBind = \"127.0.0.1:$lb_grpc\";
  statsBind = \"127.0.0.1:$lb_stats\";
  checkInterval = \"1s\";
  maxconn = 4000; # the default 20000 needs 40k fds; this sandbox allows 20k
  log = \"stderr format raw local0 notice\";
}" >"$work/haproxy.cfg"
grep -E '^ +(bind|server) ' "$work/haproxy.cfg"
haproxy -c -q -f "$work/haproxy.cfg" || fail "haproxy -c rejects the generated config"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!

# Server states from the stats CSV: "<backend>/<server>=<status>" lines.
states() {
  { curl -sf --max-time 2 "http://127.0.0.1:$lb_stats/;csv" || true; } \
    | awk -F, '$1 ~ /^linkmesh_/ && $2 ~ /^linkmesh-/ { print $1 "/" $2 "=" $18 }' | sort
}
wait_until() { # description, command...
  local what=$1 deadline=$((SECONDS + 30))
  shift
  until "$@"; do
    kill -0 "$haproxy_pid" 2>/dev/null || { cat "$work/haproxy.log" >&2; fail "haproxy exited"; }
    [ $SECONDS -lt $deadline ] || { states >&2; cat "$work/haproxy.log" >&2; fail "$what"; }
    sleep 0.5
  done
}
all_up() { [ "$(states | grep -c '=UP$' || true)" = 6 ]; }
down_on_both() {
  local now
  now=$(states)
  grep -qx "linkmesh_http/$1=DOWN" <<<"$now" && grep -qx "linkmesh_grpc/$1=DOWN" <<<"$now"
}
wait_until "HAProxy did not see 3 healthy instances (x2 backends) within 30 s" all_up
states | tr '\n' ' '; echo

seen() { # n requests through HAProxy; prints the distinct instances that answered
  local i out
  for i in $(seq 1 "$1"); do
    if out=$(curl -sf --max-time 5 "http://127.0.0.1:$lb_http/readyz"); then
      echo "$out" | sed 's/.*"instance":"\([^"]*\)".*/\1/'
    else
      echo "FAILED"
    fi
  done | sort | uniq -c
}
# A unary gRPC call (CollectorService/Enroll with an unknown token) over
# HTTP/2 through HAProxy: a LinkMesh instance must answer with grpc-status 16.
printf '\x00\x00\x00\x00\x09\x0a\x07unknown' >"$work/enroll.bin"
grpc_probe() { # n calls; prints the grpc-status values seen
  local i
  for i in $(seq 1 "$1"); do
    curl -s --http2-prior-knowledge --max-time 5 -D - -o /dev/null -X POST \
      -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @"$work/enroll.bin" \
      "http://127.0.0.1:$lb_grpc/linkmesh.v1.CollectorService/Enroll" \
      | tr -d '\r' | sed -n 's/^grpc-status: //p' | grep . || echo "FAILED"
  done | sort | uniq -c
}
grpc_before=$(grpc_probe 6)
echo "6 gRPC Enroll calls through HAProxy (HTTP/2), grpc-status:"; echo "$grpc_before"
[ "$(echo "$grpc_before" | awk '{print $2}')" = 16 ] || fail "gRPC through HAProxy did not reach LinkMesh"

before=$(seen 30)
echo "30 requests through HAProxy:"; echo "$before"
[ "$(echo "$before" | grep -c linkmesh-)" = 3 ] || fail "not all three instances received requests"
! echo "$before" | grep -q FAILED || fail "requests through HAProxy failed"

podman stop -t "$GRACE" "$name-2" >/dev/null
wait_until "HAProxy did not mark linkmesh-2 down on the HTTP and gRPC backends" down_on_both linkmesh-2
states | tr '\n' ' '; echo
after=$(seen 30)
echo "30 requests through HAProxy with linkmesh-2 stopped:"; echo "$after"
! echo "$after" | grep -q FAILED || fail "requests failed after one instance stopped"
! echo "$after" | grep -q linkmesh-2 || fail "the stopped instance still got requests"
grpc_after=$(grpc_probe 6)
echo "6 gRPC calls with linkmesh-2 stopped, grpc-status:"; echo "$grpc_after"
[ "$(echo "$grpc_after" | awk '{print $2}')" = 16 ] || fail "gRPC through HAProxy failed after one instance stopped"

podman start "$name-2" >/dev/null
wait_until "the restarted instance did not come back in HAProxy" all_up
echo "linkmesh-2 restarted: back in both backends"

say "containers/check.sh: all checks passed (image $id1)"
