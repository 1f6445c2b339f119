#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/, cargo-fuzz + libFuzzer) for
# SECONDS each, starting from the seeds in fuzz/corpus/<target>/. New
# inputs go to a scratch corpus, never into the repository; a crash leaves
# its input in fuzz/artifacts/<target>/ and fails the run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # default: 20 s, every target
#
# The stable toolchain builds the targets with RUSTC_BOOTSTRAP=1 (cargo-fuzz
# passes a few unstable flags); `-s none` leaves out AddressSanitizer (the
# code is safe Rust: the fuzzer looks for panics, hangs and runaway memory)
# and `--dev` avoids a release build of the whole dependency tree.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
# Its own target directory: other RUSTFLAGS than the server's build, so
# sharing one would only make the two evict each other's artifacts.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
cargo fuzz build --dev -s none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if cargo fuzz run --dev -s none "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  printf 'fuzz %-18s %s  %s executions in %s s\n' "$t" "$result" "$execs" "$seconds"
  if [ "$result" != ok ]; then
    grep -E -A20 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -60
    ls ../fuzz/artifacts/"$t"/ 2>/dev/null || true
  fi
done
exit "$failed"
