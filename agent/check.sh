#!/usr/bin/env bash
# Pre-commit gate for napalm-agent: fmt, clippy -D warnings, all tests. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-agent}
cargo fmt -p napalm-agent
cargo clippy -p napalm-agent --all-targets -- -D warnings
cargo test -p napalm-agent "$@"
