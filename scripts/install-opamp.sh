#!/bin/sh
# Install the upstream OpenTelemetry OpAMP supervisor and otelcol-contrib,
# connect the supervisor to a LinkMesh server with an enrollment token, and
# start it under systemd.
#
# Served by LinkMesh at GET /api/v1/downloads/install-opamp.sh with the
# server's OpAMP URL filled in; it holds no secret. Typical use:
#
#   curl -fsSL https://linkmesh.example.com/api/v1/downloads/install-opamp.sh \
#     | sudo sh -s -- --token lme_...
#
# Run with --help for every option. --dry-run prints every action and writes
# nothing, except the generated files under --prefix when one is given.
set -eu

# Filled in by the server that serves this script (empty in the repository
# copy: then --server is required).
DEFAULT_SERVER='__LINKMESH_OPAMP_ENDPOINT__'
case $DEFAULT_SERVER in
  __*) DEFAULT_SERVER= ;;
esac

# Pinned upstream releases (override with --collector-version /
# --supervisor-version).
COLLECTOR_VERSION=0.146.0
SUPERVISOR_VERSION=0.146.0
RELEASES=https://github.com/open-telemetry/opentelemetry-collector-releases/releases/download

TOKEN=${LINKMESH_ENROLLMENT_TOKEN:-}
SERVER=$DEFAULT_SERVER
MIRROR=
PREFIX=
DRY_RUN=0
START=1
ARCH=
COLLECTOR_SHA256=
SUPERVISOR_SHA256=
CA_FILE=

usage() {
  cat <<EOF
Usage: install-opamp.sh --token <enrollment token> [options]

Installs the OpenTelemetry OpAMP supervisor and otelcol-contrib, writes the
supervisor's config pointing at the LinkMesh server with the enrollment
token, and starts the opampsupervisor systemd service.

  --token TOKEN            enrollment token (lme_...); or LINKMESH_ENROLLMENT_TOKEN
  --server URL             OpAMP endpoint (wss://host/v1/opamp); defaults to the
                           server this script was downloaded from
  --mirror URL             fetch release files from URL/<file name> instead of
                           GitHub releases (air-gapped sites); the checksum files
                           (checksums.txt and
                           opentelemetry-collector-releases_otelcol-contrib_checksums.txt)
                           must be there too, unless the --*-sha256 options are given
  --collector-version V    otelcol-contrib version (default: $COLLECTOR_VERSION)
  --supervisor-version V   opampsupervisor version (default: $SUPERVISOR_VERSION)
  --collector-sha256 HEX   expected sha256 of the otelcol-contrib archive
  --supervisor-sha256 HEX  expected sha256 of the opampsupervisor binary
  --ca-file PATH           CA bundle to verify the server's certificate (wss)
  --arch ARCH              amd64, arm64 or ppc64le (default: from uname -m)
  --prefix DIR             install under DIR instead of / (packaging, tests)
  --no-start               install and enable, but do not start the service
  --dry-run                print every action; write nothing (except generated
                           files under --prefix, when given)
  -h, --help               this help
EOF
}

die() {
  printf 'install-opamp: %s\n' "$*" >&2
  exit 1
}

say() {
  printf '==> %s\n' "$*"
}

# Print a command; run it unless this is a dry run.
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" -eq 0 ]; then
    "$@"
  fi
}

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value"
  fi
}

while [ "$#" -gt 0 ]; do
  case $1 in
    --token) need_value "$@"; TOKEN=$2; shift 2 ;;
    --server) need_value "$@"; SERVER=$2; shift 2 ;;
    --mirror) need_value "$@"; MIRROR=${2%/}; shift 2 ;;
    --collector-version) need_value "$@"; COLLECTOR_VERSION=${2#v}; shift 2 ;;
    --supervisor-version) need_value "$@"; SUPERVISOR_VERSION=${2#v}; shift 2 ;;
    --collector-sha256) need_value "$@"; COLLECTOR_SHA256=$2; shift 2 ;;
    --supervisor-sha256) need_value "$@"; SUPERVISOR_SHA256=$2; shift 2 ;;
    --ca-file) need_value "$@"; CA_FILE=$2; shift 2 ;;
    --arch) need_value "$@"; ARCH=$2; shift 2 ;;
    --prefix) need_value "$@"; PREFIX=${2%/}; shift 2 ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -n "$TOKEN" ] || die "--token is required: create an enrollment token in LinkMesh (POST /api/v1/enrollment-tokens)"
