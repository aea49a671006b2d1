#!/usr/bin/env bash
# tools/fuzz/smoke.sh [SECONDS]
#
# A short run of every cargo-fuzz target (`cargo fuzz list`) from its committed seeds
# (seeds/<target>), SECONDS each (default 5), with the flags README.md gives it; part of
# ./tools/test.sh, so that a change which breaks a target's invariant fails on its own
# commit. It is a smoke run, not a search: new inputs go to a scratch corpus that is thrown
# away. A failing input is kept under tools/fuzz/artifacts/<target>/ (git-ignored); replay
# it with `cargo fuzz run --fuzz-dir tools/fuzz <target> <file>`.
#
# Installs cargo-fuzz when it is missing. cargo-fuzz needs nightly compiler flags, which
# RUSTC_BOOTSTRAP=1 allows on stable. The targets are built once (the default cargo-fuzz
# profile: optimised, with debug assertions and overflow checks, AddressSanitizer) into
# tools/fuzz/target and reused while the sources are unchanged. The last line is
# `fuzz: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-5}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "usage: tools/fuzz/smoke.sh [SECONDS]" >&2; exit 2; }
say() { echo "tools/fuzz/smoke.sh: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked >&2
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz build --fuzz-dir tools/fuzz >&2; then
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi
bin=tools/fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

# Per-target libFuzzer flags, as README.md runs them.
flags_of() {
  case $1 in
    # Longer than the decoder's 4096-byte chunk-line limit.
    http_request) echo "-max_len=10000 -dict=tools/fuzz/dicts/http_request.dict" ;;
    publish_json | api_bodies) echo "-dict=tools/fuzz/dicts/publish_json.dict" ;;
  esac
}

work=$(mktemp -d "${TMPDIR:-/tmp}/pulsar-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
for target in $(cargo fuzz list --fuzz-dir tools/fuzz); do
  mkdir -p "$work/$target" "$work/$target.found"
  # shellcheck disable=SC2046 # the flags are words
  if "$bin/$target" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$work/$target.found/" $(flags_of "$target") \
      "$work/$target" "tools/fuzz/seeds/$target" >"$work/$target.log" 2>&1; then
    passed=$((passed + 1))
    say "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/$target.log" || echo done), no failure"
  else
    failed=$((failed + 1))
    mkdir -p "tools/fuzz/artifacts/$target"
    cp "$work/$target.found/"* "tools/fuzz/artifacts/$target/" 2>/dev/null || true
    say "$target FAILED (inputs kept in tools/fuzz/artifacts/$target/); its output:"
    grep -v '^#[0-9]' "$work/$target.log" | tail -n 40 >&2
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
