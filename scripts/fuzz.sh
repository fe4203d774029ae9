#!/usr/bin/env bash
# Runs the fuzz targets (fuzzing/src) under cargo-fuzz and libFuzzer, each for a
# while, then shrinks each corpus to the inputs that still add coverage, so that what
# the repository keeps stays small. The test command replays the kept corpora on stable
# (fuzzing/tests/targets.rs); this script is for the long runs RELIABILITY.md reports.
#
#   scripts/fuzz.sh [seconds per target, default 600] [target ...]
#
# Needs nightly Rust and cargo-fuzz, and installs them when missing (rustup, cargo).
# A finding stops its target: libFuzzer writes the input to
# fuzzing/fuzz/artifacts/<target>/ and prints it; reproduce it on stable by copying it
# into fuzzing/corpus/<target>/ as found-<what> and running `cargo test -p fuzzing`;
# minimizing keeps found-* inputs.
set -euo pipefail
cd "$(dirname "$0")/../fuzzing"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(broker_session device_message capabilities api_body)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target/fuzz}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked

cargo +nightly fuzz build -O
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  echo "=== $target: ${seconds}s from $(ls "$corpus" | wc -l) inputs"
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  cargo +nightly fuzz run -O "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || true
  # The run's summary, and a finding's message and input (the whole output is in $log).
  grep -E -A1 '^(Done|stat::|==[0-9]+==|SUMMARY|thread .* panicked|artifact_prefix)' "$log" || true
  echo "=== $target: minimizing the corpus (inputs named found-* stay: each once found a bug)"
  keep="$(mktemp -d)"
  cp "$corpus"/found-* "$keep"/ 2>/dev/null || true
  cargo +nightly fuzz cmin -O "$target" "$corpus" 2>&1 | grep -E 'MERGE-OUTER: [0-9]+ new files' || true
  cp "$keep"/* "$corpus"/ 2>/dev/null || true
  rm -rf "$keep"
  echo "=== $target: $(ls "$corpus" | wc -l) inputs kept"
done
