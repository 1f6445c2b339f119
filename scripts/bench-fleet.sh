#!/usr/bin/env bash
# The fleet benchmark: LinkMesh beside a bare tonic bidi-stream server, both
# driven by the same machinery in the same run (benches/fleet). Release
# builds; prints one table and writes docs/performance.md, its data
# (docs/performance.json) and the plot (docs/performance-fleet.png).
#
#   scripts/bench-fleet.sh [N…]     fleet sizes, default 1000 10000 19000
#   scripts/bench-fleet.sh --smoke  200 collectors, debug build, nothing
#                                   written (the test suite runs this: it
#                                   fails only when the benchmark breaks)
#
# Benchmarks measure; nothing here asserts a timing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The executable cargo built for the fleet bench target (its name has a hash).
bench_exe() {
  cargo build --locked "$@" --bench fleet --message-format=json-render-diagnostics \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fleet" and m.get("executable"):
        print(m["executable"])'
}

if [ "${1:-}" = --smoke ]; then
  cargo build --locked --bin linkmesh >&2
  exe=$(bench_exe)
  exec "$exe" run --pushes 2 --idle 5s --requests 20 --raw-commits 100 --stored 1000 200
fi

cargo build --release --locked --bin linkmesh >&2
exe=$(bench_exe --release)
"$exe" run --out docs "$@"

python3 -c 'import matplotlib' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'
python3 benches/fleet/plot.py docs/performance.json docs/performance-fleet.png