case $TOKEN in
  *[!A-Za-z0-9_.~-]*) die "--token has characters an enrollment token never has" ;;
esac
[ -n "$SERVER" ] || die "--server is required (e.g. wss://linkmesh.example.com/v1/opamp)"
case $SERVER in
  ws://* | wss://* | http://* | https://*) ;;
  *) die "--server must be a ws://, wss://, http:// or https:// URL, not $SERVER" ;;
esac
case $SERVER in
  *[\"\\]* | *[[:space:]]*) die "--server contains a quote, backslash or space" ;;
esac
case $CA_FILE in
  *[\"\\]*) die "--ca-file contains a quote or backslash" ;;
esac
if [ -n "$CA_FILE" ] && [ "$DRY_RUN" -eq 0 ] && [ ! -r "$CA_FILE" ]; then
  die "--ca-file $CA_FILE is not readable"
fi

if [ -z "$ARCH" ]; then
  case $(uname -m) in
    x86_64 | amd64) ARCH=amd64 ;;
    aarch64 | arm64) ARCH=arm64 ;;
    ppc64le) ARCH=ppc64le ;;
    *) die "unsupported machine $(uname -m); pass --arch" ;;
  esac
fi
case $ARCH in
  amd64 | arm64 | ppc64le) ;;
  *) die "--arch must be amd64, arm64 or ppc64le" ;;
esac

# Where things go (all under --prefix when given).
BIN_DIR=$PREFIX/usr/local/bin
CONF_DIR=$PREFIX/etc/opampsupervisor
STATE_DIR=$PREFIX/var/lib/opampsupervisor
UNIT_FILE=$PREFIX/etc/systemd/system/opampsupervisor.service
COLLECTOR_ASSET=otelcol-contrib_${COLLECTOR_VERSION}_linux_${ARCH}.tar.gz
COLLECTOR_SUMS=opentelemetry-collector-releases_otelcol-contrib_checksums.txt
SUPERVISOR_ASSET=opampsupervisor_${SUPERVISOR_VERSION}_linux_${ARCH}
SUPERVISOR_SUMS=checksums.txt
if [ -n "$MIRROR" ]; then
  COLLECTOR_BASE=$MIRROR
  SUPERVISOR_BASE=$MIRROR
else
  COLLECTOR_BASE=$RELEASES/v$COLLECTOR_VERSION
  SUPERVISOR_BASE=$RELEASES/cmd%2Fopampsupervisor%2Fv$SUPERVISOR_VERSION
fi

# Writing to the real system needs root; a dry run or a prefix does not.
if [ "$DRY_RUN" -eq 0 ] && [ -z "$PREFIX" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo sh -s -- ...), or use --dry-run / --prefix"
fi

command -v tar >/dev/null 2>&1 || [ "$DRY_RUN" -eq 1 ] || die "tar is required"
if command -v curl >/dev/null 2>&1; then
  FETCH=curl
elif command -v wget >/dev/null 2>&1; then
  FETCH=wget
elif [ "$DRY_RUN" -eq 1 ]; then
  FETCH=curl
else
  die "curl or wget is required"
fi
if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1"; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1"; }
elif [ "$DRY_RUN" -eq 1 ]; then
  sha256() { :; }
else
  die "sha256sum or shasum is required"
fi

fetch() { # url dest
  if [ "$FETCH" = curl ]; then
    run curl --proto '=https,http' -fsSL -o "$2" "$1"
  else
    run wget -q -O "$2" "$1"
  fi
}

# Set EXPECTED to the sha256 of file name $2: given ($1), or read from the
# release's checksum file $3 fetched from base $4.
expected_sha256() {
  if [ -n "$1" ]; then
    EXPECTED=$1
    return
  fi
  fetch "$4/$3" "$WORK/$3"
  if [ "$DRY_RUN" -eq 1 ]; then
    EXPECTED="<sha256 of $2 from $3>"
    return
  fi
  EXPECTED=$(awk -v f="$2" '$2 == f || $2 == "*" f { print $1 }' "$WORK/$3")
  [ -n "$EXPECTED" ] || die "$3 has no checksum for $2"
}

