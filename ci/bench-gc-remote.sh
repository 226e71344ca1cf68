#!/usr/bin/env bash
# Benchmark of `kache gc --remote` planning (run by hand, not in CI):
#
#   bash ci/bench-gc-remote.sh            # 100,000 entries
#   ENTRIES=20000 bash ci/bench-gc-remote.sh
#
# Fills an in-process s3s-fs bucket (loopback) with ENTRIES entry objects
# over 200 crates, then times `kache gc --remote --max-size 1MB --dry-run`
# (list the bucket and the use records, pick least recently used first)
# against `kache sync --pull --all --dry-run` (the listing alone) in the
# same run, with wall time and peak memory from /usr/bin/time -v.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
export KACHE_BENCH_ENTRIES=${ENTRIES:-100000}
cargo test --release --locked --test tests sync::bench::bench_gc_remote_plan -- --ignored --nocapture --exact 2>&1 | grep -E '^gc --remote|panicked|error' 
