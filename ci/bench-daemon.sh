#!/usr/bin/env bash
# Daemon benchmark (run by hand, not in CI):
#
#   bash ci/bench-daemon.sh [PROJECT_DIR]
#
# Builds a real project (default: this repository, ~90 crates from the
# local registry; `cargo fetch` it once) through the release kache against
# an in-process s3s-fs on loopback, in one run: uncached; runner A with
# kache and a remote but no daemon, then with the daemon (and the time
# `kache daemon stop` takes to finish the uploads; every entry is then in
# the bucket); runner B with an empty store and the daemon, no sync;
# runner B with `kache sync --pull` then the build; and a fresh runner
# with the daemon and S3 100 ms, then two seconds away on every request.
# Prints a table of times and ratios. With KACHE_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY, _SECRET_KEY and
# _REGION set (as ci/garage.sh sets them) it runs against that server
# instead, e.g. Garage on loopback.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -gt 0 ]; then
  export KACHE_BENCH_PROJECT=$(cd "$1" && pwd)
fi
cd "$ROOT"
exec cargo test --release --locked --test tests daemon::bench -- --ignored --nocapture