verify() { # file expected
  printf '+ check sha256 of %s = %s\n' "$1" "$2"
  [ "$DRY_RUN" -eq 1 ] && return
  actual=$(sha256 "$1" | awk '{ print $1 }')
  [ "$actual" = "$2" ] || die "sha256 mismatch for $(basename "$1"): expected $2, got $actual"
}

# Write stdin to $1 with mode $2; a dry run without --prefix only prints it
# (the token masked).
write_file() {
  printf '+ write %s (mode %s)\n' "$1" "$2"
  if [ "$DRY_RUN" -eq 1 ] && [ -z "$PREFIX" ]; then
    sed -e "s/$TOKEN/<enrollment token>/g" -e 's/^/    | /'
    return
  fi
  mkdir -p "$(dirname "$1")"
  (
    umask 077
    cat >"$1"
  )
  chmod "$2" "$1"
}

if [ "$DRY_RUN" -eq 1 ]; then
  WORK=/tmp/install-opamp.dry-run
  say "Dry run: nothing is downloaded, installed or started"
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi

say "Downloading otelcol-contrib $COLLECTOR_VERSION and opampsupervisor $SUPERVISOR_VERSION ($ARCH)"
expected_sha256 "$COLLECTOR_SHA256" "$COLLECTOR_ASSET" "$COLLECTOR_SUMS" "$COLLECTOR_BASE"
fetch "$COLLECTOR_BASE/$COLLECTOR_ASSET" "$WORK/$COLLECTOR_ASSET"
verify "$WORK/$COLLECTOR_ASSET" "$EXPECTED"
expected_sha256 "$SUPERVISOR_SHA256" "$SUPERVISOR_ASSET" "$SUPERVISOR_SUMS" "$SUPERVISOR_BASE"
fetch "$SUPERVISOR_BASE/$SUPERVISOR_ASSET" "$WORK/$SUPERVISOR_ASSET"
verify "$WORK/$SUPERVISOR_ASSET" "$EXPECTED"

say "Installing into $BIN_DIR"
run mkdir -p "$BIN_DIR" "$CONF_DIR" "$STATE_DIR"
run tar -xzf "$WORK/$COLLECTOR_ASSET" -C "$WORK" otelcol-contrib
run install -m 0755 "$WORK/otelcol-contrib" "$BIN_DIR/otelcol-contrib"
run install -m 0755 "$WORK/$SUPERVISOR_ASSET" "$BIN_DIR/opampsupervisor"

TLS_BLOCK=
if [ -n "$CA_FILE" ]; then
  TLS_BLOCK="  tls:
    ca_file: \"$CA_FILE\""
fi

say "Writing $CONF_DIR/supervisor.yaml (server $SERVER)"
# The token is a secret: the file is readable by root only.
write_file "$CONF_DIR/supervisor.yaml" 600 <<EOF
# Written by the LinkMesh install script. The supervisor enrolls with the
# enrollment token on first contact; LinkMesh then offers it its own
# credential (OpAMP connection settings).
server:
  endpoint: "$SERVER"
  headers:
    Authorization: "Bearer $TOKEN"
$TLS_BLOCK
capabilities:
  accepts_remote_config: true
  reports_remote_config: true
  reports_effective_config: true
  accepts_restart_command: true
  accepts_opamp_connection_settings: true
  reports_own_metrics: true
  reports_health: true
  reports_available_components: true
  reports_heartbeat: true
agent:
  executable: "/usr/local/bin/otelcol-contrib"
storage:
  directory: "/var/lib/opampsupervisor"
EOF

say "Writing $UNIT_FILE"
write_file "$UNIT_FILE" 644 <<'EOF'
[Unit]
Description=OpenTelemetry Collector OpAMP supervisor (LinkMesh)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/opampsupervisor --config /etc/opampsupervisor/supervisor.yaml
Restart=on-failure
RestartSec=5
KillMode=mixed
StateDirectory=opampsupervisor
NoNewPrivileges=true
ProtectSystem=full
ProtectHome=true
PrivateTmp=true

[Install]
WantedBy=multi-user.target
EOF

if [ -n "$PREFIX" ]; then
  say "Installed under $PREFIX; start the service from the target system"
  exit 0
fi
run systemctl daemon-reload
if [ "$START" -eq 1 ]; then
  run systemctl enable --now opampsupervisor.service
  say "Started opampsupervisor; it appears in LinkMesh once it has connected"
else
  run systemctl enable opampsupervisor.service
  say "Enabled opampsupervisor (not started: --no-start)"
fi
