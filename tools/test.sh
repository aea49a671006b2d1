#!/usr/bin/env bash
# The project's test command (README "Quick start"; CI runs exactly this).
# Runs the unit tests and the integration tests, which spawn the real relay binary
# on ephemeral loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
