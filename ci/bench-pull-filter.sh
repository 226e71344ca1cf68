#!/usr/bin/env bash
# Pull filtering, measured (run by hand, not in CI):
#
#   bash ci/bench-pull-filter.sh
#
# Fills an in-process s3s-fs bucket from tests/fixtures/ws built by two
# toolchains (stable and nightly, when `rustup toolchain list` has one)
# and at two versions of its `alpha` crate; then a stable runner with the
# original Cargo.lock pulls and builds. Prints bytes pulled / bytes used,
# with kache's filter and with `--all` (everything), in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --test tests sync::bench::bench_pull_filter -- --ignored --nocapture --exact 2>&1 \
  | grep -E '^(bucket|filtered pull|--all pull)|panicked|error'
