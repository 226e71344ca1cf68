#!/usr/bin/env bash
# Runs the S3 test suite (tests/sync.rs) against a real Garage cluster on
# loopback instead of the in-process s3s-fs server.
#
#   bash ci/garage.sh            # one node
#   GARAGE_NODES=3 bash ci/garage.sh   # three nodes, replication factor 3
#
# Installs Garage from crates.io first when `garage` is not on PATH
# (`cargo install garage@2.5.0 --locked`, ~13 minutes on 2 cores).
# Each test uses its own KACHE_S3_PREFIX, so they share one bucket safely.
# Tests that need to write into the server's files directly (corrupt
# object, >1000-object pagination) or session tokens run on the
# in-process s3s-fs server even here; none skips itself.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/ci/lib-garage.sh"

NODES=${GARAGE_NODES:-1}
WORK=$(mktemp -d /tmp/kache-garage.XXXXXX)
cleanup() {
  garage_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

garage_install
garage_start "$WORK" "$NODES"
echo "garage: $NODES node(s) at $GARAGE_ENDPOINT, bucket $GARAGE_BUCKET, region $GARAGE_REGION" >&2

# For the tests (tests/s3server.rs reads KACHE_TEST_S3_*) ...
export KACHE_TEST_S3_ENDPOINT=$GARAGE_ENDPOINT
export KACHE_TEST_S3_BUCKET=$GARAGE_BUCKET
export KACHE_TEST_S3_ACCESS_KEY=$GARAGE_KEY_ID
export KACHE_TEST_S3_SECRET_KEY=$GARAGE_SECRET
export KACHE_TEST_S3_REGION=$GARAGE_REGION
# ... and for running kache by hand against the same cluster.
export KACHE_S3_ENDPOINT=$GARAGE_ENDPOINT KACHE_S3_BUCKET=$GARAGE_BUCKET
export KACHE_S3_ACCESS_KEY=$GARAGE_KEY_ID KACHE_S3_SECRET_KEY=$GARAGE_SECRET
export KACHE_S3_REGION=$GARAGE_REGION

cd "$ROOT"
cargo test --locked --test tests sync:: -- --test-threads=2
echo "garage: S3 suite passed" >&2
