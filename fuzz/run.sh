#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 20) from the
# committed corpus; exits non-zero when any target crashes (the input is kept
# under fuzz/artifacts/<target>/). New inputs go to a scratch directory, so
# the checkout stays clean. Works from a clean clone: installs cargo-fuzz
# when it is missing, and uses a nightly toolchain when there is one, else
# the stable one with RUSTC_BOOTSTRAP=1 (cargo fuzz needs -Z flags).
#
#   bash fuzz/run.sh [SECONDS]
#
# FUZZ_OPTS passes build options to cargo fuzz: CI uses "--dev -s none" (an
# unoptimised build without AddressSanitizer: minutes instead of most of an
# hour from a clean clone; safe Rust needs no ASan to show a panic).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly)
else
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

read -r -a opts <<<"${FUZZ_OPTS:-}"
"${cargo[@]}" fuzz build "${opts[@]}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $("${cargo[@]}" fuzz list); do
  mkdir -p "$scratch/$target" "artifacts/$target"
  echo "fuzz: $target for ${secs}s"
  if ! "${cargo[@]}" fuzz run "${opts[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$target/" 2>"$scratch/$target.log"; then
    failed+=("$target")
    tail -n 60 "$scratch/$target.log" >&2
  fi
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|Done [0-9]+ runs)' "$scratch/$target.log" || true
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crashes"
