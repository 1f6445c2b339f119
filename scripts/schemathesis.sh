#!/usr/bin/env bash
# API schema testing: schemathesis (PyPI) generates requests for every
# operation of the OpenAPI document the server itself serves, as an admin
# API token, and checks each response: no 5xx, and status, content type,
# headers and body as documented. Whatever operations the document lists
# are tested; a new route needs nothing here.
#
# The server is the real binary with a temporary config, store and fleet
# config repository (a git repository made from config/examples/fleet-config).
#
#   scripts/schemathesis.sh                 # as in scripts/test.sh
#   ST_MAX_EXAMPLES=200 scripts/schemathesis.sh   # a longer run
# Needs: schemathesis (the version pinned in tests/schemathesis/requirements.txt,
# which scripts/test.sh installs), git.
set -euo pipefail
cd "$(dirname "$0")/.."
# LINKMESH_BIN: a linkmesh binary built elsewhere (else the debug build).
if [ -n "${LINKMESH_BIN:-}" ]; then
  bin=$LINKMESH_BIN
else
  cargo build --locked --quiet --bin linkmesh
  bin="${CARGO_TARGET_DIR:-target}/debug/linkmesh"
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A real fleet config repository, watched in place by the server.
git init -q -b main "$work/fleet"
cp -r config/examples/fleet-config/. "$work/fleet/"
git -C "$work/fleet" add -A
git -C "$work/fleet" -c user.name=schemathesis -c user.email=ci@example.invalid commit -qm "example fleet config"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
grpc_port=$(free_port)
base="http://127.0.0.1:$http_port"
( umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$work/admin-password" )
cat > "$work/linkmesh.toml" <<EOF
[server]
http_listen = "127.0.0.1:$http_port"
grpc_listen = "127.0.0.1:$grpc_port"
[storage.embedded]
path = "$work/data/linkmesh.redb"
[auth]
bootstrap_admin_password_file = "$work/admin-password"
[config_store]
url = "$work/fleet"
branch = "main"
[telemetry]
log_level = "info"
EOF
"$bin" serve --config "$work/linkmesh.toml" > "$work/server.log" 2>&1 &
pid=$!

# Ready, then an admin API token (the bootstrap admin's own).
token=$(BASE="$base" PWFILE="$work/admin-password" python3 - <<'EOF'
import json, os, time, urllib.request
base = os.environ["BASE"]
deadline = time.time() + 120
while True:
    try:
        if urllib.request.urlopen(base + "/readyz", timeout=5).status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        raise SystemExit("the server never became ready")
    time.sleep(0.2)
password = open(os.environ["PWFILE"]).read().strip()
def post(path, body, headers={}):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers}, method="POST")
    return urllib.request.urlopen(req, timeout=30)
r = post("/api/v1/auth/login", {"username": "admin", "password": password})
cookie = r.headers["set-cookie"].split(";")[0]
r = post("/api/v1/api-tokens", {"name": "schemathesis"}, {"cookie": cookie, "origin": base})
print(json.load(r)["token"])
EOF
)

# Protobuf bodies (OpAMP, OTLP) are sent as raw bytes: tests/schemathesis/hooks.py.
export PYTHONPATH="$PWD/tests/schemathesis${PYTHONPATH:+:$PYTHONPATH}"
export SCHEMATHESIS_HOOKS=hooks
status=0
# From the scratch directory: schemathesis keeps its example database in
# the working directory.
cd "$work"
st run "$base/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${ST_MAX_EXAMPLES:-25}" \
  --seed "${ST_SEED:-1}" \
  --workers 1 \
  --request-timeout 30 \
  --suppress-health-check all \
  --warnings off || status=$?

# A panic is a server error even where the response looked fine.
if grep -q "panicked" "$work/server.log"; then
  echo "schemathesis: the server panicked:"; grep -A5 "panicked" "$work/server.log"; status=1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis: failed; the server's log ends with:"; tail -30 "$work/server.log"
fi
exit "$status"
